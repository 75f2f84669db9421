"""Merge per-batch verify / profile reports into the report of the whole dataset.

Every number in a report is a count, a max, a first occurrence or a per-sample mean of integer
counts, so the merge is exact: counts add, maxima take the max, first mismatches keep the earliest
batch (sample index shifted by the batch's offset), and a mean ``S/n`` of an integer sum gives back
``S = round(mean·n)`` exactly (below 2^52), so the merged mean is the same single division the
in-memory run does. Hence a streamed or sharded run prints the same report as the in-memory one.
Merging in sample order (batches sorted by offset) makes the result independent of which worker
finished first.
"""

from __future__ import annotations

import copy
import math

from .errors import NeurodeployError


def _sum_back(mean: float, n: int) -> int:
    return int(round(mean * n))


def _shift(first: dict | None, offset: int) -> dict | None:
    if first is None:
        return None
    return {**first, "sample": first["sample"] + offset}


# -- verify ---------------------------------------------------------------------------------------

def shift_verify(report, offset: int):
    """``report`` (of samples ``offset..``) with sample indices counted from the dataset's start."""
    if offset == 0:
        return report
    report = copy.deepcopy(report)
    for s in report.schedules.values():
        for lr in s.layers:
            lr.first_mismatch = _shift(lr.first_mismatch, offset)
    if report.exactness is not None:
        for lr in report.exactness.layers:
            lr.first_mismatch = _shift(lr.first_mismatch, offset)
    if report.precision is not None:
        for lr in report.precision.layers:
            lr.example = _shift(lr.example, offset)
    return report


def merge_verify(acc, part):
    """``acc`` (samples before ``part``) and ``part`` (already shifted) as one report."""
    if acc is None:
        return part
    if list(acc.schedules) != list(part.schedules):
        raise NeurodeployError("batches were verified with different schedules")
    for name, s in acc.schedules.items():
        p = part.schedules[name]
        s.timesteps = max(s.timesteps, p.timesteps)
        s.layers = [_merge_layer(a, b) for a, b in zip(s.layers, p.layers, strict=True)]
        s.end_task = _merge_end_task(s.end_task, p.end_task)
    acc.n_samples += part.n_samples
    if acc.exactness is not None:
        for a, b in zip(acc.exactness.layers, part.exactness.layers, strict=True):
            a.n_values += b.n_values
            a.mismatches += b.mismatches
            a.first_mismatch = a.first_mismatch or b.first_mismatch
    if acc.precision is not None:
        acc.precision.layers = [_merge_precision(a, b) for a, b in
                                zip(acc.precision.layers, part.precision.layers, strict=True)]
        acc.precision.notes = list(dict.fromkeys(acc.precision.notes + part.precision.notes))
    names = [c.name for c in acc.checks]
    if names != [c.name for c in part.checks] or any(n not in MERGEABLE_CHECKS for n in names):
        raise NeurodeployError(f"the checks {names} (Speck ladder, Lava run) are not per-sample sums and cannot "
                               "be merged across data files", fix="pass the data as one .npz file")
    return acc


MERGEABLE_CHECKS = ("activation_overrides",)  # the same text for every batch


def _merge_layer(a, b):
    if a.layer != b.layer:
        raise NeurodeployError(f"batches report layers {a.layer} and {b.layer} in the same place")
    diff_sum = _sum_back(a.mean_abs_diff, a.n_values) + _sum_back(b.mean_abs_diff, b.n_values)
    a.n_values += b.n_values
    a.mismatches += b.mismatches
    a.exact_fraction = float(1.0 - a.mismatches / a.n_values) if a.n_values else 1.0
    a.max_abs_diff = max(a.max_abs_diff, b.max_abs_diff)
    a.mean_abs_diff = diff_sum / a.n_values if a.n_values else 0.0
    a.first_mismatch = a.first_mismatch or b.first_mismatch
    a.near_ties = None if a.near_ties is None or b.near_ties is None else a.near_ties + b.near_ties
    a.spikes_reference += b.spikes_reference
    a.spikes_simulated += b.spikes_simulated
    return a


def _merge_end_task(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return a or b
    n = a["n"] + b["n"]
    out = dict(a, n=n)
    for key in ("agreement", "accuracy_reference", "accuracy_simulated"):
        if a.get(key) is None:
            continue
        hits = _sum_back(a[key], a["n"]) + _sum_back(b[key], b["n"])
        out[key] = float(hits / n) if n else 1.0
    return out


def _ratio(example: dict | None) -> float:
    if example is None:
        return -math.inf
    return example["distance"] / max(example["bound"], 1e-300)


def _merge_precision(a, b):
    if a.layer != b.layer:
        raise NeurodeployError(f"batches report layers {a.layer} and {b.layer} in the same place")
    for key in ("n_values", "mismatches", "at_boundary", "propagated", "unexplained"):
        setattr(a, key, getattr(a, key) + getattr(b, key))
    a.max_bound = max(a.max_bound, b.max_bound)
    if _ratio(b.example) > _ratio(a.example):  # the worst flip; the earlier one on a tie, as argmax
        a.example = b.example
    return a


# -- profile --------------------------------------------------------------------------------------

_MEAN_FIELDS = ("synops", "input_spikes", "spikes")


def merge_profile(acc, part, graph=None):
    """Two profile reports (per-sample means) as the report of both batches together (``graph``:
    the profiled graph, needed when it has host ops)."""
    if acc is None:
        return part
    n_a, n_b = acc.n_samples, part.n_samples
    n = n_a + n_b
    for a, b in zip(acc.layers, part.layers, strict=True):
        for key in _MEAN_FIELDS:
            if getattr(a, key) is not None:
                setattr(a, key, (_sum_back(getattr(a, key), n_a) + _sum_back(getattr(b, key), n_b)) / n)
        if a.kind == "IFNeuron":
            a.firing_rate = a.spikes / a.neuron_updates if a.neuron_updates else 0.0
        elif a.kind != "HostOp":
            a.energy_pj = acc.e_mac_pj * a.macs + acc.e_ac_pj * a.synops
    acc.n_samples = n
    acc.notes = list(dict.fromkeys(acc.notes + part.notes))
    _totals(acc)
    if acc.host:
        for key in ("to_host_spikes", "from_host_spikes"):
            acc.host[key] = _host_spikes(acc, graph, acc.host[key.replace("_spikes", "")])
    return acc


def _totals(rep) -> None:
    w_rows = [r for r in rep.layers if r.kind not in ("IFNeuron", "HostOp")]
    n_rows = [r for r in rep.layers if r.kind == "IFNeuron"]
    t = rep.totals
    t.input_spikes = math.fsum(r.input_spikes or 0.0 for r in w_rows)
    t.synops = math.fsum(r.synops for r in w_rows)
    t.spikes = math.fsum(r.spikes for r in n_rows)
    t.firing_rate = t.spikes / t.neuron_updates if t.neuron_updates else None
    t.energy_pj = math.fsum(r.energy_pj for r in w_rows)


def _host_spikes(rep, graph, names) -> float:
    """Spikes crossing chip <-> host: the IF rows behind ``names`` (through Flatten/Reshape), added
    in the order profile's host summary adds them."""
    from . import ir

    rows = {r.name: r for r in rep.layers}
    spikes = 0.0
    for name in names:
        src = graph.behind_views(name)
        if isinstance(graph.nodes[src], ir.IFNeuron):
            spikes += float(rows[src].spikes)
    return spikes
