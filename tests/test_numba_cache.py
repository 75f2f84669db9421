"""numba's kernel cache on a read-only install: the package must import and run anyway."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import numba.core.config as numba_config

from neurodeploy.numba_cache import numba_cache

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "neurodeploy"

RUN = """
import os, numpy as np
import neurodeploy.engine.kernels  # noqa: F401  (defining the kernels is where 'no locator' was raised)
from neurodeploy.simulator.kernels import recombine_limbs
out = np.zeros((1, 2))
recombine_limbs(np.ones((1, 2, 2), np.float32), np.array([1.0, 4.0]), np.zeros(1), False, 2, out)
print("sum", int(out.sum()), os.environ.get("NUMBA_CACHE_DIR"))
"""

def _blocked_module(tmp_path: Path) -> Path:
    """A module file whose ``__pycache__`` cannot be created (a file is in the way, even for root)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__pycache__").write_text("")
    (pkg / "kernels.py").write_text("")
    return pkg / "kernels.py"


def test_every_kernel_asks_where_to_cache():
    """A literal cache=True would bring back the 'no locator available' failure."""
    for path in PACKAGE.rglob("*.py"):
        assert not re.search(r"(njit|jit)\([^)]*cache\s*=\s*True", path.read_text()), path


def test_in_tree_cache_when_the_package_is_writable(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "kernels.py").write_text("")
    assert numba_cache(str(tmp_path / "kernels.py")) is True
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_user_cache_folder_when_the_package_is_read_only(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(numba_config, "CACHE_DIR", numba_config.CACHE_DIR)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert numba_cache(str(_blocked_module(tmp_path))) is True
    want = str(tmp_path / "xdg" / "neurodeploy" / "numba")
    assert os.environ["NUMBA_CACHE_DIR"] == want and numba_config.CACHE_DIR == want
    monkeypatch.delenv("NUMBA_CACHE_DIR")


def test_no_cache_when_nothing_is_writable(tmp_path, monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    (tmp_path / "home").write_text("")  # a file: ~/.cache cannot be made under it
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / "cache"))
    assert numba_cache(str(_blocked_module(tmp_path))) is False
    assert "NUMBA_CACHE_DIR" not in os.environ
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "home" / "numba"))  # the user's choice, unwritable
    assert numba_cache(str(tmp_path / "kernels.py")) is False


def _read_only_install(tmp_path: Path) -> tuple[list[str], Path]:
    """A copy of the package that cannot be written: a read-only bind mount in a private mount
    namespace where we may make one (root in a container), else __pycache__ blocked by files."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "neurodeploy", ignore=shutil.ignore_patterns("__pycache__"))
    mount = ["unshare", "-m", "sh", "-c",
             f'mount --bind "{site}" "{site}" && mount -o remount,bind,ro "{site}" && exec "$0" "$@"']
    if shutil.which("unshare") and subprocess.run(mount + ["true"], capture_output=True).returncode == 0:
        return mount, site
    for init in (site / "neurodeploy").rglob("__init__.py"):
        (init.parent / "__pycache__").write_text("")
    return [], site


def test_read_only_install_without_a_writable_home_imports_and_runs(tmp_path):
    prefix, site = _read_only_install(tmp_path)
    (tmp_path / "home").write_text("")  # HOME is not a folder: numba's own ~/.cache/numba fails too
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1")
    res = subprocess.run(prefix + [sys.executable, "-c", RUN], env=env, cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "no locator" not in res.stderr
    total, cache_dir = res.stdout.split()[1:]
    assert int(total) == 10 and cache_dir == "None"  # the kernel ran (1·1 + 1·4, twice), without a cache
    assert not [p for p in site.rglob("*") if p.suffix in (".nbi", ".nbc")], "wrote into the install"
