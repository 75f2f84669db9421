"""scripts/install_lava.py: idempotent, exact-text patches, loud failures."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install_lava.py"


def _load():
    spec = importlib.util.spec_from_file_location("install_lava", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_check_against_installed_venv_changes_nothing():
    """Lava is installed and patched by scripts/install.sh: a second run has nothing to do."""
    files = _load().PATCHES
    before = {rel: Path(md.distribution(d).locate_file(rel)).read_bytes() for d, rel, _ in files}
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to change" in r.stdout
    assert r.stdout.count("already patched") == 4
    after = {rel: Path(md.distribution(d).locate_file(rel)).read_bytes() for d, rel, _ in files}
    assert before == after


def test_patch_original_then_idempotent(tmp_path):
    mod = _load()
    for dist, rel, edits in mod.PATCHES:
        patched = Path(md.distribution(dist).locate_file(rel)).read_text()
        assert mod.patch_state(patched, edits) == "patched", rel
        original = patched
        for o, p, _ in edits:
            original = original.replace(p, o)
        assert mod.patch_state(original, edits) == "original", rel
        f = tmp_path / Path(rel).name
        f.write_text(original)
        assert mod.patch_file(f, edits, check=True) == "needs-patch"
        assert f.read_text() == original                       # --check changes nothing
        assert mod.patch_file(f, edits, check=False) == "patched-now"
        assert f.read_text() == patched                        # same text as the real fix
        assert mod.patch_file(f, edits, check=False) == "already"
        assert f.read_text() == patched


def test_unknown_text_and_wrong_version_fail_loudly(tmp_path, monkeypatch, capsys):
    mod = _load()
    dist, rel, edits = mod.PATCHES[0]
    f = tmp_path / "var_model.py"
    f.write_text("something else entirely\n")
    with pytest.raises(mod.InstallError, match="neither the original nor the patched"):
        mod.patch_file(f, edits, check=False)
    half = edits[0][1] + edits[1][0]   # one edit applied, the other not
    f.write_text(half)
    with pytest.raises(mod.InstallError):
        mod.patch_file(f, edits, check=False)
    monkeypatch.setattr(mod, "_version", lambda d: "0.9.0" if d == "lava-nc" else md.version(d))
    assert mod.main(["--check"]) == 2
    assert "lava-nc 0.9.0 is installed" in capsys.readouterr().err
