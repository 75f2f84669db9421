"""Spike-count verification: the model's own forward (reference) vs. a target simulation.

* :func:`verify_counts` compares per IF layer: exact-match fraction, max / mean |Δcount|, the first
  mismatch (sample, index, expected, got) and, for the sync schedule, how many neuron inputs sat
  within 1e-9·θ of a firing boundary (a near-tie: where a count may legitimately flip because the
  float model and the integer target round the same real number differently).
* :func:`end_task_agreement` applies a linear probe (``weight [classes, F]``, ``bias``) to the final
  features of reference and simulation and reports the fraction of samples whose argmax class
  agrees (and accuracy against labels when given).
* :func:`build_report` does both for several schedules and returns a :class:`VerifyReport`
  (``ok()``, ``format_table()``, ``to_dict()``). The sync schedule must be exact; the streaming
  schedule's deviation is expected and reported, not an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import ir
from .errors import NeurodeployError, VerificationError
from .precision import mismatch_text, percent


@dataclass
class LayerReport:
    layer: str
    source: str
    shape: tuple
    n_values: int
    exact_fraction: float
    max_abs_diff: int
    mean_abs_diff: float
    first_mismatch: dict | None = None  # {'sample', 'index', 'expected', 'got'}
    near_ties: int | None = None
    spikes_reference: int = 0
    spikes_simulated: int = 0
    mismatches: int = 0

    @property
    def exact(self) -> bool:
        return self.mismatches == 0 and self.exact_fraction == 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass
class ScheduleReport:
    schedule: str
    timesteps: int
    layers: list[LayerReport]
    end_task: dict | None = None

    @property
    def exact(self) -> bool:
        return all(lr.exact for lr in self.layers)

    def to_dict(self) -> dict:
        return {"schedule": self.schedule, "timesteps": self.timesteps, "exact": self.exact,
                "layers": [lr.to_dict() for lr in self.layers], "end_task": self.end_task}


@dataclass
class ExtraCheck:
    """A target-specific comparison beside the schedules (e.g. Lava vs the simulator)."""

    name: str
    ok: bool
    text: str
    data: dict = field(default_factory=dict)
    required: bool = True

    def to_dict(self) -> dict:
        return {"name": self.name, "ok": self.ok, "required": self.required, "data": self.data}


@dataclass
class VerifyReport:
    schedules: dict[str, ScheduleReport] = field(default_factory=dict)
    n_samples: int = 0
    missing_layers: list[str] = field(default_factory=list)
    target: str = "sim"
    # schedules whose counts must equal the model's exactly (others are reported, not judged)
    required_exact: tuple = ("sync",)
    checks: list[ExtraCheck] = field(default_factory=list)
    # sim target: the program vs the integer reference (must be exact) and the integer reference vs
    # the model's float forward (every mismatch explained by precision), see neurodeploy.precision
    exactness: Any = None
    precision: Any = None
    calibration: str = ""  # where the quantisation scales came from (e.g. "--data x.npz (...)")

    def __getitem__(self, schedule: str) -> ScheduleReport:
        return self.schedules[schedule]

    @property
    def layers(self) -> list[LayerReport]:
        """Layer reports of the sync schedule (or the first schedule)."""
        s = self.schedules.get("sync") or next(iter(self.schedules.values()))
        return s.layers

    def ok(self, schedule: str | None = None, *, min_agreement: float | None = None) -> bool:
        """A schedule in ``required_exact``: every layer's counts match exactly (and the end task
        agrees on every sample). Other schedules: True unless ``min_agreement`` (end-task agreement
        fraction) is given and missed -- their deviation is expected and only reported.
        ``None``: every required schedule and every required extra check."""
        if schedule is None:
            names = [s for s in self.schedules if s in self.required_exact]
            checks_ok = all(c.ok for c in self.checks if c.required)
            checks_ok = checks_ok and (self.exactness is None or self.exactness.ok)
            checks_ok = checks_ok and (self.precision is None or self.precision.ok)
            return checks_ok and all(self.ok(s, min_agreement=min_agreement) for s in names)
        s = self.schedules[schedule]
        agree = (s.end_task or {}).get("agreement")
        if schedule in self.required_exact:
            if not s.exact:
                return False
            return agree is None or agree == 1.0
        if min_agreement is not None and agree is not None:
            return agree >= min_agreement
        return True

    def raise_if_failed(self) -> None:
        if self.exactness is not None and not self.exactness.ok:
            bad_ex = [lr for lr in self.exactness.layers if lr.mismatches]
            raise VerificationError(
                f"the compiled program differs from the integer reference in {len(bad_ex)} layer(s)",
                layer=bad_ex[0].layer, fix="this is a conversion bug: please report it with the verify table")
        if self.precision is not None and not self.precision.ok:
            bad_p = [lr for lr in self.precision.layers if lr.unexplained]
            raise VerificationError(
                f"{self.precision.total('unexplained')} mismatch(es) with the model that precision does not "
                f"explain, in {len(bad_p)} layer(s)", layer=bad_p[0].layer,
                fix="the model's value is further from a rounding boundary than the quantisation error bound: "
                    "a conversion bug; see the precision table")
        if not self.ok():
            bad = [lr for lr in self.layers if not lr.exact]
            lr = bad[0] if bad else None
            raise VerificationError(
                f"layer-synchronous simulation differs from the model in {len(bad)} layer(s)",
                layer=lr.layer if lr else None,
                fix="see the verify table; near-ties explain single flips, anything else is a conversion bug")

    def format_table(self) -> str:
        lines = [f"quantisation scales from {self.calibration}"] if self.calibration and self.precision is None else []
        lines += [part.table() for part in (self.exactness, self.precision) if part is not None]
        for s in self.schedules.values():
            status = "exact" if s.exact else "DIFFERS"
            if s.schedule not in self.required_exact and not s.exact:
                status = "deviates (reported, not required to be exact: " + _WHY_NOT_EXACT.get(
                    (self.target, s.schedule), "see README") + ")"
            lines.append(f"schedule {s.schedule}: {s.timesteps} timesteps, {self.n_samples} samples — {status}")
            hdr = (f"  {'layer':<24} {'shape':<16} {'differ / values':>22} {'max|Δ|':>7} {'mean|Δ|':>9} {'ties':>6}"
                   "  first mismatch")
            lines.append(hdr)
            for lr in s.layers:
                fm = ""
                if lr.first_mismatch:
                    m = lr.first_mismatch
                    fm = f"sample {m['sample']} idx {tuple(m['index'])}: expected {m['expected']}, got {m['got']}"
                ties = "-" if lr.near_ties is None else str(lr.near_ties)
                lines.append(f"  {lr.layer[:24]:<24} {str(tuple(lr.shape))[:16]:<16} {mismatch_text(lr.mismatches, lr.n_values):>22} "
                             f"{lr.max_abs_diff:>7d} {lr.mean_abs_diff:>9.4f} {ties:>6}  {fm}")
            if s.end_task:
                e = s.end_task
                txt = f"  end task ({e['layer']}): argmax agreement {percent(e['agreement'])}"
                if e.get("accuracy_reference") is not None:
                    txt += (f", accuracy reference {100 * e['accuracy_reference']:.2f}% / "
                            f"simulated {100 * e['accuracy_simulated']:.2f}%")
                lines.append(txt)
        if self.missing_layers:
            lines.append(f"  (no reference for: {', '.join(self.missing_layers)})")
        for check in self.checks:
            lines.append(check.text.rstrip("\n"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"ok": self.ok(), "target": self.target, "required_exact": list(self.required_exact),
                "n_samples": self.n_samples, "missing_layers": list(self.missing_layers),
                "schedules": {k: v.to_dict() for k, v in self.schedules.items()},
                "checks": [c.to_dict() for c in self.checks],
                "calibration": self.calibration,
                "exactness": None if self.exactness is None else self.exactness.to_dict(),
                "precision": None if self.precision is None else self.precision.to_dict()}


_WHY_NOT_EXACT = {
    ("sim", "streaming"): "layers fire before all their input has arrived",
    ("sim", "sync"): "fixed-point precision; judged by the conversion exactness and precision checks above",
    ("speck", "sync"): "8-bit weights, 16-bit state and rate-coded input",
    ("speck", "speck"): "8-bit weights, 16-bit state, rate-coded input; the layer barrier is exact for every neuron "
                        "with n <= D given its input, over-budget neurons are not capped (see the ladder's R7)",
    ("loihi", "sync"): "8-bit weight mantissas (or two 8-bit synapse groups) and the input quantised to 8 bits",
}


def _to_np(a) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _ref_key(reference: dict, graph: ir.Graph, name: str) -> str | None:
    if name in reference:
        return name
    src = graph.nodes[name].source
    if src and src in reference:
        return src
    return None


def compare_layer(layer: str, expected, got, *, source: str = "", near_ties: int | None = None) -> LayerReport:
    e, g = _to_np(expected), _to_np(got)
    if e.shape != g.shape:
        raise NeurodeployError(f"reference counts have shape {e.shape}, simulation {g.shape}", layer=layer,
                               fix="the reference must hold spike counts [batch, *shape] for the same inputs")
    diff = np.abs(e - g)
    n = int(diff.size)
    mism = diff > 0
    first = None
    if mism.any():
        flat = int(np.flatnonzero(mism.reshape(-1))[0])
        idx = np.unravel_index(flat, e.shape)
        first = {"sample": int(idx[0]), "index": [int(i) for i in idx[1:]],
                 "expected": float(e[idx]) if e[idx] != int(e[idx]) else int(e[idx]), "got": int(g[idx])}
    return LayerReport(layer=layer, source=source, shape=tuple(e.shape[1:]), n_values=n,
                       exact_fraction=float(1.0 - mism.mean()) if n else 1.0, mismatches=int(mism.sum()),
                       max_abs_diff=int(np.ceil(diff.max())) if n else 0,
                       mean_abs_diff=float(diff.mean()) if n else 0.0, first_mismatch=first,
                       near_ties=near_ties, spikes_reference=int(np.rint(e.sum())), spikes_simulated=int(g.sum()))


def verify_counts(reference: dict, result, graph: ir.Graph) -> list[LayerReport]:
    """Per IF layer of ``graph`` present in both ``reference`` (name or source path -> counts
    ``[B, *shape]``) and ``result.counts``: a :class:`LayerReport`."""
    reports = []
    for name in graph.neurons():
        key = _ref_key(reference, graph, name)
        if key is None or name not in result.counts:
            continue
        nt = (result.near_ties or {}).get(name) if getattr(result, "near_ties", None) else None
        reports.append(compare_layer(name, reference[key], result.counts[name],
                                     source=graph.nodes[name].source, near_ties=nt))
    return reports


def feature_layer(graph: ir.Graph) -> str:
    """The IF layer whose counts are the final features: the last one feeding an Output, else the last."""
    neurons = graph.neurons()
    if not neurons:
        raise NeurodeployError("graph has no IF neuron layer")
    passthrough = (ir.Flatten, ir.Reshape, ir.Output)
    feeding = []
    for n in neurons:
        stack, seen = [n], set()
        while stack:
            c = stack.pop()
            for d in graph.consumers_of(c):
                if isinstance(graph.nodes[d], ir.Output):
                    feeding.append(n)
                elif isinstance(graph.nodes[d], passthrough) and d not in seen:
                    seen.add(d)
                    stack.append(d)
    return feeding[-1] if feeding else neurons[-1]


def end_task_agreement(ref_features, sim_features, probe: dict, labels=None) -> dict:
    """Apply ``probe`` (``{'weight': [classes, F], 'bias': [classes]}``) to both feature sets."""
    w = np.asarray(probe["weight"], dtype=np.float64)
    b = np.zeros(w.shape[0]) if probe.get("bias") is None else np.asarray(probe["bias"], dtype=np.float64)
    fr = _to_np(ref_features).reshape(len(ref_features), -1)
    fs = _to_np(sim_features).reshape(len(sim_features), -1)
    if fr.shape[1] != w.shape[1]:
        raise NeurodeployError(f"probe expects {w.shape[1]} features, the feature layer has {fr.shape[1]}",
                               fix="give the probe for the deployed feature layer")
    pr = np.argmax(fr @ w.T + b, 1)
    ps = np.argmax(fs @ w.T + b, 1)
    out = {"agreement": float(np.mean(pr == ps)) if len(pr) else 1.0, "n": int(len(pr)),
           "accuracy_reference": None, "accuracy_simulated": None}
    if labels is not None:
        y = np.asarray(labels).reshape(-1)[: len(pr)]
        out["accuracy_reference"] = float(np.mean(pr == y))
        out["accuracy_simulated"] = float(np.mean(ps == y))
    return out


def build_report(reference: dict, results, graph: ir.Graph, *, probe: dict | None = None, labels=None,
                 feature: str | None = None) -> VerifyReport:
    """Compare ``reference`` counts with one SimResult or ``{schedule: SimResult}``."""
    if not isinstance(results, dict):
        results = {getattr(results, "schedule", "sync"): results}
    rep = VerifyReport()
    for name in graph.neurons():
        if _ref_key(reference, graph, name) is None:
            rep.missing_layers.append(name)
    feat = feature or (feature_layer(graph) if probe is not None else None)
    norms = graph.metadata.get("neuron_norms") or {}
    for sched, res in results.items():
        layers = verify_counts(reference, res, graph)
        end = None
        if probe is not None and feat is not None:
            key = _ref_key(reference, graph, feat)
            if key is not None and feat in res.counts:
                norm = float(norms.get(feat, getattr(graph.nodes[feat], "norm", 1.0)) or 1.0)
                end = end_task_agreement(_to_np(reference[key]) / norm, res.counts[feat] / norm, probe, labels)
                end["layer"] = feat
        rep.schedules[sched] = ScheduleReport(sched, int(getattr(res, "timesteps", 0) or 0), layers, end)
        if layers:
            rep.n_samples = int(len(res.counts[layers[0].layer]))
    return rep
