"""Chip part + host rest (``compile --target speck|loihi --host-rest``).

The chip part is the longest prefix of the canonical graph that passes the target's design rules
(the furthest working ``--until``, :func:`passes.cut.furthest_until`); it is quantised, mapped and
emitted by the target as usual. The host part is everything else (residual sums, host products,
the rest of the network): it is quantised like the ``sim`` target and exported as
``host_program.pt2`` (:mod:`neurodeploy.host_program`), which computes it in exact integer
arithmetic from the chip part's output spike counts.

Chips only send spikes, so the tensors crossing are spike counts of chip neurons (and the network
input, which the host holds anyway). A chip weight layer whose *current* a host node reads (a
residual sum adds the pre-activation of an earlier layer) is recomputed on the host from its own
inputs; ``host_interface.json`` lists those under ``recomputed_on_host``.

:func:`verify_split` checks the composed system: the target's simulation of the chip part (speck:
the deployed barrier schedule; loihi: its simulator) feeds the host program loaded back from the
``.pt2`` file; the chip part is reported by the target's own verify, the host part by its
exactness against ``ops.evaluate`` given the chip's counts (must be 0 mismatches) and by its
agreement with the model's own forward.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import ir, ops
from .artifacts import atomic_write, dumps_json
from .errors import NeurodeployError
from .host_program import INTERFACE_FILE, PROGRAM_FILE, HostProgram, load_host_program
from .passes.cut import furthest_until, prefix_graph
from .passes.partition import Partition, host_macs, interface

HOST_GRAPH_FILE = "host_graph.ir.npz"
DEPLOYED_SCHEDULE = {"speck": "speck", "loihi": "sync"}


@dataclass
class Split:
    target: str
    cut: str                  # the last chip node (the furthest --until that passes the rules)
    chip: ir.Graph            # canonical prefix, for the target to quantise
    host_graph: ir.Graph      # the whole graph quantised for the host (sim arithmetic)
    part: Partition           # host nodes and crossing tensors, names of host_graph
    recomputed: list[str] = field(default_factory=list)

    def note(self) -> str:
        return (f"chip part: {len(self.chip.neurons())} neuron layers up to '{self.cut}' (the furthest prefix "
                f"that passes the {self.target} design rules); host part: {len(self.part.host)} nodes in "
                f"{PROGRAM_FILE} ({len(host_neurons(self))} neuron layers, {len(self.recomputed)} chip weight "
                "layer(s) recomputed on the host)")


class SplitHostProgram(HostProgram):
    """The host part: arguments are the crossing tensors (chip spike counts; the network input as
    floats, quantised here as the host graph's Input does), results the host's neuron counts and
    the graph outputs."""

    def forward(self, *cut: torch.Tensor):
        g = self.graph
        vals = {}
        for name, value in zip(self.part.to_host, cut):
            node = g.nodes[name]
            vals[name] = ops.quantize_input(node, value, True) if isinstance(node, ir.Input) else value
        return self.run_host(vals)


def split_for_target(tgt, canonical: ir.Graph, calibration=None) -> Split | None:
    """The chip / host split of ``canonical`` for target ``tgt``; None when the whole graph passes."""
    from .targets import get_target

    if not tgt.check(canonical):
        return None
    cut = furthest_until(canonical, accept=lambda prefix: not tgt.check(prefix))
    if cut is None:
        first = next((n for n in canonical.topo_order() if isinstance(canonical.nodes[n], ir.IFNeuron)), None)
        why = ((tgt.check(prefix_graph(canonical, first)) if first else []) or tgt.check(canonical))[0]
        raise NeurodeployError(f"no prefix of the model passes the {tgt.name} design rules, so nothing can run "
                               f"on the chip; the first layer alone fails: {why}",
                               fix="use --target sim, or change the first layers")
    chip = prefix_graph(canonical, cut)
    host_graph = get_target("sim").quantize(canonical, calibration=calibration)
    on_chip = {n for n, node in chip.nodes.items() if not isinstance(node, ir.Output)}  # its Output is the cut's
    part, recomputed = host_partition(host_graph, on_chip & set(canonical.nodes))
    return Split(tgt.name, cut, chip, host_graph, part, recomputed)


def host_partition(graph: ir.Graph, chip: set[str]) -> tuple[Partition, list[str]]:
    """Host = every node outside ``chip``, plus the chip weight layers whose currents host nodes
    read (recomputed); crossing tensors = chip neurons (or the input) that host nodes read."""
    order = graph.topo_order()
    host = {n for n in order if n not in chip}
    recomputed: set[str] = set()
    todo = list(host)
    while todo:
        for i in graph.inputs_of(todo.pop()):
            if i in chip and i not in recomputed and not isinstance(graph.nodes[i], (ir.IFNeuron, ir.Input)):
                recomputed.add(i)
                host.add(i)
                todo.append(i)
    part = Partition(host=[n for n in order if n in host])
    part.to_host = [n for n in order if n not in host and any(c in host for c in graph.consumers_of(n))]
    part.from_host = [n for n in part.host if isinstance(graph.nodes[n], (ir.IFNeuron, ir.Output))
                      or not graph.consumers_of(n)]  # every neuron layer, and the model's outputs
    return part, [n for n in order if n in recomputed]


def host_neurons(split: Split) -> list[str]:
    return [n for n in split.part.from_host if isinstance(split.host_graph.nodes[n], ir.IFNeuron)]


def export_split_program(split: Split):
    g, part = split.host_graph, split.part
    example = tuple(torch.zeros((2,) + tuple(_shape(g, n)), dtype=torch.float64) for n in part.to_host)
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        return torch.export.export(SplitHostProgram(g, part), example,
                                   dynamic_shapes=(tuple({0: batch} for _ in example),))


def _shape(g: ir.Graph, name: str) -> tuple:
    node = g.nodes[name]
    return tuple(node.input_shape) if isinstance(node, ir.Input) else tuple(node.shape)


def write_split(split: Split, folder, mapping: dict | None = None) -> dict[str, Path]:
    """Write ``host_program.pt2``, ``host_interface.json`` and ``host_graph.ir.npz`` into ``folder``."""
    from .artifacts import atomic_path
    from .ir_io import save_graph

    folder = Path(folder)
    ep = export_split_program(split)
    with atomic_path(folder / PROGRAM_FILE) as tmp, open(tmp, "wb") as f:
        torch.export.save(ep, f)
    save_graph(split.host_graph, folder / HOST_GRAPH_FILE)
    desc = {"program": PROGRAM_FILE, "format": "torch.export (torch.export.load(path).module()(*to_host))",
            "dtype": "float64 tensors holding integers (spike counts), batch dimension first; the network "
                     "input (if listed) as the float input the chip part also receives",
            "semantics": "the host part in exact integer arithmetic (sim quantisation, host_graph.ir.npz): "
                         "weight layers, residual sums, host products, IF neurons (spike counts)",
            "chip_target": split.target, "chip_until": split.cut,
            "recomputed_on_host": [{"name": n, "source": split.host_graph.nodes[n].source,
                                    "why": "a host node reads its current (chips send spikes only)"}
                                   for n in split.recomputed],
            **interface(split.host_graph, split.part)}
    layer_to_core = (mapping or {}).get("layer_to_core") or {}
    for t in desc["to_host"]:
        node = split.host_graph.nodes[t["name"]]
        if isinstance(node, ir.Input):
            t.update(kind="network input (float)", produced_by="the host (the chip part receives it too)")
        else:
            t["produced_by"] = f"{split.target} chip layer '{t['name']}'"
            core = _core_of(split.chip, layer_to_core, t["name"])
            if core is not None:
                t["core"] = core
    desc["host_macs_per_sample"] = int(sum(host_macs(split.host_graph, n) for n in split.part.host))
    return {"host_program": folder / PROGRAM_FILE, "host_graph": folder / HOST_GRAPH_FILE,
            "host_interface": atomic_write(folder / INTERFACE_FILE, dumps_json(desc))}


def _core_of(chip: ir.Graph, layer_to_core: dict, neuron: str):
    """The core of the Speck layer whose neuron is ``neuron`` (layers are named by their weight layer)."""
    todo = list(chip.inputs_of(neuron)) if neuron in chip.nodes else []
    while todo:
        m = todo.pop()
        if m in layer_to_core:
            return layer_to_core[m]
        if not isinstance(chip.nodes[m], (ir.IFNeuron, ir.Input)):
            todo.extend(chip.inputs_of(m))
    return None


# -- the composed system ----------------------------------------------------------------------------

def evaluate_given(graph: ir.Graph, x, given: dict) -> dict[str, torch.Tensor]:
    """``ops.evaluate`` of a quantised graph with the values of the ``given`` nodes replaced (the
    chip's spike counts): the integer reference of the host part given the chip."""
    values: dict[str, torch.Tensor] = {}
    for name in graph.topo_order():
        node = graph.nodes[name]
        if name in given:
            values[name] = ops.as_tensor(given[name])
            continue
        ins = [values[i] for i in graph.inputs_of(name)]
        if isinstance(node, ir.Input):
            values[name] = ops.quantize_input(node, x, True)
        elif isinstance(node, ir.IFNeuron):
            values[name] = ops.spike_count(node, ins[0], True)
        else:
            values[name] = ops.linear_op(node, ins, True)
    return values


def run_host_program(path, split_or_interface, chip_counts: dict, x, program=None) -> dict[str, np.ndarray]:
    """Run a written ``host_program.pt2`` (or its already loaded ``program``) on the chip's counts (and
    ``x``); {from_host name: values}."""
    import json

    desc = json.loads(Path(split_or_interface).read_text()) if not isinstance(split_or_interface, dict) \
        else split_or_interface
    args = [torch.as_tensor(np.asarray(x if t["kind"] == "network input (float)" else chip_counts[t["name"]]),
                            dtype=torch.float64) for t in desc["to_host"]]
    with torch.no_grad():
        out = (program or load_host_program(path))(*args)
    return {t["name"]: v.numpy() for t, v in zip(desc["from_host"], out)}


@dataclass
class HostRow:
    layer: str
    n_values: int
    vs_reference: int   # mismatches against ops.evaluate given the chip's counts (must be 0)
    vs_model: int       # mismatches against the model's own forward
    vs_model_host_only: int = -1  # the same, the host fed with the model's own counts (host precision alone)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SplitReport:
    target: str
    cut: str
    chip: object                    # the target's VerifyReport of the chip part
    host: list[HostRow]
    chip_schedule: str
    crossing_vs_model: int          # crossing spike counts where the chip differs from the model
    host_precision: object = None   # precision.PrecisionReport of the host part fed with the model's counts
    top1_agreement: tuple | None = None  # (samples whose output argmax equals the model's, samples)

    @property
    def host_exact(self) -> bool:
        return all(r.vs_reference == 0 for r in self.host)

    def ok(self) -> bool:
        return bool(self.chip.ok()) and self.host_exact and (self.host_precision is None or self.host_precision.ok)

    def format_table(self) -> str:
        from .precision import mismatch_text

        lines = [f"chip part ({self.target}, up to '{self.cut}'):", self.chip.format_table(), "",
                 f"host part (host_program.pt2 loaded from disk, fed with the chip's counts from the "
                 f"'{self.chip_schedule}' schedule; crossing counts that differ from the model: "
                 f"{self.crossing_vs_model}):",
                 f"  conversion exactness (host program vs ops.evaluate given the chip's counts): "
                 f"{'EXACT' if self.host_exact else 'MISMATCH (a conversion bug: please report it)'}",
                 "  (≠ model: composed system vs the model's forward; ≠ model, host alone: the host program fed "
                 "with the model's own counts, i.e. the host's fixed-point precision without the chip's deviation)",
                 f"  {'layer':<32} {'values':>10} {'≠ reference':>12} {'≠ model':>18} {'≠ model, host alone':>20}"]
        for r in self.host:
            lines.append(f"  {r.layer[:32]:<32} {r.n_values:>10} {r.vs_reference:>12} "
                         f"{mismatch_text(r.vs_model, r.n_values):>18} "
                         f"{mismatch_text(r.vs_model_host_only, r.n_values):>20}")
        if self.top1_agreement is not None:
            lines.append(f"  end task: the composed system's output argmax equals the model's in "
                         f"{self.top1_agreement[0]} / {self.top1_agreement[1]} samples")
        if self.host_precision is not None:
            lines += ["", "host part alone (fed with the model's own counts at the crossing), "
                      + self.host_precision.table()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target, "split": {"chip_until": self.cut, "chip_schedule": self.chip_schedule},
                "ok": self.ok(), "chip": self.chip.to_dict(),
                "host": {"exact": self.host_exact, "crossing_vs_model": self.crossing_vs_model,
                         "layers": [r.to_dict() for r in self.host],
                         "top1_agreement": list(self.top1_agreement) if self.top1_agreement else None,
                         "precision": self.host_precision.to_dict() if self.host_precision is not None else None}}


def verify_split(prepared, split: Split, chip_q: ir.Graph, dataset, folder, calibration_note: str = "",
                 schedules: tuple[str, ...] | None = None, runtime: str = "sim") -> SplitReport:
    """The composed system on ``dataset``: the chip part by the target's verify, the host part by
    the host program written in ``folder`` (loaded from its ``.pt2``) on the chip's counts."""
    from .api import _reference_counts, verify_prepared
    from .targets import get_target
    from .verify import _ref_key

    chip_prepared = dataclasses.replace(prepared, canonical=split.chip)
    chip_report = verify_prepared(chip_prepared, chip_q, dataset, target=split.target, schedules=schedules,
                                  runtime=runtime, calibration_note=calibration_note)
    schedule = DEPLOYED_SCHEDULE[split.target]
    chip_counts = get_target(split.target).simulate(chip_q, dataset.x, schedule=schedule).counts
    folder = Path(folder)
    program = load_host_program(folder / PROGRAM_FILE)
    got = run_host_program(folder / PROGRAM_FILE, folder / INTERFACE_FILE, chip_counts, dataset.x, program)
    given = {n: chip_counts[n] for n in split.part.to_host if n in chip_counts}
    with torch.no_grad():
        want = evaluate_given(split.host_graph, dataset.x, given)
    reference = _reference_counts(prepared, dataset.x)
    keys = {n: _ref_key(reference, split.host_graph, n) for n in split.host_graph.neurons()}
    model_in = {n: reference[keys[n]] for n in given if keys.get(n)}
    alone = run_host_program(folder / PROGRAM_FILE, folder / INTERFACE_FILE, model_in, dataset.x, program) \
        if len(model_in) == len(given) else {}
    rows = []
    for n in host_neurons(split):
        g = np.asarray(got[n]).astype(np.int64)
        model = np.asarray(reference[keys[n]]).astype(np.int64) if keys.get(n) else None
        rows.append(HostRow(n, int(g.size), int((g != want[n].numpy().astype(np.int64)).sum()),
                            int((g != model).sum()) if model is not None else -1,
                            int((np.asarray(alone[n]).astype(np.int64) != model).sum())
                            if model is not None and n in alone else -1))
    host_precision = _host_precision(split, dataset.x, reference, keys, alone, calibration_note) if alone else None
    crossing = 0
    for n, counts in given.items():
        key = _ref_key(reference, split.host_graph, n)
        if key:
            crossing += int((np.asarray(counts).astype(np.int64) != np.asarray(reference[key])).sum())
    return SplitReport(split.target, split.cut, chip_report, rows, schedule, crossing, host_precision,
                       _top1(prepared, split, got, dataset.x))


def _top1(prepared, split: Split, got: dict, x):
    """Argmax agreement of the composed system's single classifier output with the model's forward."""
    outs = [n for n in split.part.from_host if not isinstance(split.host_graph.nodes[n], ir.IFNeuron)]
    if prepared.module is None or len(outs) != 1 or np.asarray(got[outs[0]]).ndim != 2:
        return None
    with torch.no_grad():
        model = prepared.module(torch.as_tensor(np.asarray(x), dtype=torch.float32))
    if not isinstance(model, torch.Tensor) or tuple(model.shape) != np.asarray(got[outs[0]]).shape:
        return None
    agree = np.asarray(got[outs[0]]).argmax(1) == model.numpy().argmax(1)
    return int(agree.sum()), int(agree.size)


def _host_precision(split: Split, x, reference: dict, keys: dict, alone: dict, note: str):
    """The sim precision analysis (:func:`precision.precision`, teacher-forced) of the host part:
    every mismatch of the host program fed with the model's counts, classified (at a rounding
    boundary / propagated / unexplained); the chip layers are the model's counts there."""
    from .precision import precision

    g = split.host_graph
    model = {n: np.asarray(reference[keys[n]]).astype(np.int64) for n in g.neurons() if keys.get(n)}
    host = set(host_neurons(split))
    if not host <= set(model):
        return None
    full = {n: (np.asarray(alone[n]).astype(np.int64) if n in host else model[n]) for n in model}
    rep = precision(g, x, model, full, calibration=note)
    rep.layers = [lr for lr in rep.layers if lr.layer in host]
    return rep


def run_composed(out_dir, chip_counts: dict, x) -> dict[str, np.ndarray] | None:
    """For a ``--host-rest`` artefact folder, the host program on the chip's counts (and ``x``):
    {host layer or output: values}; None for a folder without a host part."""
    import json

    folder = Path(out_dir)
    if not (folder / HOST_GRAPH_FILE).is_file() or not (folder / INTERFACE_FILE).is_file():
        return None
    desc = json.loads((folder / INTERFACE_FILE).read_text())
    missing = [t["name"] for t in desc["to_host"] if t["kind"] != "network input (float)" and t["name"] not in chip_counts]
    if missing:
        raise NeurodeployError(f"the chip run has no counts for {', '.join(missing)}, which the host program reads",
                               fix=f"recompile {folder} (its chip and host parts do not belong together)")
    return run_host_program(folder / PROGRAM_FILE, desc, chip_counts, x)
