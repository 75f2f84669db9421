"""Atomic, deterministic artefact writing.

Everything neurodeploy writes goes through :func:`atomic_write` (temp file in the same folder +
``os.replace``) or :class:`ArtifactDir` (a whole output folder built in a temp folder and swapped
into place only when complete), so a failure never leaves a half-written artefact behind, and an
output folder is never replaced when that would lose a file neurodeploy did not write.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import NeurodeployError
from .interrupts import deferred_signals


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


MANIFEST = "manifest.json"


# --- the output folder of `compile` ----------------------------------------------------------------
#
# OUT is replaced only when it is a previous output of ours (its manifest lists every entry in it); a
# folder holding anything else is refused unless force=True, and even then only our artefacts are
# written into it: no file neurodeploy did not write is removed or overwritten. The new folder is
# built in a temp sibling ".OUT.neurodeploy-tmp-<pid>-xxxx" and swapped in with one atomic rename
# (RENAME_EXCHANGE) under an flock of the parent folder, with SIGTERM/SIGINT deferred during the swap.

GENERATOR = "neurodeploy"
TMP_TAG = ".neurodeploy-tmp-"
_TEMP_NAME = re.compile(r"^\.(.+)\.neurodeploy-(tmp|old)-(\d+)-[^/]+$")
LOCK_TIMEOUT_S = 120.0
OUT_FIX = "choose a new output folder (-o), or add --force to write the artefacts next to these files (they are kept)"


def is_our_manifest(manifest) -> bool:
    """A manifest.json neurodeploy wrote: marked ``"generator": "neurodeploy"``, or a version-1
    manifest from before the marker (artefact table + neurodeploy version)."""
    if not isinstance(manifest, dict):
        return False
    if manifest.get("generator") == GENERATOR:
        return True
    return (manifest.get("manifest_version") == 1 and isinstance(manifest.get("artefacts"), dict)
            and isinstance(manifest.get("versions"), dict) and "neurodeploy" in manifest["versions"])


@dataclass
class OutputFolder:
    """What is at ``-o OUT`` now: the folder really written (a symlink's target), and which of its
    entries a previous neurodeploy compile wrote."""

    path: Path
    target: Path
    exists: bool
    ours: frozenset = frozenset()
    foreign: tuple = ()
    reason: str = ""  # why none of it counts as ours


def inspect_output(out: str | os.PathLike) -> OutputFolder:
    path = Path(out)
    target = Path(os.path.realpath(path))
    if path.is_symlink() and not target.exists():
        raise NeurodeployError(f"-o {path} is a symlink to {target}, which does not exist",
                               fix="create the folder it points to, or give -o a real folder")
    if not target.exists():
        return OutputFolder(path, target, False)
    if not target.is_dir():
        raise NeurodeployError(f"-o {path} is a file, not a folder", fix="choose an output folder")
    listed, reason = _listed_artefacts(target)
    entries = sorted(os.listdir(target))
    ours = frozenset(n for n in entries if n in listed and (target / n).is_file() and not (target / n).is_symlink())
    return OutputFolder(path, target, True, ours, tuple(n for n in entries if n not in ours), reason)


def _listed_artefacts(folder: Path) -> tuple[set, str]:
    path = folder / MANIFEST
    if not path.exists():
        return set(), f"no {MANIFEST}"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return set(), f"its {MANIFEST} is not readable JSON"
    if not is_our_manifest(manifest):
        return set(), f"its {MANIFEST} was not written by neurodeploy"
    names = {n for n in manifest["artefacts"] if isinstance(n, str) and Path(n).name == n and n not in ("", ".", "..")}
    return names | {MANIFEST}, ""


def check_output(out: str | os.PathLike, *, force: bool = False, inputs=()) -> OutputFolder:
    """Refuse an output folder that would lose files: one that is or contains an input (``inputs``:
    ``(label, path)`` pairs) or the current directory, one holding files neurodeploy did not write
    (unless ``force``), one in a place we cannot write."""
    state = inspect_output(out)
    _refuse_clashes(state, [("the current directory", os.getcwd()), *inputs])
    _refuse_foreign(state, force)
    _probe_writable(state)
    return state


def _refuse_clashes(state: OutputFolder, inputs) -> None:
    folder = str(state.target)
    prefix = folder.rstrip(os.sep) + os.sep
    for label, path in inputs:
        if path is None:
            continue
        real = os.path.realpath(path)
        if real == folder or real.startswith(prefix):
            relation = "is" if real == folder else "contains"
            raise NeurodeployError(f"-o {state.path} {relation} {label} ({path}); compiling into it could "
                                   "replace it", fix="choose an output folder that holds none of your "
                                   "inputs, e.g. -o out/NAME")


def _refuse_foreign(state: OutputFolder, force: bool) -> None:
    if not state.foreign:
        return
    shown = ", ".join(state.foreign[:4]) + (f" and {len(state.foreign) - 4} more" if len(state.foreign) > 4 else "")
    if not force:
        why = f"is not a neurodeploy output ({state.reason})" if state.reason else "holds files neurodeploy did not write"
        raise NeurodeployError(f"-o {state.path} already exists and {why}: {shown}", fix=OUT_FIX)
    if MANIFEST in state.foreign:
        raise NeurodeployError(f"-o {state.path} holds a {MANIFEST} neurodeploy did not write; --force never "
                               "overwrites a file neurodeploy did not write",
                               fix="move it away, or choose a new output folder")


def _probe_writable(state: OutputFolder) -> None:
    """Fail now, before the compile, if the output folder cannot be created."""
    folder = state.target.parent
    while not folder.exists():
        folder = folder.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=f".probe{TMP_TAG}{os.getpid()}-", dir=folder))
    except OSError as e:
        raise _write_error(state.path, folder, e) from None


def _write_error(out, folder, e: OSError) -> NeurodeployError:
    return NeurodeployError(f"cannot write the output folder {out}: {folder} is not writable "
                            f"({e.strerror or e})", fix="choose an output folder (-o) in a place you can write to")


def remove_stale_temp(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp folders that runs which no longer exist (kill -9, power loss) left in
    ``folder``: only names of ours, only when their PID is dead and the owner is this user. A
    half-swapped old output (OUT missing, its old copy still here) is renamed back instead."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m or not entry.is_dir(follow_symlinks=False):
            continue
        name, kind, pid = m.group(1), m.group(2), int(m.group(3))
        try:
            if _pid_alive(pid) or entry.stat(follow_symlinks=False).st_uid != os.geteuid():
                continue
            original = Path(folder) / name
            if kind == "old" and not os.path.lexists(original):
                os.rename(entry.path, original)
                continue
        except OSError:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive flock on ``folder`` (no lock file to leave behind); waits for another run's swap."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NeurodeployError(f"another neurodeploy run has held {folder} for {LOCK_TIMEOUT_S:.0f} s",
                                           fix="wait for it to finish, or choose another output folder") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (renameat2 RENAME_EXCHANGE); where the file system or libc has
    no exchange, three renames, the old folder parked under a name remove_stale_temp restores."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    except AttributeError:  # no renameat2 in this libc
        pass
    parked = b.with_name(f".{b.name}.neurodeploy-old-{os.getpid()}-{os.urandom(4).hex()}")
    os.rename(b, parked)
    os.rename(a, b)
    os.rename(parked, a)


def _make_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
    return missing  # deepest first


class ArtifactDir:
    """Build an output folder in a temp sibling; ``commit()`` puts it in place (see the rules above).

    Use as a context manager: on an exception, or after ``discard()``, the temp folder is removed and
    an existing ``out`` is left exactly as it was.
    """

    def __init__(self, out: str | os.PathLike, *, force: bool = False, inputs=()):
        self.out = Path(out)
        self.force = force
        self.target = check_output(out, force=force, inputs=inputs).target
        self.tmp: Path | None = None
        self.committed = self.discarded = False
        self._created: list[Path] = []
        try:
            self._created = _make_parents(self.target.parent)
            remove_stale_temp(self.target.parent)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}{TMP_TAG}{os.getpid()}-",
                                             dir=self.target.parent))
            os.chmod(self.tmp, 0o777 & ~_umask())
        except BaseException as e:
            self.abort()
            if isinstance(e, OSError):
                raise _write_error(self.out, self.target.parent, e) from None
            raise

    def path(self, name: str) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def discard(self) -> None:
        """Do not write this output (e.g. verification failed); ``out`` stays as it was."""
        self.discarded = True

    def commit(self) -> Path:
        with _locked(self.target.parent), deferred_signals():
            state = inspect_output(self.out)
            _refuse_foreign(state, self.force)
            if not state.exists:
                os.rename(self.tmp, self.target)
            elif state.foreign:
                self._merge(state)
            else:
                _exchange(self.tmp, self.target)  # self.tmp now holds the previous output
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.committed = True
        return self.out

    def _merge(self, state: OutputFolder) -> None:
        """--force into a folder with foreign files: move our files in one by one (manifest last),
        remove the previous compile's artefacts that this one does not write, keep everything else."""
        new = sorted(os.listdir(self.tmp), key=lambda n: (n == MANIFEST, n))
        clash = [n for n in new if n in state.foreign]
        if clash:
            raise NeurodeployError(f"-o {self.out} holds {', '.join(clash)}, which neurodeploy did not write; "
                                   "--force never overwrites such files",
                                   fix="move them away, or choose a new output folder")
        for name in new:
            os.replace(self.tmp / name, self.target / name)
        for name in sorted(state.ours - set(new)):
            (self.target / name).unlink(missing_ok=True)
        os.rmdir(self.tmp)

    def abort(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        for folder in self._created:  # only the (still empty) parents this run created
            try:
                folder.rmdir()
            except OSError:
                break

    def __enter__(self) -> "ArtifactDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.discarded:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


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
    if not is_our_manifest(manifest):
        raise NeurodeployError(f"{path} was not written by neurodeploy", fix=NO_VERIFY_HINT)
    return manifest
