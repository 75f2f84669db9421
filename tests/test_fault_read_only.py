"""-o inside a truly read-only folder (a subprocess in a private mount namespace: root ignores
permission bits, and the fault corpus runs in-process)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_corpus as fc  # noqa: E402

ERROR_LINE = re.compile(r"^(error|Error|internal error):.*$", re.M)


def test_output_below_a_read_only_folder(tmp_path):
    """-o inside a read-only folder: one error line naming the path, exit 2, nothing written. Root
    ignores permission bits, so the folder is made truly read-only with a bind mount in a private
    mount namespace (skipped where that is not allowed)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "keep.txt").write_text("mine\n")
    mount = ["unshare", "-m", "sh", "-c", f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" '
             '&& exec "$0" "$@"']
    if not shutil.which("unshare") or subprocess.run(mount + ["true"], capture_output=True).returncode != 0:
        pytest.skip("no private mount namespace here (needs unshare -m as root)")
    before = fc.hashes(ro), fc.listing(ro)
    res = subprocess.run(mount + [sys.executable, "-m", "neurodeploy.cli", "compile", str(fc.CHAIN), "--arch", fc.CHAIN_ARCH,
                                  "-o", str(ro / "out")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    line = (ERROR_LINE.search(res.stderr) or [''])[0]
    assert str(ro) in line and re.search(r"(?i)read-only|permission|not writable", line), res.stderr
    assert (fc.hashes(ro), fc.listing(ro)) == before
