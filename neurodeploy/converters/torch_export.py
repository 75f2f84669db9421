"""PyTorch front end: ``torch.export`` → neurodeploy IR.

The model is traced with ``torch.export.export`` (``torch.fx.symbolic_trace`` fails on real SFA
code, which reads ``x.shape`` into Python ints). The ATen graph is walked in order and every op is
mapped to IR nodes:

* weight ops (conv1d/conv2d incl. grouped/depthwise, linear/addmm/matmul with a parameter),
  batch norm (kept as :class:`ir.BatchNorm`; folding is a separate pass), pooling (avg, sum,
  adaptive/global average, ``flatten(2).mean(2)``), flatten/view/reshape, residual adds,
  multiplication/division by constants (:class:`ir.Scale`);
* integer (SFA) activations are recognised **by pattern**, not by module class:
  ``clamp(x, 0, D)`` (or clamp_min/clamp_max, relu + clamp_max, hardtanh) with ``round``
  (half-even), ``add 0.5 → floor`` (half-up) or ``floor``, then an optional ``div(norm)`` /
  ``mul(1/norm)``. Each becomes one :class:`ir.IFNeuron`.

Errors are *deferred*: an op that cannot be converted poisons its value, and the error is raised
only if the graph output (or the ``until`` cut) depends on it. So ``until='encoder'`` deploys an
encoder even when the head after it contains unsupported ops.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from .. import ir
from ..errors import HostOpError, NeurodeployError, UnsupportedOpError

EXPORT_BATCH = 2  # batch size of the example input; 2 so that the batch dim is distinguishable

SPIKE_KEYS = {"max_spikes": "max_spikes", "D": "max_spikes", "max_value": "max_spikes", "d": "max_spikes",
              "norm": "norm", "rounding": "rounding"}

PASSTHROUGH = {"dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "clone",
               "contiguous", "detach", "alias", "lift_fresh_copy", "identity", "_to_copy", "to",
               "type_as", "dequantize", "lift_fresh"}
IGNORED = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size",
           "sym_constrain_range", "_assert_async", "_guards_fn"}
CLAMP_OPS = {"clamp", "clamp_min", "clamp_max", "relu", "hardtanh", "clip"}
MAXPOOL_OPS = {"max_pool2d", "max_pool2d_with_indices", "max_pool1d", "max_pool1d_with_indices",
               "adaptive_max_pool2d", "adaptive_max_pool1d", "max_pool3d", "fractional_max_pool2d"}
MATMUL_OPS = {"matmul", "mm", "bmm", "einsum", "baddbmm"}


# -- values flowing through the walk ---------------------------------------------------------------

@dataclass
class _V:
    """A data tensor held by IR node ``name``; ``shape`` is its per-sample shape."""

    name: str
    shape: tuple


@dataclass
class _Poison:
    """A value that could not be converted; raised if the output depends on it."""

    exc: NeurodeployError
    order: int
    soft: bool = False  # e.g. a transpose: fine if it only feeds an attention matmul (host op)


@dataclass
class _T(_Poison):
    """A transposed view ``base.permute(perm)`` (per-sample dims) of the IR value ``base``, kept
    lazy. For a 2-d token-major ``(N, C)`` view of a channel-first ``(C, N)`` value, Linear layers,
    scalings, residual adds and activations on it are converted on ``base`` (Linear → 1×1
    Conv1d); element-wise activations and scalings work on any view. A reshape or an
    activation × activation product of a view makes it a host ``permute``
    (:class:`ir.HostOp`); anything else raises ``exc``."""

    base: _V = None
    perm: tuple = (1, 0)
    origin: Any = None  # the fx node of the (last) transpose, for naming the host permute


def _is_data(v) -> bool:
    return isinstance(v, (_V, _Poison))


def _flat(v):
    if isinstance(v, (list, tuple)):
        for item in v:
            yield from _flat(item)
    else:
        yield v


def _opname(target) -> str:
    if isinstance(target, torch._ops.OpOverload):
        name = target._opname
    elif target is operator.getitem:
        return "getitem"
    else:
        name = getattr(target, "__name__", str(target))
    if name.endswith("_") and not name.endswith("__") and name != "_":
        name = name[:-1]  # in-place variants (relu_, add_, ...)
    return name


def _code_location(n) -> str | None:
    """``Model.forward (file.py:254: x = x.flatten(2).mean(2))`` from the node's stack trace."""
    lines = (n.meta.get("stack_trace") or "").strip().splitlines()
    if len(lines) < 2 or not lines[-2].strip().startswith("File "):
        return None
    head, code = lines[-2].strip(), lines[-1].split("#")[0].strip()
    try:
        file = head.split('"')[1].replace("\\", "/").rsplit("/", 1)[-1]
        line = head.split("line ")[1].split(",")[0]
        func = head.rsplit(" in ", 1)[1]
    except IndexError:
        return None
    root = [cls for p, cls in (n.meta.get("nn_module_stack") or {}).values() if not p]
    owner = (root[0] if isinstance(root[0], str) else getattr(root[0], "__name__", "")).rsplit(".", 1)[-1] \
        if root else ""
    return f"{owner + '.' if owner else ''}{func} ({file}:{line}: {code})"


def _np(t) -> np.ndarray | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return t.detach().to(torch.float64).cpu().numpy().copy()
    return np.asarray(t, dtype=np.float64)


def _scalar(v) -> float | None:
    """The value of a constant that is a single number, else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_complex():
        return float(v.reshape(()).item())
    return None


def _int_if_close(v: float) -> float | int:
    if not math.isfinite(v):
        return v  # a NaN/inf norm is refused, naming the tensor, by passes.check_finite_parameters
    r = round(v)
    return int(r) if abs(v - r) < 1e-9 * max(1.0, abs(v)) else v


def normalize_spike_config(spike) -> dict[str, dict]:
    """``spike`` → ``{path_or_'*': {'max_spikes', 'norm', 'rounding'}}``.

    Accepts a global dict (``{'max_spikes': 4, 'norm': 4, 'rounding': 'half_even'}``; ``D`` and
    ``max_value`` are aliases of ``max_spikes``) or a dict per module path (``'*'`` = default).
    """
    if not spike:
        return {}
    if not isinstance(spike, dict):
        raise NeurodeployError(f"spike settings must be a dict, got {type(spike).__name__}",
                               fix="e.g. spike={'max_spikes': 4, 'norm': 4, 'rounding': 'half_even'}")

    def entry(d, where):
        if not isinstance(d, dict):
            raise NeurodeployError(f"spike settings for {where!r} must be a dict", layer=where)
        out = {}
        for k, v in d.items():
            if k not in SPIKE_KEYS:
                raise NeurodeployError(f"unknown spike setting {k!r}", layer=where,
                                       fix="use max_spikes (or D), norm and rounding")
            out[SPIKE_KEYS[k]] = v
        if "rounding" in out and out["rounding"] not in ir.ROUNDING_RULES:
            raise NeurodeployError(f"unknown rounding rule {out['rounding']!r}", layer=where,
                                   fix=f"use one of {', '.join(ir.ROUNDING_RULES)}")
        if "max_spikes" in out:
            out["max_spikes"] = int(out["max_spikes"])
            if not 1 <= out["max_spikes"] <= ir.MAX_SPIKE_BUDGET:
                raise NeurodeployError(f"spike budget D={out['max_spikes']} is outside 1..{ir.MAX_SPIKE_BUDGET}",
                                       layer=where, fix="each layer takes D timesteps; SFA uses D = 4..16")
        if "norm" in out:
            out["norm"] = float(out["norm"])
            if not (math.isfinite(out["norm"]) and out["norm"] > 0):
                raise NeurodeployError(f"activation norm {out['norm']} must be a finite number > 0", layer=where,
                                       fix="the norm divides the spike count (a = n / norm), e.g. norm = D")
        return out

    if set(spike) <= set(SPIKE_KEYS):
        return {"*": entry(spike, "*")}
    return {str(k): entry(v, str(k)) for k, v in spike.items()}


def _code_settings(hi, rounding, norm) -> dict:
    """What the model's own activation code states: D from an integer clamp maximum; rounding and
    norm once a rounding op is seen (no division after it means norm 1)."""
    code = {}
    if hi is not None and math.isfinite(hi) and hi == int(hi) and hi >= 1:
        code["max_spikes"] = int(hi)
    if rounding is not None:
        code["rounding"] = rounding
        code["norm"] = float(norm if norm is not None else 1.0)
    return code


def _lookup_spike(cfg: dict, path: str) -> dict:
    if not cfg:
        return {}
    out = dict(cfg.get("*", {}))
    parts = path.split(".") if path else []
    for i in range(1, len(parts) + 1):
        out.update(cfg.get(".".join(parts[:i]), {}))
    return out


# -- the converter -----------------------------------------------------------------------------------

class _Converter:
    def __init__(self, ep, input_shape, spike_cfg, *, stop=None, forced_names=None):
        self.ep = ep
        self.fx = ep.graph
        self.input_shape = tuple(int(s) for s in input_shape)
        self.spike_cfg = spike_cfg
        self.stop = stop
        self.forced_names = forced_names or {}
        self.graph = ir.Graph()
        self.env: dict[Any, Any] = {}
        self.fx2name: dict[str, str] = {}
        self.emit_count: dict[str, int] = {}
        self.names_by_key: dict[str, str] = {}
        self.expected_shape: dict[str, tuple] = {}
        self.folded_bias: list[tuple[str, str]] = []  # (IR node, fx node) whose bias got a constant
        self.skip: set = set()
        self.preset: dict = {}
        self.nodes = list(self.fx.nodes)
        self.order = {n: i for i, n in enumerate(self.nodes)}
        self.batch = None
        # module structure from nn_module_stack
        self.stack: dict[Any, list[str]] = {}
        self.module_nodes: dict[str, list] = {}
        self.call_key: dict = {}
        self.call_members: dict[str, list] = {}
        for n in self.nodes:
            if n.op != "call_function":
                continue
            paths = [p for p, _ in (n.meta.get("nn_module_stack") or {}).values()]
            paths = [p for p in paths if p]
            self.stack[n] = paths
            for p in dict.fromkeys(paths):
                self.module_nodes.setdefault(p, []).append(n)
            keys = [k for k, (p, _) in (n.meta.get("nn_module_stack") or {}).items() if p]
            self.call_key[n] = keys[-1] if keys else None
            for k in keys:  # nodes of each module *call* (a module called twice has two keys)
                self.call_members.setdefault(k, []).append(n)
        self.module_classes = {}
        for n in self.nodes:
            for p, cls in (n.meta.get("nn_module_stack") or {}).values():
                if p:
                    self.module_classes[p] = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))

    # -- helpers ---------------------------------------------------------------------------------
    def path(self, n) -> str:
        s = self.stack.get(n) or []
        return s[-1] if s else ""

    def _substantive(self, nodes) -> list:
        return [m for m in nodes if _opname(m.target) not in PASSTHROUGH | IGNORED]

    def call_nodes(self, n) -> list:
        """The fx nodes of the call of ``n``'s (deepest) module that ``n`` belongs to."""
        k = self.call_key.get(n)
        return self.call_members.get(k, []) if k else []

    def owns(self, n, group) -> bool:
        """True if the module call that ``n`` is in consists only of (passthroughs and) ``group``."""
        if not self.path(n):
            return False
        group = set(group)
        return all(m in group for m in self._substantive(self.call_nodes(n)))

    def name_for(self, n, suffix: str, group=None) -> str:
        i = self.emit_count.get(n.name, 0)
        self.emit_count[n.name] = i + 1
        key = f"{n.name}#{i}"
        forced = self.forced_names.get(key)
        if forced is not None and forced not in self.graph.nodes:
            self.names_by_key[key] = forced
            return forced
        name = self._name_for(n, suffix, group)
        self.names_by_key[key] = name
        return name

    def _name_for(self, n, suffix: str, group=None) -> str:
        p = self.path(n)
        base = p if self.owns(n, group or [n]) else (f"{p}.{suffix}" if p else suffix)
        return self.graph.unique_name(base)

    def source_of(self, n) -> str:
        """The user's module path; for code in the top-level forward, that forward and its line."""
        return self.path(n) or _code_location(n) or f"aten.{n.name}"

    def emit(self, n, node: ir.Node, inputs, suffix: str, shape=None, group=None) -> _V:
        name = self.name_for(n, suffix, group)
        node.source = node.source or self.source_of(n)
        self.graph.add(name, node, [v.name for v in inputs])
        self.fx2name[n.name] = name
        shape = self.val_shape(n) if shape is None else tuple(shape)
        self.expected_shape[name] = shape
        return _V(name, shape)

    def val_shape(self, n) -> tuple:
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedOpError(f"op '{n.target}' does not produce a tensor", layer=self.source_of(n))
        shape = tuple(int(s) for s in val.shape)
        if not shape or shape[0] != self.batch:
            raise UnsupportedOpError(
                f"op '{_opname(n.target)}' ({n.name}) changes the batch dimension "
                f"(output shape {shape}, batch {self.batch})", layer=self.source_of(n),
                fix="keep the batch dimension first and untouched (per-sample ops only)")
        return shape[1:]

    def bind(self, n) -> dict:
        """Arguments of ``n`` by schema name (defaults filled), values resolved through env."""
        target = n.target
        if isinstance(target, torch._ops.OpOverload):
            schema = target._schema
            out = {}
            args = list(n.args)
            for i, a in enumerate(schema.arguments):
                if i < len(args):
                    raw = args[i]
                elif a.name in n.kwargs:
                    raw = n.kwargs[a.name]
                elif a.has_default_value():
                    raw = a.default_value
                else:
                    raw = None
                out[a.name] = self.resolve(raw)
            return out
        return {i: self.resolve(a) for i, a in enumerate(n.args)}

    def resolve(self, raw):
        if isinstance(raw, torch.fx.Node):
            return self.env.get(raw)
        if isinstance(raw, (list, tuple)):
            return type(raw)(self.resolve(r) for r in raw)
        return raw

    def err(self, n, msg, fix=None, cls=UnsupportedOpError):
        return cls(msg, layer=self.source_of(n), fix=fix)

    # -- the walk --------------------------------------------------------------------------------
    def run(self):
        sig = self.ep.graph_signature
        consts = {}
        for spec in sig.input_specs:
            kind = spec.kind.name
            if kind in ("PARAMETER", "BUFFER", "CONSTANT_TENSOR"):
                t = self.ep.state_dict.get(spec.target)
                if t is None:
                    t = self.ep.constants.get(spec.target)
                consts[spec.arg.name] = t
        user_inputs = [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"]
        if len(user_inputs) != 1:
            raise UnsupportedOpError(f"model takes {len(user_inputs)} tensor inputs; one is supported",
                                     fix="wrap the model so that forward takes a single tensor")
        wanted = self._ancestors(self.stop) if self.stop is not None else None
        for n in self.nodes:
            if wanted is not None and n not in wanted and n.op != "output":
                continue
            if n.op == "placeholder":
                if n.name == user_inputs[0]:
                    val = n.meta.get("val")
                    shape = tuple(int(s) for s in val.shape)
                    self.batch = shape[0]
                    if shape[1:] != self.input_shape:
                        raise NeurodeployError(
                            f"traced input shape {shape[1:]} differs from input_shape {self.input_shape}")
                    self.graph.add("input", ir.Input(input_shape=self.input_shape, is_spikes=False,
                                                     source="input"))
                    self.expected_shape["input"] = self.input_shape
                    self.env[n] = _V("input", self.input_shape)
                else:
                    t = consts.get(n.name)
                    if isinstance(t, torch.Tensor):
                        t = t.detach()
                        if t.is_floating_point():
                            t = t.to(torch.float64)
                    self.env[n] = t
                continue
            if n.op == "output":
                continue
            if n.op == "get_attr":
                t = getattr(self.ep.graph_module, n.target, None) if hasattr(self.ep, "graph_module") else None
                self.env[n] = t
                continue
            if n in self.skip:
                continue
            if n in self.preset:
                self.env[n] = self.preset[n]
                continue
            try:
                self.env[n] = self.convert(n)
            except NeurodeployError as e:
                self.env[n] = _Poison(e, self.order[n])
            except Exception as e:  # noqa: BLE001 - turn anything unexpected into a named error
                self.env[n] = _Poison(self.err(n, f"cannot convert op '{_opname(n.target)}' ({n.name}): "
                                                  f"{type(e).__name__}: {e}"), self.order[n])
        return self

    def _ancestors(self, node) -> set:
        seen, todo = set(), [node]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo.extend(m.all_input_nodes)
        return seen

    def convert(self, n):
        op = _opname(n.target)
        if op in IGNORED:
            return None
        if op == "getitem":
            seq, idx = self.resolve(n.args[0]), n.args[1]
            if isinstance(seq, _Poison):
                return seq
            return seq[idx]
        args = self.bind(n)
        flat = list(_flat(list(args.values())))
        data = [v for v in flat if _is_data(v)]
        if not data:  # constant folding (parameter transposes, scalar arithmetic, ...)
            with torch.no_grad():
                a = [self.resolve(x) for x in n.args]
                k = {key: self.resolve(x) for key, x in n.kwargs.items()}
                return n.target(*a, **k)
        poisons = [v for v in data if isinstance(v, _Poison)]
        hard = [p for p in poisons if not p.soft]
        if hard:
            return min(hard, key=lambda p: p.order)
        if op in MATMUL_OPS or (op in ("mul", "div") and len(data) == 2):
            if len(data) == 1 and poisons:
                vals = list(args.values())
                if op in ("matmul", "mm") and isinstance(vals[0], _T) and isinstance(vals[1], torch.Tensor) \
                        and vals[1].dim() == 2 and vals[0].perm == (1, 0):  # token-major x @ W: a linear layer
                    out = self.transposed(n, "linear", {"weight": vals[1].t(), "bias": None}, data)
                    if out is not None:
                        return out
                return poisons[0]
            if poisons:
                return self.convert_materialised(n)
            return self.host_product(n, op, args, data)
        if any(isinstance(p, _T) for p in poisons):
            out = self.transposed(n, op, args, data)
            if out is not None:
                return out
            return self.convert_materialised(n)
        if poisons:
            return min(poisons, key=lambda p: p.order)
        # integer activation patterns first
        act = self.match_activation(n)
        if act is not None:
            return act
        handler = getattr(self, f"op_{op}", None)
        if handler is None:
            if op in MAXPOOL_OPS:
                raise self.err(n, f"max pooling ('{op}') is not supported on neuromorphic targets",
                               fix="replace MaxPool with sum/average pooling (nn.AvgPool2d) or a stride-2 "
                                   "convolution, then fine-tune")
            if op in PASSTHROUGH:
                return data[0]
            raise self.err(n, f"unsupported op '{op}' ({n.target})",
                           fix="rewrite this part of the model with supported ops (conv, linear, batch norm, "
                               "avg/sum pooling, add, reshape, SFA activations) or cut before it with --until")
        return handler(n, args)

    def convert_materialised(self, n):
        """Convert ``n`` after turning its lazy transposed inputs into host permutes."""
        for m in n.all_input_nodes:
            if isinstance(self.env.get(m), _T):
                self.env[m] = self.materialise(self.env[m])
        return self.convert(n)

    # -- activations -------------------------------------------------------------------------------
    def _single_user(self, m):
        users = list(m.users)
        if len(users) != 1 or m is self.stop:
            return None
        return users[0]

    def match_activation(self, start):
        op0 = _opname(start.target)
        if op0 not in CLAMP_OPS | {"round", "floor", "add"}:
            return None
        lo = hi = None
        rounding = None
        pending_half = False
        chain = []  # fx nodes in the pattern
        last_complete = None  # (index in chain, lo, hi, rounding)
        norm = None
        cur = start
        src_input = None
        while cur is not None:
            op = _opname(cur.target)
            if cur.op != "call_function":
                break
            a = self.bind(cur)
            first = list(a.values())[0] if a else None
            if chain:
                if not (isinstance(cur.args[0], torch.fx.Node) and cur.args[0] is chain[-1]):
                    break
            elif not isinstance(first, (_V, _T)):
                return None
            ok = True
            if op in ("clamp", "clip", "hardtanh"):
                if op == "hardtanh":
                    mn, mx = a.get("min_val"), a.get("max_val")
                else:
                    mn, mx = a.get("min"), a.get("max")
                mn = _scalar(mn) if mn is not None else None
                mx = _scalar(mx) if mx is not None else None
                if (a.get("min") is not None and mn is None) or (a.get("max") is not None and mx is None):
                    ok = False
                else:
                    if mn is not None:
                        lo = mn if lo is None else max(lo, mn)
                    if mx is not None:
                        hi = mx if hi is None else min(hi, mx)
            elif op == "clamp_min":
                mn = _scalar(a.get("min"))
                ok = mn is not None
                if ok:
                    lo = mn if lo is None else max(lo, mn)
            elif op == "clamp_max":
                mx = _scalar(a.get("max"))
                ok = mx is not None
                if ok:
                    hi = mx if hi is None else min(hi, mx)
            elif op == "relu":
                lo = 0.0 if lo is None else max(lo, 0.0)
            elif op == "round":
                dec = a.get("decimals", 0)
                ok = not pending_half and (dec in (None, 0))
                if ok:
                    rounding = rounding or "half_even"
            elif op == "add":
                c = a.get("other")
                alpha = a.get("alpha", 1)
                ok = (not pending_half and rounding is None and _scalar(c) == 0.5 and alpha in (None, 1)
                      and not isinstance(c, (_V, _Poison)))
                if ok:
                    pending_half = True
            elif op == "floor":
                if pending_half:
                    rounding = rounding or "half_up"
                    pending_half = False
                else:
                    rounding = rounding or "floor"
            elif op in ("div", "mul") and rounding is not None and not pending_half and chain \
                    and a.get("rounding_mode") is None:
                c = a.get("other")
                s = _scalar(c) if not _is_data(c) else None
                if s is None or s <= 0:
                    ok = False
                else:
                    norm = _int_if_close(s if op == "div" else 1.0 / s)
                    chain.append(cur)
                    last_complete = (len(chain), lo, hi, rounding, norm)
                    break
            else:
                ok = False
            if not ok:
                break
            chain.append(cur)
            if not chain[:-1]:
                src_input = first
            if not pending_half and op in CLAMP_OPS | {"round", "floor"}:
                last_complete = (len(chain), lo, hi, rounding, None)
            cur = self._single_user(cur)
        if last_complete is None:
            return None
        k, lo, hi, rounding, norm = last_complete
        chain = chain[:k]
        core = next((m for m in chain if _opname(m.target) in ("round", "floor")), chain[0])
        path = self.path(core)
        cfg = _lookup_spike(self.spike_cfg, path)
        if rounding is None and "rounding" not in cfg:
            return None  # a bare clamp/relu: not an integer activation (handled as an error later)
        if lo is None and not cfg:
            return None
        if lo is not None and lo != 0:
            return None
        if "max_spikes" not in cfg and (hi is None or not math.isfinite(hi) or hi != int(hi) or hi < 1):
            return None
        code = _code_settings(hi, rounding, norm)
        D = int(cfg.get("max_spikes", hi))
        rounding = cfg.get("rounding", rounding)
        norm = cfg.get("norm", norm if norm is not None else 1.0)
        v_init = 0.0 if rounding == "floor" else 0.5
        last = chain[-1]
        prelude = self._const_prelude(core)
        hook = (bool(path) and self.owns(core, chain + prelude)
                and self._substantive(self.call_nodes(core))[-1] is last)
        neuron = ir.IFNeuron(threshold=1.0, max_spikes=D, rounding=rounding, v_init=v_init, norm=float(norm),
                             source=path or self.source_of(last),
                             meta={"aten": last.name, "order": self.order[last],
                                   "pattern": [_opname(m.target) for m in chain],
                                   "hook": bool(hook), "user_settings": bool(cfg), "code_settings": code})
        name = self.name_for(core, "spike", group=chain + prelude)
        wrap = None
        if isinstance(src_input, _T):
            wrap, src_input = src_input, src_input.base
        self.graph.add(name, neuron, [src_input.name])
        self.expected_shape[name] = src_input.shape
        for m in chain:
            self.fx2name[m.name] = name
        v = _V(name, src_input.shape)
        if wrap is not None:
            v = _T(wrap.exc, wrap.order, True, v, wrap.perm, wrap.origin)
            neuron.meta["transposed"] = True  # the model's tensor is this neuron's (C, N) transposed
        for m in chain[1:-1]:
            self.skip.add(m)  # intermediate pattern nodes (single-user chain)
        if start is not last:
            self.preset[last] = v
        return v

    def _const_prelude(self, n) -> list:
        """Scalar mul/div nodes in the module call of ``n`` (e.g. ``multispike.apply(4*x)``)."""
        out = []
        for m in self.call_nodes(n):
            v = self.env.get(m)
            v = v.base if isinstance(v, _T) else v
            if _opname(m.target) in ("mul", "div") and isinstance(v, _V):
                prod = self.graph.nodes.get(v.name)
                if isinstance(prod, ir.Scale) or self.fx2name.get(m.name) is None:
                    out.append(m)
        return out

    # -- transposed (token-major) views ----------------------------------------------------------------
    def transposed(self, n, op, a, data):
        """Ops on a :class:`_T` value that can be done on its channel-first base; None: not possible."""
        ts = [v for v in data if isinstance(v, _T)]
        if len(ts) != len(data):
            return None
        t = ts[0]
        if op in ("transpose", "permute", "t"):
            nd = len(t.perm) + 1
            if op == "permute":
                perm = [p % nd for p in a["dims"]]
            else:
                d0, d1 = (a["dim0"] % nd, a["dim1"] % nd) if op == "transpose" else (nd - 2, nd - 1)
                perm = list(range(nd))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            if perm[0] != 0:
                return None
            composed = tuple(t.perm[p - 1] for p in perm[1:])
            if composed == tuple(range(len(composed))):
                return t.base
            return _T(t.exc, t.order, True, t.base, composed, n)
        if op in PASSTHROUGH or op in ("dropout", "clone", "detach", "contiguous", "alias"):
            return t
        act = self.match_activation(n)
        if act is not None:
            return act
        if op in ("mul", "div") and len(data) == 1:
            other = a["other"] if a["self"] is t else a["self"]
            s = _scalar(other)
            if s is None or (op == "div" and a["self"] is not t):
                return None
            v = self._scale(n, t.base, s, invert=(op == "div"))
            return _T(t.exc, t.order, True, v, t.perm, t.origin)
        if op == "add" and len(ts) == 2 and ts[0].perm == ts[1].perm \
                and tuple(ts[0].base.shape) == tuple(ts[1].base.shape) and (a.get("alpha") in (None, 1)):
            v = self.emit(n, ir.Add(), [ts[0].base, ts[1].base], "add", shape=ts[0].base.shape)
            return _T(t.exc, t.order, True, v, t.perm, t.origin)
        if t.perm != (1, 0):
            return None
        if op == "linear" and not _is_data(a["weight"]) and not _is_data(a.get("bias")):
            w, b = a["weight"], a.get("bias")
            node = ir.Conv1d(weight=_np(w)[:, :, None].copy(), bias=_np(b))
            v = self.emit(n, node, [t.base], "linear", shape=(int(w.shape[0]), t.base.shape[1]))
            return _T(t.exc, t.order, True, v, t.perm, t.origin)
        if op == "mean" and len(ts) == 1:
            dims = a.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if [d % 3 for d in dims] == [1] and not a.get("keepdim"):
                return self._reduce(n, {"self": t.base, "dim": [2]}, ir.AvgPool2d, "gap")
        return None

    # -- host products (attention) -------------------------------------------------------------------
    def host_product(self, n, op, args, data):
        """An activation × activation product: a :class:`ir.HostOp` (exact on integer counts)."""
        if len(data) == 1:
            if op in ("mm", "matmul", "bmm"):
                return self.op_matmul(n, args)
            raise self.err(n, f"unsupported op '{op}'")
        a, b = data
        if op in ("matmul", "bmm") and len(a.shape) >= 2 and a.shape[:-2] == b.shape[:-2] \
                and a.shape[-1] == b.shape[-2]:
            return self.emit(n, ir.HostOp(op="matmul", reason="activation × activation matmul (spike-driven "
                                          "self-attention q·kᵀ or attn·v): not a weight×spike synapse"),
                             [a, b], "matmul")
        if op == "mul" and tuple(a.shape) == tuple(b.shape):
            return self.emit(n, ir.HostOp(op="mul", reason="element-wise product of two activation tensors: "
                                          "not a weight×spike synapse"), [a, b], "mul")
        return self.host_refusal(n, op)

    def materialise(self, t: _T) -> _V:
        """A lazy transposed view becomes a host permute (a layout change the cores do not make)."""
        shape = tuple(t.base.shape[p] for p in t.perm)
        node = ir.HostOp(op="permute", dims=tuple(t.perm),
                         reason="transpose of an activation tensor feeding a reshape or an activation product")
        return self.emit(t.origin, node, [t.base], "permute", shape=shape)

    def host_refusal(self, n, op):
        """A product of activations the host has no exact semantics for (einsum, a quotient,
        broadcasting); the furthest working --until is added when the output depends on it."""
        kind = "quotient" if op == "div" else "product"
        reason = (f"'{op}' {kind} of two activation tensors: not a weight×spike synapse, and not one of the "
                  f"host ops neurodeploy computes exactly (matmul, element-wise product of equal shapes)")
        fix = "write it as `a @ b` or `a * b` of equal shapes (those run on the host)"
        return _Poison(HostOpError(reason, layer=self.source_of(n), fix=fix), self.order[n])

    # -- op handlers --------------------------------------------------------------------------------
    def _const(self, n, v, what):
        if _is_data(v):
            raise self.err(n, f"{what} of '{_opname(n.target)}' is computed from the input; only constant "
                              f"(parameter) {what}s are supported")
        return v

    def op_conv2d(self, n, a):
        return self._conv(n, a["input"], a["weight"], a.get("bias"), a["stride"], a["padding"], a["dilation"],
                          a["groups"], dims=None)

    def op_conv1d(self, n, a):
        return self.op_conv2d(n, a)

    def op_convolution(self, n, a):
        if a.get("transposed"):
            raise self.err(n, "transposed convolution is not supported",
                           fix="use a conv + upsampling by repetition, or cut before the decoder with --until")
        return self._conv(n, a["input"], a["weight"], a.get("bias"), a["stride"], a["padding"], a["dilation"],
                          a["groups"], dims=None)

    def op__convolution(self, n, a):
        return self.op_convolution(n, a)

    def _conv(self, n, x, w, b, stride, padding, dilation, groups, dims):
        w = self._const(n, w, "weight")
        if b is not None:
            b = self._const(n, b, "bias")
        k = w.dim() - 2
        if k not in (1, 2):
            raise self.err(n, f"{k}-d convolution is not supported")
        if isinstance(padding, str):
            if padding == "valid":
                padding = [0] * k
            else:  # 'same'
                pads = []
                for i in range(k):
                    d = dilation[i] if isinstance(dilation, (list, tuple)) else dilation
                    tot = d * (w.shape[2 + i] - 1)
                    if tot % 2:
                        raise self.err(n, "padding='same' with an even kernel pads asymmetrically",
                                       fix="use an odd kernel or explicit symmetric padding")
                    pads.append(tot // 2)
                padding = pads

        def tup(v):
            v = list(v) if isinstance(v, (list, tuple)) else [v]
            return tuple(int(i) for i in (v * k if len(v) == 1 else v))

        stride, padding, dilation = tup(stride), tup(padding), tup(dilation)
        if k == 2:
            node = ir.Conv2d(weight=_np(w), bias=_np(b), stride=stride, padding=padding, dilation=dilation,
                             groups=int(groups))
        else:
            node = ir.Conv1d(weight=_np(w), bias=_np(b), stride=stride[0], padding=padding[0],
                             dilation=dilation[0], groups=int(groups))
        return self.emit(n, node, [x], "conv")

    def op_linear(self, n, a):
        w = self._const(n, a["weight"], "weight")
        b = a.get("bias")
        if b is not None:
            b = self._const(n, b, "bias")
        return self.emit(n, ir.Linear(weight=_np(w), bias=_np(b)), [a["input"]], "linear")

    def op_addmm(self, n, a):
        b, x, w = a["self"], a["mat1"], a["mat2"]
        w = self._const(n, w, "weight")
        b = self._const(n, b, "bias")
        if _scalar(a.get("beta", 1)) != 1 or _scalar(a.get("alpha", 1)) != 1:
            raise self.err(n, "addmm with beta/alpha != 1 is not supported")
        bias = _np(b).reshape(-1) if b is not None else None
        if bias is not None and bias.size == 1:
            bias = np.full(w.shape[1], bias[0])
        return self.emit(n, ir.Linear(weight=_np(w).T.copy(), bias=bias), [x], "linear")

    def op_matmul(self, n, a):
        vals = list(a.values())
        x, w = vals[0], vals[1]
        if _is_data(x) and not _is_data(w):
            if w.dim() != 2:
                raise self.err(n, f"matmul with a {w.dim()}-d constant is not supported")
            return self.emit(n, ir.Linear(weight=_np(w).T.copy(), bias=None), [x], "linear")
        raise self.err(n, "matmul of a constant by an activation tensor (constant on the left) is not supported",
                       fix="use nn.Linear (activation @ weight.T)")

    op_mm = op_matmul

    def op_batch_norm(self, n, a):
        x = a["input"]
        if a.get("training"):
            raise self.err(n, "batch norm in training mode", fix="call model.eval() before converting")
        return self._bn(n, x, a.get("weight"), a.get("bias"), a["running_mean"], a["running_var"], a["eps"])

    def op__native_batch_norm_legit_no_training(self, n, a):
        v = self._bn(n, a["input"], a.get("weight"), a.get("bias"), a["running_mean"], a["running_var"], a["eps"])
        return (v, None, None)

    def op__native_batch_norm_legit_functional(self, n, a):
        if a.get("training"):
            raise self.err(n, "batch norm in training mode", fix="call model.eval() before converting")
        v = self._bn(n, a["input"], a.get("weight"), a.get("bias"), a["running_mean"], a["running_var"], a["eps"])
        return (v, None, None, None, None)

    def _bn(self, n, x, w, b, mean, var, eps):
        for what, t in (("weight", w), ("bias", b), ("running_mean", mean), ("running_var", var)):
            if t is not None:
                self._const(n, t, what)
        if mean is None or var is None:
            raise self.err(n, "batch norm without running statistics (track_running_stats=False)",
                           fix="train with track_running_stats=True or fold the normalisation yourself")
        node = ir.BatchNorm(mean=_np(mean), var=_np(var), weight=_np(w), bias=_np(b), eps=float(eps))
        return self.emit(n, node, [x], "bn")

    def op_avg_pool2d(self, n, a):
        x = a["self"]
        k = tuple(int(i) for i in (a["kernel_size"] * 2 if len(a["kernel_size"]) == 1 else a["kernel_size"]))
        s = a.get("stride") or k
        s = tuple(int(i) for i in (s * 2 if len(s) == 1 else s))
        p = a.get("padding") or [0, 0]
        p = tuple(int(i) for i in (p * 2 if len(p) == 1 else p))
        c, h, w = x.shape
        out_floor = (ir._conv_out(h, k[0], s[0], p[0], 1), ir._conv_out(w, k[1], s[1], p[1], 1))
        if a.get("ceil_mode") and tuple(self.val_shape(n)[1:]) != out_floor:
            raise self.err(n, "avg_pool2d with ceil_mode=True changes the output size",
                           fix="use ceil_mode=False or pad the input")
        if not a.get("count_include_pad", True) and any(p):
            raise self.err(n, "avg_pool2d with count_include_pad=False and padding",
                           fix="use count_include_pad=True or no padding")
        div = a.get("divisor_override")
        if div is None or div == k[0] * k[1]:
            node = ir.AvgPool2d(kernel=k, stride=s, padding=p)
        elif div == 1:
            node = ir.SumPool2d(kernel=k, stride=s, padding=p)
        else:
            raise self.err(n, f"avg_pool2d with divisor_override={div}")
        return self.emit(n, node, [x], "pool")

    def op_adaptive_avg_pool2d(self, n, a):
        x = a["self"]
        c, h, w = x.shape
        oh, ow = self.val_shape(n)[1:]
        if (oh, ow) == (h, w):
            return x
        if h % oh or w % ow:
            raise self.err(n, f"adaptive_avg_pool2d from {h}x{w} to {oh}x{ow} has uneven windows",
                           fix="use an input size divisible by the output size")
        k = (h // oh, w // ow)
        return self.emit(n, ir.AvgPool2d(kernel=k, stride=k), [x], "pool")

    def op__adaptive_avg_pool2d(self, n, a):
        return self.op_adaptive_avg_pool2d(n, a)

    def op_mean(self, n, a):
        return self._reduce(n, a, ir.AvgPool2d, "gap")

    def op_sum(self, n, a):
        return self._reduce(n, a, ir.SumPool2d, "sumpool")

    def _reduce(self, n, a, pool_cls, suffix):
        x = a["self"]
        dims = a.get("dim")
        nd = len(x.shape) + 1  # batched rank
        if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
            raise self.err(n, "reduction over the batch dimension", fix="reduce over per-sample dims only")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % nd for d in dims)
        if 0 in dims:
            raise self.err(n, "reduction over the batch dimension", fix="reduce over per-sample dims only")
        pdims = [d - 1 for d in dims]
        if pdims != list(range(pdims[0], pdims[-1] + 1)):
            raise self.err(n, f"{_opname(n.target)} over non-contiguous dims {dims}")
        shape = x.shape
        out_shape = self.val_shape(n)
        pre = int(np.prod(shape[:pdims[0]]))
        red_shape = shape[pdims[0]:pdims[-1] + 1]
        post = int(np.prod(shape[pdims[-1] + 1:]))
        src = x
        kernel = None
        # global pooling of an image: (C,H,W) over (H,W), or (C,H*W) made by a flatten of (C,H,W)
        if len(shape) == 3 and pdims == [1, 2]:
            kernel = (shape[1], shape[2])
        elif len(shape) == 2 and pdims == [1]:
            prod = self.graph.nodes.get(x.name)
            ins = self.graph.inputs_of(x.name) if prod is not None else []
            if isinstance(prod, (ir.Flatten, ir.Reshape)) and len(ins) == 1:
                # bypass the flatten (it stays only if something else uses it)
                in_shape = self.expected_shape.get(ins[0])
                if in_shape is not None and len(in_shape) == 3 and in_shape[0] == shape[0] \
                        and in_shape[1] * in_shape[2] == shape[1]:
                    src = _V(ins[0], in_shape)
                    kernel = (in_shape[1], in_shape[2])
                    arg = n.args[0] if isinstance(n.args[0], torch.fx.Node) else None
                    if arg is not None and len(arg.users) == 1 and not self.graph.consumers_of(x.name) \
                            and self.fx2name.get(arg.name) == x.name:
                        # the flatten only fed this mean: drop it now (keeps names tidy)
                        del self.graph.nodes[x.name]
                        self.graph.edges = [(a_, b_) for a_, b_ in self.graph.edges if x.name not in (a_, b_)]
                        self.expected_shape.pop(x.name, None)
        if kernel is None:
            red = int(np.prod(red_shape))
            if tuple(shape) != (pre, red, post):
                src = self.emit(n, ir.Reshape(target_shape=(pre, red, post)), [x], "reshape",
                                shape=(pre, red, post))
            kernel = (red, 1)
        pooled_shape = (src.shape[0], 1, 1) if len(src.shape) == 3 and kernel == tuple(src.shape[1:]) \
            else (pre, 1, post)
        v = self.emit(n, pool_cls(kernel=kernel, stride=kernel), [src], suffix, shape=pooled_shape)
        if tuple(out_shape) != pooled_shape:
            if len(out_shape) == 1:
                v = self.emit(n, ir.Flatten(start_dim=0), [v], "flatten", shape=out_shape)
            else:
                v = self.emit(n, ir.Reshape(target_shape=tuple(out_shape)), [v], "reshape", shape=out_shape)
        return v

    def _reshape(self, n, x):
        tgt = self.val_shape(n)
        if tuple(tgt) == tuple(x.shape):
            return x
        if len(tgt) == 1:
            return self.emit(n, ir.Flatten(start_dim=0), [x], "flatten")
        k = len(tgt) - 1
        if tuple(tgt[:k]) == tuple(x.shape[:k]) and len(x.shape) > k:
            return self.emit(n, ir.Flatten(start_dim=k), [x], "flatten")
        return self.emit(n, ir.Reshape(target_shape=tuple(tgt)), [x], "reshape")

    def op_flatten(self, n, a):
        return self._reshape(n, a["self"] if "self" in a else a["input"])

    def op_view(self, n, a):
        return self._reshape(n, a["self"])

    op_reshape = op_view
    op__unsafe_view = op_view
    op_unsqueeze = op_view
    op_squeeze = op_view
    op_unflatten = op_view
    op_expand = None  # not a reshape

    def op_view_as(self, n, a):
        return self._reshape(n, a["self"])

    def op_reshape_as(self, n, a):
        return self._reshape(n, a["self"])

    def _permute(self, n, x, perm):
        shape = (self.batch,) + tuple(x.shape)
        perm = [p % len(shape) for p in perm]
        if perm[0] != 0:
            raise self.err(n, "permute/transpose moves the batch dimension")
        big = [p for p in perm if shape[p] != 1]
        if big == sorted(big):  # only size-1 dims move: a reshape
            return self._reshape(n, x)
        e = self.err(n, f"'{_opname(n.target)}' of an activation tensor (dims {perm}): the IR has no transpose",
                     fix="keep tensors channel-first (use Conv1d/1x1 conv instead of Linear on transposed "
                         "tokens) or cut before it with --until")
        return _T(e, self.order[n], True, x, tuple(p - 1 for p in perm[1:]), n)

    def op_permute(self, n, a):
        return self._permute(n, a["self"], list(a["dims"]))

    def op_transpose(self, n, a):
        nd = len(a["self"].shape) + 1
        perm = list(range(nd))
        i, j = a["dim0"] % nd, a["dim1"] % nd
        perm[i], perm[j] = perm[j], perm[i]
        return self._permute(n, a["self"], perm)

    def op_t(self, n, a):
        return self.op_transpose(n, {"self": a["self"], "dim0": -2, "dim1": -1})

    def _producer_for_bias(self, v: _V):
        node = self.graph.nodes.get(v.name)
        if isinstance(node, (ir.Conv2d, ir.Conv1d, ir.Linear, ir.BatchNorm)):
            return node
        return None

    def _bias_vector(self, c, shape, n):
        """A constant added to / multiplied with a tensor of per-sample ``shape`` as scalar or per-dim-0."""
        s = _scalar(c)
        if s is not None:
            return s
        if isinstance(c, torch.Tensor):
            t = c.detach().to(torch.float64)
            while t.dim() > len(shape):
                if t.shape[0] != 1:
                    break
                t = t[0]
            if t.dim() == len(shape) and t.shape[0] == shape[0] and all(d == 1 for d in t.shape[1:]):
                return t.reshape(-1).numpy().copy()
            if t.dim() == 1 and len(shape) == 1 and t.shape[0] == shape[0]:
                return t.numpy().copy()
        raise self.err(n, f"'{_opname(n.target)}' with a constant of shape "
                          f"{tuple(c.shape) if isinstance(c, torch.Tensor) else c} is not a scalar or "
                          f"per-channel constant")

    def op_add(self, n, a):
        x, y = a["self"], a["other"]
        alpha = _scalar(a.get("alpha", 1)) if a.get("alpha", 1) is not None else 1.0
        if _is_data(x) and _is_data(y):
            if alpha != 1:
                raise self.err(n, f"add with alpha={alpha}")
            if tuple(x.shape) != tuple(y.shape):
                raise self.err(n, f"add of tensors with different shapes {x.shape} and {y.shape} (broadcasting)",
                               fix="add tensors of equal shape")
            return self.emit(n, ir.Add(), [x, y], "add")
        v, c = (x, y) if _is_data(x) else (y, x)
        if not _is_data(x):
            alpha_c = 1.0
            if alpha != 1:
                raise self.err(n, f"add with alpha={alpha}")
        else:
            alpha_c = alpha
        return self._add_const(n, v, c, alpha_c)

    def _add_const(self, n, v, c, factor):
        vec = self._bias_vector(c, v.shape, n)
        vec = np.asarray(vec, dtype=np.float64) * factor
        if np.all(vec == 0):
            return v
        prod = self._producer_for_bias(v)
        if prod is None:
            raise self.err(n, f"adding a constant ({_opname(n.target)}) to '{v.name}', which is not a weight or "
                              f"batch-norm layer, cannot be folded",
                           fix="add the constant as a bias of the preceding conv/linear/batch-norm layer")
        if isinstance(prod, ir.BatchNorm) or isinstance(prod, (ir.Conv2d, ir.Conv1d, ir.Linear)):
            nout = v.shape[0] if not isinstance(prod, ir.Linear) else v.shape[-1]
            if isinstance(prod, ir.Linear) and vec.ndim == 1 and len(v.shape) > 1:
                raise self.err(n, "per-channel constant after a Linear on a multi-dim tensor")
            b = np.broadcast_to(vec, (nout,)).astype(np.float64)
            if isinstance(prod, ir.BatchNorm):
                prod.bias = (np.zeros(nout) if prod.bias is None else prod.bias) + b
            else:
                prod.bias = (np.zeros(nout) if prod.bias is None else prod.bias) + b
        self.folded_bias.append((v.name, n.name))
        self.fx2name[n.name] = v.name
        return v

    def op_sub(self, n, a):
        x, y = a["self"], a["other"]
        if _is_data(x) and not _is_data(y):
            alpha = _scalar(a.get("alpha", 1)) or 1.0
            return self._add_const(n, x, y, -alpha)
        raise self.err(n, "subtraction of activation tensors is not supported",
                       fix="use additive residuals (x + f(x))")

    op_rsub = None

    def _scale(self, n, x, c, invert):
        s = self._bias_vector(c, x.shape, n)
        s = np.asarray(s, dtype=np.float64)
        if invert:
            if np.any(s == 0):
                raise self.err(n, "division by zero")
            s = 1.0 / s
        if np.all(s == 1):
            return x
        if np.any(s <= 0):
            raise self.err(n, f"multiplication by a non-positive constant ({s.tolist() if s.ndim else float(s)})",
                           fix="only positive scalings are supported (they fold into weights and thresholds)")
        prod = self.graph.nodes.get(x.name)
        arg = next((m for m in n.args if isinstance(m, torch.fx.Node) and self.env.get(m) is x), None)
        if s.ndim == 0 and type(prod) is ir.AvgPool2d and np.isclose(float(s), prod.kernel[0] * prod.kernel[1]) \
                and not self.graph.consumers_of(x.name) and arg is not None and len(arg.users) == 1 \
                and self.fx2name.get(arg.name) == x.name:
            # avg_pool × k² is sum pooling
            self.graph.nodes[x.name] = ir.SumPool2d(kernel=prod.kernel, stride=prod.stride, padding=prod.padding,
                                                    source=prod.source, meta=prod.meta)
            self.fx2name[n.name] = x.name
            return x
        scale = float(s) if s.ndim == 0 else s
        return self.emit(n, ir.Scale(scale=scale), [x], "scale", shape=x.shape)

    def op_mul(self, n, a):
        x, y = a["self"], a["other"]
        v, c = (x, y) if _is_data(x) else (y, x)
        return self._scale(n, v, c, invert=False)

    def op_div(self, n, a):
        x, y = a["self"], a["other"]
        if not _is_data(x):
            raise self.err(n, "division of a constant by an activation tensor")
        if a.get("rounding_mode") is not None:
            raise self.err(n, f"division with rounding_mode={a['rounding_mode']!r}")
        return self._scale(n, x, y, invert=True)

    def op_relu(self, n, a):
        raise self.err(n, "ReLU without clamp and rounding is not an integer (SFA) activation",
                       fix="use clamp(x, 0, D) + round, or say which module is the spiking activation with "
                           "spike={'<module path>': {'max_spikes': D, 'rounding': 'half_up', 'norm': 1}}")

    def op_clamp(self, n, a):
        raise self.err(n, f"'{_opname(n.target)}' is not followed by rounding (round, floor(x+0.5) or floor), "
                          f"so it is not an integer (SFA) activation",
                       fix="if this is the spiking activation, pass spike={'<module path>': {'max_spikes': D, "
                           "'rounding': 'half_even'|'half_up'|'floor', 'norm': N}} (--spike)")

    op_clamp_min = op_clamp
    op_clamp_max = op_clamp
    op_hardtanh = op_clamp
    op_clip = op_clamp

    def op_round(self, n, a):
        raise self.err(n, "round() without clamp(0, D): the spike budget D is unknown",
                       fix="clamp to [0, D] before rounding, or pass spike={'max_spikes': D} (--spike)")

    op_floor = op_round

    def op_dropout(self, n, a):
        return a["input"]

    op_feature_dropout = op_dropout
    op_alpha_dropout = op_dropout

    def op_native_dropout(self, n, a):
        return (a["input"], None)

    def op_clone(self, n, a):
        return a["self"]

    op_detach = op_clone
    op_alias = op_clone
    op_contiguous = op_clone
    op_lift_fresh_copy = op_clone

    def op__to_copy(self, n, a):
        return a["self"]

    def op_to(self, n, a):
        return list(a.values())[0]

    def op_type_as(self, n, a):
        return a["self"]


# -- public API ----------------------------------------------------------------------------------------

def _export(module, input_shape):
    if isinstance(module, torch.export.ExportedProgram):
        return module
    if isinstance(module, torch.jit.ScriptModule):
        try:
            from torch._export.converter import TS2EPConverter

            from .quiet import quiet_export
            example = torch.randn((EXPORT_BATCH,) + tuple(input_shape))
            with quiet_export():  # "Dim.AUTO ... specialized" is torch.export's business, not the user's
                return TS2EPConverter(module, (example,)).convert()
        except Exception as e:  # noqa: BLE001
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]  # one line: the CLI prints it
            raise UnsupportedOpError(f"cannot convert the TorchScript model to an exported program: {first}",
                                     fix="save the model with torch.export.save or as a state_dict + --arch") from e
    if not isinstance(module, nn.Module):
        raise NeurodeployError(f"expected a torch.nn.Module, got {type(module).__name__}")
    module.eval()
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)
    example = torch.randn((EXPORT_BATCH,) + tuple(int(s) for s in input_shape), dtype=dtype)
    import logging
    quiet = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch._export", "torch.export")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.CRITICAL)
        with torch.no_grad():
            return torch.export.export(module, (example,))
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()
        raise UnsupportedOpError(
            f"torch.export could not trace the model with input shape {tuple(input_shape)}: "
            f"{type(e).__name__}: {msg[0] if msg else ''}",
            fix="check --input-shape (C,H,W per sample, no batch dim) and that forward takes one tensor") from e
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def _finish(conv: _Converter, out_nodes: list) -> ir.Graph:
    g = conv.graph
    for i, (fxn, v) in enumerate(out_nodes):
        if isinstance(v, _T):
            v = conv.materialise(v)
        if isinstance(v, _Poison):
            raise v.exc
        if not isinstance(v, _V):
            raise UnsupportedOpError(f"output {i} does not depend on the input (it is a constant)",
                                     layer=getattr(fxn, "name", None))
        g.add(g.unique_name("output"), ir.Output(source="output"), [v.name])
    # drop what the outputs do not need
    keep, todo = set(), list(g.output_names())
    while todo:
        m = todo.pop()
        if m in keep:
            continue
        keep.add(m)
        todo.extend(g.inputs_of(m))
    if "input" not in keep:
        raise UnsupportedOpError("the output does not depend on the input")
    for name in list(g.nodes):
        if name not in keep:
            del g.nodes[name]
    g.edges = [(a, b) for a, b in g.edges if a in keep and b in keep]
    for name, fxname in conv.folded_bias:
        if name in g.nodes and len(g.consumers_of(name)) > 1:
            raise UnsupportedOpError(
                f"a constant is added after '{name}', whose output is also used elsewhere; it cannot be "
                f"folded into its bias", layer=g.nodes[name].source,
                fix="add the constant as a bias of that layer")
    ir.infer_shapes(g)
    for name, node in g.nodes.items():
        exp = conv.expected_shape.get(name)
        if exp is not None and tuple(node.shape) != tuple(exp):
            raise NeurodeployError(
                f"internal: IR shape {node.shape} of '{name}' differs from the traced shape {exp}",
                layer=node.source)
    g.validate()
    return g


def module_paths(ep) -> list[str]:
    paths = {}
    for n in ep.graph.nodes:
        for p, _ in (n.meta.get("nn_module_stack") or {}).values():
            if p:
                paths.setdefault(p, None)
    return list(paths)


def from_torch(module, input_shape, *, until: str | None = None, spike=None) -> ir.Graph:
    """Convert a PyTorch model (``nn.Module``, ``ExportedProgram`` or TorchScript) to an IR graph.

    ``input_shape``: per-sample shape (no batch dim), e.g. ``(3, 32, 32)``.
    ``until``: a module path (e.g. ``'encoder'``) or IR node name; its output becomes the graph
    output and everything after it is dropped.
    ``spike``: settings for the integer activations when the code does not reveal them (or to
    override): ``{'max_spikes': D, 'norm': N, 'rounding': 'half_even'|'half_up'|'floor'}``, globally
    or per module path (``{'blocks.0.spike': {...}, '*': {...}}``).
    """
    if input_shape is None:
        raise NeurodeployError("input shape is needed to trace a PyTorch model",
                               fix="pass --input-shape C,H,W (per sample, no batch dimension)")
    input_shape = tuple(int(s) for s in input_shape)
    cfg = normalize_spike_config(spike)
    ep = _export(module, input_shape)
    if isinstance(module, torch.export.ExportedProgram):
        ph = next(n for n in ep.graph.nodes if n.op == "placeholder"
                  and n.name in [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"])
        traced = tuple(int(s) for s in ph.meta["val"].shape[1:])
        if input_shape and traced != input_shape:
            raise NeurodeployError(f"the exported program takes inputs of shape {traced}, not {input_shape}",
                                   fix=f"pass --input-shape {','.join(map(str, traced))}")

    stop = None
    forced = None
    if until is not None:
        paths = module_paths(ep)
        if until in paths:
            probe = _Converter(ep, input_shape, cfg)
            stop = probe.module_nodes[until][-1]
        else:
            full = _Converter(ep, input_shape, cfg).run()
            matches = [fx for fx in full.nodes if full.fx2name.get(fx.name) == until]
            if not matches:
                names = [n for n in full.graph.nodes if n != "input"]
                raise NeurodeployError(
                    f"--until {until!r} names neither a module nor an IR node of this model",
                    fix="use one of the module paths: " + ", ".join(paths[:60])
                        + (" ..." if len(paths) > 60 else "")
                        + "; or IR node names: " + ", ".join(names[:60]) + (" ..." if len(names) > 60 else ""))
            stop = matches[-1]
            forced = dict(full.names_by_key)
    conv = _Converter(ep, input_shape, cfg, stop=stop, forced_names=forced).run()
    if stop is not None:
        v = conv.env.get(stop)
        outs = [(stop, v)]
    else:
        out_node = next(n for n in conv.nodes if n.op == "output")
        out_vals = out_node.args[0]
        out_vals = list(out_vals) if isinstance(out_vals, (list, tuple)) else [out_vals]
        specs = ep.graph_signature.output_specs
        outs = []
        for spec, fxn in zip(specs, out_vals):
            if spec.kind.name == "USER_OUTPUT":
                outs.append((fxn, conv.env.get(fxn) if isinstance(fxn, torch.fx.Node) else fxn))
    try:
        g = _finish(conv, outs)
    except NeurodeployError as e:
        if until is None:
            from ..passes.cut import with_until_proposal
            with_until_proposal(e, conv.graph)
        raise
    g.metadata.update({"source_format": "torch", "input_shape": list(input_shape),
                       "until": until, "export_batch": conv.batch})
    return g
