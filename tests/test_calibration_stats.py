"""Input statistics at dataset scale (issue 12): computed batch by batch over every sample of a
calibration source and merged exactly, so the quantisers' input range covers a peak the search's
subsample does not hold. Expected values are computed here from the concatenated array (numpy and
a brute-force dyadic loop), independently of neurodeploy's merge."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from neurodeploy import api, calibration_sample
from neurodeploy.calibration import InputStatistics, dyadic_bits, input_peak, is_signed, with_statistics
from neurodeploy.calibration_sample import sample_calibration, sample_indices
from neurodeploy.targets import get_target

EX = Path(__file__).resolve().parents[1] / "examples"
MODEL = dict(model=str(EX / "digits_chain.pt"), arch=f"{EX / 'digits_chain.py'}:build_model")
LAYOUTS = {"one file": [(0, 40)], "three shards": [(0, 9), (9, 25), (25, 40)],
           "one sample per shard": [(i, i + 1) for i in range(40)]}


def expected(x: np.ndarray) -> dict:
    """The statistics of the whole array, computed directly."""
    flat = x.astype(np.float64).reshape(-1)
    k = next((k for k in range(17) if np.all(np.ldexp(flat, k) == np.rint(np.ldexp(flat, k)))), None)
    return {"peak": float(np.abs(flat).max()), "min": float(flat.min()), "max": float(flat.max()),
            "signed": bool(flat.min() < 0), "dyadic_bits": k, "samples": len(x)}


def write_layout(root: Path, x: np.ndarray, layout) -> Path:
    root.mkdir()
    for i, (a, b) in enumerate(layout):
        np.savez(root / f"part{i:02d}.npz", x=x[a:b])
    return root


def mixed_data(seed: int) -> np.ndarray:
    """Shards that differ in their statistics: x/16 pixels, one x/256 sample, one negative sample."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 17, (40, 1, 8, 8)) / 16.0
    x[int(rng.integers(0, 40))] = rng.integers(0, 257, (1, 8, 8)) / 256.0
    x[int(rng.integers(0, 40)), 0, 3, 3] = -0.75
    return x.astype(np.float32)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_merged_statistics_equal_those_of_the_concatenated_data(tmp_path, monkeypatch, layout):
    x = mixed_data(seed=len(layout))
    monkeypatch.setattr(calibration_sample, "STREAM_VALUES", 7 * 64)  # several batches inside one file too
    sources = [write_layout(tmp_path / "shards", x, LAYOUTS[layout]), tmp_path / "all.npy"]
    np.save(sources[1], x)
    batches = [sum(-(-(b - a) // 7) for a, b in LAYOUTS[layout]), -(-40 // 7)]
    for src, n_batches in zip(sources, batches):
        stats = sample_calibration(src, max_samples=12).statistics
        assert stats.record_fields() == expected(x) and stats.shards == n_batches
    not_dyadic = x.copy()
    not_dyadic[-1, 0, 0, 0] = 1 / 3
    np.save(tmp_path / "odd.npy", not_dyadic)
    assert sample_calibration(tmp_path / "odd.npy", max_samples=12).statistics.dyadic_bits is None


def test_merge_of_any_split_is_the_statistics_of_the_whole():
    rng = np.random.default_rng(3)
    parts = [rng.integers(-3, 4, (5, 4)) / 2.0 ** rng.integers(0, 6), np.zeros((2, 4)), -np.zeros((1, 4)),
             rng.integers(0, 9, (3, 4)) * 1.0, rng.normal(size=(2, 4))]
    for n in range(1, len(parts) + 1):
        merged = InputStatistics.of(parts[0])
        for p in parts[1:n]:
            merged = merged.merge(InputStatistics.of(p))
        whole = np.concatenate(parts[:n])
        assert merged.record_fields() == expected(whole) and merged.shards == n
        assert (input_peak(merged), is_signed(merged), dyadic_bits(merged)) == \
            (input_peak(whole), is_signed(whole), dyadic_bits(whole))


@pytest.fixture(scope="module")
def canonical():
    return api.prepare(MODEL["model"], arch=MODEL["arch"]).canonical


@pytest.fixture(scope="module")
def peak_outside(tmp_path_factory):
    """digits calibration data in shards, one sample the 12-sample subsample skips at twice the peak."""
    x = np.load(EX / "digits_calib.npz")["x"][:40].astype(np.float64)
    skipped = 1
    assert skipped not in sample_indices(40, 12)
    x[skipped] *= 2.0
    root = write_layout(tmp_path_factory.mktemp("peak") / "shards", x, LAYOUTS["three shards"])
    return root, x


def test_the_input_range_covers_a_peak_outside_the_subsample(peak_outside, canonical):
    root, x = peak_outside
    sample = sample_calibration(root, max_samples=12)
    full_peak, sub_peak = float(np.abs(x).max()), float(np.abs(x[sample_indices(40, 12)]).max())
    assert sub_peak < full_peak == sample.statistics.peak == 2.0
    loihi = get_target("loihi")
    before = loihi.quantize(canonical, calibration=np.asarray(sample.x)).metadata["quantization"]["input"]
    after = loihi.quantize(canonical, calibration=sample.x).metadata["quantization"]["input"]
    assert before["range"] == sub_peak and after["range"] == full_peak
    # the peak sample's quantised input: clipped with the subsample's scale, exact with the full data's
    assert np.rint(full_peak * after["scale_q"]) <= after["max_int"] < np.rint(full_peak * before["scale_q"])
    sim = get_target("sim").quantize(canonical, calibration=sample.x).metadata["quantization"]
    assert sim["input_range"] == 2 * full_peak  # the sim target's headroom: twice the peak


def test_cli_calibrate_on_shards_records_the_statistics_and_the_record_reproduces_the_graph(
        peak_outside, tmp_path, monkeypatch):
    from neurodeploy.cli import main

    root, x = peak_outside
    model = [MODEL["model"], "--arch", MODEL["arch"]]
    rec_path = tmp_path / "rec.json"
    r = CliRunner().invoke(main, ["calibrate", *model, "-t", "loihi", "--calibration", str(root),
                                  "--max-samples", "12", "-o", str(rec_path)])
    assert r.exit_code == 0, r.output
    rec = json.loads(rec_path.read_text())
    assert rec["format"] == "neurodeploy-calibration/1" and rec["data_samples"] == 12
    assert rec["input_statistics"] == expected(x) and rec["input"]["range"] == 2.0
    monkeypatch.setattr(calibration_sample, "MAX_SAMPLES", 12)  # compile --calibration: the same subsample
    direct = api.compile(MODEL["model"], arch=MODEL["arch"], target="loihi", out_dir=tmp_path / "direct",
                         calibration=str(root), profile=False)
    assert "input range and sign from all 40" in direct.calibration_note
    again = api.compile(MODEL["model"], arch=MODEL["arch"], target="loihi", out_dir=tmp_path / "again",
                        calibration_record=str(rec_path), profile=False)
    a, b = direct.quantized, again.quantized
    assert a.metadata["quantization"]["input"]["range"] == 2.0  # the compiled input covers the peak
    assert a.metadata["quantization"]["input"] == b.metadata["quantization"]["input"]
    for name, node in a.nodes.items():
        for attr in ("weight_q", "bias_q", "threshold_q", "v_init_q", "scale_q"):
            if getattr(node, attr, None) is not None:
                assert np.array_equal(np.asarray(getattr(node, attr)), np.asarray(getattr(b.nodes[name], attr))), \
                    (name, attr)


def test_data_that_fit_in_memory_quantise_exactly_as_the_plain_array(tmp_path, canonical):
    x = np.load(EX / "digits_calib.npz")["x"][:16]
    np.savez(tmp_path / "small.npz", x=x)
    sample = sample_calibration(tmp_path / "small.npz")
    assert len(sample.x) == sample.total == len(x) and sample.statistics.record_fields() == expected(x)
    for target in ("sim", "loihi", "speck"):
        with_stats = get_target(target).quantize(canonical, calibration=sample.x)
        plain = get_target(target).quantize(canonical, calibration=x.astype(np.float64))
        assert json.dumps(with_stats.metadata["quantization"], sort_keys=True, default=str) == \
            json.dumps(plain.metadata["quantization"], sort_keys=True, default=str), target
    assert with_statistics(x, None)[:3].statistics is None  # a slice is described by its own values


def test_speck_rules_see_a_negative_input_outside_the_subsample(tmp_path):
    from neurodeploy.errors import DesignRuleError

    x = np.load(EX / "digits_calib.npz")["x"][:40].astype(np.float64)
    x[1, 0, 4, 4] = -0.5  # sample 1 is not in the 12-sample subsample
    root = write_layout(tmp_path / "shards", x, LAYOUTS["three shards"])
    with pytest.raises(DesignRuleError, match=r"negative values \(min -0.5\)"):
        api.calibrate(MODEL["model"], arch=MODEL["arch"], target="speck", calibration=str(root),
                      out=tmp_path / "rec.json", max_samples=12)
    assert not (tmp_path / "rec.json").exists()
