"""calibrate --workers / --ray-address: the pass over the calibration source (input statistics of
every sample, the evenly spaced subsample) runs one batch per task on a real local Ray runtime and
merges in batch order, so the record is byte-identical to the single-process one. Ray tests are
skipped only without Ray."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from neurodeploy import calibration_sample
from neurodeploy.calibration_sample import sample_calibration
from neurodeploy.cli import main

EX = Path("examples")
MODEL = [str(EX / "digits_chain.pt"), "--arch", f"{EX / 'digits_chain.py'}:build_model"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """40 digits in three .npz files of unequal size, the last with a sample beyond the others' peak
    (the statistics must come from every sample, not the subsample)."""
    x = np.load(EX / "digits_calib.npz")["x"][:40].copy()
    x[37] *= 1.5  # not among the 12 picked (i*40//12)
    root = tmp_path_factory.mktemp("calib")
    for i, (a, b) in enumerate([(0, 9), (9, 25), (25, 40)]):
        np.savez(root / f"part{i:02d}.npz", x=x[a:b])
    return root, x


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime (2 CPUs, started as ``--workers 2`` starts it) for the module: a command
    finding Ray running uses it and leaves it running, so the tests pay Ray's start-up once."""
    ray = pytest.importorskip("ray")
    from neurodeploy.distributed import WORKER_ENV

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": WORKER_ENV})
    try:
        yield ray
    finally:
        ray.shutdown()


def _calibrate(data, out, *extra):
    res = CliRunner().invoke(main, ["calibrate", *MODEL, "--target", "loihi", "--calibration", str(data),
                                    "--max-samples", "12", "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    return res


def test_record_on_ray_workers_is_byte_identical(shards, tmp_path, monkeypatch, ray_runtime):
    root, x = shards
    single = _calibrate(root, tmp_path / "single.json")
    # batches of 4 samples (10 tasks, crossing no file): the subsample's rows come from many workers
    monkeypatch.setattr(calibration_sample, "STREAM_VALUES", 4 * x[0].size)
    on_ray = _calibrate(root, tmp_path / "ray.json", "--workers", "2")
    assert (tmp_path / "ray.json").read_bytes() == (tmp_path / "single.json").read_bytes()
    assert on_ray.output == single.output.replace("single.json", "ray.json")
    rec = json.loads((tmp_path / "ray.json").read_text())
    assert rec["data_samples"] == 12 and rec["data_total_samples"] == 40
    stats = rec["input_statistics"]  # of all 40 samples, independently
    assert stats["peak"] == float(np.abs(x).max()) == float(x[37].max()) and stats["samples"] == 40
    assert stats["signed"] is bool((x < 0).any())


def test_image_folder_pass_on_ray_equals_the_single_process_pass(tmp_path, monkeypatch, ray_runtime):
    from PIL import Image

    from neurodeploy.datasets import eval_transform
    from neurodeploy.distributed import Runner
    from neurodeploy.errors import NeurodeployError

    rng = np.random.default_rng(3)
    folder = tmp_path / "imgs"
    for c in ("a", "b"):  # ImageFolder layout: decoded on the workers
        (folder / c).mkdir(parents=True)
        for i in range(7):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / c / f"{i}.png")
    monkeypatch.setattr(calibration_sample, "STREAM_VALUES", 3 * 3 * 16 * 16)  # 3 images per task
    here = sample_calibration(folder, (3, 16, 16), max_samples=5)
    on_ray = sample_calibration(folder, (3, 16, 16), max_samples=5, runner=Runner(workers=2))
    (folder / "b" / "9.png").write_bytes(b"not an image")  # a worker's error reaches the driver as is
    with pytest.raises(NeurodeployError, match=r"cannot decode image .*9\.png"):
        sample_calibration(folder, (3, 16, 16), max_samples=5, runner=Runner(workers=2))
    files = sorted(folder.glob("*/[0-6].png"))

    def decoded(f):
        with Image.open(f) as im:
            return eval_transform(im, 16).astype(np.float64)

    picked = np.stack([decoded(files[i]) for i in (0, 2, 5, 8, 11)])  # sample i*14//5, decoded here
    np.testing.assert_array_equal(on_ray.x, picked)
    assert on_ray.digest == here.digest and on_ray.total == 14
    assert on_ray.statistics == here.statistics
    assert on_ray.statistics.peak == float(np.abs(np.stack([decoded(f) for f in files])).max())
    assert on_ray.statistics.samples == 14


def test_workers_without_ray_exit_2_naming_the_extra(shards, tmp_path, monkeypatch):
    root, _ = shards
    monkeypatch.setitem(sys.modules, "ray", None)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["calibrate", *MODEL, "--target", "loihi", "--calibration", str(root),
                                    "-o", str(out), "--workers", "2"])
    assert res.exit_code == 2 and "neurodeploy[ray]" in res.output and "Traceback" not in res.output
    assert not out.exists()


def test_verify_on_workers_ships_the_arch_files_sibling_module(shards, tmp_path, ray_runtime):
    """digits_chain.py imports its sibling digits_sfa.py, which only the driver can import by name:
    the workers get both by value, and verify --calibration on Ray reports exactly what one process does."""
    root, _ = shards
    args = ["verify", *MODEL, "--target", "loihi", "--data", str(EX / "digits_test.npz"), "--limit", "24",
            "--calibration", str(root), "--json"]
    single = CliRunner().invoke(main, args)
    assert single.exit_code == 0, single.output
    on_ray = CliRunner().invoke(main, [*args, "--workers", "2"])
    assert on_ray.exit_code == 0, on_ray.output
    assert json.loads(on_ray.output) == json.loads(single.output)
