#!/usr/bin/env python
"""Install Lava (lava-nc 0.10.0, lava-dl 0.6.0) into this interpreter and make it work on
Python 3.11 / numpy 2.4 (see docs: REFERENCE §4).

Both wheels declare Python < 3.11 (and lava-dl pins torch < 2.4, numpy < 2), so they are installed
with ``--no-deps --ignore-requires-python`` plus their real needs, always under
``-c scripts/constraints.txt`` so that pip never touches torch. Then four source fixes are applied
by exact text match:

1. ``lava/magma/compiler/var_model.py``: a dataclass instance used as a field default (Python 3.11
   rejects it) -> ``field(default_factory=ByteEncoder)``.
2. ``lava/lib/dl/slayer/__init__.py``: ``object_detection`` needs torchvision + cv2 -> optional.
3. ``lava/magma/core/process/ports/ports.py``: ``np.reshape(..., newshape=...)`` (removed in
   numpy 2.4) -> ``shape=``.
4. ``lava/lib/dl/netx/hdf5.py``: ``int()`` of a 1-element array (an error in numpy 2.4) ->
   ``int(np.asarray(x).reshape(-1)[0])``.

Idempotent: a file already in its patched form is left alone; a file whose text matches neither
form, or an installed version other than the expected one, is a loud failure (exit status 2).

Usage::

    python scripts/install_lava.py            # install if missing, patch, smoke-check
    python scripts/install_lava.py --check    # change nothing; exit 0 only if all is in place
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONSTRAINTS = HERE / "constraints.txt"

LAVA = {"lava-nc": "0.10.0", "lava-dl": "0.6.0"}
# Real runtime needs of the two wheels (their declared pins are wrong for Python 3.11).
DEPS = {
    "numpy": "numpy", "scipy": "scipy", "networkx": "networkx",
    "asteval": "asteval>=0.9.31,<0.10", "scikit-learn": "scikit-learn", "h5py": "h5py",
    "matplotlib": "matplotlib",
}

# (distribution, path inside site-packages, [(original fragment, patched fragment, count)])
PATCHES = [
    ("lava-nc", "lava/magma/compiler/var_model.py", [
        ("from dataclasses import dataclass, InitVar\n",
         "from dataclasses import dataclass, InitVar, field\n", 1),
        (": ByteEncoder = ByteEncoder()\n",
         ": ByteEncoder = field(default_factory=ByteEncoder)\n", 8),
    ]),
    ("lava-dl", "lava/lib/dl/slayer/__init__.py", [
        ("\nfrom . import object_detection as obd\n",
         "\ntry:  # needs torchvision and cv2 (neurodeploy install_lava.py fix 2)\n"
         "    from . import object_detection as obd\n"
         "except ImportError:  # pragma: no cover\n"
         "    obd = None\n", 1),
    ]),
    ("lava-nc", "lava/magma/core/process/ports/ports.py", [
        ("ft.partial(np.reshape, newshape=self.shape)",
         "ft.partial(np.reshape, shape=self.shape)", 1),
        ("ft.partial(np.reshape, newshape=self.old_shape)",
         "ft.partial(np.reshape, shape=self.old_shape)", 1),
    ]),
    ("lava-dl", "lava/lib/dl/netx/hdf5.py", [
        ("weight = int(layer_config['weight'])",
         "weight = int(np.asarray(layer_config['weight']).reshape(-1)[0])", 1),
        ("bias = int(layer_config['bias'])",
         "bias = int(np.asarray(layer_config['bias']).reshape(-1)[0])", 1),
    ]),
]


class InstallError(RuntimeError):
    pass


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), *args]
    print("+", " ".join(cmd), flush=True)
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    if subprocess.call(cmd, env=env) != 0:
        raise InstallError(f"pip failed: {' '.join(cmd)}")


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def patch_state(text: str, edits) -> str:
    """'original', 'patched', or 'unknown' for a file's text and its list of edits."""
    orig_ok = all(text.count(o) == n and text.count(p) == 0 for o, p, n in edits)
    patched_ok = all(text.count(p) == n and text.count(o) == 0 for o, p, n in edits)
    if orig_ok:
        return "original"
    if patched_ok:
        return "patched"
    return "unknown"


def apply_edits(text: str, edits) -> str:
    for o, p, n in edits:
        text = text.replace(o, p)
    return text


def patch_file(path: Path, edits, check: bool) -> str:
    """Patch ``path`` in place (atomically). Returns 'patched-now', 'already' or 'needs-patch'."""
    if not path.is_file():
        raise InstallError(f"{path}: file not found (is the expected Lava version installed?)")
    text = path.read_text(encoding="utf-8")
    state = patch_state(text, edits)
    if state == "patched":
        return "already"
    if state == "unknown":
        detail = "; ".join(
            f"{o.strip()!r}: found {text.count(o)}x (want {n} or 0), "
            f"patched form {p.strip().splitlines()[0]!r}: found {text.count(p)}x"
            for o, p, n in edits)
        raise InstallError(
            f"{path}: text matches neither the original nor the patched form; refusing to "
            f"patch. ({detail}) Reinstall with: {sys.executable} -m pip install --force-reinstall "
            f"--no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0")
    if check:
        return "needs-patch"
    new = apply_edits(text, edits)
    if patch_state(new, edits) != "patched":  # pragma: no cover - guards the edit table itself
        raise InstallError(f"{path}: internal error, patch did not produce the patched form")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(new)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)
    return "patched-now"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 0 only if Lava is installed, patched and imports")
    ap.add_argument("--no-smoke", action="store_true", help="skip the import smoke check")
    args = ap.parse_args(argv)
    changes = []
    try:
        # 1. the two Lava wheels, exact versions
        for dist, want in LAVA.items():
            have = _version(dist)
            if have is None:
                if args.check:
                    changes.append(f"install {dist}=={want}")
                    continue
                _pip("--no-deps", "--ignore-requires-python", f"{dist}=={want}")
                changes.append(f"installed {dist}=={want}")
                have = _version(dist)
            if have != want:
                raise InstallError(
                    f"{dist} {have} is installed but neurodeploy's Loihi target needs {dist}=={want} "
                    f"(the source fixes are written for that version). Fix: {sys.executable} -m pip "
                    f"install --no-deps --ignore-requires-python {dist}=={want}")
        # 2. their real needs (never torch: constraints pin it)
        missing = [spec for dist, spec in DEPS.items() if _version(dist) is None]
        asteval = _version("asteval")
        if asteval is not None:
            parts = tuple(int(p) for p in asteval.split(".")[:3] if p.isdigit())
            if not ((0, 9, 31) <= parts < (0, 10)):
                missing.append(DEPS["asteval"])
        if missing:
            if args.check:
                changes.append(f"install {' '.join(missing)}")
            else:
                _pip(*missing)
                changes.append(f"installed {' '.join(missing)}")
        # 3. the four fixes
        if not any(c.startswith("install ") for c in changes):
            for dist, rel, edits in PATCHES:
                path = Path(md.distribution(dist).locate_file(rel))
                res = patch_file(path, edits, args.check)
                if res == "needs-patch":
                    changes.append(f"patch {rel}")
                elif res == "patched-now":
                    changes.append(f"patched {rel}")
                    print(f"patched {path}")
                else:
                    print(f"already patched: {rel}")
        # 4. smoke check in a fresh interpreter
        if not args.no_smoke and not (args.check and changes):
            r = subprocess.run([sys.executable, "-c", "import lava.lib.dl.netx, lava.proc.lif.models"],
                               capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                raise InstallError(f"'import lava.lib.dl.netx' fails after patching:\n{r.stderr[-3000:]}")
            print("smoke check ok: import lava.lib.dl.netx")
    except InstallError as e:
        print(f"install_lava.py: ERROR: {e}", file=sys.stderr)
        return 2
    if args.check:
        if changes:
            print("install_lava.py --check: would change: " + "; ".join(changes))
            return 1
        print("install_lava.py --check: nothing to change")
        return 0
    print("install_lava.py: " + ("; ".join(changes) if changes else "nothing to change"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
