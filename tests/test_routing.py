"""Routing tables: exact against dense torch convolutions, SSC, on-disk format, lazy sizes, profile."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from neurodeploy import ir, ops
from neurodeploy.errors import NeurodeployError
from neurodeploy.routing import (FORMAT_VERSION, build_routing, load_routing, routing_profile,
                                 save_routing)


def _conv_graph(w, *, H, W, stride=1, padding=0, dilation=1, groups=1, quantized=False):
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(w.shape[1] * groups, H, W), is_spikes=True))
    conv = ir.Conv2d(weight=w.astype(np.float64), stride=stride, padding=padding, dilation=dilation, groups=groups)
    if quantized:
        conv.weight_q = w.astype(np.int64)
        g.metadata["quantization"] = {"test": True}
    g.add("conv", conv, "in")
    g.add("out", ir.Output(), "conv")
    return ir.infer_shapes(g)


def _random_conv(rng):
    while True:
        groups = int(rng.integers(1, 4))
        cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        s = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        p = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        d = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        H, W = int(rng.integers(3, 11)), int(rng.integers(3, 11))
        if H + 2 * p[0] - d[0] * (kh - 1) - 1 >= 0 and W + 2 * p[1] - d[1] * (kw - 1) - 1 >= 0:
            w = rng.integers(-6, 7, (cout, cin // groups, kh, kw))
            return w, dict(H=H, W=W, stride=s, padding=p, dilation=d, groups=groups)


def test_routing_reproduces_dense_conv2d_exactly():
    rng = np.random.default_rng(0)
    for _ in range(60):
        w, kw = _random_conv(rng)
        g = _conv_graph(w, quantized=True, **kw)
        t = build_routing(g).layer("conv")
        x = rng.integers(0, 4, (w.shape[1] * kw["groups"], kw["H"], kw["W"]))
        ref = F.conv2d(torch.tensor(x, dtype=torch.float64)[None], torch.tensor(w, dtype=torch.float64), None,
                       kw["stride"], kw["padding"], kw["dilation"], kw["groups"])[0].numpy()
        np.testing.assert_array_equal(t.scatter(x), ref.astype(np.int64))
        # fan-out per source = gradient of an all-ones conv (borders / padding exact)
        xo = torch.ones((1,) + x.shape, dtype=torch.float64, requires_grad=True)
        y = F.conv2d(xo, torch.ones(w.shape, dtype=torch.float64), None, kw["stride"], kw["padding"],
                     kw["dilation"], kw["groups"])
        (grad,) = torch.autograd.grad(y.sum(), [xo])
        fo = t.fanout().reshape(x.shape)
        np.testing.assert_array_equal(fo, grad[0].numpy())
        assert t.n_synapses == int(t.expand()[0][-1]) == int(fo.sum())


def test_destinations_match_expanded_table_and_weights():
    rng = np.random.default_rng(1)
    w = rng.integers(-5, 6, (6, 2, 3, 3))
    g = _conv_graph(w, H=7, W=9, stride=2, padding=1, dilation=1, groups=2, quantized=True)
    r = build_routing(g)
    t = r.layer(0)
    indptr, dst, widx = t.expand()
    for a in rng.integers(0, t.n_sources, 20):
        c, y, x = a // 63, (a // 9) % 7, a % 9
        d = r.destinations("conv", (c, y, x))
        assert len(d) == indptr[a + 1] - indptr[a]
        co, oy, ox = t.out_address(dst[indptr[a]:indptr[a + 1]])
        np.testing.assert_array_equal(d["c"], co)
        np.testing.assert_array_equal(d["y"], oy)
        np.testing.assert_array_equal(d["x"], ox)
        np.testing.assert_array_equal(d["weight_index"], widx[indptr[a]:indptr[a + 1]])
        np.testing.assert_array_equal(d["weight"], w.reshape(-1)[d["weight_index"]])
        # every destination is a real synapse of the dense conv
        for row in d:
            co_, ci_, ky, kx = np.unravel_index(row["weight_index"], w.shape)
            assert co_ == row["c"] and ci_ == c % 2 and co_ // 3 == c // 2
            assert row["y"] * 2 - 1 + ky == y and row["x"] * 2 - 1 + kx == x
    with pytest.raises(NeurodeployError):
        r.destinations("conv", (4, 0, 0))
    with pytest.raises(NeurodeployError):
        r.layer("nope")
    with pytest.raises(NeurodeployError):
        r.layer(5)


def test_conv1d_linear_sumpool_routing():
    rng = np.random.default_rng(2)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(4, 10, 12), is_spikes=True))
    g.add("pool", ir.SumPool2d(kernel=(3, 2), stride=(2, 2), padding=(1, 1)), "in")
    g.add("rs", ir.Reshape(target_shape=(4, 5 * 7)), "pool")
    w1 = rng.integers(-4, 5, (6, 2, 3)).astype(float)
    g.add("c1", ir.Conv1d(weight=w1, stride=2, padding=2, dilation=2, groups=2), "rs")
    g.add("lin2", ir.Linear(weight=rng.integers(-3, 4, (5, 18)).astype(float)), "c1")  # (6, 18) -> (6, 5)
    g.add("fl", ir.Flatten(), "lin2")
    g.add("lin", ir.Linear(weight=rng.integers(-3, 4, (7, 30)).astype(float)), "fl")
    g.add("out", ir.Output(), "lin")
    ir.infer_shapes(g)
    r = build_routing(g)
    assert [t.name for t in r] == ["pool", "c1", "lin2", "lin"]
    x = torch.tensor(rng.integers(0, 3, (1, 4, 10, 12)), dtype=torch.float64)
    vals = ops.evaluate(g, x)
    for t in r:
        inp = vals[g.inputs_of(t.name)[0]][0].numpy()
        np.testing.assert_allclose(t.scatter(inp), vals[t.name][0].numpy(), rtol=0, atol=1e-9)
    assert r.layer("lin2").fanout().tolist() == [5] * 108
    assert r.destinations("lin", 7)["weight_index"].tolist() == [m * 30 + 7 for m in range(7)]


def _ssc_mask_out(mask, k, d, s, p):
    """Reference: SparK output mask = active centre input, via explicit indices."""
    H, W = mask.shape
    Ho = (H + 2 * p - d * (k - 1) - 1) // s + 1
    Wo = (W + 2 * p - d * (k - 1) - 1) // s + 1
    out = np.zeros((Ho, Wo), bool)
    for oy in range(Ho):
        for ox in range(Wo):
            cy, cx = oy * s - p + d * (k - 1) // 2, ox * s - p + d * (k - 1) // 2
            out[oy, ox] = 0 <= cy < H and 0 <= cx < W and mask[cy, cx]
    return out


@pytest.mark.parametrize("k,d,s,groups", [(3, 1, 1, 1), (5, 1, 1, 2), (3, 2, 1, 1), (3, 1, 2, 1)])
def test_sparse_conv_equals_masked_dense_conv(k, d, s, groups):
    rng = np.random.default_rng(3 + k + d)
    H, W = 9, 11
    p = d * (k - 1) // 2  # "same" padding: output position = centre input position (stride 1)
    w = rng.integers(-5, 6, (4, 4 // groups, k, k))
    g = _conv_graph(w, H=H, W=W, stride=s, padding=p, dilation=d, groups=groups, quantized=True)
    mask = rng.random((H, W)) < 0.4
    x = rng.integers(0, 3, (4, H, W)) * mask  # SparK: inactive inputs are zero
    t = build_routing(g, sparse_conv_masks={"conv": mask}).layer(0)
    dense = F.conv2d(torch.tensor(x, dtype=torch.float64)[None], torch.tensor(w, dtype=torch.float64), None,
                     s, p, d, groups)[0].numpy()
    m_out = _ssc_mask_out(mask, k, d, s, p)
    if s == 1:
        np.testing.assert_array_equal(m_out, mask)
    np.testing.assert_array_equal(t.scatter(x), (dense * m_out).astype(np.int64))
    assert t.n_synapses == int(t.expand()[0][-1]) == int(t.fanout().sum())
    np.testing.assert_array_equal(np.diff(t.expand()[0]), t.fanout())
    assert t.n_synapses < build_routing(g).layer(0).n_synapses
    # by index too, and a bad mask is refused
    t2 = build_routing(g, sparse_conv_masks={0: mask}).layer(0)
    np.testing.assert_array_equal(t2.mask, t.mask)
    with pytest.raises(NeurodeployError):
        build_routing(g, sparse_conv_masks={"conv": mask[:-1]})


def test_save_load_roundtrip_deterministic(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.integers(-5, 6, (4, 2, 3, 3))
    kw = dict(H=7, W=6, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    g = _conv_graph(w, quantized=True, **kw)
    mask = np.ones((kw["H"], kw["W"]), bool)
    r = build_routing(g)
    s1 = save_routing(r, tmp_path / "a" / "routing.npz")
    save_routing(build_routing(g), tmp_path / "b" / "routing.npz")
    b1 = (tmp_path / "a" / "routing.npz").read_bytes()
    assert b1 == (tmp_path / "b" / "routing.npz").read_bytes()
    assert s1["format_version"] == FORMAT_VERSION
    schema = json.loads((tmp_path / "a" / "routing.json").read_text())
    assert schema == json.loads(zipfile.ZipFile(tmp_path / "a" / "routing.npz").read("schema.json"))
    infos = zipfile.ZipFile(tmp_path / "a" / "routing.npz").infolist()
    assert all(zi.date_time == (1980, 1, 1, 0, 0, 0) for zi in infos)
    r2 = load_routing(tmp_path / "a")
    t, t2 = r.layer(0), r2.layer("conv")
    assert t2.weight.dtype == np.int64
    for a in range(t.n_sources):
        np.testing.assert_array_equal(t.destinations(a), t2.destinations(a))
    for x1, x2 in zip(t.expand(), t2.expand()):
        np.testing.assert_array_equal(x1, x2)
    assert r.summary() == r2.summary()
    # with SSC mask and no expanded tables
    rs = build_routing(g, sparse_conv_masks={"conv": mask}, max_bytes=0)
    sch = save_routing(rs, tmp_path / "c.npz")
    assert not sch["layers"][0]["expanded"] and sch["layers"][0]["sparse_conv"]
    assert "L0.dst.npy" not in zipfile.ZipFile(tmp_path / "c.npz").namelist()
    r3 = load_routing(tmp_path / "c.npz")
    np.testing.assert_array_equal(r3.layer(0).expand()[1], rs.layer(0).expand()[1])
    # a file from another format version is refused
    bad = dict(sch, format_version=FORMAT_VERSION + 1)
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        zf.writestr("schema.json", json.dumps(bad))
    with pytest.raises(NeurodeployError, match="format_version"):
        load_routing(tmp_path / "bad.npz")
    with pytest.raises(NeurodeployError):
        load_routing(tmp_path / "missing.npz")


def test_large_layer_is_lazy(tmp_path):
    """A layer whose expanded table would take gigabytes: size reported, compact form written."""
    w = np.ones((256, 256, 3, 3))
    g = _conv_graph(w, H=128, W=128, padding=1)
    r = build_routing(g)
    t = r.layer(0)
    assert t._expanded is None
    assert t.n_synapses == 256 * 256 * 9 * 128 * 128 - 256 * 256 * (4 * 3 * 128 - 4)  # borders exact
    assert t.nbytes > 30e9
    row = r.summary()[0]
    assert row["table_bytes"] == t.nbytes and not row["expanded_written"]
    assert row["max_fanout"] == 256 * 9 and row["sources"] == 256 * 128 * 128
    sch = save_routing(r, tmp_path / "big.npz")
    assert not sch["layers"][0]["expanded"]
    assert (tmp_path / "big.npz").stat().st_size < 5e6
    assert t._expanded is None
    assert len(load_routing(tmp_path / "big.npz").destinations(0, (3, 0, 5))) == 256 * 6
    assert "compact" in r.summary_text()


def test_routing_profile_matches_conv_count():
    """SynOps from the tables = Σ value × exact fan-out (a dense conv with all-ones weights)."""
    rng = np.random.default_rng(5)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(4, 9, 9), is_spikes=True))
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(6, 2, 3, 3)), stride=2, padding=1, groups=2), "in")
    g.add("n1", ir.IFNeuron(), "c1")
    g.add("pool", ir.SumPool2d(kernel=2), "n1")
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(3, 6, 3, 3)), padding=2, dilation=2), "pool")
    g.add("n2", ir.IFNeuron(), "c2")
    g.add("fl", ir.Flatten(), "n2")
    g.add("fc", ir.Linear(weight=rng.normal(size=(5, 12))), "fl")
    g.add("o", ir.Output(), "fc")
    ir.infer_shapes(g)
    counts = {"in": rng.integers(0, 5, (4, 9, 9)), "n1": rng.integers(0, 5, (6, 5, 5)),
              "n2": rng.integers(0, 5, (3, 2, 2))}
    prof = routing_profile(build_routing(g), counts)

    def conv_ones(x, node, s, p, d, groups):
        w = torch.ones(node.weight.shape, dtype=torch.float64)
        return float(F.conv2d(torch.tensor(x, dtype=torch.float64)[None], w, None, s, p, d, groups).sum())

    assert prof["c1"]["synops"] == conv_ones(counts["in"], g.nodes["c1"], 2, 1, 1, 2)
    pooled = F.avg_pool2d(torch.tensor(counts["n1"], dtype=torch.float64)[None], 2).numpy()[0] * 4
    assert prof["c2"]["synops"] == conv_ones(pooled, g.nodes["c2"], 1, 2, 2, 1)
    assert prof["pool"]["synops"] == counts["n1"][:, :4, :4].sum()  # row/col 4 fall off the pool
    assert prof["fc"]["synops"] == counts["n2"].sum() * 5
    assert prof["fc"]["max_fanout"] == 5 and prof["fc"]["events"] == counts["n2"].sum()
    assert prof["c1"]["mean_fanout"] == pytest.approx(prof["c1"]["synops"] / counts["in"].sum())
    # batched counts are summed over the batch
    batched = {k: np.stack([v, v]) for k, v in counts.items()}
    assert routing_profile(build_routing(g), batched)["c2"]["synops"] == 2 * prof["c2"]["synops"]
    # a real-valued input layer is MAC work
    g.nodes["in"].is_spikes = False
    p2 = routing_profile(build_routing(g), counts)
    assert p2["c1"]["synops"] == 0 and p2["c1"]["macs"] == build_routing(g).layer("c1").n_synapses


def test_routing_profile_agrees_with_profile_module():
    prof_mod = pytest.importorskip("neurodeploy.profile")
    rng = np.random.default_rng(6)
    g = ir.Graph()
    g.add("in", ir.Input(input_shape=(2, 8, 8), is_spikes=True))
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), stride=2, padding=1), "in")
    g.add("n1", ir.IFNeuron(max_spikes=4), "c1")
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(4, 1, 3, 3)), padding=1, groups=4), "n1")
    g.add("n2", ir.IFNeuron(max_spikes=4), "c2")
    g.add("add", ir.Add(), ["n2", "n1"])
    g.add("pool", ir.SumPool2d(kernel=2), "add")
    g.add("fl", ir.Flatten(), "pool")
    g.add("fc", ir.Linear(weight=rng.normal(size=(3, 16))), "fl")
    g.add("n3", ir.IFNeuron(max_spikes=4), "fc")
    g.add("o", ir.Output(), "n3")
    ir.infer_shapes(g)
    x = torch.tensor(rng.integers(0, 3, (3, 2, 8, 8)), dtype=torch.float64)
    vals = ops.evaluate(g, x)
    rep = prof_mod.profile(g, vals)
    mine = routing_profile(build_routing(g), {k: vals[k].numpy() for k in ("in", "n1", "n2", "n3")})
    for name in ("c1", "c2", "fc"):
        assert mine[name]["synops"] / 3 == pytest.approx(rep.row(name).synops)
