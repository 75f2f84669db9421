"""Time-stepped SNNs from snnTorch, SpikingJelly and sinabs → IR with :class:`ir.LIFNeuron`.

How a model enters: :func:`from_timestepped` runs the model's own forward once on an example
batch with forward hooks on its *leaf* modules (the recognised neuron modules are leaves, their
insides are not looked at). The order of the first calls gives the chain of layers; a module that
the forward calls T times (a loop over timesteps, as snnTorch tutorials write it) is single-step,
one called once on all T steps (SpikingJelly ``step_mode='m'`` ``[T, N, ...]``, sinabs
``[N, T, ...]``, sinabs ``...Squeeze`` ``[N·T, ...]``) multi-step. Between two recorded modules
the tensor must be the previous module's output (reshapes and flattens are allowed and become
Reshape nodes); anything else the forward does between modules (residual adds, functional
pooling, scaling) is refused by name, since the walker cannot see it. Supported: chains of
Linear / Conv1d / Conv2d / BatchNorm / AvgPool2d / sinabs SumPool2d and the neurons below.

Neuron modules recognised (equations: :class:`ir.LIFNeuron`; frameworks are detected by class
name and module path, never imported here):

* snnTorch ``Leaky`` (``snntorch/_neurons/leaky.py``, ``Leaky.forward``: ``self.reset =
  self.mem_reset(self.mem)`` then ``self.mem = self.state_function(input_)``; ``_base_sub``:
  ``beta.clamp(0, 1) * mem + input_ - reset * threshold``; ``_base_zero``: ``mem = (1 - reset) *
  mem`` first; ``neurons.py`` ``fire``: ``spike_grad(mem - threshold)``, Heaviside ``> 0``).
* snnTorch ``Synaptic`` (``snntorch/_neurons/synaptic.py``: as ``Leaky`` plus a current, ``syn =
  alpha.clamp(0, 1) * syn + input_``, ``mem = beta.clamp(0, 1) * mem + syn``; ``_base_zero``
  zeroes the updated membrane; see :class:`ir.LIFNeuron`, "Synaptic current").
* SpikingJelly ``IFNode`` / ``LIFNode`` (``activation_based/neuron.py``: ``IFNode.neuronal_charge``
  ``v = v + x``; ``LIFNode`` ``neuronal_charge_decay_input_reset0``: ``v = v + (x - v) / tau``,
  ``..._no_decay_input_reset0``: ``v = v * (1 - 1 / tau) + x``; ``BaseNode.neuronal_fire``:
  ``surrogate(v - v_threshold)``, Heaviside ``>= 0``; ``neuronal_reset``: soft ``v - spike *
  v_threshold`` when ``v_reset is None``, hard ``(1 - spike) * v + spike * v_reset``).
* sinabs ``IAF`` / ``LIF`` / ``IAFSqueeze`` / ``LIFSqueeze`` (``layers/functional/lif.py``
  ``lif_forward_single``; ``activation/spike_generation.py`` ``MultiSpike``: ``(v_mem > 0) *
  trunc(v_mem / θ)``, ``SingleSpike``: ``v_mem - θ >= 0``; ``reset_mechanism.py``
  ``MembraneSubtract`` / ``MembraneReset``; ``min_v_mem`` clip).
* A plain-torch LIF module (no framework needed) whose class sets ``neurodeploy_lif = True`` and
  that has ``beta``, ``threshold``, ``reset_mechanism`` ('subtract' | 'zero') and ``reset_delay``
  (bool) attributes and a ``reset_state()`` method: read with snnTorch ``Leaky``'s equations (strict
  firing ``mem > threshold``; the reset ``r = (mem_prev > threshold)`` subtracted one step later when
  ``reset_delay``, as Leaky's default), which the module must compute itself
  (``examples/digits_lif.py`` ``LIF`` is the reference form). ``multi_spike = True`` (with
  ``reset_delay=False``, subtract): sinabs' MultiSpike instead, ``floor(mem/θ)`` spikes where
  ``mem >= θ``, subtracted in the same step.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .. import ir
from ..errors import NeurodeployError, UnsupportedOpError

EXAMPLE_BATCH = 3
SNNTORCH_OTHER = ("Synaptic", "RLeaky", "RSynaptic", "Alpha", "Lapicque", "SLSTM", "SConv2dLSTM",
                  "LeakyParallel", "StateLeaky", "LinearLeaky", "LeakyKernel")


def _family(m: nn.Module) -> str:
    return type(m).__module__.split(".")[0]


def is_plain_lif(m: nn.Module) -> bool:
    return getattr(type(m), "neurodeploy_lif", False) is True


def is_neuron_module(m: nn.Module) -> bool:
    if is_plain_lif(m):
        return True
    fam, name = _family(m), type(m).__name__
    if fam == "snntorch":
        return name == "Leaky" or name in SNNTORCH_OTHER
    if fam == "spikingjelly":
        return name.endswith("Node")
    if fam == "sinabs":
        return name in ("IAF", "LIF", "IAFSqueeze", "LIFSqueeze", "IAFRecurrent", "LIFRecurrent", "ALIF",
                        "ExpLeak", "ExpLeakSqueeze")
    return False


def _scalar(v, what: str, path: str) -> float:
    a = np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
    if a.size > 1 and np.all(a == a.reshape(-1)[0]):
        a = a.reshape(-1)[:1]  # per-neuron tensor of one value (snnTorch's NIR export needs that form)
    if a.size != 1:
        raise UnsupportedOpError(f"{what} is per neuron ({a.size} values); only a single value is supported",
                                 layer=path, fix=f"use one {what} per layer")
    return float(a.reshape(()))


def _array_or_scalar(v) -> float | np.ndarray:
    a = np.asarray(v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v, dtype=np.float64)
    return float(a.reshape(())) if a.size == 1 else a


def _refuse(path: str, what: str, nearest: str):
    raise UnsupportedOpError(f"{what} cannot be represented as a time-stepped LIF/IF neuron", layer=path,
                             fix=f"nearest supported form: {nearest}")


def neuron_from_snntorch(m: nn.Module, path: str) -> ir.LIFNeuron:
    name = type(m).__name__
    if name not in ("Leaky", "Synaptic"):
        _refuse(path, f"snnTorch {name}", "snntorch.Leaky or Synaptic (no recurrence, no second-order kernel)")
    if getattr(m, "inhibition", False) or getattr(m, "state_quant", False):
        _refuse(path, f"snnTorch {name} with inhibition or state_quant", f"snntorch.{name}(inhibition=False, "
                "state_quant=False)")
    if _scalar(m.graded_spikes_factor, "graded_spikes_factor", path) != 1.0:
        _refuse(path, f"snnTorch {name} with graded_spikes_factor != 1", f"snntorch.{name}(graded_spikes_factor=1)")
    beta = _array_or_scalar(torch.as_tensor(m.beta).clamp(0, 1))
    alpha = _array_or_scalar(torch.as_tensor(m.alpha).clamp(0, 1)) if name == "Synaptic" else None
    reset = {"subtract": "subtract", "zero": "zero", "none": "none"}[m._reset_mechanism]
    return ir.LIFNeuron(beta=beta, gain=1.0, threshold=_scalar(m.threshold, "threshold", path), reset=reset,
                        firing="strict", reset_timing="next_step" if m.reset_delay else "same_step",
                        v_init=0.0, alpha=alpha, source=path, meta={"framework": "snntorch", "module": name})


def neuron_from_spikingjelly(m: nn.Module, path: str) -> ir.LIFNeuron:
    name = type(m).__name__
    if name not in ("IFNode", "LIFNode"):
        _refuse(path, f"SpikingJelly {name}", "spikingjelly IFNode or LIFNode (fixed tau)")
    v_reset = m.v_reset
    if v_reset is not None and float(v_reset) != 0.0:
        _refuse(path, f"SpikingJelly {name} with v_reset={v_reset}", f"{name}(v_reset=0.0) or v_reset=None")
    beta, gain = 1.0, 1.0
    if name == "LIFNode":
        tau = float(m.tau)
        beta = 1.0 - 1.0 / tau
        gain = 1.0 / tau if m.decay_input else 1.0
    return ir.LIFNeuron(beta=beta, gain=gain, threshold=float(m.v_threshold),
                        reset="subtract" if v_reset is None else "zero", firing="non_strict",
                        reset_timing="same_step", v_init=0.0, source=path,
                        meta={"framework": "spikingjelly", "module": name, "step_mode": m.step_mode})


def neuron_from_sinabs(m: nn.Module, path: str) -> ir.LIFNeuron:
    name = type(m).__name__
    if name not in ("IAF", "LIF", "IAFSqueeze", "LIFSqueeze"):
        _refuse(path, f"sinabs {name}", "sinabs IAF / LIF (or their Squeeze forms) without recurrence")
    if getattr(m, "tau_syn", None) is not None:
        _refuse(path, f"sinabs {name} with tau_syn (synaptic current)", f"sinabs {name}(tau_syn=None)")
    spike_fn = getattr(m.spike_fn, "__name__", type(m.spike_fn).__name__)
    firing = {"MultiSpike": "multi", "SingleSpike": "non_strict"}.get(spike_fn)
    if firing is None:
        _refuse(path, f"sinabs {name} with spike_fn {spike_fn}", "spike_fn=MultiSpike or SingleSpike")
    theta = _scalar(m.spike_threshold, "spike_threshold", path)
    rf = m.reset_fn
    if type(rf).__name__ == "MembraneSubtract" and rf.subtract_value in (None, theta):
        reset = "subtract"
    elif type(rf).__name__ == "MembraneReset" and float(rf.reset_value) == 0.0:
        reset = "zero"
    else:
        _refuse(path, f"sinabs {name} with reset_fn {rf!r}", "MembraneSubtract() or MembraneReset(reset_value=0)")
    if name.startswith("IAF"):
        beta, gain = 1.0, 1.0
    else:
        alpha = _array_or_scalar(m.alpha_mem_calculated)
        beta, gain = alpha, (1.0 - alpha if m.norm_input else 1.0)
    v_min = None if m.min_v_mem is None else _scalar(m.min_v_mem, "min_v_mem", path)
    return ir.LIFNeuron(beta=beta, gain=gain, threshold=theta, reset=reset, firing=firing,
                        reset_timing="same_step", v_init=0.0, v_min=v_min, source=path,
                        meta={"framework": "sinabs", "module": name})


def neuron_from_plain(m: nn.Module, path: str) -> ir.LIFNeuron:
    """A ``neurodeploy_lif`` module: snnTorch Leaky's equations (see the module docstring)."""
    reset = getattr(m, "reset_mechanism", None)
    if reset not in ("subtract", "zero"):
        _refuse(path, f"plain LIF module with reset_mechanism={reset!r}", "reset_mechanism='subtract' or 'zero'")
    beta = _array_or_scalar(torch.as_tensor(m.beta).clamp(0, 1))
    multi = bool(getattr(m, "multi_spike", False))
    if multi and (m.reset_delay or reset != "subtract"):
        _refuse(path, "plain LIF module with multi_spike and a delayed or zero reset",
                "multi_spike=True with reset_mechanism='subtract', reset_delay=False (sinabs IAF)")
    return ir.LIFNeuron(beta=beta, gain=1.0, threshold=_scalar(torch.as_tensor(m.threshold), "threshold", path),
                        reset=reset, firing="multi" if multi else "strict",
                        reset_timing="next_step" if m.reset_delay else "same_step",
                        v_init=0.0, source=path, meta={"framework": "neurodeploy_lif", "module": type(m).__name__})


def neuron_node(m: nn.Module, path: str) -> ir.LIFNeuron:
    if is_plain_lif(m):
        return neuron_from_plain(m, path)
    return {"snntorch": neuron_from_snntorch, "spikingjelly": neuron_from_spikingjelly,
            "sinabs": neuron_from_sinabs}[_family(m)](m, path)


def _arr(t) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().numpy().astype(np.float64)


def layer_node(m: nn.Module, path: str) -> ir.Node | None:
    """IR node of a non-neuron leaf; None for shape-only modules (they become Reshape nodes)."""
    if isinstance(m, nn.Linear):
        return ir.Linear(weight=_arr(m.weight), bias=_arr(m.bias), source=path)
    if isinstance(m, (nn.Conv2d, nn.Conv1d)):
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            raise UnsupportedOpError(f"convolution padding {m.padding!r} / {m.padding_mode!r}", layer=path,
                                     fix="use integer zero padding")
        if isinstance(m, nn.Conv2d):
            return ir.Conv2d(weight=_arr(m.weight), bias=_arr(m.bias), stride=m.stride, padding=m.padding,
                             dilation=m.dilation, groups=m.groups, source=path)
        return ir.Conv1d(weight=_arr(m.weight), bias=_arr(m.bias), stride=m.stride[0], padding=m.padding[0],
                         dilation=m.dilation[0], groups=m.groups, source=path)
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return ir.BatchNorm(mean=_arr(m.running_mean), var=_arr(m.running_var), weight=_arr(m.weight),
                            bias=_arr(m.bias), eps=float(m.eps), source=path)
    if isinstance(m, nn.AvgPool2d):
        if not m.count_include_pad or m.ceil_mode or m.divisor_override:
            raise UnsupportedOpError("AvgPool2d with ceil_mode / divisor_override / count_include_pad=False",
                                     layer=path, fix="use nn.AvgPool2d(kernel, stride, padding) defaults")
        return ir.AvgPool2d(kernel=m.kernel_size, stride=m.stride, padding=m.padding, source=path)
    if type(m).__name__ == "SumPool2d" and _family(m) == "sinabs":
        return ir.SumPool2d(kernel=m.kernel_size, stride=m.stride, source=path)
    if isinstance(m, (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout)) or \
            (_family(m) == "sinabs" and type(m).__name__ in ("FlattenTime", "UnflattenTime", "Repeat")):
        return None
    if isinstance(m, (nn.MaxPool2d, nn.MaxPool1d)):
        raise UnsupportedOpError("max-pooling has no synaptic equivalent", layer=path,
                                 fix="nearest supported form: nn.AvgPool2d or sinabs SumPool2d")
    raise UnsupportedOpError(f"module {type(m).__name__} is not supported in a time-stepped model", layer=path,
                             fix="supported: Linear, Conv1d/2d, BatchNorm, AvgPool2d, SumPool2d, Flatten and "
                                 "snnTorch Leaky / SpikingJelly IF/LIFNode / sinabs IAF/LIF")


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out, inside = [], []
    for path, m in model.named_modules():
        if any(path.startswith(p) for p in inside):
            continue  # the insides of a neuron module (surrogate functions, ...)
        if is_neuron_module(m):
            out.append((path, m))
            inside.append(path + ".")
        elif not list(m.children()):
            out.append((path, m))
    return out


def reset_model_state(model: nn.Module) -> None:
    """Zero the frameworks' hidden neuron state (SpikingJelly ``reset``, sinabs ``reset_states``,
    snnTorch ``reset_mem``) so every forward starts from rest."""
    for m in model.modules():
        fam = _family(m)
        if is_plain_lif(m):
            m.reset_state()
        elif fam == "spikingjelly" and hasattr(m, "reset"):
            m.reset()
        elif fam == "sinabs" and hasattr(m, "reset_states"):
            m.reset_states()
        elif fam == "snntorch" and hasattr(m, "reset_mem"):
            m.reset_mem()


def _first_tensor(v):
    return v[0] if isinstance(v, (tuple, list)) else v


class _Recorder:
    """Forward hooks on every leaf: call order, first-call input/output, call counts."""

    def __init__(self, model: nn.Module, leaves):
        self.calls: dict[str, int] = {}
        self.order: list[str] = []
        self.first: dict[str, tuple] = {}
        self.outputs: dict[str, list] = {}
        self.handles = [m.register_forward_hook(self._hook(p)) for p, m in leaves]

    def _hook(self, path):
        def hook(module, args, output):
            out = _first_tensor(output)
            if path not in self.calls:
                self.order.append(path)
                self.first[path] = (args[0].detach() if args else None, out.detach())
            self.calls[path] = self.calls.get(path, 0) + 1
            self.outputs.setdefault(path, []).append(out.detach())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _strip(shape, lead: tuple) -> tuple:
    """Per-sample part of ``shape``: drop the leading batch/time dims ``lead`` ((N,), (T, N),
    (N, T) or (N·T,)), which must be there."""
    if len(lead) == 2 and len(shape) >= 1 and shape[0] == lead[0] * lead[1] and tuple(shape[:2]) != tuple(lead):
        return tuple(shape[1:])  # time folded into the batch (SpikingJelly SeqToANNContainer, sinabs FlattenTime)
    if tuple(shape[:len(lead)]) != tuple(lead):
        raise NeurodeployError(f"a tensor of shape {tuple(shape)} does not start with the batch/time dims "
                               f"{tuple(lead)} of the example input",
                               fix="pass input_layout matching how the model's forward takes its input")
    return tuple(shape[len(lead):])


def run_model(model: nn.Module, model_input: torch.Tensor):
    with torch.no_grad():
        reset_model_state(model)
        return model(model_input)


def from_timestepped(model: nn.Module, model_input: torch.Tensor, timesteps: int, *,
                     input_layout: str = "static") -> ir.Graph:
    """IR graph of a time-stepped SNN ``model`` (see the module docstring).

    ``model_input``: a batch exactly as the model's forward takes it; ``input_layout`` says how
    it relates to the graph's data ``x`` ``[N, T, ...]``: ``'static'`` (the forward takes ``[N, ...]``
    and loops T times itself), ``'NT'`` (``[N, T, ...]``), ``'TN'`` (``[T, N, ...]``), ``'N*T'``
    (``[N·T, ...]``, batch-major, sinabs Squeeze)."""
    if input_layout not in INPUT_LAYOUTS:
        raise NeurodeployError(f"unknown input layout {input_layout!r}", fix=f"use one of {', '.join(INPUT_LAYOUTS)}")
    T = int(timesteps)
    N = model_input.shape[0] // T if input_layout == "N*T" else model_input.shape[1 if input_layout == "TN" else 0]
    model.eval()
    leaves = _leaves(model)
    rec = _Recorder(model, leaves)
    try:
        run_model(model, model_input)
    finally:
        rec.close()
    modules = dict(leaves)
    order = [p for p in rec.order if is_neuron_module(modules[p]) or layer_node(modules[p], p) is not None]
    if not order:
        raise NeurodeployError("the model's forward called no supported module", fix="pass the model itself")
    modes = {p: ("step" if rec.calls[p] == T and T > 1 else "multi") for p in order}
    if len(set(modes.values())) > 1:
        raise UnsupportedOpError("some modules run once per timestep and others once on all timesteps: "
                                 + ", ".join(f"{p} ({m})" for p, m in modes.items()), layer=order[0],
                                 fix="call every layer inside the loop over timesteps, or every layer multi-step")
    mode = modes[order[0]]
    lead = (N,) if mode == "step" else {"TN": (T, N), "NT": (N, T), "N*T": (N * T,), "static": (N,)}[input_layout]
    g = ir.Graph(metadata={"timesteps": T, "model_input_layout": input_layout, "step_mode": mode})
    x0 = rec.first[order[0]][0]
    g.add("input", ir.Input(input_shape=_strip(x0.shape, lead), source="input"))
    prev, prev_out = "input", x0
    for path in order:
        m = modules[path]
        x_in, y = rec.first[path]
        if x_in.numel() != prev_out.numel() or not torch.equal(x_in.reshape(-1), prev_out.reshape(-1)):
            raise UnsupportedOpError(
                f"the forward changes the tensor between '{g.nodes[prev].source}' and '{path}' outside any module "
                "(a residual add, functional pooling or scaling?)", layer=path,
                fix="write that step as a module (nn.AvgPool2d, nn.Flatten) or keep the model a plain chain")
        shape_in = _strip(x_in.shape, lead)
        prev = _connect_reshape(g, prev, shape_in, path)
        node = neuron_node(m, path) if is_neuron_module(m) else layer_node(m, path)
        if isinstance(node, ir.LIFNeuron):
            node.meta["time_layout"] = time_layout(m, mode)
        name = g.unique_name(path.replace(".", "_") or "layer")
        g.add(name, node, [prev])
        ir.infer_shapes(g)
        if tuple(node.shape) != _strip(y.shape, lead):
            raise NeurodeployError(f"module output shape {_strip(y.shape, lead)} differs from the converted "
                                   f"{node.shape}", layer=path, fix="report this model to the neurodeploy developers")
        prev, prev_out = name, y
    g.add("output", ir.Output(source="output"), [prev])
    ir.infer_shapes(g)
    g.validate()
    return g


INPUT_LAYOUTS = ("static", "NT", "TN", "N*T")


def _connect_reshape(g: ir.Graph, prev: str, shape_in: tuple, path: str) -> str:
    ir.infer_shapes(g)
    have = tuple(g.nodes[prev].shape)
    if have == shape_in:
        return prev
    if math.prod(have) != math.prod(shape_in):
        raise NeurodeployError(f"per-sample shape changes from {have} to {shape_in} before this module",
                               layer=path, fix="keep the model a chain of modules")
    name = g.unique_name(f"reshape_{path.replace('.', '_')}")
    node = ir.Flatten(start_dim=0, source=path) if len(shape_in) == 1 else ir.Reshape(target_shape=shape_in,
                                                                                      source=path)
    g.add(name, node, [prev])
    return name


def time_layout(m: nn.Module, mode: str) -> str:
    """How a neuron module's output holds the time axis: 'step' (one call per step), 'TN'
    (SpikingJelly multi-step), 'NT' (sinabs IAF/LIF), 'N*T' (sinabs Squeeze)."""
    if mode == "step":
        return "step"
    if _family(m) == "spikingjelly":
        return "TN"
    return "N*T" if type(m).__name__.endswith("Squeeze") else "NT"


def model_input_from_x(x: torch.Tensor, T: int, layout: str) -> torch.Tensor:
    """The model's input for graph data ``x`` (``[N, T, ...]``, or ``[N, ...]`` for 'static')."""
    if layout == "static" or layout == "NT":
        return x
    if layout == "TN":
        return x.transpose(0, 1).contiguous()
    return x.reshape((-1,) + tuple(x.shape[2:]))


def model_spike_trains(model: nn.Module, graph: ir.Graph, model_input: torch.Tensor) -> dict[str, np.ndarray]:
    """Spike trains ``[N, T, *shape]`` of every LIF layer, from the model's own forward."""
    T = ir.timesteps(graph)
    by_path = {graph.nodes[n].source: n for n in graph.nodes if isinstance(graph.nodes[n], ir.LIFNeuron)}
    leaves = [(p, m) for p, m in model.named_modules() if p in by_path]
    rec = _Recorder(model, leaves)
    try:
        run_model(model, model_input)
    finally:
        rec.close()
    out = {}
    for path, name in by_path.items():
        node, outs = graph.nodes[name], rec.outputs[path]
        layout = node.meta.get("time_layout", "step")
        if layout == "step":
            a = torch.stack(outs, 1)
        elif layout == "TN":
            a = outs[0].transpose(0, 1)
        elif layout == "NT":
            a = outs[0]
        else:
            a = outs[0].reshape((-1, T) + tuple(outs[0].shape[1:]))
        out[name] = a.reshape((a.shape[0], T) + tuple(node.shape)).double().numpy()
    return out
