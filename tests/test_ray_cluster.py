"""Ray as the engine, on a real local cluster: `ray start --head` on 127.0.0.1 with 2 CPUs, joined
with --ray-address; the sharded report equals the single-process one. Skipped only without Ray."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

# Ray's token authentication (the default for clusters it starts) read at import: head and driver
# share the token in ~/.ray/auth_token
os.environ.setdefault("RAY_AUTH_MODE", "token")
ray = pytest.importorskip("ray")

from click.testing import CliRunner  # noqa: E402

from neurodeploy.cli import main  # noqa: E402

MODEL = "examples/digits_sfa.pt"
ARCH = "examples/digits_sfa.py:build_model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """A head node in the foreground (--block): terminating it stops exactly this cluster's processes
    (``ray stop`` would stop every Ray process on the machine)."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ndray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    ray_bin = Path(sys.executable).with_name("ray")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 40
    while time.time() < deadline:  # the GCS port accepts connections once the head is up
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert proc.poll() is None, "ray start --head exited"
        time.sleep(0.5)
    try:
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_verify_and_profile_on_a_local_ray_cluster(head, tmp_path):
    d = np.load("examples/digits_test.npz")
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(3):
        np.savez(shards / f"p{i}.npz", x=d["x"][8 * i:8 * i + 8], y=d["y"][8 * i:8 * i + 8])
    base = [MODEL, "--arch", ARCH, "--data", str(shards), "--batch-size", "4"]
    single = CliRunner().invoke(main, ["verify", *base, "--json"])
    assert single.exit_code == 0, single.output
    on_ray = CliRunner().invoke(main, ["verify", *base, "--json", "--ray-address", head])
    assert on_ray.exit_code == 0, on_ray.output
    assert json.loads(on_ray.stdout) == json.loads(single.stdout)
    assert json.loads(on_ray.stdout)["n_samples"] == 24
    prof = ["profile", *base, "--format", "json"]
    out = tmp_path / "out"
    first = CliRunner().invoke(main, prof + ["--ray-address", head, "--out", str(out)])
    local = CliRunner().invoke(main, prof)
    assert first.exit_code == 0 and local.exit_code == 0, first.output
    assert json.loads(first.stdout) == json.loads(local.stdout)
    assert len(list((out / "shards").glob("*.json"))) == 6
    resumed = CliRunner().invoke(main, prof + ["--ray-address", head, "--out", str(out), "--resume"])
    assert resumed.exit_code == 0 and json.loads(resumed.stdout) == json.loads(local.stdout)


def test_a_shard_whose_worker_dies_is_retried(head, tmp_path):
    from neurodeploy.datasets import open_source
    from neurodeploy.distributed import Runner, run_shards

    np.save(tmp_path / "x.npy", np.zeros((12, 1, 2, 2)))
    shards = open_source(tmp_path / "x.npy").shards(3)

    def dies_once(marker_dir, shard):  # nested: shipped to workers by value
        marker = Path(marker_dir) / f"died{shard.offset}"
        if not marker.exists():
            marker.touch()
            os._exit(1)  # the worker process dies mid-task
        return shard.offset

    merged = run_shards(dies_once, str(tmp_path), shards, lambda acc, r, s: (acc or []) + [r],
                        runner=Runner(address=head))
    assert merged == [0, 3, 6, 9]
    assert len(list(tmp_path.glob("died*"))) == 4
