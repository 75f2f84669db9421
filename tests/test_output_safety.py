"""Never lose a user's files: what `compile -o` refuses, replaces and keeps; interruption (SIGTERM,
kill -9), concurrent runs, read-only places; Lava's workers die with `run` (issue 8, data loss)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from neurodeploy.artifacts import GENERATOR, ArtifactDir, remove_stale_temp
from neurodeploy.cli import main
from neurodeploy.errors import NeurodeployError

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "digits_sfa.pt"
ARCH = f"{ROOT / 'examples' / 'digits_sfa.py'}:build_model"
DATA = ROOT / "examples" / "digits_test.npz"
CLI = [sys.executable, "-m", "neurodeploy.cli"]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def compile_demo(out, *extra):
    return cli("compile", DEMO, "--arch", ARCH, "--target", "sim", "-o", out, *extra)


def snapshot(folder: Path) -> dict:
    """Every entry below ``folder`` (hidden ones too) with its bytes' hash; links as links."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                tree[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                tree[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                tree[rel] = "dir"
    return tree


def temp_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".neurodeploy-" in p.name)


@pytest.fixture(scope="module")
def previous_output(tmp_path_factory):
    """A real earlier compile (the folder a user compiles into again)."""
    out = tmp_path_factory.mktemp("prev") / "out"
    res = compile_demo(out)
    assert res.exit_code == 0, res.output
    return out


def copy_output(previous_output, dest: Path) -> Path:
    shutil.copytree(previous_output, dest)
    return dest


# -- what -o refuses --------------------------------------------------------------------------------

def test_a_folder_that_is_not_our_output_is_refused_and_kept(tmp_path):
    out = tmp_path / "o"
    (out / "sub").mkdir(parents=True)
    (out / "NOTES.txt").write_text("mine")
    (out / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = snapshot(tmp_path)
    res = compile_demo(out)
    assert res.exit_code == 2
    assert "not a neurodeploy output" in res.output and "NOTES.txt" in res.output and "--force" in res.output
    assert "Traceback" not in res.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["model_folder", "dot", "parent_of_cwd", "data_inside"])
def test_an_output_that_holds_an_input_or_the_cwd_is_refused(tmp_path, monkeypatch, where):
    models = tmp_path / "models"
    models.mkdir()
    model, arch_py, data = models / "m.pt", models / "m.py", models / "d.npz"
    shutil.copy(DEMO, model)
    shutil.copy(ROOT / "examples" / "digits_sfa.py", arch_py)
    shutil.copy(DATA, data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out, expected = {"model_folder": (models, "contains the model file"),
                     "dot": (".", "is the current directory"),
                     "parent_of_cwd": (tmp_path, "contains the current directory"),
                     "data_inside": (models, "contains the model file")}[where]
    extra = ("--data", data) if where == "data_inside" else ()
    before = snapshot(tmp_path)
    res = cli("compile", model, "--arch", f"{arch_py}:build_model", "-o", out, *extra)
    assert res.exit_code == 2, res.output
    assert expected in res.output and "Traceback" not in res.output
    assert snapshot(tmp_path) == before


def test_arch_file_and_data_in_the_output_are_named(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    shutil.copy(DATA, out / "d.npz")
    res = compile_demo(out, "--data", out / "d.npz")
    assert res.exit_code == 2 and "the --data file" in res.output
    arch_py = out / "m.py"
    shutil.copy(ROOT / "examples" / "digits_sfa.py", arch_py)
    res = cli("compile", DEMO, "--arch", f"{arch_py}:build_model", "-o", out, "--force")
    assert res.exit_code == 2 and "the --arch file" in res.output  # --force does not lift this


def test_read_only_place_is_a_clear_error(tmp_path):
    # /sys refuses mkdir even to root (EPERM): the kernel, not a mock, says no
    res = compile_demo("/sys/neurodeploy-test/out")
    assert res.exit_code == 2
    assert "not writable" in res.output and "Traceback" not in res.output
    assert not Path("/sys/neurodeploy-test").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to user nobody")
def test_read_only_folder_for_an_ordinary_user(tmp_path):
    """As user nobody (root ignores permission bits), in a folder nobody may not write."""
    try:
        subprocess.run([sys.executable, "-c", "import neurodeploy"], user=65534, group=65534, cwd="/",
                       capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("user nobody cannot run this Python (installed under a private folder)")
    base = Path(tempfile.mkdtemp(prefix="nd-ro-"))
    try:
        os.chmod(base, 0o555)
        code = ("import sys\nfrom neurodeploy.artifacts import ArtifactDir\nfrom neurodeploy.errors import "
                "NeurodeployError\ntry:\n    ArtifactDir(sys.argv[1])\nexcept NeurodeployError as e:\n"
                "    print(e); sys.exit(2)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(base / "sub" / "out")], user=65534, group=65534,
                              capture_output=True, text=True, cwd="/", timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "not writable" in proc.stdout and "Permission denied" in proc.stdout
        assert os.listdir(base) == []
    finally:
        shutil.rmtree(base)


# -- --force: write next to foreign files, never remove or overwrite them ---------------------------

def test_force_keeps_every_foreign_file(tmp_path, previous_output):
    out = copy_output(previous_output, tmp_path / "out")
    (out / "NOTES.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    foreign = {k: v for k, v in snapshot(out).items() if k.startswith(("NOTES", "plots"))}
    assert compile_demo(out).exit_code == 2  # a previous output with files of the user: refused
    res = compile_demo(out, "--force", "--emit", "routing")
    assert res.exit_code == 0, res.output
    after = snapshot(out)
    assert {k: after.get(k) for k in foreign} == foreign
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generator"] == GENERATOR and "routing.npz" in manifest["artefacts"]
    assert set(manifest["artefacts"]) | {"manifest.json"} | set(foreign) == set(after)
    # again, without --emit routing: the routing files of the earlier compile go, the user's files stay
    res = compile_demo(out, "--force")
    assert res.exit_code == 0, res.output
    assert not (out / "routing.npz").exists()
    assert {k: snapshot(out).get(k) for k in foreign} == foreign
    assert temp_leftovers(tmp_path) == []


def test_force_never_overwrites_a_foreign_file_with_an_artefact_name(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "graph.ir.npz").write_bytes(b"the user's own file")
    before = snapshot(tmp_path)
    res = compile_demo(out, "--force")
    assert res.exit_code == 2
    assert "graph.ir.npz" in res.output and "never overwrites" in res.output
    assert snapshot(tmp_path) == before


def test_a_manifest_version_1_output_without_the_marker_is_ours(tmp_path, previous_output):
    out = copy_output(previous_output, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["generator"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = compile_demo(out)
    assert res.exit_code == 0, res.output
    assert json.loads((out / "manifest.json").read_text())["generator"] == GENERATOR


# -- replace only after every step succeeded -------------------------------------------------------

def test_failed_verify_leaves_the_previous_output_exactly(tmp_path, previous_output, monkeypatch):
    import neurodeploy.api
    from neurodeploy.verify import ExtraCheck, VerifyReport

    out = copy_output(previous_output, tmp_path / "out")
    before = snapshot(tmp_path)
    # a verification that fails (the comparison itself is tested in test_verify*.py; here: what is written)
    failing = VerifyReport(required_exact=(), checks=[ExtraCheck("counts", False, "layer x: 3 counts differ", {})])
    monkeypatch.setattr(neurodeploy.api, "verify_prepared", lambda *a, **k: failing)
    res = compile_demo(out, "--data", DATA, "--limit", 4, "--verify", "--no-profile")
    assert res.exit_code == 1
    assert "was not written" in res.output and "--no-verify" in res.output
    assert snapshot(tmp_path) == before


def test_an_error_while_writing_leaves_the_previous_output_exactly(tmp_path, previous_output, monkeypatch):
    import neurodeploy.nir_io

    out = copy_output(previous_output, tmp_path / "out")
    before = snapshot(tmp_path)

    def broken(*_a, **_k):
        raise NeurodeployError("simulated failure while writing network.nir")

    monkeypatch.setattr(neurodeploy.nir_io, "write_nir", broken)
    res = compile_demo(out)
    assert res.exit_code == 2 and "simulated failure" in res.output
    assert snapshot(tmp_path) == before


def test_symlinked_output_stays_a_link_and_its_target_is_replaced(tmp_path, previous_output):
    real = copy_output(previous_output, tmp_path / "real")
    (real / "profile.json").write_text("{}")  # an artefact of an earlier compile: gone after the new one
    manifest = json.loads((real / "manifest.json").read_text())
    manifest["artefacts"]["profile.json"] = "0" * 64
    (real / "manifest.json").write_text(json.dumps(manifest))
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    res = compile_demo(link)
    assert res.exit_code == 0, res.output
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert not (real / "profile.json").exists() and (real / "graph.ir.npz").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no .link.old, no temp folder


# -- interruption ------------------------------------------------------------------------------------

def test_sigterm_during_compile_leaves_the_previous_output_and_no_temp(tmp_path, previous_output):
    out = copy_output(previous_output, tmp_path / "out")
    before = snapshot(tmp_path)
    proc = subprocess.Popen(CLI + ["compile", str(DEMO), "--arch", ARCH, "-o", str(out), "--data", str(DATA),
                                   "--limit", "4", "--verify"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(n.startswith(".out.neurodeploy-tmp-") for n in os.listdir(tmp_path)):
            break  # the new output is being built
        time.sleep(0.005)
    assert proc.poll() is None, "compile finished before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_stale_temp_folders_of_dead_runs_are_removed(tmp_path):
    # a run killed with SIGKILL while building its output (nothing of it can clean up)
    code = ("import os, signal, sys\nfrom neurodeploy.artifacts import ArtifactDir\n"
            "a = ArtifactDir(sys.argv[1])\na.path('graph.ir.npz').write_bytes(b'x')\n"
            "print(os.getpid(), flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL
    dead_pid = int(proc.stdout)
    assert temp_leftovers(tmp_path) != []
    parked = tmp_path / f".gone.neurodeploy-old-{dead_pid}-abcd1234"  # an old output mid-swap (fallback path)
    parked.mkdir()
    (parked / "manifest.json").write_text("{}")
    live = tmp_path / f".other.neurodeploy-tmp-{os.getppid()}-abcd1234"  # a run still alive
    live.mkdir()
    unrelated = tmp_path / ".other.tmp-1-x"
    unrelated.mkdir()
    remove_stale_temp(tmp_path)
    assert temp_leftovers(tmp_path) == [live.name]
    assert unrelated.is_dir()
    assert (tmp_path / "gone" / "manifest.json").read_text() == "{}"  # restored, not deleted


def test_concurrent_runs_into_one_output_serialise(tmp_path):
    out = tmp_path / "out"
    n = 6
    barrier = threading.Barrier(n)
    errors = []

    def run(i):
        try:
            with ArtifactDir(out) as art:
                art.path("value.txt").write_text(str(i))
                (art.path("manifest.json")).write_text(json.dumps(
                    {"generator": GENERATOR, "manifest_version": 2, "artefacts": {"value.txt": str(i)}}))
                barrier.wait(timeout=30)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "value.txt").read_text() == manifest["artefacts"]["value.txt"]  # one complete output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replacing_without_rename_exchange(tmp_path, monkeypatch):
    """File systems without RENAME_EXCHANGE: the kernel's EINVAL (an unknown flag) takes the
    three-rename path, which ends in the same state."""
    import neurodeploy.artifacts as artifacts

    out = tmp_path / "out"
    for value in ("1", "2"):
        with ArtifactDir(out) as art:
            art.path("value.txt").write_text(value)
            art.path("manifest.json").write_text(json.dumps(
                {"generator": GENERATOR, "manifest_version": 2, "artefacts": {"value.txt": value}}))
        monkeypatch.setattr(artifacts, "_RENAME_EXCHANGE", 1 << 30)
    assert (out / "value.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# -- Lava workers -------------------------------------------------------------------------------------

def _parents() -> dict[int, int]:
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                table[int(d)] = int(fields[1])
    return table


def _descendants(pid: int) -> set[int]:
    table, found, todo = _parents(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, pp in table.items():
            if pp == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.lava
def test_sigterm_of_lava_run_leaves_no_worker_processes(tmp_path):
    from neurodeploy import api

    out = tmp_path / "loihi"
    api.compile(ROOT / "examples" / "digits_chain.pt", arch=f"{ROOT / 'examples' / 'digits_chain.py'}:build_model",
                target="loihi", out_dir=out)
    proc = subprocess.Popen(CLI + ["run", str(out), "--runtime", "lava", "--data", str(DATA)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while proc.poll() is None and len(seen) < 5 and time.monotonic() < deadline:
        seen |= _descendants(proc.pid)  # Lava is starting its workers
        time.sleep(0.02)
    assert proc.poll() is None and len(seen) >= 5, "Lava did not start"
    proc.send_signal(signal.SIGTERM)
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= _descendants(proc.pid)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=5)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    settle = time.monotonic() + 10  # the resource tracker exits once its pipe closes
    while seen & set(_parents()) and time.monotonic() < settle:
        time.sleep(0.1)
    survivors = sorted(seen & set(_parents()))
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], f"{len(survivors)} of {len(seen)} child processes outlived `run`"


def test_lava_workers_die_with_a_killed_parent():
    """kill -9 of the parent cannot run any handler: the workers, forked during a run, carry
    PR_SET_PDEATHSIG and the kernel kills them (the fork hook run_lava uses, without Lava)."""
    code = ("import os, signal, time\nfrom neurodeploy.interrupts import children_die_with_parent\n"
            "with children_die_with_parent():  # as run_lava starts Lava\n    pid = os.fork()\n"
            "if pid == 0:\n    os.close(1)\n    os.close(2)\n    time.sleep(60)\n    os._exit(0)\n"
            "print(pid, flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    worker = int(proc.stdout)
    deadline = time.monotonic() + 5
    while worker in _parents() and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = worker in _parents()
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the forked worker outlived its killed parent"
