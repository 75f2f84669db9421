"""The fast sync path's speed-ups stay exact: per-channel margins (rows kernel), work split over
threads, reused work buffers, the optional channels-last layout, unsigned-offset gathers, the
one-pass input range check. Every result is compared with the time-stepped path
(``fast_sync=False``) and :func:`neurodeploy.ops.evaluate`, computed independently."""

import threading

import numpy as np
import pytest
import torch

from neurodeploy import ir, ops
from neurodeploy.errors import NeurodeployError
from neurodeploy.passes import canonicalize, quantize_fixed_point
from neurodeploy.simulator import core, kernels, simulate


def _conv_net(seed: int = 0) -> ir.Graph:
    """3x12x12 -> conv (S=144: 128-blocks span two channels) -> conv -> strided conv (S=36) ->
    linear, IF after each; half-even and half-up, several D."""
    rng = np.random.default_rng(seed)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(3, 12, 12)))
    g.add("c1", ir.Conv2d(weight=rng.normal(size=(8, 3, 3, 3)) * 0.6, bias=rng.normal(size=8) * 0.3, padding=1), "x")
    g.add("n1", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4, rounding="half_even"), "c1")
    g.add("c2", ir.Conv2d(weight=rng.normal(size=(8, 8, 3, 3)) * 0.25, bias=rng.normal(size=8) * 0.3, padding=1), "n1")
    g.add("n2", ir.IFNeuron(threshold=0.5, v_init=0.25, max_spikes=3), "c2")
    g.add("c3", ir.Conv2d(weight=rng.normal(size=(6, 8, 3, 3)) * 0.3, bias=None, stride=2, padding=1), "n2")
    g.add("n3", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=8, rounding="half_even"), "c3")
    g.add("f", ir.Flatten(), "n3")
    g.add("fc", ir.Linear(weight=rng.normal(size=(5, 216)) * 0.1, bias=rng.normal(size=5)), "f")
    g.add("n4", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4), "fc")
    g.add("out", ir.Output(), "n4")
    return ir.infer_shapes(g)


def _program(seed: int = 0, n: int = 40):
    g = _conv_net(seed)
    x = np.round(np.random.default_rng(seed + 7).normal(size=(n, 3, 12, 12)) * 48) / 16  # dyadic: fast input layer
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    return q, x


def _assert_exact(r, q, x):
    ref = ops.evaluate(q, x)
    stepped = simulate(q, x, fast_sync=False)
    for n in q.neurons():
        np.testing.assert_array_equal(r.counts[n], ref[n].numpy().astype(np.int64), err_msg=n)
        np.testing.assert_array_equal(r.counts[n], stepped.counts[n], err_msg=n)
        assert r.counts[n].dtype == np.int64 and r.counts[n].flags.c_contiguous
    assert r.near_ties == stepped.near_ties


def test_program_uses_the_fast_path():
    q, _ = _program()
    assert set(core._Exec(q, True, fast=True).fast) == {"c1", "c2", "c3", "fc"}


@pytest.mark.parametrize("refine_all", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_sync_exact_in_both_layouts(monkeypatch, refine_all, channels_last):
    # channels-last: the input quantised straight to NHWC, convolutions NHWC, exact gathers read
    # the NHWC input in place; refine_all sends every neuron through the exact gathers
    q, x = _program(1)
    monkeypatch.setattr(core, "_CHANNELS_LAST", channels_last)
    monkeypatch.setattr(core, "_REFINE_ALL", refine_all)
    r = simulate(q, x)
    monkeypatch.setattr(core, "_REFINE_ALL", False)
    ex = core._get_exec(q, True, True)
    assert bool(ex.channels_last) == channels_last
    _assert_exact(r, q, x)


def test_work_split_over_threads(monkeypatch):
    # tiny parallel threshold: the closed form, the gathers and the refinement run in parts on two
    # threads; flagged indices from the parts are packed in order
    q, x = _program(2, n=64)
    prev = torch.get_num_threads()
    monkeypatch.setattr(core, "_PARALLEL_MIN", 256)
    try:
        torch.set_num_threads(2)
        assert core._threads(10_000) == 2
        a = simulate(q, x)
        monkeypatch.setattr(core, "_REFINE_ALL", True)
        b = simulate(q, x)
    finally:
        torch.set_num_threads(prev)
    monkeypatch.setattr(core, "_REFINE_ALL", False)
    _assert_exact(a, q, x)
    _assert_exact(b, q, x)


def test_split_ranges():
    assert core._split(1000, 3, 128) == [(0, 384), (384, 768), (768, 1000)]
    assert core._split(5, 4) == [(0, 2), (2, 4), (4, 5)]
    assert core._split(0, 2) == []


def _rows_case(seed):
    """A layer viewed as [B*C, S] = [20, 100] (128-blocks span rows of two channels) with per-channel
    margins and one channel with a finite upper bound."""
    rng = np.random.default_rng(seed)
    C, S, B, D = 5, 100, 4, 4
    n = B * C * S
    y = (rng.random(n) * 6 - 1).astype(np.float32)
    m = np.array([0.0, 0.01, 0.05, 0.002, 0.2], dtype=np.float32)
    lo = np.array([np.inf, np.inf, 3.5, np.inf, np.inf], dtype=np.float32)
    inv, a = np.float32(1.0), np.float32(0.25)
    return C, S, B, D, n, y, m, lo, inv, a


def test_rows_kernel_per_channel_margins_and_parts():
    # y viewed as [B*C, S] with S = 100: 128-blocks span rows of two channels and use the wider
    # margin; a part starting at `base` gives the same counts and layer-wide flagged indices
    C, S, B, D, n, y, m, lo, inv, a = _rows_case(3)
    counts, flagged, c8 = np.empty(n, np.float32), np.empty(n, np.int64), np.empty(n, np.uint8)
    nf = kernels.if_sync_closed_form32_rows(y, C, S, inv, a, lo, D, m, counts, c8, True, flagged, 0)
    u = y * inv + a
    np.testing.assert_array_equal(counts, np.clip(np.floor(u), 0, D))
    np.testing.assert_array_equal(c8, counts)  # the uint8 copy for the next layer's gathers
    k = np.clip(np.floor(u + np.float32(0.5)), 1, D)
    ch = (np.arange(n) // S) % C
    must = np.flatnonzero((np.abs(u - k) <= m[ch]) | (u >= lo[ch]))
    may = np.flatnonzero((np.abs(u - k) <= m.max()) | (u >= lo.min()))
    got = flagged[:nf]
    assert np.all(np.diff(got) > 0) and set(must) <= set(got) <= set(may)
    assert len(got) < len(may)  # per-channel margins flag fewer than the widest one
    c2, f2 = np.empty(n, np.float32), np.empty(n, np.int64)
    cut = 1280
    none8 = np.zeros(1, np.uint8)
    k1 = kernels.if_sync_closed_form32_rows(y[:cut], C, S, inv, a, lo, D, m, c2[:cut], none8, False, f2, 0)
    k2 = kernels.if_sync_closed_form32_rows(y[cut:], C, S, inv, a, lo, D, m, c2[cut:], none8, False, f2[k1:], cut)
    np.testing.assert_array_equal(c2, counts)
    np.testing.assert_array_equal(f2[:k1 + k2], got)


@pytest.mark.parametrize("padding,dilation,groups", [(3, 1, 1), (4, 1, 2), (2, 2, 1)])
def test_exact_gather_kernels_outside_the_input(padding, dilation, groups):
    # output positions whose kernel rows/columns lie (partly or wholly) in the padding, on the
    # contiguous-run branch (dilation 1, groups 1) and the others
    rng = np.random.default_rng(padding)
    x = rng.integers(0, 5, (2, 4, 5, 6)).astype(np.float32)
    w = rng.integers(-2 ** 40, 2 ** 40, (6, 4 // groups, 3, 3)).astype(np.float64)
    ref = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64), torch.tensor(w), None, 1, padding,
                                     dilation, groups).numpy()
    Ho, Wo = ref.shape[2:]
    idx = np.arange(ref.size, dtype=np.int64)
    geo = (6, Ho, Wo, 1, 1, padding, padding, dilation, dilation, groups)
    a, b = np.empty(idx.size), np.empty(idx.size)
    kernels.conv2d_exact_at(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), np.ascontiguousarray(w.transpose(0, 2, 3, 1)),
                            idx, idx.size, *geo, a)
    kernels.conv2d_exact_at_nchw(x, w, idx, idx.size, *geo, b)
    np.testing.assert_array_equal(a, ref.reshape(-1))
    np.testing.assert_array_equal(b, ref.reshape(-1))
    if padding >= 3:
        assert (ref[:, :, 0, 0] == 0).all()  # corner outputs see only padding


def test_reused_buffers_do_not_leak_between_calls_or_batches():
    q, x = _program(4, n=30)
    first = simulate(q, x)
    kept = {n: c.copy() for n, c in first.counts.items()}
    second = simulate(q, x[::-1].copy())  # same buffers, other data
    chunked = simulate(q, x, batch_size=7)  # chunks share the buffers too
    for n in q.neurons():
        np.testing.assert_array_equal(first.counts[n], kept[n])  # the first result is its own memory
        np.testing.assert_array_equal(second.counts[n], kept[n][::-1])
        np.testing.assert_array_equal(chunked.counts[n], kept[n])
    for o in first.outputs:
        np.testing.assert_array_equal(chunked.outputs[o], first.outputs[o])
    _assert_exact(first, q, x)


def test_concurrent_simulations_of_one_graph():
    # the cached program's buffers belong to one simulation at a time; the other uses its own
    q, x = _program(5, n=24)
    ref = simulate(q, x)
    out, errors = [None] * 4, []

    def run(i):
        try:
            for _ in range(3):
                out[i] = simulate(q, x)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in out:
        for n in q.neurons():
            np.testing.assert_array_equal(r.counts[n], ref.counts[n])


def test_input_range_check_one_pass():
    q, x = _program(6, n=4)
    assert kernels.max_abs(np.array([1.0, -3.0, 2.0])) == 3.0
    assert kernels.max_abs(np.array([1.0, np.nan])) == np.inf
    assert kernels.max_abs(np.zeros(0)) == 0.0
    bad = x.copy()
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(NeurodeployError, match="sample 2"):
        simulate(q, bad)
    big = x.copy()
    big[3, 1, 2, 3] = 1e6
    with pytest.raises(NeurodeployError, match="sample 3"):
        simulate(q, big)


@pytest.mark.parametrize("w8", [True, False])
def test_in_place_kernel_equals_the_rows_kernel(w8):
    # counts written over the float32 result: same counts, uint8 copy and flagged indices as the
    # rows kernel, whole and in two parts (layer-wide indices from `base`)
    C, S, B, D, n, y, m, lo, inv, a = _rows_case(8)
    counts, f_ref, c8_ref = np.empty(n, np.float32), np.empty(n, np.int64), np.zeros(n, np.uint8)
    k_ref = kernels.if_sync_closed_form32_rows(y, C, S, inv, a, lo, D, m, counts, c8_ref, True, f_ref, 0)
    got, flagged, c8 = y.copy(), np.empty(n, np.int64), np.zeros(n if w8 else 1, np.uint8)
    cut = 1280
    k1 = kernels.if_sync_closed_form32_inplace(got[:cut], C, S, inv, a, lo, D, m, c8[:cut] if w8 else c8, w8,
                                               flagged, 0)
    k2 = kernels.if_sync_closed_form32_inplace(got[cut:], C, S, inv, a, lo, D, m, c8[cut:] if w8 else c8, w8,
                                               flagged[k1:], cut)
    np.testing.assert_array_equal(got, counts)
    np.testing.assert_array_equal(flagged[:k1 + k2], f_ref[:k_ref])
    if w8:
        np.testing.assert_array_equal(c8, c8_ref)


def test_a_conv_read_by_two_neuron_layers_is_not_overwritten():
    # the counts of the first IF layer must not replace the convolution result the second reads
    rng = np.random.default_rng(9)
    g = ir.Graph()
    g.add("x", ir.Input(input_shape=(2, 8, 8)))
    g.add("c", ir.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4) * 0.3, padding=1), "x")
    g.add("n1", ir.IFNeuron(threshold=1.0, v_init=0.5, max_spikes=4, rounding="half_even"), "c")
    g.add("n2", ir.IFNeuron(threshold=0.5, v_init=0.25, max_spikes=3), "c")
    g.add("o1", ir.Output(), "n1")
    g.add("o2", ir.Output(), "n2")
    g = ir.infer_shapes(g)
    x = np.round(rng.normal(size=(6, 2, 8, 8)) * 48) / 16
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    ex = core._get_exec(q, True, True)
    assert "c" in ex.fast and not ex.fast["c"].sole_reader
    _assert_exact(simulate(q, x), q, x)


def test_the_sole_reader_gets_the_result_in_place():
    q, x = _program(10)
    ex = core._get_exec(q, True, True)
    assert all(fl.sole_reader for fl in ex.fast.values())
    _assert_exact(simulate(q, x), q, x)


def test_max_abs_on_bit_patterns():
    # integer max over the bit patterns without the sign: equal to max |x|; inf for any NaN
    rng = np.random.default_rng(11)
    x = rng.normal(size=1001) * 10.0 ** rng.integers(-310, 300, 1001)  # with subnormals and zeros
    x[::97] = 0.0
    x[5] = -0.0
    assert kernels.max_abs(x) == np.max(np.abs(x))
    for special, want in ((-np.inf, np.inf), (np.nan, np.inf), (-np.nan, np.inf)):
        y = x.copy()
        y[500] = special
        assert kernels.max_abs(y) == want
    assert kernels.max_abs(np.array([-0.0])) == 0.0


def test_int64_results_in_one_split_over_threads(monkeypatch):
    # the int64 conversion of every layer in one hand-off: the k-th slice of each layer per thread
    q, x = _program(12, n=64)
    prev = torch.get_num_threads()
    monkeypatch.setattr(core, "_PARALLEL_MIN", 256)
    try:
        torch.set_num_threads(2)
        r = simulate(q, x)
    finally:
        torch.set_num_threads(prev)
    _assert_exact(r, q, x)
