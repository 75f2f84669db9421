"""Loihi 2 target via Lava / NetX (lava-nc 0.10.0, lava-dl 0.6.0).

Importing this package never imports Lava: only :func:`runner.run_lava` (and therefore
``verify_lava`` and ``run_artifact(runtime='lava')``) does, inside the function.

Pipeline: canonical graph -> :func:`quantize.quantize` (8-bit weights, 17-bit vThMant, 24-bit
state) -> :func:`program.lower` (NetX layers + layer-synchronous schedule) -> ``network.net``
(NetX HDF5) + ``loihi.json`` (neuron model, schedule, quantisation report).

Neuron realisation: NetX ``CUBA`` layers (iDecay 4096: no current persistence; vDecay 0: the
membrane integrates) whose ``LIF`` processes are run with the custom process model
:class:`lava_models.PySfaIfModel` (Lava's bit-accurate CUBA arithmetic + subtractive reset + a
per-layer firing window + a one-shot initial membrane). One sample takes ``1 + Σ_l D_l``
timesteps (see :mod:`.program`); in graded-spike mode (``mode='graded'``) ``1 + L``.

Entry points: ``LoihiTarget().check/quantize/lower/emit/simulate/run_artifact``,
:func:`run_artifact` (``runtime='lava'|'sim'``), :func:`verify_lava`,
:func:`simulate.traffic` (messages / synaptic ops, unary vs graded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ... import ir
from ...artifacts import write_json
from ...errors import NeurodeployError
from ..base import Target
from .program import Program, lower, quantize_input
from .simulate import LoihiSimResult, simulate_program

NET_FILE = "network.net"
SIDECAR = "loihi.json"
FORMAT = "neurodeploy-loihi/1"

NEURON_MODEL = {
    "name": "sfa_if_subtractive_layer_sync",
    "netx_neuron_type": "CUBA",
    "iDecay": 4096,
    "vDecay": 0,
    "lava_process": "lava.proc.lif.process.LIF (built by netx.hdf5.Network)",
    "lava_process_model": "neurodeploy.targets.loihi.lava_models.PySfaIfModel",
    "run_cfg": "Loihi2SimCfg(select_tag='fixed_pt', exception_proc_model_map={LIF: PySfaIfModel})",
    "arithmetic": "u = wrap24(a_in << 6); v = clip24(v + u); spike if v > vThMant << 6 inside the "
                  "layer's window; on spike v -= (vThMant + 1) << 6; at the sample's first step "
                  "u = 0, v = (v_init + bias) << 6",
    "hardware": "CPU simulation only. On Loihi 2 silicon this needs a custom neuron microcode "
                "program (subtractive reset, gated window, one-shot initial membrane); the stock "
                "CUBA neuron resets v to 0 and adds its bias every step.",
}


def _x_numpy(x):
    import numpy as np
    import torch
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def check_input(x, quantization: dict | None, input_name: str | None = None) -> None:
    """Refuse inputs outside the range the program was quantised for (the check the simulator does)."""
    from ...data import check_input_range, quantized_input_range

    rng = quantized_input_range(quantization)
    if rng is not None:
        check_input_range(_x_numpy(x), rng, layer=input_name,
                          fix="compile with --calibration data that covers these inputs")


CHAIN_LIMIT = "a chain of Conv2d/Linear + IF neuron layers, SumPool2d, Flatten"
_KIND_FIX = {
    "Add": "residual sums need branches, which a NetX .net cannot hold: use the 'sim' target, or deploy "
           "the chain before the first residual (--until)",
    "Conv1d": "express the token MLP as a 1x1 Conv2d or a Linear layer",
    "HostOp": "run it on the host: deploy the part before it (--until)",
    "Reshape": "use a Flatten before a Linear layer",
}


def violation(layer: str, rule: str, actual: str, limit: str, fix: str) -> str:
    """One Loihi design-rule violation in the format every target uses."""
    return f"layer '{layer}': {rule}: is {actual}, Loihi/NetX allows {limit} -- fix: {fix}"


def _structural_violations(g: ir.Graph, name: str, node) -> list[str]:
    out = []
    if isinstance(node, (ir.Add, ir.Conv1d, ir.HostOp, ir.Reshape, ir.BatchNorm, ir.Scale, ir.AvgPool2d)):
        out.append(violation(name, "layer type", f"{node.kind} (not supported by the Loihi/NetX target)",
                             CHAIN_LIMIT, _KIND_FIX.get(node.kind, "canonicalise the graph "
                                                        "(neurodeploy.passes.canonicalize folds it)")))
    cons = g.consumers_of(name)
    if len(cons) > 1:
        out.append(violation(name, "fan-out", f"{len(cons)} consumers {cons}", "1 (NetX .net files are chains)",
                             "deploy a chain network (no branches or residuals), or use the 'sim' target"))
    if isinstance(node, (ir.Conv2d, ir.Linear)):
        if not cons or not isinstance(g.nodes[cons[0]], ir.IFNeuron):
            nxt = f"followed by {g.nodes[cons[0]].kind} '{cons[0]}'" if cons else "the last layer"
            out.append(violation(name, "weight layer without IF neuron", nxt,
                                 "every weight layer followed by an IF neuron (a NetX layer is synapse + "
                                 "spiking neuron)", "end the deployed part at an activation (--until "
                                 "<activation module>) and apply this layer on the host"))
        if isinstance(node, ir.Conv2d) and any(d < 1 for d in node.dilation):
            out.append(violation(name, "dilation", str(tuple(node.dilation)), ">= 1 in both dimensions",
                                 "fix the model's dilation"))
    return out


def _numerical_violations(name: str, node) -> list[str]:
    if isinstance(node, (ir.Conv2d, ir.Linear)) and node.weight is not None:
        import numpy as np

        if not np.any(np.asarray(node.weight)):
            return [violation(name, "weights", "all zero", "at least one non-zero weight (NetX cannot load "
                              "an all-zero layer)", "check the checkpoint: this layer was not trained/loaded")]
    return []


class LoihiTarget(Target):
    name = "loihi"

    # -- design rules ---------------------------------------------------------------------------
    def check(self, graph: ir.Graph) -> list[str]:
        """Every violation (layer, rule, actual value, the NetX/Loihi limit, fix): structural rules and
        the per-layer numerical ones together; quantisation is tried too when the structure allows."""
        g = graph.copy()
        try:
            ir.infer_shapes(g)
        except NeurodeployError as e:
            return [str(e)]
        problems: list[str] = []
        for name, node in g.nodes.items():
            problems += _structural_violations(g, name, node)
            problems += _numerical_violations(name, node)
        if not problems:
            try:
                self.quantize(g)
            except NeurodeployError as e:
                problems.append(str(e))
        return problems

    # -- stages ---------------------------------------------------------------------------------
    def quantize(self, graph: ir.Graph, calibration=None, **options) -> ir.Graph:
        from .quantize import quantize
        return quantize(graph, calibration, **options)

    def lower(self, graph: ir.Graph, calibration=None, mode: str = "spikes", **options) -> Program:
        q = graph if graph.is_quantized else self.quantize(graph, calibration, **options)
        return lower(q, mode=mode)

    def map(self, graph: ir.Graph, **options) -> dict[str, Any]:
        prog = self.lower(graph, **options)
        return {"netx_layers": [{"name": l.name, "kind": l.kind, "shape": list(l.out_shape)}
                                for l in prog.layers]}

    def emit(self, graph: ir.Graph, out_dir: Path, calibration=None, mode: str = "spikes",
             **options) -> dict[str, Path]:
        """Write ``network.net`` (NetX HDF5) and ``loihi.json`` into ``out_dir``. ``mode``:
        'spikes' (unary spikes, 1 + Σ D timesteps per sample) or 'graded' (one graded spike
        carrying the count per neuron and layer, 1 + L timesteps)."""
        from .netx import write_net
        from ...artifacts import atomic_write

        q = graph if graph.is_quantized else self.quantize(graph, calibration, **options)
        prog = lower(q, mode=mode)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        net_path = atomic_write(out_dir / NET_FILE, lambda tmp: write_net(prog, tmp))
        side = sidecar(prog, q)
        side_path = write_json(out_dir / SIDECAR, side)
        return {"netx": net_path, "loihi_sidecar": side_path}

    def simulate(self, graph: ir.Graph, x, calibration=None, record: bool = True,
                 mode: str = "spikes", **options) -> LoihiSimResult:
        """Bit-accurate Loihi simulation (Lava fixed_pt arithmetic) of a batch ``x``. An
        unquantised graph is quantised first with ``calibration`` (default: ``x`` itself)."""
        q = graph if graph.is_quantized else self.quantize(
            graph, x if calibration is None else calibration, **options)
        prog = lower(q, mode=mode)
        check_input(x, q.metadata.get("quantization"), prog.input_name)
        return simulate_program(prog, quantize_input(prog, x), record=record)

    def run_artifact(self, out_dir, x, runtime: str = "lava", record: bool = True) -> LoihiSimResult:
        return run_artifact(out_dir, x, runtime=runtime, record=record)


def sidecar(prog: Program, qgraph: ir.Graph | None = None) -> dict:
    import importlib.metadata as md

    def ver(d):
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            return None

    return {
        "format": FORMAT,
        "net": NET_FILE,
        "lava": {"lava-nc": ver("lava-nc") or "0.10.0 (not installed here)",
                 "lava-dl": ver("lava-dl") or "0.6.0 (not installed here)",
                 "select_tag": "fixed_pt"},
        "neuron_model": NEURON_MODEL,
        "schedule": prog.describe_schedule() | {
            "samples": "sample k occupies steps k*T+1 .. k*T+T (T = timesteps_per_sample)"},
        "input": {"name": prog.input_name, "shape": list(prog.input_shape),
                  "scale_q": prog.input_scale, "is_spikes": prog.input_is_spikes,
                  "message_bits": prog.input_message_bits,
                  "encoding": "one graded spike per input element at the sample's first step, "
                              "payload round(x * scale_q) (round half to even)"},
        "layers": [{"name": l.name, "kind": l.kind, "shape": list(l.out_shape), "D": l.D,
                    "vThMant": l.vth, "threshold_q": l.threshold, "v_init_q": l.v_init,
                    "window": [l.window_start, l.window_start + l.D - 1], "sources": l.sources,
                    "passthrough_pool": l.passthrough} for l in prog.layers],
        "output": prog.output_name,
        "quantization": (qgraph.metadata.get("quantization") if qgraph is not None else None),
    }


def load_artifact(out_dir) -> tuple[Program, dict]:
    from .netx import read_net

    out_dir = Path(out_dir)
    side_path, net_path = out_dir / SIDECAR, out_dir / NET_FILE
    if not net_path.is_file() or not side_path.is_file():
        raise NeurodeployError(f"{out_dir} is not a Loihi artefact (needs {NET_FILE} and {SIDECAR})",
                               fix="create it with `neurodeploy compile ... --target loihi`")
    side = _read_sidecar(side_path)
    try:
        prog = read_net(net_path)
    except (OSError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise NeurodeployError(f"{net_path} is damaged or was not written by neurodeploy: {e}",
                               fix="re-run `neurodeploy compile ... --target loihi`") from None
    inp = side["input"]
    if tuple(inp["shape"]) != tuple(prog.input_shape):
        raise NeurodeployError(f"{side_path} says the input is {tuple(inp['shape'])}, {net_path} says "
                               f"{tuple(prog.input_shape)}", fix="re-run `neurodeploy compile ... --target loihi`")
    prog.input_name = inp["name"]
    prog.output_name = side.get("output", prog.output_name)
    prog.input_is_spikes = bool(inp["is_spikes"])
    prog.input_scale = None if prog.input_is_spikes else inp["scale_q"]
    return prog, side


def _read_sidecar(side_path: Path) -> dict:
    import json

    fix = "re-run `neurodeploy compile ... --target loihi`"
    try:
        side = json.loads(side_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeurodeployError(f"{side_path} is not readable JSON: {e}", fix=fix) from None
    if not isinstance(side, dict) or side.get("format") != FORMAT:
        found = side.get("format") if isinstance(side, dict) else type(side).__name__
        raise NeurodeployError(f"{side_path}: unknown format {found!r} (expected {FORMAT!r})", fix=fix)
    inp = side.get("input")
    need = {"name": str, "shape": list, "is_spikes": bool}
    if not isinstance(inp, dict) or any(not isinstance(inp.get(k), t) for k, t in need.items()):
        raise NeurodeployError(f"{side_path}: the 'input' entry must be an object with name, shape, is_spikes "
                               "and scale_q", fix=fix)
    if not inp["is_spikes"] and not (isinstance(inp.get("scale_q"), (int, float))
                                     and not isinstance(inp.get("scale_q"), bool) and inp["scale_q"] > 0):
        raise NeurodeployError(f"{side_path}: input scale_q must be a positive number, not {inp.get('scale_q')!r}",
                               fix=fix)
    return side


def run_artifact(out_dir, x, runtime: str = "lava", record: bool = True) -> LoihiSimResult:
    """Run a Loihi artefact folder on a batch of real inputs ``x`` with ``runtime`` 'lava' (Lava
    fixed_pt CPU simulation) or 'sim' (the bit-accurate simulator)."""
    prog, side = load_artifact(out_dir)
    check_input(x, side.get("quantization"), prog.input_name)
    xi = quantize_input(prog, _x_numpy(x))
    if runtime == "sim":
        return simulate_program(prog, xi, record=record)
    if runtime == "lava":
        from .runner import run_lava
        return run_lava(Path(out_dir) / NET_FILE, prog, xi, record=record)
    raise NeurodeployError(f"unknown runtime {runtime!r}", fix="use 'lava' or 'sim'")


def verify_lava(target, x, calibration=None, raise_on_mismatch: bool = False,
                mode: str = "spikes", **options) -> dict:
    """Run ``target`` (artefact folder or canonical graph) in Lava fixed_pt and in the simulator
    on ``x``; see :func:`.verify.verify_lava`."""
    from .verify import verify_lava as _v
    return _v(target, x, calibration=calibration, raise_on_mismatch=raise_on_mismatch, mode=mode,
              **options)


__all__ = ["LoihiTarget", "LoihiSimResult", "run_artifact", "verify_lava", "load_artifact",
           "sidecar", "NET_FILE", "SIDECAR"]
