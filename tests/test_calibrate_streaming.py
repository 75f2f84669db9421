"""calibrate at dataset scale: one .npz and the same data as shards, a glob or a memory-mapped .npy
give an identical calibration record; beyond the budget the search runs on a stated, evenly spaced
deterministic subsample."""

import json
from pathlib import Path

import numpy as np
import pytest

from neurodeploy import api
from neurodeploy.calibration_sample import sample_calibration, sample_indices

EX = Path("examples")
MODEL = dict(model=str(EX / "digits_chain.pt"), arch=f"{EX / 'digits_chain.py'}:build_model")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    x = np.load(EX / "digits_calib.npz")["x"][:40]
    root = tmp_path_factory.mktemp("calib")
    np.savez(root / "all.npz", x=x)
    (root / "shards").mkdir()
    for i, (a, b) in enumerate([(0, 9), (9, 25), (25, 40)]):
        np.savez(root / "shards" / f"part{i:02d}.npz", x=x[a:b])
    np.save(root / "all.npy", x)
    return root, x


def _record(data, out, **kw):
    return api.calibrate(MODEL["model"], arch=MODEL["arch"], target="loihi", calibration=str(data), out=out, **kw)


def test_one_npz_and_the_same_data_in_shards_give_an_identical_record(calib, tmp_path):
    root, x = calib
    one = _record(root / "all.npz", tmp_path / "one.json")
    assert one["data_samples"] == 40 and one["data_sampling"] == "all 40 samples"
    for i, data in enumerate([root / "shards", str(root / "shards" / "part*.npz"), root / "all.npy"]):
        rec = _record(data, tmp_path / f"r{i}.json")
        assert json.dumps(rec, sort_keys=True) == json.dumps(one, sort_keys=True)
        assert (tmp_path / f"r{i}.json").read_text() == (tmp_path / "one.json").read_text()


def test_subsample_is_evenly_spaced_stated_and_layout_independent(calib, tmp_path):
    root, x = calib
    idx = sample_indices(40, 12)
    assert idx.tolist() == [i * 40 // 12 for i in range(12)]
    s = sample_calibration(root / "shards", max_samples=12)
    np.testing.assert_array_equal(s.x, x[idx].astype(np.float64))
    assert s.digest == sample_calibration(root / "all.npz", max_samples=12).digest
    assert sample_calibration(root / "shards", max_values=12 * x[0].size).digest == s.digest  # value budget
    rec = _record(root / "shards", tmp_path / "sub.json", max_samples=12)
    assert rec["data_samples"] == 12 and rec["data_total_samples"] == 40
    assert rec["data_sampling"] == "12 evenly spaced of 40 samples (sample i*40//12, i < 12)"
    np.savez(tmp_path / "picked.npz", x=x[idx])
    picked = _record(tmp_path / "picked.npz", tmp_path / "picked.json")
    assert picked["layers"] == rec["layers"]  # the search saw exactly those samples


def test_default_sample_cap_bounds_the_search(calib, monkeypatch):
    from neurodeploy import calibration_sample

    root, _ = calib
    monkeypatch.setattr(calibration_sample, "MAX_SAMPLES", 12)
    assert sample_calibration(root / "shards").digest == sample_calibration(root / "all.npz", max_samples=12).digest


def test_compile_calibrates_on_shards_and_knows_they_are_the_data(calib, tmp_path):
    root, _ = calib
    res = api.compile(MODEL["model"], arch=MODEL["arch"], target="loihi", out_dir=tmp_path / "o",
                      calibration=str(root / "shards"), data=str(root / "all.npz"), profile=False)
    assert res.calibration_effect is not None and "no held-out data" in res.calibration_effect.note
    assert res.manifest["calibration"] == {"path": "shards", "sha256": None, "samples": 40}


def test_cli_calibrate_on_a_shard_folder_states_the_subsample(calib, tmp_path):
    from click.testing import CliRunner

    from neurodeploy.cli import main

    root, _ = calib
    model = [MODEL["model"], "--arch", MODEL["arch"]]
    rec = tmp_path / "rec.json"
    r = CliRunner().invoke(main, ["calibrate", *model, "-t", "loihi", "--calibration", str(root / "shards"),
                                  "--max-samples", "12", "-o", str(rec)])
    assert r.exit_code == 0, r.output
    assert "(12 evenly spaced of 40 samples" in r.output and json.loads(rec.read_text())["data_samples"] == 12
    r = CliRunner().invoke(main, ["calibrate", *model, "-t", "loihi", "--calibration", str(tmp_path / "nope"),
                                  "-o", str(tmp_path / "r2.json")])
    assert r.exit_code == 2 and "does not exist" in r.output and not (tmp_path / "r2.json").exists()
