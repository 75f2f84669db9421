"""ONNX front end: an ONNX model → neurodeploy IR.

Supported: Conv (1-d/2-d, grouped), Gemm / MatMul with an initializer, BatchNormalization, the SFA
activation patterns (Clip / Relu [+ Clip] → Round | Add 0.5 → Floor | Floor → optional Div/Mul by
the norm), Add (residual, or a constant folded into the preceding bias), Mul/Div by constants,
Flatten / Reshape (with shape sub-graphs Shape→Slice→Concat evaluated), AveragePool,
GlobalAveragePool, ReduceMean, Identity / Dropout. Everything else raises
:class:`UnsupportedOpError` naming the node, if the output depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ir
from ..errors import HostOpError, LoadError, NeurodeployError, UnsupportedOpError
from .torch_export import _V


@dataclass
class _Poison:
    exc: NeurodeployError


def _path_of(node, idx: int) -> str:
    """'/encoder/blocks.0/conv/pwconv1/Conv' → 'encoder.blocks.0.conv.pwconv1'."""
    name = node.name or ""
    parts = [p for p in name.split("/") if p]
    if len(parts) >= 2:
        return ".".join(parts[:-1])
    return ""


class _OnnxConverter:
    def __init__(self, model, until=None):
        import onnx
        from onnx import numpy_helper
        self.onnx = onnx
        self.nh = numpy_helper
        self.model = model
        self.g = model.graph
        self.until = until
        self.graph = ir.Graph()
        self.vals: dict[str, object] = {}
        self.consumers: dict[str, list] = {}
        for node in self.g.node:
            for i in node.input:
                if i:
                    self.consumers.setdefault(i, []).append(node)
        self.skip: set[int] = set()
        self.out_name: dict[str, str] = {}
        for init in self.g.initializer:
            self.vals[init.name] = numpy_helper.to_array(init).astype(np.float64) \
                if numpy_helper.to_array(init).dtype.kind == "f" else numpy_helper.to_array(init)
        inits = {i.name for i in self.g.initializer}
        inputs = [i for i in self.g.input if i.name not in inits]
        if len(inputs) != 1:
            raise UnsupportedOpError(f"the ONNX model has {len(inputs)} inputs; one is supported")
        dims = inputs[0].type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(shape) < 2 or any(s is None for s in shape[1:]):
            raise UnsupportedOpError(f"ONNX input '{inputs[0].name}' has an unknown per-sample shape {shape}",
                                     fix="export with a fixed input shape (only the batch dim may be dynamic)")
        self.batch = shape[0] or 1
        self.input_shape = tuple(int(s) for s in shape[1:])
        self.graph.add("input", ir.Input(input_shape=self.input_shape, is_spikes=False, source="input"))
        self.vals[inputs[0].name] = _V("input", self.input_shape)

    # -- helpers -------------------------------------------------------------------------------
    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def emit(self, node, idx, irnode, inputs, suffix) -> _V:
        path = _path_of(node, idx)
        base = path if path and suffix in ("conv", "linear", "bn", "spike", "pool") else \
            (f"{path}.{suffix}" if path else suffix)
        name = self.graph.unique_name(base)
        irnode.source = irnode.source or path or (node.name or f"{node.op_type}_{idx}")
        irnode.meta.setdefault("onnx", node.name or f"{node.op_type}_{idx}")
        self.graph.add(name, irnode, [v.name for v in inputs])
        shape = ir.output_shape(irnode, [v.shape for v in inputs])
        return _V(name, tuple(shape))

    def err(self, node, msg, fix=None, cls=UnsupportedOpError):
        return cls(msg, layer=node.name or node.op_type, fix=fix)

    def const(self, name):
        if not name:
            return None
        v = self.vals.get(name)
        if isinstance(v, (_V, _Poison)):
            return None
        return v

    def single_consumer(self, out):
        c = self.consumers.get(out, [])
        if len(c) != 1 or out in self.graph_outputs:
            return None
        return c[0]

    # -- walk ------------------------------------------------------------------------------------
    def run(self):
        self.graph_outputs = {o.name for o in self.g.output}
        index = {id(n): i for i, n in enumerate(self.g.node)}
        self.index = index
        for i, node in enumerate(self.g.node):  # constants first: patterns look ahead at them
            if node.op_type == "Constant":
                self.skip.add(i)
                try:
                    self.vals[node.output[0]] = self.fold(node, [])
                except NeurodeployError as e:
                    self.vals[node.output[0]] = _Poison(e)
        for i, node in enumerate(self.g.node):
            if i in self.skip:
                continue
            ins = [self.vals.get(x) if x else None for x in node.input]
            poisons = [v for v in ins if isinstance(v, _Poison)]
            try:
                if poisons:
                    out = poisons[0]
                elif not any(isinstance(v, _V) for v in ins):
                    out = self.fold(node, ins)
                else:
                    out = self.match_activation(node, i)
                    if out is None:
                        handler = getattr(self, f"op_{node.op_type}", None)
                        if handler is None:
                            raise self.err(node, f"unsupported ONNX op '{node.op_type}'",
                                           fix="rewrite this part with supported ops or cut before it with --until")
                        out = handler(node, i, ins)
            except NeurodeployError as e:
                out = _Poison(e)
            except Exception as e:  # noqa: BLE001
                out = _Poison(self.err(node, f"cannot convert ONNX op '{node.op_type}': {type(e).__name__}: {e}"))
            if isinstance(out, tuple):
                for name, v in zip(node.output, out):
                    self.vals[name] = v
            elif node.output:
                self.vals[node.output[0]] = out
                for extra in node.output[1:]:
                    self.vals[extra] = None
        return self

    # -- constant folding (shape sub-graphs, Constant, ...) -------------------------------------------
    def fold(self, node, ins):
        op = node.op_type
        a = self.attrs(node)
        if op == "Constant":
            if "value" in a:
                v = self.nh.to_array(a["value"])
            elif "value_float" in a:
                v = np.array(a["value_float"])
            elif "value_int" in a:
                v = np.array(a["value_int"])
            elif "value_floats" in a:
                v = np.array(a["value_floats"])
            elif "value_ints" in a:
                v = np.array(a["value_ints"])
            else:
                raise self.err(node, "Constant without a supported value")
            return v.astype(np.float64) if v.dtype.kind == "f" else v
        if op in ("Identity", "Dropout"):
            return ins[0]
        if op == "Cast":
            return ins[0]
        if op == "Unsqueeze":
            axes = a.get("axes", None if len(ins) < 2 else list(ins[1]))
            v = ins[0]
            for ax in sorted(int(x) for x in axes):
                v = np.expand_dims(v, ax)
            return v
        if op == "Squeeze":
            axes = a.get("axes", None if len(ins) < 2 or ins[1] is None else list(ins[1]))
            return np.squeeze(ins[0], axis=tuple(int(x) for x in axes) if axes is not None else None)
        if op == "Concat":
            return np.concatenate([np.atleast_1d(v) for v in ins], axis=int(a.get("axis", 0)))
        if op == "Gather":
            return np.take(ins[0], ins[1].astype(np.int64), axis=int(a.get("axis", 0)))
        if op == "Slice":
            data, starts, ends = ins[0], ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 and ins[3] is not None else range(len(starts))
            steps = ins[4] if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
            sl = [slice(None)] * data.ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[int(ax)] = slice(int(s), int(min(e, 2**62)), int(st))
            return data[tuple(sl)]
        if op == "Reshape":
            return ins[0].reshape([int(s) for s in ins[1]])
        if op == "Transpose":
            return np.transpose(ins[0], a.get("perm"))
        if op in ("Mul", "Div", "Add", "Sub"):
            f = {"Mul": np.multiply, "Div": np.divide, "Add": np.add, "Sub": np.subtract}[op]
            if op == "Div" and ins[0].dtype.kind in "iu" and ins[1].dtype.kind in "iu":
                return ins[0] // ins[1]
            return f(ins[0], ins[1])
        raise self.err(node, f"cannot evaluate constant op '{op}'")

    def op_Shape(self, node, i, ins):
        return np.array((self.batch,) + tuple(ins[0].shape), dtype=np.int64)

    # -- activations ---------------------------------------------------------------------------------
    def match_activation(self, node, i):
        if node.op_type not in ("Clip", "Relu", "Round", "Floor", "Add"):
            return None
        x = self.vals.get(node.input[0])
        if not isinstance(x, _V):
            return None
        lo = hi = None
        rounding = None
        pending = False
        chain, complete = [], None
        cur = node
        while cur is not None:
            op = cur.op_type
            if chain and cur.input[0] != chain[-1].output[0]:
                break
            ok = True
            if op == "Clip":
                a = self.attrs(cur)
                mn = self.const(cur.input[1]) if len(cur.input) > 1 else a.get("min")
                mx = self.const(cur.input[2]) if len(cur.input) > 2 else a.get("max")
                if (len(cur.input) > 1 and cur.input[1] and mn is None) or \
                        (len(cur.input) > 2 and cur.input[2] and mx is None):
                    ok = False
                else:
                    if mn is not None:
                        mn = float(np.asarray(mn).reshape(-1)[0])
                        lo = mn if lo is None else max(lo, mn)
                    if mx is not None:
                        mx = float(np.asarray(mx).reshape(-1)[0])
                        hi = mx if hi is None else min(hi, mx)
            elif op == "Relu":
                lo = 0.0 if lo is None else max(lo, 0.0)
            elif op == "Round":
                ok = not pending
                rounding = rounding or "half_even"
            elif op == "Add":
                c = self.const(cur.input[1])
                ok = not pending and rounding is None and c is not None and np.size(c) == 1 and float(c) == 0.5
                pending = ok
            elif op == "Floor":
                rounding = rounding or ("half_up" if pending else "floor")
                pending = False
            elif op in ("Div", "Mul") and rounding is not None and not pending and chain:
                c = self.const(cur.input[1])
                if c is None or np.size(c) != 1 or float(c) <= 0:
                    break
                c = float(np.asarray(c).reshape(-1)[0])
                norm = c if op == "Div" else 1.0 / c
                r = round(norm)
                norm = float(r) if abs(norm - r) < 1e-6 else norm
                chain.append(cur)
                complete = (len(chain), lo, hi, rounding, norm)
                break
            else:
                ok = False
            if not ok:
                break
            chain.append(cur)
            if not pending and op != "Add":
                complete = (len(chain), lo, hi, rounding, 1.0)
            cur = self.single_consumer(cur.output[0])
        if complete is None:
            return None
        k, lo, hi, rounding, norm = complete
        if rounding is None or lo != 0 or hi is None or hi != int(hi) or hi < 1:
            return None
        chain = chain[:k]
        core = next((m for m in chain if m.op_type in ("Round", "Floor")), chain[0])
        neuron = ir.IFNeuron(threshold=1.0, max_spikes=int(hi), rounding=rounding,
                             v_init=0.0 if rounding == "floor" else 0.5, norm=float(norm),
                             meta={"onnx": chain[-1].name, "pattern": [m.op_type for m in chain],
                                   "code_settings": {"max_spikes": int(hi), "rounding": rounding,
                                                     "norm": float(norm)}})
        v = self.emit(core, i, neuron, [x], "spike")
        for m in chain[1:]:
            self.skip.add(self.index[id(m)])
        self.vals[chain[-1].output[0]] = v
        return v

    # -- ops -------------------------------------------------------------------------------------------
    def op_Conv(self, node, i, ins):
        a = self.attrs(node)
        x, w = ins[0], ins[1]
        b = ins[2] if len(ins) > 2 else None
        if w is None or isinstance(w, _V):
            raise self.err(node, "Conv weight is not an initializer")
        k = w.ndim - 2
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise self.err(node, f"Conv auto_pad={a['auto_pad']!r}", fix="export with explicit pads")
        pads = list(a.get("pads", [0] * (2 * k)))
        if pads[:k] != pads[k:]:
            raise self.err(node, f"asymmetric Conv pads {pads}")
        strides = list(a.get("strides", [1] * k))
        dil = list(a.get("dilations", [1] * k))
        groups = int(a.get("group", 1))
        if k == 2:
            n = ir.Conv2d(weight=w.astype(np.float64), bias=None if b is None else b.astype(np.float64),
                          stride=tuple(strides), padding=tuple(pads[:2]), dilation=tuple(dil), groups=groups)
        elif k == 1:
            n = ir.Conv1d(weight=w.astype(np.float64), bias=None if b is None else b.astype(np.float64),
                          stride=strides[0], padding=pads[0], dilation=dil[0], groups=groups)
        else:
            raise self.err(node, f"{k}-d Conv is not supported")
        return self.emit(node, i, n, [x], "conv")

    def op_Gemm(self, node, i, ins):
        a = self.attrs(node)
        x, w = ins[0], ins[1]
        c = ins[2] if len(ins) > 2 else None
        if not isinstance(x, _V) or w is None or isinstance(w, _V):
            raise self.err(node, "Gemm needs an activation input and an initializer weight")
        if a.get("transA", 0):
            raise self.err(node, "Gemm with transA=1")
        w = w.T if not a.get("transB", 0) else w  # IR Linear weight is [out, in]
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        bias = None if c is None else np.broadcast_to(np.asarray(c, dtype=np.float64).reshape(-1) * beta,
                                                       (w.shape[0],)).copy()
        return self.emit(node, i, ir.Linear(weight=np.asarray(w, dtype=np.float64) * alpha, bias=bias), [x], "linear")

    def op_MatMul(self, node, i, ins):
        x, w = ins
        if isinstance(x, _V) and isinstance(w, _V):
            raise self.err(node, "MatMul of two activation tensors (spike-driven attention) must run on the host",
                           fix="deploy the part before it with --until and run the rest on the host", cls=HostOpError)
        if not isinstance(x, _V) or w is None or np.ndim(w) != 2:
            raise self.err(node, "MatMul needs an activation on the left and a 2-d initializer on the right")
        return self.emit(node, i, ir.Linear(weight=np.asarray(w, dtype=np.float64).T.copy(), bias=None), [x], "linear")

    def op_BatchNormalization(self, node, i, ins):
        a = self.attrs(node)
        x, sc, b, mean, var = ins[:5]
        n = ir.BatchNorm(mean=np.asarray(mean, np.float64), var=np.asarray(var, np.float64),
                         weight=np.asarray(sc, np.float64), bias=np.asarray(b, np.float64),
                         eps=float(a.get("epsilon", 1e-5)))
        return self.emit(node, i, n, [x], "bn")

    def _vector(self, node, c, shape):
        c = np.asarray(c, dtype=np.float64)
        if c.size == 1:
            return float(c.reshape(-1)[0])
        t = c
        while t.ndim > len(shape) and t.shape[0] == 1:
            t = t[0]
        if t.ndim == len(shape) and t.shape[0] == shape[0] and all(d == 1 for d in t.shape[1:]):
            return t.reshape(-1).copy()
        if t.ndim == 1 and len(shape) == 1 and t.shape[0] == shape[0]:
            return t.copy()
        raise self.err(node, f"constant of shape {c.shape} is not a scalar or per-channel constant")

    def op_Add(self, node, i, ins):
        x, y = ins
        if isinstance(x, _V) and isinstance(y, _V):
            if x.shape != y.shape:
                raise self.err(node, f"Add of different shapes {x.shape} and {y.shape}")
            return self.emit(node, i, ir.Add(), [x, y], "add")
        v, c = (x, y) if isinstance(x, _V) else (y, x)
        return self._add_const(node, v, c, 1.0)

    def op_Sub(self, node, i, ins):
        x, y = ins
        if isinstance(x, _V) and not isinstance(y, _V):
            return self._add_const(node, x, y, -1.0)
        raise self.err(node, "subtraction of activation tensors is not supported")

    def _add_const(self, node, v, c, factor):
        vec = np.asarray(self._vector(node, c, v.shape), dtype=np.float64) * factor
        if np.all(vec == 0):
            return v
        prod = self.graph.nodes.get(v.name)
        if not isinstance(prod, (ir.Conv2d, ir.Conv1d, ir.Linear, ir.BatchNorm)) or self.graph.consumers_of(v.name) \
                or len(self.consumers.get(node.input[0] if isinstance(self.vals.get(node.input[0]), _V)
                                          else node.input[1], [])) != 1:
            raise self.err(node, "adding a constant that cannot be folded into a preceding bias")
        nout = v.shape[-1] if isinstance(prod, ir.Linear) else v.shape[0]
        b = np.broadcast_to(vec, (nout,)).astype(np.float64)
        prod.bias = (np.zeros(nout) if prod.bias is None else prod.bias) + b
        return v

    def _scale(self, node, i, v, c, invert):
        s = np.asarray(self._vector(node, c, v.shape), dtype=np.float64)
        if invert:
            s = 1.0 / s
        if np.all(s == 1):
            return v
        if np.any(s <= 0):
            raise self.err(node, "multiplication by a non-positive constant")
        prod = self.graph.nodes.get(v.name)
        if s.ndim == 0 and type(prod) is ir.AvgPool2d and np.isclose(float(s), prod.kernel[0] * prod.kernel[1]) \
                and not self.graph.consumers_of(v.name):
            self.graph.nodes[v.name] = ir.SumPool2d(kernel=prod.kernel, stride=prod.stride, padding=prod.padding,
                                                    source=prod.source, meta=prod.meta)
            return v
        return self.emit(node, i, ir.Scale(scale=float(s) if s.ndim == 0 else s), [v], "scale")

    def op_Mul(self, node, i, ins):
        x, y = ins
        if isinstance(x, _V) and isinstance(y, _V):
            raise self.err(node, "element-wise product of two activation tensors must run on the host",
                           cls=HostOpError, fix="deploy the part before it with --until")
        v, c = (x, y) if isinstance(x, _V) else (y, x)
        return self._scale(node, i, v, c, invert=False)

    def op_Div(self, node, i, ins):
        x, y = ins
        if not isinstance(x, _V) or isinstance(y, _V):
            raise self.err(node, "division by an activation tensor")
        return self._scale(node, i, x, y, invert=True)

    def op_Identity(self, node, i, ins):
        return ins[0]

    def op_Dropout(self, node, i, ins):
        return (ins[0], None)

    def op_Cast(self, node, i, ins):
        return ins[0]

    def _reshape_to(self, node, i, x, tgt):
        tgt = tuple(int(t) for t in tgt)
        if tgt == tuple(x.shape):
            return x
        if len(tgt) == 1:
            return self.emit(node, i, ir.Flatten(start_dim=0), [x], "flatten")
        k = len(tgt) - 1
        if tgt[:k] == tuple(x.shape[:k]) and len(x.shape) > k:
            return self.emit(node, i, ir.Flatten(start_dim=k), [x], "flatten")
        return self.emit(node, i, ir.Reshape(target_shape=tgt), [x], "reshape")

    def op_Flatten(self, node, i, ins):
        axis = int(self.attrs(node).get("axis", 1))
        x = ins[0]
        if axis != 1:
            raise self.err(node, f"Flatten(axis={axis}) merges the batch dimension or leaves it split")
        return self._reshape_to(node, i, x, (int(np.prod(x.shape)),))

    def op_Reshape(self, node, i, ins):
        x, shape = ins[0], ins[1]
        if shape is None or isinstance(shape, _V):
            raise self.err(node, "Reshape with a shape computed from data")
        shape = [int(s) for s in np.asarray(shape).reshape(-1)]
        full = (self.batch,) + tuple(x.shape)
        out = []
        for j, s in enumerate(shape):
            out.append(full[j] if s == 0 else s)
        if -1 in out:
            known = int(np.prod([s for s in out if s != -1]))
            out[out.index(-1)] = int(np.prod(full)) // known
        if out[0] != self.batch:
            raise self.err(node, f"Reshape to {out} changes the batch dimension")
        return self._reshape_to(node, i, x, out[1:])

    def op_Unsqueeze(self, node, i, ins):
        x = ins[0]
        axes = self.attrs(node).get("axes") or list(ins[1])
        shape = list((self.batch,) + tuple(x.shape))
        for ax in sorted(int(a) % (len(shape) + len(axes)) for a in axes):
            shape.insert(ax, 1)
        if shape[0] != self.batch:
            raise self.err(node, "Unsqueeze before the batch dimension")
        return self._reshape_to(node, i, x, shape[1:])

    def op_Squeeze(self, node, i, ins):
        x = ins[0]
        axes = self.attrs(node).get("axes") or (list(ins[1]) if len(ins) > 1 and ins[1] is not None else None)
        full = (self.batch,) + tuple(x.shape)
        if axes is None:
            axes = [j for j in range(1, len(full)) if full[j] == 1]
        axes = {int(a) % len(full) for a in axes}
        if 0 in axes:
            raise self.err(node, "Squeeze of the batch dimension")
        return self._reshape_to(node, i, x, [d for j, d in enumerate(full) if j not in axes][1:])

    def op_AveragePool(self, node, i, ins):
        a = self.attrs(node)
        x = ins[0]
        k = tuple(a["kernel_shape"])
        if len(k) != 2:
            raise self.err(node, f"{len(k)}-d AveragePool is not supported")
        s = tuple(a.get("strides", k))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if pads[:2] != pads[2:]:
            raise self.err(node, f"asymmetric AveragePool pads {pads}")
        if any(pads) and not a.get("count_include_pad", 0):
            raise self.err(node, "AveragePool with padding and count_include_pad=0",
                           fix="use count_include_pad=True or no padding")
        if a.get("ceil_mode", 0):
            c, h, w = x.shape
            for size, kk, ss, pp in ((h, k[0], s[0], pads[0]), (w, k[1], s[1], pads[1])):
                if (size + 2 * pp - kk) % ss:
                    raise self.err(node, "AveragePool with ceil_mode=1 changes the output size")
        return self.emit(node, i, ir.AvgPool2d(kernel=k, stride=s, padding=tuple(pads[:2])), [x], "pool")

    def op_GlobalAveragePool(self, node, i, ins):
        x = ins[0]
        if len(x.shape) != 3:
            raise self.err(node, f"GlobalAveragePool of a {len(x.shape)}-d tensor")
        return self.emit(node, i, ir.AvgPool2d(kernel=x.shape[1:], stride=x.shape[1:]), [x], "pool")

    def op_ReduceMean(self, node, i, ins):
        a = self.attrs(node)
        x = ins[0]
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = [int(v) for v in np.asarray(ins[1]).reshape(-1)]
        nd = len(x.shape) + 1
        if axes is None:
            raise self.err(node, "ReduceMean over all dims (incl. batch)")
        dims = sorted(int(d) % nd for d in axes)
        keep = int(a.get("keepdims", 1))
        if 0 in dims or [d - 1 for d in dims] != list(range(dims[0] - 1, dims[-1])):
            raise self.err(node, f"ReduceMean over dims {dims}")
        pd = [d - 1 for d in dims]
        shape = x.shape
        src, kernel = x, None
        if len(shape) == 3 and pd == [1, 2]:
            kernel = (shape[1], shape[2])
        elif len(shape) == 2 and pd == [1]:
            prod = self.graph.nodes.get(x.name)
            ins_ = self.graph.inputs_of(x.name)
            if isinstance(prod, (ir.Flatten, ir.Reshape)) and len(ins_) == 1:
                in_shape = self.graph.nodes[ins_[0]].shape or self._shape_of(ins_[0])
                if in_shape is not None and len(in_shape) == 3 and in_shape[0] == shape[0] \
                        and in_shape[1] * in_shape[2] == shape[1]:
                    src, kernel = _V(ins_[0], tuple(in_shape)), (in_shape[1], in_shape[2])
        pre = int(np.prod(shape[:pd[0]]))
        red = int(np.prod(shape[pd[0]:pd[-1] + 1]))
        post = int(np.prod(shape[pd[-1] + 1:]))
        if kernel is None:
            if tuple(shape) != (pre, red, post):
                src = self.emit(node, i, ir.Reshape(target_shape=(pre, red, post)), [x], "reshape")
            kernel = (red, 1)
        v = self.emit(node, i, ir.AvgPool2d(kernel=kernel, stride=kernel), [src], "gap")
        out = [d if j not in pd else 1 for j, d in enumerate(shape)]
        if not keep:
            out = [d for j, d in enumerate(shape) if j not in pd]
        return self._reshape_to(node, i, v, out)

    def _shape_of(self, name):
        g = self.graph.copy()
        ir.infer_shapes(g)
        return g.nodes[name].shape

    def op_MaxPool(self, node, i, ins):
        raise self.err(node, "max pooling is not supported on neuromorphic targets",
                       fix="replace MaxPool with sum/average pooling or a stride-2 convolution, then fine-tune")

    op_GlobalMaxPool = op_MaxPool

    def op_Clip(self, node, i, ins):
        raise self.err(node, "Clip not followed by Round / Add 0.5 → Floor / Floor is not an integer (SFA) activation")

    op_Relu = op_Clip

    def op_Transpose(self, node, i, ins):
        raise self.err(node, "Transpose of an activation tensor (the IR has no transpose)",
                       fix="keep tensors channel-first, or cut before it with --until")


def from_onnx(path, *, until: str | None = None) -> ir.Graph:
    """Import an ONNX file (or ``onnx.ModelProto``) as an IR graph; ``until`` cuts at an IR node name."""
    import onnx
    if isinstance(path, onnx.ModelProto):
        model, where = path, "<ModelProto>"
    else:
        where = str(path)
        try:
            model = onnx.load(str(path))
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e}); the file is probably "
                            f"truncated or corrupt", fix="export or copy the file again") from e
        if not model.graph.node:
            raise LoadError(f"{path}: the ONNX model has no nodes (truncated or not an ONNX file)")
    conv = _OnnxConverter(model).run()
    g = conv.graph
    outs = [o.name for o in model.graph.output]
    if until is not None:
        if until not in g.nodes:
            raise NeurodeployError(f"--until {until!r} is not a node of the ONNX graph",
                                   fix="use one of: " + ", ".join(n for n in g.nodes if n != "input"))
        targets = [_V(until, None)]
    else:
        targets = []
        for o in outs:
            v = conv.vals.get(o)
            if isinstance(v, _Poison):
                raise v.exc
            if not isinstance(v, _V):
                raise UnsupportedOpError(f"ONNX output '{o}' does not depend on the input", layer=o)
            targets.append(v)
    for v in targets:
        g.add(g.unique_name("output"), ir.Output(source="output"), [v.name])
    g.prune_to_outputs()
    ir.infer_shapes(g)
    g.validate()
    g.metadata.update({"source_format": "onnx", "input_shape": list(conv.input_shape), "source_file": where})
    return g
