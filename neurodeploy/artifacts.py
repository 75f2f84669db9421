"""Atomic, deterministic artefact writing.

Everything neurodeploy writes goes through :func:`atomic_write` (temp file in the same folder +
``os.replace``) or :class:`ArtifactDir` (a whole output folder built in a temp folder and renamed
into place only when complete), so a failure never leaves a half-written artefact behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps_json(obj) -> str:
    """Deterministic JSON (sorted keys, fixed separators, trailing newline)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artefacts are ordinary files
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write bytes, text, or call ``data(tmp_path)`` to produce the file, atomically."""
    with atomic_path(path) as tmp:
        if callable(data):
            data(tmp)
        else:
            mode = "wb" if isinstance(data, bytes) else "w"
            with open(tmp, mode) as f:
                f.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write(path, dumps_json(obj))


class ArtifactDir:
    """Build an output folder in a temp sibling; ``commit()`` swaps it into place.

    Use as a context manager: on an exception the temp folder is removed and an existing ``out``
    folder is left untouched.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self) -> Path:
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.out, old)
            os.replace(self.tmp, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.out)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "ArtifactDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


MANIFEST = "manifest.json"
NO_VERIFY_HINT = "re-run `neurodeploy compile` into this folder, or pass --no-verify-manifest to run it anyway"


def verify_manifest(out_dir: str | os.PathLike, needed: tuple[str, ...] | list[str] = ()) -> dict:
    """Check a compiled output folder against its ``manifest.json`` before anything runs from it.

    Every artefact the manifest lists must exist with the sha256 recorded at compile time, and every
    file in ``needed`` must be one of them (an artefact the manifest does not vouch for is refused
    like an edited one). Returns the manifest; raises a NeurodeployError naming the file otherwise.
    """
    from .errors import NeurodeployError

    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir / MANIFEST)
    listed = manifest.get("artefacts")
    if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
        raise NeurodeployError(f"{out_dir / MANIFEST} has no 'artefacts' table of sha256 hashes",
                               fix=NO_VERIFY_HINT)
    for name in needed:
        if name not in listed:
            raise NeurodeployError(f"{out_dir / name} is not listed in {out_dir / MANIFEST}",
                                   fix=NO_VERIFY_HINT)
    for name, digest in sorted(listed.items()):
        path = out_dir / name
        if Path(name).name != name:
            raise NeurodeployError(f"{out_dir / MANIFEST} lists {name!r}, which is not a file in the folder")
        if not path.is_file():
            raise NeurodeployError(f"{path} is missing (listed in {MANIFEST})", fix=NO_VERIFY_HINT)
        if sha256_file(path) != digest:
            raise NeurodeployError(f"{path} was changed after compilation (sha256 differs from {MANIFEST})",
                                   fix=NO_VERIFY_HINT)
    return manifest


def _read_manifest(path: Path) -> dict:
    from .errors import NeurodeployError

    if not path.is_file():
        raise NeurodeployError(f"{path} is missing, so the artefacts in {path.parent} cannot be checked",
                               fix=NO_VERIFY_HINT)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeurodeployError(f"{path} is not readable JSON: {e}", fix=NO_VERIFY_HINT) from None
    if not isinstance(manifest, dict):
        raise NeurodeployError(f"{path} is not a neurodeploy manifest (not a JSON object)", fix=NO_VERIFY_HINT)
    return manifest
