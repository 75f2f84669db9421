"""Data larger than memory: shards, memory-mapped .npy, image folders, batch-wise checks, and
verify / profile reports that equal the in-memory run's however the data is split."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from demo_helpers import write_digits_data
from neurodeploy import api
from neurodeploy.datasets import IMAGENET_MEAN, IMAGENET_STD, eval_transform, open_source
from neurodeploy.distributed import Runner
from neurodeploy.errors import NeurodeployError

MODEL = "examples/digits_sfa.pt"
ARCH = "examples/digits_sfa.py:build_model"
N = 24


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    x, y = write_digits_data(root, N, [(0, 7), (7, 15), (15, N)])  # uneven shards
    return root, x, y


def _reports(data, **kw):
    """verify's table and JSON, profile's JSON; the calibration note's file name is left out."""
    v = api.verify(MODEL, arch=ARCH, data=data, **kw)
    p = api.profile(MODEL, arch=ARCH, data=data, **kw)
    note = v.precision.calibration
    assert note.startswith("--data ")
    text = v.format_table() + json.dumps(v.to_dict(), sort_keys=True)
    return text.replace(note.split(" (")[0], "--data DATA"), p.format("json")


@pytest.fixture(scope="module")
def in_memory(digits):
    root, _, _ = digits
    return _reports(str(root / "all.npz"), batch_size=N)


def test_shards_glob_and_batches_give_the_in_memory_report(digits, in_memory):
    root, _, _ = digits
    assert "streaming" in in_memory[0] and f"{N} samples" in in_memory[0]
    assert _reports(str(root / "shards"), batch_size=5) == in_memory


def _profile(data, **kw):
    return api.profile(MODEL, arch=ARCH, data=data, **kw).format("json")


def test_glob_and_memory_mapped_npy_profile_as_in_memory(digits, in_memory):
    root, _, _ = digits
    assert _profile(str(root / "shards" / "part*.npz")) == in_memory[1]
    assert _profile(str(root / "all.npy"), batch_size=10) == in_memory[1]


def test_shards_of_a_source_and_limit(digits):
    root, _, _ = digits
    src = open_source(root / "shards")
    assert src.n_samples == N
    shards = src.shards(5, limit=20)
    assert [(s.start, s.stop, s.offset) for s in shards] == [(0, 5, 0), (5, 7, 5), (0, 5, 7), (5, 8, 12),
                                                            (0, 5, 15)]
    assert sum(len(s) for s in shards) == 20


def test_a_bad_sample_in_a_later_shard_names_file_and_index(digits, tmp_path):
    root, x, _ = digits
    bad = x[:10].copy()
    bad[8, 0, 3, 3] = np.nan
    np.savez(tmp_path / "a.npz", x=x[:10])
    np.savez(tmp_path / "b.npz", x=bad)
    src = open_source(tmp_path)
    with pytest.raises(NeurodeployError, match=r"b\.npz, array 'x': sample 8 has 1 NaN"):
        list(src.batches(4))
    np.savez(tmp_path / "b.npz", x=x[:10, :, :4])
    with pytest.raises(NeurodeployError, match=r"b\.npz.*per-sample shape \(1, 4, 8\)"):
        list(open_source(tmp_path).batches(4, input_shape=(1, 8, 8)))


def test_missing_data_and_empty_glob(tmp_path):
    with pytest.raises(NeurodeployError, match="does not exist"):
        open_source(tmp_path / "nope.npz")
    with pytest.raises(NeurodeployError, match="matches no .npz"):
        open_source(str(tmp_path / "x*.npz"))
    with pytest.raises(NeurodeployError, match="no .npz shards and no images"):
        open_source(tmp_path)


def test_eval_transform_crop_and_normalise_by_hand():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)  # H=8, W=6: shorter side 6 = resize
    out = eval_transform(Image.fromarray(pixels), size=4, resize=6)
    # centre crop of 4x4 from 8x6: top = round(4/2) = 2, left = round(2/2) = 1
    crop = pixels[2:6, 1:5].astype(np.float64) / 255.0
    want = (crop - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert out.shape == (3, 4, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, want.transpose(2, 0, 1), rtol=1e-6, atol=1e-6)


def test_eval_transform_resizes_the_shorter_side():
    grey = Image.new("RGB", (300, 200), (128, 64, 32))  # W=300, H=200 -> 384x256 -> crop 224
    out = eval_transform(grey)
    assert out.shape == (3, 224, 224)
    want = (np.array([128, 64, 32]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out[:, 100, 100], want, rtol=1e-5)  # a flat image stays flat
    gray_l = eval_transform(Image.new("L", (10, 12), 200), size=8, resize=8)  # greyscale -> RGB
    assert gray_l.shape == (3, 8, 8)


def test_image_folder_with_classes(tmp_path):
    rng = np.random.default_rng(1)
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    src = open_source(tmp_path, image_size=8)
    assert src.n_samples == 6
    batches = list(src.batches(4))
    assert [len(b.x) for _, b in batches] == [4, 2]
    assert list(np.concatenate([b.y for _, b in batches])) == [0, 0, 0, 1, 1, 1]
    first = eval_transform(Image.open(tmp_path / "cat" / "0.png"), size=8)
    np.testing.assert_array_equal(batches[0][1].x[0], first.astype(np.float64))
    (tmp_path / "cat" / "3.png").write_bytes(b"broken")
    with pytest.raises(NeurodeployError, match=r"cannot decode image .*3\.png"):
        list(open_source(tmp_path, image_size=8).batches(4))


def test_resume_skips_shards_already_done(digits, tmp_path, monkeypatch):
    import neurodeploy.streaming as streaming

    root, _, _ = digits
    runner = Runner(cache_dir=tmp_path / "out")
    first = api.profile(MODEL, arch=ARCH, data=str(root / "shards"), batch_size=10, runner=runner)
    assert len(list((tmp_path / "out" / "shards").glob("*.json"))) == 3
    monkeypatch.setattr(streaming, "_profile_task", lambda *a: pytest.fail("a cached shard was recomputed"))
    again = api.profile(MODEL, arch=ARCH, data=str(root / "shards"), batch_size=10,
                        runner=Runner(cache_dir=tmp_path / "out", resume=True))
    assert again.format("json") == first.format("json")


@pytest.mark.parametrize("kind", ["npz", "npy"])
def test_resume_recomputes_a_shard_whose_bytes_changed_under_the_same_name_size_and_mtime(
        digits, tmp_path, kind):
    """The cache key is the bytes a shard reads, not the file's name, size or timestamp."""
    import os

    _, x, y = digits
    data = tmp_path / ("shards" if kind == "npz" else "x.npy")
    if kind == "npz":
        data.mkdir()
        for i, (a, b) in enumerate([(0, 12), (12, N)]):
            np.savez(data / f"part{i}.npz", x=x[a:b], y=y[a:b])
        changed = data / "part1.npz"
    else:
        np.save(data, x)
        changed = data
    out = tmp_path / "out"
    first = api.profile(MODEL, arch=ARCH, data=str(data), batch_size=12, runner=Runner(cache_dir=out))
    st = os.stat(changed)
    other = x.copy()
    other[12:] = x[:12]  # the second batch now holds the first batch's images: another report
    if kind == "npz":
        np.savez(changed, x=other[12:], y=y[12:])
    else:
        np.save(changed, other)
    assert os.stat(changed).st_size == st.st_size
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns))
    resumed = api.profile(MODEL, arch=ARCH, data=str(data), batch_size=12,
                          runner=Runner(cache_dir=out, resume=True))
    fresh = api.profile(MODEL, arch=ARCH, data=str(data), batch_size=12)
    assert fresh.format("json") != first.format("json")
    assert resumed.format("json") == fresh.format("json")
    assert len(list((out / "shards").glob("*.json"))) == 3  # the unchanged batch was reused


def test_shard_hash_follows_the_bytes_not_the_name(digits, tmp_path, monkeypatch):
    import shutil

    import neurodeploy.streaming as streaming

    root, _, _ = digits
    a = open_source(str(root / "shards")).shards(5)
    shutil.copytree(root / "shards", tmp_path / "copy")
    b = open_source(str(tmp_path / "copy")).shards(5)
    assert [s.content_hash() for s in a] == [s.content_hash() for s in b]
    assert len({s.content_hash() for s in a}) == len(a)
    out = tmp_path / "out"
    first = api.profile(MODEL, arch=ARCH, data=str(root / "shards"), batch_size=5, runner=Runner(cache_dir=out))
    monkeypatch.setattr(streaming, "_profile_task", lambda *a: pytest.fail("a moved shard was recomputed"))
    moved = api.profile(MODEL, arch=ARCH, data=str(tmp_path / "copy"), batch_size=5,
                        runner=Runner(cache_dir=out, resume=True))
    assert moved.format("json") == first.format("json")


def test_workers_without_ray_name_the_extra(monkeypatch):
    from neurodeploy.distributed import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(NeurodeployError, match=r"neurodeploy\[ray\]"):
        import_ray()


def test_cli_profile_streams_a_shard_folder(digits):
    from click.testing import CliRunner

    from neurodeploy.cli import main

    root, _, _ = digits
    args = ["profile", MODEL, "--arch", ARCH, "--format", "json"]
    one = CliRunner().invoke(main, args + ["--data", str(root / "all.npz")])
    shards = CliRunner().invoke(main, args + ["--data", str(root / "shards"), "--batch-size", "8"])
    assert one.exit_code == 0 and shards.exit_code == 0, shards.output
    assert json.loads(one.stdout) == json.loads(shards.stdout)


def test_batches_of_one_npz_read_the_file_once(digits, monkeypatch):
    import neurodeploy.datasets as datasets

    root, x, _ = digits
    reads = []
    real = datasets._npz_arrays
    monkeypatch.setattr(datasets, "_npz_arrays", lambda p: reads.append(p) or real(p))
    datasets._LAST_NPZ.clear()
    src = open_source(root / "all.npz")  # the length comes from the header of 'x'
    got = np.concatenate([b.x for _, b in src.batches(5)])
    np.testing.assert_array_equal(got, x.astype(np.float64))
    assert len(reads) == 1


def test_speck_ladder_over_several_files_is_refused_with_the_fix():
    from neurodeploy.report_merge import merge_verify
    from neurodeploy.verify import ExtraCheck, VerifyReport

    a, b = VerifyReport(), VerifyReport()
    a.checks = [ExtraCheck("speck_ladder", True, "")]
    b.checks = [ExtraCheck("speck_ladder", True, "")]
    with pytest.raises(NeurodeployError, match="one .npz file"):
        merge_verify(a, b)


def test_cli_workers_without_ray_exit_2_naming_the_extra(digits, monkeypatch):
    from click.testing import CliRunner

    from neurodeploy.cli import main

    root, _, _ = digits
    monkeypatch.setitem(sys.modules, "ray", None)
    res = CliRunner().invoke(main, ["verify", MODEL, "--arch", ARCH, "--data", str(root / "all.npz"), "--workers", "2"])
    assert res.exit_code == 2
    assert "neurodeploy[ray]" in res.output and "Traceback" not in res.output


def test_image_folder_profile_equals_the_transformed_arrays(tmp_path):
    import torch

    from benchmarks.nets import LargeConvNet

    rng = np.random.default_rng(3)
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.jpg")
    model = tmp_path / "net.pt"
    torch.save(LargeConvNet(width=4).state_dict(), model)
    opts = dict(arch="benchmarks/nets.py:LargeConvNet", arch_kwargs={"width": 4}, input_shape=(3, 64, 64))
    x = np.stack([eval_transform(Image.open(tmp_path / "imgs" / f"{i}.jpg"), 64) for i in range(3)])
    np.savez(tmp_path / "x.npz", x=x)
    folder = api.profile(str(model), data=str(tmp_path / "imgs"), batch_size=2, **opts)
    arrays = api.profile(str(model), data=str(tmp_path / "x.npz"), **opts)
    assert folder.n_samples == 3 and folder.format("json") == arrays.format("json")


def test_shard_cache_key_same_for_traced_and_trace_cached_model(tmp_path, monkeypatch):
    from neurodeploy.streaming import program_key
    from neurodeploy.targets import get_target

    monkeypatch.setenv("NEURODEPLOY_CACHE_DIR", str(tmp_path / "trace"))
    keys = []
    for _ in range(2):  # cold (traced, then cached), warm (from the trace cache)
        q = get_target("sim").quantize(api.prepare(MODEL, arch=ARCH).canonical)
        keys.append(program_key("verify", q.nodes, q.metadata))
    assert any((tmp_path / "trace").rglob("*.npz"))  # the second one came from the cache
    assert keys[0] == keys[1]
