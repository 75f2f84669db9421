"""Where numba may cache the compiled kernels (``@njit(cache=...)`` in the two ``kernels`` modules).

numba caches next to the source (``__pycache__``) or in ``~/.cache/numba``; when neither is
writable (a read-only install run by a user without a writable home) ``cache=True`` raises "no
locator available" at import and no command can start. :func:`numba_cache` is called by each
kernels module before it defines a kernel and picks, in order: a ``NUMBA_CACHE_DIR`` the user set;
the package's own ``__pycache__``; ``$XDG_CACHE_HOME/neurodeploy/numba`` (default
``~/.cache/neurodeploy/numba``); else no cache at all (kernels are compiled at every start, a few
seconds, but everything runs). A shared temp folder is never used: a cache there could be planted by
another user, and numba cache files are pickles.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(folder: Path) -> bool:
    """What numba itself checks: the folder can be created and a file written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "neurodeploy" / "numba"


def _use_cache_dir(folder: Path) -> None:
    import numba.core.config as config

    os.environ["NUMBA_CACHE_DIR"] = str(folder)  # for child processes
    config.CACHE_DIR = str(folder)  # numba reads its config at import: set the live value too


def numba_cache(module_file: str) -> bool:
    """The ``cache=`` argument for the kernels defined in ``module_file``."""
    user_set = os.environ.get("NUMBA_CACHE_DIR")
    if user_set:
        return _writable(Path(user_set))
    if _writable(Path(module_file).resolve().parent / "__pycache__"):
        return True
    folder = user_cache_dir()
    if folder.is_absolute() and _writable(folder):
        _use_cache_dir(folder)
        return True
    return False
