"""Data larger than memory: ``--data`` as a stream of batches.

:func:`open_source` accepts

* one ``.npz`` (``x``, optional ``y``) or a directory / glob of ``.npz`` shards (sorted by name;
  one shard is in memory at a time),
* a ``.npy`` array of inputs, memory-mapped (only the batch being read is in memory),
* an image folder (``*.jpg``/``*.png``/..., or one sub-folder per class as torchvision's
  ``ImageFolder``: labels are the sorted class folders' indices), decoded with Pillow and put
  through the standard ImageNet eval transform (:func:`eval_transform`).

:meth:`DataSource.batches` yields :class:`Batch` es of at most ``batch_size`` samples in order; every
batch goes through the same checks as an in-memory dataset (``data.validate_inputs``: finite,
shape, errors naming the file and the sample's index in it). A :class:`ShardSpec` is a picklable
description of one batch (file + sample range), so Ray workers read their own shards.
"""

from __future__ import annotations

import glob as _glob
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import SAVE_FIX, Dataset, check_limit, read_arrays, validate_inputs
from .errors import NeurodeployError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".gif", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_BATCH = 256
# calibration from --data when no --calibration is given: the first samples, up to this many values
CALIBRATION_VALUES = 1 << 25


def eval_transform(image, size: int = 224, resize: int | None = None) -> np.ndarray:
    """torchvision's ImageNet eval transform without torchvision: RGB, ``Resize(resize)`` (shorter
    side, bilinear, PIL), ``CenterCrop(size)``, ``ToTensor`` (/255) and ``Normalize`` with the
    ImageNet mean / std. Returns float32 [3, size, size]."""
    from PIL import Image

    resize = int(resize or round(size / 0.875))  # 224 -> 256, as the reference recipe
    image = image.convert("RGB")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    if top < 0 or left < 0:
        raise NeurodeployError(f"image of {new_w}x{new_h} after resizing is smaller than the crop {size}",
                               fix="pass a resize >= the crop size")
    image = image.crop((left, top, left + size, top + size))
    x = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


@dataclass(frozen=True)
class ShardSpec:
    """One batch: samples ``[start, stop)`` of file ``path`` (``kind`` npz / npy / images), which
    are samples ``[offset, offset + stop - start)`` of the whole source."""

    kind: str
    path: str
    start: int
    stop: int
    offset: int
    files: tuple = ()        # images: (path, label) of this batch's files
    image_size: int = 224

    def __len__(self) -> int:
        return self.stop - self.start

    def read(self, input_shape=None) -> Dataset:
        """The batch as a checked, float64 :class:`Dataset` (``path`` names the file)."""
        if self.kind == "images":
            x, y = _read_images(self.files, self.image_size)
            where = f"image folder {self.path}"
        else:
            x, y = _read_arrays(self)
            where = f"data file {self.path}, array 'x'"
        ds = Dataset(x, y, self.path)
        x = validate_inputs(ds.x, where=where, input_shape=input_shape, first_index=self.start)
        return Dataset(x, ds.y, self.path)

    def content_hash(self, memo: dict | None = None) -> str:
        """sha256 of the bytes this shard reads and of its sample range: for a ``.npy`` the rows
        ``[start, stop)``, for an ``.npz`` shard the whole file, for images every file of the batch.
        Names and timestamps play no part: a file rewritten with other data under the same name,
        size and mtime gets another hash, and a copied or moved one keeps its hash. ``memo``: a
        dict for one run, so that the batches of one ``.npz`` read it once (keyed by the file's
        identity; a fresh dict per run sees files changed since)."""
        memo = {} if memo is None else memo
        h = hashlib.sha256(repr((self.kind, self.start, self.stop, self.image_size)).encode())
        if self.kind == "npy":
            h.update(_npy_rows_digest(self.path, self.start, self.stop))
        elif self.kind == "images":
            for f, label in self.files:
                h.update(_file_digest(f, memo) + repr(label).encode())
        else:
            h.update(_file_digest(self.path, memo))
        return h.hexdigest()


_HASH_BLOCK = 1 << 22


def _file_digest(path: str, memo: dict) -> bytes:
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(_HASH_BLOCK), b""):
                h.update(block)
        memo[key] = h.digest()
    return memo[key]


def _npy_rows_digest(path: str, start: int, stop: int) -> bytes:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    h = hashlib.sha256(repr((arr.dtype.str, arr.shape[1:])).encode())
    rows = max(1, _HASH_BLOCK // max(1, arr[0].nbytes if len(arr) else 1))
    for a in range(start, stop, rows):  # a block at a time: the memory map stays mostly on disk
        h.update(np.ascontiguousarray(arr[a:min(a + rows, stop)]).data)
    return h.digest()


def _read_arrays(spec: ShardSpec):
    if spec.kind == "npy":
        arr = np.load(spec.path, mmap_mode="r", allow_pickle=False)
        return np.array(arr[spec.start:spec.stop]), None
    x, y = _npz_cached(spec.path)
    return x[spec.start:spec.stop], None if y is None else y[spec.start:spec.stop]


_LAST_NPZ: dict = {}


def _npz_cached(path: str):
    """The arrays of the last .npz read in this process: consecutive batches of one file read it
    once (an .npz member cannot be memory-mapped), and only one file is held at a time."""
    st = Path(path).stat()
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if _LAST_NPZ.get("key") != key:
        _LAST_NPZ.clear()
        _LAST_NPZ.update(key=key, arrays=_npz_arrays(path))
    return _LAST_NPZ["arrays"]


def _npz_arrays(path: str):
    ds = read_arrays(path)
    return ds.x, ds.y


def _read_images(files, size: int):
    from PIL import Image, UnidentifiedImageError

    xs = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                xs.append(eval_transform(im, size))
        except (OSError, UnidentifiedImageError) as e:
            raise NeurodeployError(f"cannot decode image {path}: {e}",
                                   fix="remove or replace the file (Pillow must be able to open it)") from None
    labels = [label for _, label in files]
    y = None if any(v is None for v in labels) else np.asarray(labels, dtype=np.int64)
    return np.stack(xs), y


@dataclass
class DataSource:
    """An ordered list of files, each with its number of samples."""

    description: str
    kind: str
    entries: list            # [(path, n_samples)] for arrays, [(path, label)] for images
    image_size: int = 224

    @property
    def n_samples(self) -> int:
        return len(self.entries) if self.kind == "images" else sum(n for _, n in self.entries)

    def shards(self, batch_size: int = DEFAULT_BATCH, limit: int | None = None) -> list[ShardSpec]:
        """Batches of at most ``batch_size`` samples, never crossing a file, in order."""
        check_limit(limit)
        total = self.n_samples if limit is None else min(int(limit), self.n_samples)
        out, offset = [], 0
        if self.kind == "images":
            while offset < total:
                stop = min(offset + batch_size, total)
                out.append(ShardSpec("images", self.description, offset, stop, offset,
                                     tuple(self.entries[offset:stop]), self.image_size))
                offset = stop
            return out
        for path, n in self.entries:
            start = 0
            while start < n and offset < total:
                stop = min(start + batch_size, n, start + total - offset)
                out.append(ShardSpec(self.kind, path, start, stop, offset))
                offset += stop - start
                start = stop
        return out

    def batches(self, batch_size: int = DEFAULT_BATCH, limit: int | None = None, input_shape=None):
        """Yield ``(offset, Dataset)`` batch by batch (constant memory)."""
        for spec in self.shards(batch_size, limit):
            yield spec.offset, spec.read(input_shape)

    def head(self, n_values: int = CALIBRATION_VALUES, input_shape=None, limit: int | None = None) -> Dataset:
        """The first samples (at most ``n_values`` numbers, at least one sample) as one Dataset."""
        first = self.shards(1, 1)[0].read(input_shape)
        per_sample = max(int(np.prod(first.x.shape[1:])), 1)
        n = max(1, n_values // per_sample)
        if limit is not None:
            n = min(n, int(limit))
        parts = [ds for _, ds in self.batches(min(n, DEFAULT_BATCH * 16), n, input_shape)]
        y = None if any(p.y is None for p in parts) else np.concatenate([p.y for p in parts])
        return Dataset(np.concatenate([p.x for p in parts]), y, self.description)


def is_stream_spec(data) -> bool:
    """True when ``data`` names more than one plain file's worth: a directory, a glob or an .npy."""
    s = str(data)
    return Path(s).is_dir() or any(c in s for c in "*?[") or s.endswith(".npy")


def open_source(data, *, image_size: int = 224) -> DataSource:
    """A :class:`DataSource` for ``data`` (see the module docstring)."""
    s = str(data)
    path = Path(s)
    if any(c in s for c in "*?[") and not path.exists():
        files = sorted(p for p in _glob.glob(s) if p.endswith(".npz"))
        if not files:
            raise NeurodeployError(f"the pattern {s} matches no .npz file", fix="check the --data glob")
        return _npz_source(s, files)
    if not path.exists():
        raise NeurodeployError(f"data file {path} does not exist")
    if path.is_dir():
        return _dir_source(path, image_size)
    if path.suffix == ".npy":
        return _npy_source(path)
    return _npz_source(s, [s])


def _npz_source(description: str, files: list[str]) -> DataSource:
    entries = []
    for f in files:
        entries.append((f, _npz_length(f)))
    return DataSource(description, "npz", entries)


def _npz_length(path: str) -> int:
    """Samples in an .npz, from the header of its 'x' member (nothing decompressed), with the
    full check of :func:`_npz_arrays` when the header cannot be read that way."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z, z.open("x.npy") as member:
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(member) == (1, 0) else fmt.read_array_header_2_0
            shape, _, _ = read(member)
        if shape and shape[0] > 0:
            return int(shape[0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, AttributeError):
        pass
    return len(_npz_arrays(path)[0])


def _npy_source(path: Path) -> DataSource:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise NeurodeployError(f"cannot read data file {path}: {e}",
                               fix="pass an .npy written by numpy.save (no pickles)") from None
    if arr.ndim == 0 or len(arr) == 0:
        raise NeurodeployError(f"data file {path} has no samples (shape {arr.shape})", fix=SAVE_FIX)
    return DataSource(str(path), "npy", [(str(path), len(arr))])


def _dir_source(path: Path, image_size: int) -> DataSource:
    npz = sorted(str(p) for p in path.glob("*.npz"))
    if npz:
        return _npz_source(str(path), npz)
    images = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    entries = [(p, None) for p in images]
    if not images:
        classes = sorted(p.name for p in path.iterdir() if p.is_dir())
        for label, name in enumerate(classes):
            entries += [(str(p), label) for p in sorted((path / name).iterdir())
                        if p.suffix.lower() in IMAGE_SUFFIXES]
    if not entries:
        raise NeurodeployError(f"folder {path} holds no .npz shards and no images ({', '.join(IMAGE_SUFFIXES)})",
                               fix="pass a folder of .npz shards, of images, or of one image folder per class")
    return DataSource(str(path), "images", entries, image_size)
