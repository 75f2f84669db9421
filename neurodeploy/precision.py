"""Verification in two parts: conversion exactness and precision.

* **Conversion exactness** (:func:`exactness`): the compiled program (the simulator's
  layer-synchronous run) against the *integer reference* of the same quantised parameters,
  :func:`neurodeploy.ops.evaluate` of the quantised graph (plain PyTorch float64 arithmetic on
  integers below 2**52: exact). Two independent computations of the same integers: any mismatch is
  a bug.
* **Precision** (:func:`precision`): the integer reference against the model's own float forward
  (float64). A quantised program can only differ from the model where a neuron's real input lies
  closer to a rounding boundary than the representation's precision. For every neuron layer the
  integer reference is re-run *teacher-forced* (every earlier neuron layer replaced by the model's
  own counts), beside the float graph and a rigorous per-neuron bound on
  ``|integer current · 2^-F − real current|``: input rounding, weight and bias rounding (``w_q·2^-F``
  vs ``w``), threshold and initial-membrane rounding, plus float64 slack. A mismatch is

  - *explained* (``at_boundary``): the local (teacher-forced) count differs and the model's input
    lies within that bound of a boundary;
  - *propagated*: the local count agrees; the difference comes from an earlier layer's flip;
  - *unexplained*: the local count differs although the model's input is further from every
    boundary than the bound: a conversion bug.

Distances and bounds are in units of the neuron's threshold θ.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from . import ir, ops
from .errors import NeurodeployError

# relative float64 slack per weight layer: the model's float64 forward and ours round differently
# (summation order, BatchNorm applied separately); ~1e4 ulps of the magnitude sum, far below any
# quantisation error
FLOAT_SLACK = 2.0 ** -40


def _count(n: int) -> str:
    return f"{n:,}"


def _width(layers) -> int:
    """Column width for full layer names (names are not cut: two layers must stay apart)."""
    return max([24] + [len(lr.layer) for lr in layers])


def percent(fraction: float, digits: int = 2) -> str:
    """``100·fraction`` with ``digits`` decimals, '%' included, that never rounds a mismatch away:
    a fraction strictly between 0 and 1 never prints as 0.00% or 100.00%."""
    text = f"{100 * fraction:.{digits}f}"
    step = 10.0 ** -digits
    if 0 < fraction < 1 and float(text) <= 0:
        return f"<{step:.{digits}f}%"
    if 0 < fraction < 1 and float(text) >= 100:
        return f">{100 - step:.{digits}f}%"
    return text + "%"


def mismatch_text(bad: int, total: int) -> str:
    """'0 / 602,112' style: an exact count, never a rounded percentage."""
    return f"{_count(bad)} / {_count(total)}"


# -- conversion exactness --------------------------------------------------------------------------

@dataclass
class ExactnessLayer:
    layer: str
    shape: tuple
    n_values: int
    mismatches: int
    first_mismatch: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ExactnessReport:
    compared: str
    layers: list[ExactnessLayer]

    @property
    def mismatches(self) -> int:
        return sum(lr.mismatches for lr in self.layers)

    @property
    def n_values(self) -> int:
        return sum(lr.n_values for lr in self.layers)

    @property
    def ok(self) -> bool:
        return self.mismatches == 0

    def to_dict(self) -> dict:
        return {"compared": self.compared, "ok": self.ok, "mismatches": self.mismatches,
                "n_values": self.n_values, "layers": [lr.to_dict() for lr in self.layers]}

    def table(self) -> str:
        status = "EXACT" if self.ok else "MISMATCH (a conversion bug: please report it)"
        lines = [f"conversion exactness — {self.compared}: {status}, "
                 f"{mismatch_text(self.mismatches, self.n_values)} values differ in {len(self.layers)} layers"]
        bad = [lr for lr in self.layers if lr.mismatches]
        if bad:  # an exact layer needs no row of its own
            lines.append(f"  {'layer':<{_width(bad)}} {'shape':<16} {'differ / values':>22}  first mismatch")
        for lr in bad:
            fm = ""
            if lr.first_mismatch:
                m = lr.first_mismatch
                fm = f"sample {m['sample']} idx {tuple(m['index'])}: reference {m['expected']}, program {m['got']}"
            lines.append(f"  {lr.layer:<{_width(bad)}} {str(tuple(lr.shape))[:16]:<16} "
                         f"{mismatch_text(lr.mismatches, lr.n_values):>22}  {fm}")
        return "\n".join(lines)


def _first(mask: np.ndarray, expected: np.ndarray, got: np.ndarray) -> dict | None:
    if not mask.any():
        return None
    idx = np.unravel_index(int(np.flatnonzero(mask.reshape(-1))[0]), mask.shape)
    return {"sample": int(idx[0]), "index": [int(i) for i in idx[1:]],
            "expected": int(expected[idx]), "got": int(got[idx])}


def integer_reference(qgraph: ir.Graph, x) -> dict[str, np.ndarray]:
    """Spike counts of every neuron layer of a quantised graph, by ``ops.evaluate`` (exact integers)."""
    with torch.inference_mode():
        values = ops.evaluate(qgraph, x, quantized=True)
    return {n: values[n].numpy().astype(np.int64) for n in qgraph.neurons()}


def exactness(reference: dict[str, np.ndarray], counts: dict[str, np.ndarray], graph: ir.Graph,
              compared: str = "simulator (sync schedule) vs integer reference (ops.evaluate)") -> ExactnessReport:
    layers = []
    for n in graph.neurons():
        if n not in reference or n not in counts:
            continue
        e, g = np.asarray(reference[n]), np.asarray(counts[n])
        if e.shape != g.shape:
            raise NeurodeployError(f"integer reference has shape {e.shape}, program {g.shape}", layer=n)
        mask = e != g
        layers.append(ExactnessLayer(n, tuple(e.shape[1:]), int(e.size), int(mask.sum()), _first(mask, e, g)))
    return ExactnessReport(compared, layers)


# -- precision -------------------------------------------------------------------------------------

@dataclass
class PrecisionLayer:
    layer: str
    shape: tuple
    n_values: int
    mismatches: int          # integer reference (free run) vs the model
    at_boundary: int         # explained: local flip within the bound of a rounding boundary
    propagated: int          # local count agrees: caused by an earlier layer's flip
    unexplained: int         # local flip further from every boundary than the bound
    max_bound: float         # largest pre-activation error bound in the layer (units of θ)
    example: dict | None = None  # the worst-classified flip: sample, index, model, integer, distance, bound

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class PrecisionReport:
    layers: list[PrecisionLayer]
    input_frac_bits: int | None = None
    calibration: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_values(self) -> int:
        return sum(lr.n_values for lr in self.layers)

    def total(self, key: str) -> int:
        return sum(getattr(lr, key) for lr in self.layers)

    @property
    def ok(self) -> bool:
        return self.total("unexplained") == 0

    def per_million(self, key: str = "at_boundary") -> float:
        return 1e6 * self.total(key) / max(self.n_values, 1)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "n_values": self.n_values, "mismatches": self.total("mismatches"),
                "at_boundary": self.total("at_boundary"), "propagated": self.total("propagated"),
                "unexplained": self.total("unexplained"), "explained_per_million": self.per_million(),
                "input_frac_bits": self.input_frac_bits, "calibration": self.calibration,
                "notes": list(self.notes), "layers": [lr.to_dict() for lr in self.layers]}

    def table(self) -> str:
        status = "OK" if self.ok else "UNEXPLAINED MISMATCHES (a conversion bug, not precision)"
        lines = [f"precision — integer reference vs the model's own float forward (float64): {status}; "
                 f"{mismatch_text(self.total('mismatches'), self.n_values)} values differ: "
                 f"{self.total('at_boundary')} at a rounding boundary (explained, "
                 f"{self.per_million():.2f} per 10^6), {self.total('propagated')} propagated, "
                 f"{self.total('unexplained')} unexplained"]
        if self.calibration:
            lines.append(f"  scales from {self.calibration}; input {self.input_frac_bits} fractional bits")
        w = _width(self.layers)
        lines.append(f"  {'layer':<{w}} {'differ / values':>22} {'boundary':>8} {'propag.':>7} {'unexpl.':>7} "
                     f"{'bound (θ)':>9}  worst flip")
        for lr in self.layers:
            ex = ""
            if lr.example:
                e = lr.example
                ex = (f"sample {e['sample']} idx {tuple(e['index'])}: model {e['model']}, integer {e['integer']}, "
                      f"{e['distance']:.3g} θ from a boundary (bound {e['bound']:.3g})")
            lines.append(f"  {lr.layer:<{w}} {mismatch_text(lr.mismatches, lr.n_values):>22} "
                         f"{lr.at_boundary:>8} {lr.propagated:>7} {lr.unexplained:>7} {lr.max_bound:>9.2g}  {ex}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


@dataclass
class _Val:
    real: torch.Tensor   # float64, real units (float parameters)
    q: torch.Tensor      # integers (quantised parameters)
    err: torch.Tensor | None  # bound on |q·2^-F − real| (None: exactly 0)
    frac: int            # F


def _with_params(node, weight, bias):
    return dataclasses.replace(node, weight=weight, bias=bias, weight_q=None, bias_q=None)


def _weight_layer(node, v: _Val, frac_out: int) -> _Val:
    w = ops.as_tensor(node.weight)
    b = ops.as_tensor(node.bias)
    real = ops.linear_op(node, [v.real], quantized=False)
    q = ops.linear_op(node, [v.q], quantized=True)
    # The representation's precision, not the actual rounding: a correct quantiser keeps every weight
    # within half an LSB (2^-(F_out-F_in) / 2) and every bias within 2^-(F_out+1), so
    # |q·2^-F − real| <= Σ half_lsb·|x| + Σ(|w| + half_lsb)·err_x + half_lsb_b (+ float64 slack).
    # An integer weight further off (a quantiser bug) is thus not "explained".
    half_lsb = 2.0 ** (v.frac - frac_out - 1)
    dw = half_lsb + FLOAT_SLACK * w.abs()
    db = None if b is None else 2.0 ** (-frac_out - 1) + FLOAT_SLACK * b.abs()
    err = ops.linear_op(_with_params(node, dw, db), [v.real.abs()])
    if v.err is not None:
        err = err + ops.linear_op(_with_params(node, w.abs() + half_lsb, None), [v.err])
    return _Val(real, q, err, frac_out)


_LINEAR_EXACT = (ir.Add, ir.SumPool2d, ir.Flatten, ir.Reshape, ir.Output)


def _measured(q, real, frac):
    """A node without a bound of its own on exact inputs (e.g. a host op on spike counts): its
    actual difference (None when there is none)."""
    err = (q * 2.0 ** -frac - real).abs()
    return None if not bool(err.any()) else err


def _is_linear_exact(node) -> bool:
    return isinstance(node, _LINEAR_EXACT) or (isinstance(node, ir.HostOp) and node.op == "permute")


def _product_error(node, a: "_Val", b: "_Val") -> torch.Tensor:
    """|a_q·b_q − a·b| <= |a|·e_b + e_a·|b| + e_a·e_b, as the same product (matmul / mul) of bounds."""
    ea = torch.zeros_like(a.real) if a.err is None else a.err
    eb = torch.zeros_like(b.real) if b.err is None else b.err
    prod = lambda u, v: ops.linear_op(node, [u, v], quantized=False)  # noqa: E731
    return prod(a.real.abs(), eb) + prod(ea, b.real.abs()) + prod(ea, eb)


def _passthrough(node, ins: list[_Val], frac: int) -> _Val:
    real = ops.linear_op(node, [v.real for v in ins], quantized=False)
    q = ops.linear_op(node, [v.q for v in ins], quantized=True)
    if all(v.err is None for v in ins):
        err = None if _is_linear_exact(node) else _measured(q, real, frac)
    elif isinstance(node, ir.HostOp) and node.op in ("matmul", "mul") and len(ins) == 2:
        err = _product_error(node, *ins)
    elif _is_linear_exact(node):
        err = ops.linear_op(node, [torch.zeros_like(v.real) if v.err is None else v.err for v in ins],
                            quantized=False)
    else:
        err = torch.full_like(real, math.inf)
    return _Val(real, q, err, frac)


def _classify(node: ir.IFNeuron, cur: _Val, model, full) -> tuple[PrecisionLayer, np.ndarray]:
    local = ops.spike_count(node, cur.q, quantized=True).numpy().astype(np.int64)
    u = (cur.real + node.v_init) / node.threshold
    k = torch.clamp(torch.round(u), 1, node.max_spikes)
    dist = (u - k).abs()
    scale = 2.0 ** -cur.frac
    d_theta = d_v0 = scale / 2  # half an LSB of the current's fixed point
    err = 0.0 if cur.err is None else cur.err
    bound = (err + d_v0 + k * d_theta) / node.threshold
    bound = bound.expand_as(dist) if isinstance(bound, torch.Tensor) else torch.full_like(dist, bound)
    dist, bound = dist.numpy(), bound.numpy()
    m = np.asarray(model, dtype=np.int64)
    flip_local = local != m
    flip_full = np.asarray(full, dtype=np.int64) != m
    within = dist <= bound
    boundary = flip_local & within
    unexplained = flip_local & ~within
    example = None
    if flip_local.any():
        ratio = np.where(flip_local, dist / np.maximum(bound, 1e-300), -np.inf)
        idx = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
        example = {"sample": int(idx[0]), "index": [int(i) for i in idx[1:]], "model": int(m[idx]),
                   "integer": int(local[idx]), "distance": float(dist[idx]), "bound": float(bound[idx]),
                   "explained": bool(within[idx])}
    finite = bound[np.isfinite(bound)]
    rep = PrecisionLayer(layer="", shape=tuple(m.shape[1:]), n_values=int(m.size),
                         mismatches=int(flip_full.sum()), at_boundary=int(boundary.sum()),
                         propagated=int((flip_full & ~flip_local).sum()), unexplained=int(unexplained.sum()),
                         max_bound=float(finite.max()) if finite.size else math.inf, example=example)
    return rep, local


def teacher_forced_currents(qgraph: ir.Graph, x, model_counts: dict[str, np.ndarray]):
    """Yield ``(neuron name, node, current)`` in topological order, ``current`` a :class:`_Val` with
    the real input current (float parameters), the integer one (quantised parameters) and the bound
    on their difference, every earlier neuron layer replaced by ``model_counts`` (where given)."""
    quant = qgraph.metadata.get("quantization") or {}
    frac_bits = quant.get("frac_bits")
    if not frac_bits:
        raise NeurodeployError("precision analysis needs the sim target's fixed-point graph (frac_bits)",
                               fix="quantise with the sim target")
    users = {n: len(qgraph.consumers_of(n)) for n in qgraph.nodes}
    vals: dict[str, _Val] = {}
    with torch.inference_mode():
        for name in qgraph.topo_order():
            node = qgraph.nodes[name]
            ins = [vals[i] for i in qgraph.inputs_of(name)]
            frac = int(frac_bits[name])
            if isinstance(node, ir.Input):
                real = ops.as_tensor(x)
                q = ops.quantize_input(node, real, True)
                half_lsb = torch.full_like(real, 0.5 / node.scale_q)  # round(x·2^F): half an LSB
                vals[name] = _Val(real, q, None if node.is_spikes else half_lsb, frac)
            elif isinstance(node, ir.WEIGHT_NODES):
                vals[name] = _weight_layer(node, ins[0], frac)
            elif isinstance(node, ir.IFNeuron):
                yield name, node, ins[0]
                if name in model_counts:
                    forced = ops.as_tensor(model_counts[name])
                    vals[name] = _Val(forced, forced, None, 0)
                else:  # no model reference: carry the integer counts with their difference as error
                    real_c = ops.spike_count(node, ins[0].real, quantized=False)
                    q_c = ops.spike_count(node, ins[0].q, quantized=True)
                    vals[name] = _Val(real_c, q_c, (q_c - real_c).abs(), 0)
            else:
                vals[name] = _passthrough(node, ins, frac)
            for i in qgraph.inputs_of(name):  # free what no later node reads
                users[i] -= 1
                if users[i] == 0:
                    vals.pop(i, None)


def precision(qgraph: ir.Graph, x, model_counts: dict[str, np.ndarray], full: dict[str, np.ndarray],
              calibration: str = "") -> PrecisionReport:
    """Classify every mismatch of the integer reference ``full`` against ``model_counts`` (both
    ``{neuron: [B, *shape]}``; ``model_counts`` keyed by IR name) for the sim target's quantised graph."""
    notes: list[str] = []
    layers: list[PrecisionLayer] = []
    for name, node, current in teacher_forced_currents(qgraph, x, model_counts):
        if name not in model_counts:
            notes.append(f"no model reference for {name}: its integer counts are used downstream")
            continue
        with torch.inference_mode():
            rep, _ = _classify(node, current, model_counts[name], full[name])
        rep.layer = name
        layers.append(rep)
    quant = qgraph.metadata.get("quantization") or {}
    return PrecisionReport(layers, quant.get("input_frac_bits"), calibration, notes)
