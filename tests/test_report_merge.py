"""Per-batch verify / profile reports merge into exactly the whole batch's report (counts, maxima,
first mismatches, worst precision flips, end-task agreement, per-sample means)."""

import json

import numpy as np
import pytest

from neurodeploy import ops
from neurodeploy.passes import canonicalize, quantize_fixed_point
from neurodeploy.precision import exactness, integer_reference, precision
from neurodeploy.profile import profile
from neurodeploy.report_codec import decode, encode
from neurodeploy.report_merge import merge_profile, merge_verify, shift_verify
from neurodeploy.simulator import simulate
from neurodeploy.simulator.random_graphs import random_conv_graph, random_input
from neurodeploy.verify import build_report

SPLITS = [(0, 7), (7, 19), (19, 30)]


def _verify_report(g, q, x, probe, labels):
    ref = {n: v.numpy() for n, v in ops.evaluate(g, x).items() if n in g.neurons()}
    res = {s: simulate(q, x, schedule=s) for s in ("sync", "streaming")}
    rep = build_report(ref, res, q, probe=probe, labels=labels)
    full = integer_reference(q, x)
    rep.exactness = exactness(full, res["sync"].counts, q)
    rep.precision = precision(q, x, {n: ref[n] for n in q.neurons() if n in ref}, full)
    return rep


@pytest.mark.parametrize("seed", [0, 2])
def test_merged_verify_equals_whole_with_precision_flips(seed):
    g = random_conv_graph(seed)
    x = random_input(g, 30, seed)
    q = quantize_fixed_point(canonicalize(g), calibration=x, input_frac_bits=1)  # coarse: many flips
    rng = np.random.default_rng(seed)
    probe = {"weight": rng.normal(size=(3, int(np.prod(q.nodes[q.neurons()[-1]].shape)))), "bias": rng.normal(size=3)}
    labels = rng.integers(0, 3, 30)
    whole = _verify_report(g, q, x, probe, labels)
    assert whole.precision.total("at_boundary") > 0 and not whole["streaming"].exact
    acc = None
    for a, b in SPLITS:
        part = _verify_report(g, q, x[a:b], probe, labels[a:b])
        part = decode(json.loads(json.dumps(encode(part))))  # as the --resume cache stores it
        acc = merge_verify(acc, shift_verify(part, a))
    assert json.dumps(acc.to_dict(), sort_keys=True) == json.dumps(whole.to_dict(), sort_keys=True)
    assert acc.format_table() == whole.format_table()
    later = [lr.first_mismatch["sample"] for lr in acc["streaming"].layers if lr.first_mismatch]
    assert later  # sample indices count from the dataset's start


def test_merged_profile_equals_whole():
    g = random_conv_graph(1)
    x = random_input(g, 30, 1)
    q = quantize_fixed_point(canonicalize(g), calibration=x)
    whole = profile(q, ops.evaluate(q, x))
    acc = None
    for a, b in SPLITS:
        acc = merge_profile(acc, profile(q, ops.evaluate(q, x[a:b])), q)
    assert acc.n_samples == 30
    assert acc.format("json") == whole.format("json")
