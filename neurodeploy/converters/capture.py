"""Reference spike counts from the model's OWN forward pass.

:func:`capture_counts` runs the user's model (its own activation code) in float64 and reads, for
each IF neuron of the IR graph, the activation's output ``a = n / norm``; it returns
``n = round(a * norm)``. This is what ``verify`` compares the simulators against.

Where the IR neuron came from a module that *is* the activation (``node.meta['hook']``, set by the
tracer), a forward hook on that module reads its output. Otherwise the model is exported again
(in float64) and run with a ``torch.fx.Interpreter``, reading the value of the ATen node named in
``node.meta['aten']``.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from .. import ir
from ..errors import NeurodeployError
from .quiet import quiet_export

INTEGER_TOL = 1e-6


class _Recorder(torch.fx.Interpreter):
    def __init__(self, gm, wanted):
        super().__init__(gm)
        self.wanted = set(wanted)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n):
        out = super().run_node(n)
        if n.name in self.wanted and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach().clone()
        return out


def _as_double(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return torch.as_tensor(x).to(torch.float64)


def _interpret(module, x: torch.Tensor, wanted: list[str]) -> dict[str, torch.Tensor]:
    """Run the model's exported ATen graph in float64 and record the values of ``wanted`` nodes."""
    if isinstance(module, torch.export.ExportedProgram):
        gm = module.module()
        gm = gm.double() if hasattr(gm, "double") else gm
        ph = next(n for n in module.graph.nodes if n.op == "placeholder" and n.name in
                  [s.arg.name for s in module.graph_signature.input_specs if s.kind.name == "USER_INPUT"])
        b = int(ph.meta["val"].shape[0])
        parts = []
        for i in range(0, x.shape[0], b):  # the program has a fixed batch size: run in chunks of b
            chunk = x[i:i + b]
            real = chunk.shape[0]
            if real < b:  # pad the last chunk with copies of its last sample
                chunk = torch.cat([chunk, chunk[-1:].expand((b - real,) + tuple(chunk.shape[1:]))])
            rec = _Recorder(gm, wanted)
            with torch.no_grad():
                rec.run(chunk)
            parts.append({k: v[:real] for k, v in rec.values.items()})
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(module, torch.jit.ScriptModule):
        from torch._export.converter import TS2EPConverter
        with quiet_export():
            ep = TS2EPConverter(copy.deepcopy(module).double(), (x,)).convert()
    else:
        model = copy.deepcopy(module).double().eval()
        with torch.no_grad(), quiet_export():
            ep = torch.export.export(model, (x,))
    rec = _Recorder(ep.module(), wanted)
    with torch.no_grad():
        rec.run(x)
    return rec.values


def capture_outputs(module, graph: ir.Graph, x) -> dict[str, torch.Tensor]:
    """Each IF neuron's activation output ``n / norm`` from the model's own forward (float64), in
    the IR's layout (token-major activations, ``meta['transposed']``, are transposed back)."""
    x = _as_double(x)
    neurons = graph.neurons()
    if not neurons:
        return {}
    order = {name: i for i, name in enumerate(graph.topo_order())}
    hooked: dict[str, list[str]] = {}
    via_aten: list[str] = []
    named = dict(module.named_modules()) if isinstance(module, nn.Module) and \
        not isinstance(module, torch.jit.ScriptModule) else {}
    for name in neurons:
        node = graph.nodes[name]
        if node.meta.get("hook") and node.source in named:
            hooked.setdefault(node.source, []).append(name)
        elif node.meta.get("aten"):
            via_aten.append(name)
        elif node.source in named:
            hooked.setdefault(node.source, []).append(name)
        else:
            raise NeurodeployError("cannot find this neuron's activation in the model", layer=name,
                                   fix="convert the model with neurodeploy's tracer (from_torch) so that the "
                                       "neuron records its module path / ATen node")
    out: dict[str, torch.Tensor] = {}
    if hooked:
        model = copy.deepcopy(module).double().eval()
        mods = dict(model.named_modules())
        record: dict[str, list] = {p: [] for p in hooked}
        handles = []
        for p in hooked:
            def hook(_m, _inp, output, p=p):
                record[p].append(output.detach().clone() if isinstance(output, torch.Tensor) else output)
            handles.append(mods[p].register_forward_hook(hook))
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
        for p, names in hooked.items():
            got = record[p]
            names = sorted(names, key=lambda n: (graph.nodes[n].meta.get("order", 0), order[n]))
            if len(got) != len(names):
                # the module is called a different number of times than it has neurons: use ATen values
                via_aten.extend(n for n in names if graph.nodes[n].meta.get("aten"))
                if any(not graph.nodes[n].meta.get("aten") for n in names):
                    raise NeurodeployError(f"module '{p}' ran {len(got)} time(s) but has {len(names)} neuron(s)",
                                           layer=p)
                continue
            for n, v in zip(names, got):
                out[n] = v.transpose(-1, -2) if graph.nodes[n].meta.get("transposed") else v
    if via_aten:
        wanted = {n: graph.nodes[n].meta["aten"] for n in via_aten}
        vals = _interpret(module, x, list(wanted.values()))
        for n, aten in wanted.items():
            if aten not in vals:
                raise NeurodeployError(f"ATen node '{aten}' not found when re-running the model", layer=n,
                                       fix="convert the model again with the same code")
            v = vals[aten]
            out[n] = v.transpose(-1, -2) if graph.nodes[n].meta.get("transposed") else v
    return out


def capture_counts(module, graph: ir.Graph, x) -> dict[str, np.ndarray]:
    """Spike counts ``round(a * norm)`` (int64) of every IF neuron, from the model's own forward.

    Raises :class:`NeurodeployError` if an activation is not an integer multiple of ``1/norm``
    (wrong norm or not an SFA activation).
    """
    outs = capture_outputs(module, graph, x)
    counts = {}
    for name, v in outs.items():
        node = graph.nodes[name]
        scaled = v.to(torch.float64) * float(node.norm)
        n = torch.round(scaled)
        err = (scaled - n).abs().max().item() if scaled.numel() else 0.0
        if err > INTEGER_TOL:
            raise NeurodeployError(
                f"the model's activation output is not an integer multiple of 1/norm (norm={node.norm:g}; "
                f"max deviation {err:.3g})", layer=name,
                fix="check the norm (pass spike={'norm': N}) or that this is an SFA activation")
        counts[name] = n.to(torch.int64).cpu().numpy()
    return counts
