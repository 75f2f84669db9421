"""Event-driven execution of a canonical graph through its routing tables.

See the package docstring (``neurodeploy.engine``) for semantics and exactness.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .. import ir, ops
from ..errors import NeurodeployError
from ..routing import IDENTITY_TYPES, ROUTING_TYPES, Routing, build_routing
from . import kernels as K

RULES = ("multi", "single")
ORDERS = ("depth", "breadth")
EVENT_DTYPE = np.dtype([("c", np.int32), ("y", np.int32), ("x", np.int32), ("t", np.int64),
                        ("seq", np.int64)])
_BIG = np.int64(2 ** 62)
CHUNK = 1 << 15


@dataclass
class EventResult:
    """Result of one event-driven run.

    ``counts``: {node name: array} spike counts of every IF node (node shape), the input's event
    counts (spiking input) or quantised input (dense input), and every Output node's value.
    ``events``: {IF / Input node name: structured array (c, y, x, t, seq)} in emission order when
    ``record_events`` (``t``: timestamp of the input event that caused it, -1 for start tick /
    barrier firing; ``seq``: global emission order), else None.
    ``synaptic_events``: membrane updates performed (Σ over events of their fan-out).
    ``synops``: the same per routing layer (and ``'<identity>'`` for shortcut edges).
    ``saturations``: membrane updates clipped by the state width or the low threshold.
    """

    counts: dict
    events: dict | None
    synaptic_events: int
    synops: dict = field(default_factory=dict)
    saturations: int = 0
    rule: str = "multi"
    order: str = "breadth"
    input_events: int = 0


def _addr_fields(shape):
    """(C, H, W) view of a per-sample shape for addresses (see routing docstring)."""
    shape = tuple(shape)
    if len(shape) == 3:
        return shape
    if len(shape) == 2:
        return (shape[0], 1, shape[1])
    if len(shape) == 1:
        return (shape[0], 1, 1)
    n = int(np.prod(shape))
    return (n, 1, 1)


def events_from_raster(raster) -> np.ndarray:
    """Flat addresses of the events of an integer count raster, *timestep-major*: round r emits
    every position with count > r, in address (C-order) order."""
    c = np.asarray(raster)
    if np.any(c < 0) or np.any(c != np.round(c)):
        raise NeurodeployError("an event raster must hold non-negative integer counts",
                               fix="give real-valued input to a graph whose Input is not is_spikes")
    c = c.reshape(-1).astype(np.int64)
    addr = np.repeat(np.arange(c.size), c)
    start = np.repeat(np.cumsum(c) - c, c)
    rank = np.arange(addr.size) - start
    return addr[np.argsort(rank, kind="stable")]


def events_to_addresses(events, shape) -> tuple[np.ndarray, np.ndarray]:
    """Flat addresses and timestamps of a structured event array with fields x, y (optional for
    1-D inputs), and p / c / channel (polarity = channel), optional t (default: the event's index).
    For a vector input (N,) an event without a channel field is at index x. Order is kept."""
    ev = np.asarray(events)
    names = ev.dtype.names or ()
    C, H, W = _addr_fields(shape)
    ch = next((n for n in ("c", "p", "channel") if n in names), None)
    c = ev[ch].astype(np.int64) if ch else np.zeros(len(ev), np.int64)
    y = ev["y"].astype(np.int64) if "y" in names else np.zeros(len(ev), np.int64)
    if "x" in names:
        x = ev["x"].astype(np.int64)
    else:
        raise NeurodeployError(f"events need an 'x' field (got fields {names})")
    if len(tuple(shape)) == 1 and ch is None:  # vector input: x is the index
        c, x = x, np.zeros(len(ev), np.int64)
    bad = (c < 0) | (c >= C) | (y < 0) | (y >= H) | (x < 0) | (x >= W)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise NeurodeployError(f"{int(bad.sum())} event(s) outside the input (C={C}, H={H}, W={W}); "
                               f"first: c={c[i]}, y={y[i]}, x={x[i]}", fix="check the sensor size and polarity field")
    t = ev["t"].astype(np.int64) if "t" in names else np.arange(len(ev), dtype=np.int64)
    return (c * H + y) * W + x, t


class EventEngine:
    """A graph compiled for event-driven execution (reused across samples).

    ``rule``: 'multi' (fire floor(v/θ) spikes at once, up to the budget) or 'single' (at most one
    spike per neuron per input event, Speck). ``order``: 'breadth' (layer barrier: a layer
    integrates all of its input events, then fires) or 'depth' (every output event fully
    propagated before the next input event, Speck). ``saturate``: apply ``state_bits`` and
    ``low_threshold_q`` per membrane update. ``max_spikes``: override every layer's budget D.
    ``start_tick`` (depth order): neurons whose initial membrane (v_init + bias + dense input
    current) is at/above threshold fire before the first input event.
    """

    def __init__(self, graph: ir.Graph, *, routing: Routing | None = None, rule: str = "multi",
                 order: str = "breadth", saturate: bool = True, max_spikes: int | None = None,
                 start_tick: bool = True, sparse_conv_masks: dict | None = None, gates: list | None = None):
        if rule not in RULES:
            raise NeurodeployError(f"unknown firing rule {rule!r}", fix=f"use one of {RULES}")
        if order not in ORDERS:
            raise NeurodeployError(f"unknown processing order {order!r}", fix=f"use one of {ORDERS}")
        if any(n.shape is None for n in graph.nodes.values()):
            graph = ir.infer_shapes(graph.copy())
        for name, node in graph.nodes.items():
            if not isinstance(node, (ir.Input, ir.Output, ir.IFNeuron) + ROUTING_TYPES + IDENTITY_TYPES):
                raise NeurodeployError(f"the event engine runs canonical graphs; {node.kind} is not canonical",
                                       layer=name, fix="run neurodeploy.passes.canonicalize first")
            if isinstance(node, ir.IFNeuron) and node.reset != "subtract":
                raise NeurodeployError(f"reset mode {node.reset!r} not supported", layer=name)
        self.graph, self.rule, self.order = graph, rule, order
        self.quantized = graph.is_quantized
        self.dtype = np.int64 if self.quantized else np.float64
        self.routing = routing if routing is not None else build_routing(graph, sparse_conv_masks=sparse_conv_masks)
        if self.routing.quantized != self.quantized:
            raise NeurodeployError("routing and graph disagree on quantisation", fix="rebuild the routing")
        inputs = graph.input_names()
        if len(inputs) != 1:
            raise NeurodeployError(f"the event engine needs exactly one Input node, found {len(inputs)}")
        self.input_name = inputs[0]
        self.input_node = graph.nodes[self.input_name]
        self.layers = graph.neurons()
        self.lid = {n: i for i, n in enumerate(self.layers)}
        nL = len(self.layers)
        self.sid = {}
        for t in self.routing.tables:
            if t.name not in graph.nodes or not isinstance(graph.nodes[t.name], ROUTING_TYPES):
                raise NeurodeployError(f"routing layer {t.name!r} is not in the graph", fix="rebuild the routing")
            self.sid[t.name] = t.index
        missing = [n for n in graph.nodes if isinstance(graph.nodes[n], ROUTING_TYPES) and n not in self.sid]
        if missing:
            raise NeurodeployError(f"routing has no table for {missing}", fix="rebuild the routing")

        # sinks: Output nodes whose value is not simply one neuron layer's (or the input's) counts
        self.sinks = []
        self.output_src = {}
        for o in graph.output_names():
            up = self._upstream(o)
            if len(up) == 1 and isinstance(graph.nodes[up[0]], (ir.IFNeuron, ir.Input)):
                self.output_src[o] = up[0]
            else:
                self.sinks.append(o)
        self.sink_id = {o: i for i, o in enumerate(self.sinks)}

        # neuron layers
        sizes = [int(np.prod(graph.nodes[n].shape)) for n in self.layers]
        self.loff = np.zeros(nL + 1, np.int64)
        np.cumsum(sizes, out=self.loff[1:])
        dt = self.dtype
        q = self.quantized
        if q:
            for n in self.layers:
                if graph.nodes[n].threshold_q is None:
                    raise NeurodeployError("quantised graph: IF layer has no threshold_q", layer=n,
                                           fix="run the target's quantize pass")
        self.theta = np.array([graph.nodes[n].threshold_q if q else graph.nodes[n].threshold for n in self.layers], dt)
        if np.any(self.theta <= 0):
            raise NeurodeployError("IF thresholds must be > 0 (quantised: threshold_q)",
                                   layer=self.layers[int(np.argmax(self.theta <= 0))])
        self.vinit = np.array([(graph.nodes[n].v_init_q or 0) if q else graph.nodes[n].v_init for n in self.layers], dt)
        self.dmax = np.array([max_spikes if max_spikes is not None else graph.nodes[n].max_spikes
                              for n in self.layers], np.int64)
        self.heven = np.array([graph.nodes[n].rounding == "half_even" for n in self.layers], np.uint8)
        lo, hi = [], []
        for n in self.layers:
            node = graph.nodes[n]
            l_, h_ = (-_BIG, _BIG) if q else (-np.inf, np.inf)
            if saturate and q:
                if node.state_bits is not None:
                    l_, h_ = -(2 ** (node.state_bits - 1)), 2 ** (node.state_bits - 1) - 1
                if node.low_threshold_q is not None:
                    l_ = max(l_, int(node.low_threshold_q))
            lo.append(l_)
            hi.append(h_)
        self.lo, self.hi = np.array(lo, dt), np.array(hi, dt)
        self.nlayer = np.repeat(np.arange(nL, dtype=np.int64), sizes)
        self.start_tick = start_tick

        # edges: stage targets and source edges (sources: IF layers 0..nL-1, input nL)
        tabs = self.routing.tables
        self.sources = self.layers + [self.input_name]
        stage_targets = [self._targets(t.name, from_stage=True) for t in tabs]
        src_targets = {n: (self._targets(n, from_stage=False)
                           if (n != self.input_name or self.input_node.is_spikes) else [])
                       for n in self.sources}
        self.cl = self._choose_layouts(src_targets, stage_targets)
        stage_sources = {i: [] for i in range(len(tabs))}
        for n in self.sources:
            for k, i in src_targets[n]:
                if k == 1:
                    stage_sources[i].append(n)
        tg_ptr, tg_kind, tg_id = [0], [], []
        for tl in stage_targets:
            for k, i in tl:
                tg_kind.append(k)
                tg_id.append(i)
            tg_ptr.append(len(tg_kind))
        src_ptr, src_kind, src_id = [0], [], []
        for n in self.sources:
            for k, i in src_targets[n]:
                src_kind.append(k)
                src_id.append(i)
            src_ptr.append(len(src_kind))
        as64 = lambda a: np.array(a if a else [0], np.int64)  # noqa: E731
        self.tg_ptr, self.tg_kind, self.tg_id = np.array(tg_ptr, np.int64), as64(tg_kind), as64(tg_id)
        self.src_ptr, self.src_kind, self.src_id = np.array(src_ptr, np.int64), as64(src_kind), as64(src_id)

        # routing stages (geometry re-strided for channel-last neuron layers)
        st, ryp, ryo, ryk, rxp, rxo, rxk, wt, mask = [], [], [], [], [], [], [], [], []
        offs = dict(ry=0, ryp=0, rx=0, rxp=0, w=0, m=0)
        self.maxfan = 1
        for t in tabs:
            g = dict(t.geometry)
            cin_g, cout_g = t.cin_g, t.cout_g
            w = t.weight_flat().astype(dt).reshape(g["C_out"], cin_g, g["kh"], g["kw"])
            srcs = stage_sources[t.index]
            if srcs and self.cl[srcs[0]]:
                if t.kind == "Linear":  # columns in the source's channel-last order
                    C, H, W = self.graph.nodes[srcs[0]].shape
                    perm = np.arange(C * H * W).reshape(C, H, W).transpose(1, 2, 0).reshape(-1)
                    w = w[:, perm]
                else:
                    g["dc_in"], g["dy_in"], g["dx_in"] = 1, g["W_in"] * g["C_in"], g["C_in"]
            if any(k == 0 and self.cl[self.layers[i]] for k, i in stage_targets[t.index]):
                g["sc_out"], g["sy_out"], g["sx_out"] = 1, g["W_out"] * g["C_out"], g["C_out"]
            wT = np.ascontiguousarray(w.transpose(1, 2, 3, 0)).reshape(-1)
            m_off = -1
            if t.mask is not None:
                m_off = offs["m"]
                mask.append(t.mask.astype(np.uint8))
                offs["m"] += t.mask.size
            st.append([g["C_in"], g["H_in"], g["W_in"], g["dc_in"], g["dy_in"], g["dx_in"], g["C_out"],
                       g["H_out"], g["W_out"], g["sc_out"], g["sy_out"], g["sx_out"], g["kh"], g["kw"],
                       cin_g, cout_g, offs["ryp"], offs["rxp"], offs["w"], m_off])
            ryp.append(t.ry_ptr[:-1].astype(np.int64) + offs["ry"])
            rxp.append(t.rx_ptr[:-1].astype(np.int64) + offs["rx"])
            offs["ry"] += t.ry_out.size
            offs["rx"] += t.rx_out.size
            ryp.append(np.array([offs["ry"]], np.int64))
            rxp.append(np.array([offs["rx"]], np.int64))
            offs["ryp"] += t.ry_ptr.size
            offs["rxp"] += t.rx_ptr.size
            ryo.append(t.ry_out)
            ryk.append(t.ry_k)
            rxo.append(t.rx_out)
            rxk.append(t.rx_k)
            wt.append(wT)
            offs["w"] += wT.size
            ny, nx = np.diff(t.ry_ptr), np.diff(t.rx_ptr)
            self.maxfan = max(self.maxfan, int(ny.max(initial=0)) * int(nx.max(initial=0)) * cout_g)

        def cat(lst, dtype):
            return np.ascontiguousarray(np.concatenate(lst).astype(dtype)) if lst else np.zeros(1, dtype)

        self.st = np.array(st, np.int64).reshape(len(tabs), 20)
        self.ryp, self.ryo, self.ryk = cat(ryp, np.int64), cat(ryo, np.int64), cat(ryk, np.int64)
        self.rxp, self.rxo, self.rxk = cat(rxp, np.int64), cat(rxo, np.int64), cat(rxk, np.int64)
        self.wt, self.mask = cat(wt, dt), cat(mask, np.uint8)
        srcval = [1 if q else 1.0 / graph.nodes[n].norm for n in self.layers] + [1]
        self.srcval = np.array(srcval, dt)
        ssz = [int(np.prod(graph.nodes[graph.inputs_of(o)[0]].shape)) for o in self.sinks]
        self.soff = np.zeros(len(self.sinks) + 1, np.int64)
        np.cumsum(ssz, out=self.soff[1:])
        self.spike_bound = int(np.sum(np.diff(self.loff) * self.dmax)) + 2
        if self.spike_bound > 1 << 29:
            raise NeurodeployError(f"spike budget too large for the event buffers ({self.spike_bound} possible "
                                   "spikes)", fix="give a smaller max_spikes (the budget D bounds the event count)")
        self._static = None  # zero-input currents (spiking input): computed once
        self._set_gates(gates or [])

    # -- graph walking ----------------------------------------------------------------------------
    def _upstream(self, name):
        out = []
        for src in self.graph.inputs_of(name):
            if isinstance(self.graph.nodes[src], IDENTITY_TYPES):
                out.extend(self._upstream(src))
            else:
                out.append(src)
        return out

    def _targets(self, name, from_stage):
        out = []
        for c in self.graph.consumers_of(name):
            node = self.graph.nodes[c]
            if isinstance(node, ir.IFNeuron):
                out.append((0, self.lid[c]))
            elif isinstance(node, ROUTING_TYPES):
                out.append((1, self.sid[c]))
            elif isinstance(node, IDENTITY_TYPES):
                out.extend(self._targets(c, from_stage))
            elif isinstance(node, ir.Output):
                if c in self.sink_id:
                    out.append((2, self.sink_id[c]))
            else:
                raise NeurodeployError(f"unsupported consumer {node.kind}", layer=c)
        return out

    def _choose_layouts(self, src_targets, stage_targets):
        """Channel-last (y, x, c) internal layout for every (C, H, W) source whose routing allows it
        (better locality: one event's output channels are adjacent); else C-order. Fixpoint of
        the constraints: same layout along identity edges and among a stage's sources; a stage
        writing channel-last must be a Conv2d/SumPool2d whose targets are all such neuron layers."""
        g, tabs = self.graph, self.routing.tables
        shape = {n: tuple(g.nodes[n].shape) for n in self.sources}
        cl = {n: len(shape[n]) == 3 and shape[n][1] * shape[n][2] > 1 and shape[n][0] > 1 for n in self.sources}
        if not self.input_node.is_spikes:
            cl[self.input_name] = False
        stage_sources = {i: [] for i in range(len(tabs))}
        for n in self.sources:
            for k, i in src_targets[n]:
                if k == 1:
                    stage_sources[i].append(n)
        changed = True

        def off(*ns):
            nonlocal changed
            for n in ns:
                if cl[n]:
                    cl[n] = False
                    changed = True

        while changed:
            changed = False
            for n in self.sources:
                for k, i in src_targets[n]:
                    if k == 0:
                        m = self.layers[i]
                        if shape[m] != shape[n] or cl[m] != cl[n]:
                            off(m, n)
                    elif k == 1:
                        t = tabs[i]
                        if t.kind in ("Conv2d", "SumPool2d"):
                            if tuple(t.in_shape) != shape[n]:
                                off(n)
                        elif not (t.kind == "Linear" and len(t.in_shape) == 1):
                            off(n)
                    else:
                        off(n)
            for srcs in stage_sources.values():
                if any(not cl[n] for n in srcs):
                    off(*srcs)
            for i, tl in enumerate(stage_targets):
                t = tabs[i]
                ifs = [self.layers[j] for k, j in tl if k == 0]
                ok = (t.kind in ("Conv2d", "SumPool2d") and all(k == 0 for k, _ in tl)
                      and all(shape[m] == tuple(t.out_shape) for m in ifs))
                if not ok or any(not cl[m] for m in ifs):
                    off(*ifs)
        return cl

    def _to_internal(self, name, flat):
        if not self.cl[name]:
            return flat
        C, H, W = self.graph.nodes[name].shape
        return np.asarray(flat).reshape(C, H, W).transpose(1, 2, 0).reshape(-1)

    def _to_internal_addr(self, name, a):
        if not self.cl[name]:
            return a
        C, H, W = self.graph.nodes[name].shape
        return ((a // W) % H * W + a % W) * C + a // (H * W)

    def _from_internal(self, name, flat):
        shape = tuple(self.graph.nodes[name].shape)
        if not self.cl[name]:
            return np.asarray(flat).reshape(shape)
        C, H, W = shape
        return np.ascontiguousarray(np.asarray(flat).reshape(H, W, C).transpose(2, 0, 1))

    def _addr_from_internal(self, name, a):
        """(c, y, x) of internal addresses."""
        C, H, W = _addr_fields(self.graph.nodes[name].shape)
        if self.cl[name]:
            return a % C, a // (W * C), (a // C) % W
        return a // (H * W), (a // W) % H, a % W

    # -- static currents (bias, dense input) -------------------------------------------------------
    def _static_currents(self, x_dense):
        """Pre-activation currents with every spike source at zero: biases (and the dense input's
        contribution). {IF or sink name: flat array}. ``x_dense``: batch [B, ...] or None."""
        graph, q = self.graph, self.quantized
        B = 1 if x_dense is None else x_dense.shape[0]
        vals = {}
        with torch.no_grad():
            for name in graph.topo_order():
                node = graph.nodes[name]
                ins = [vals[i] for i in graph.inputs_of(name)]
                if isinstance(node, ir.Input):
                    if x_dense is not None:
                        vals[name] = ops.quantize_input(node, x_dense, q)
                    else:
                        vals[name] = torch.zeros((B,) + tuple(node.shape), dtype=ops.DTYPE)
                elif isinstance(node, ir.IFNeuron):
                    vals[name] = torch.zeros((B,) + tuple(node.shape), dtype=ops.DTYPE)
                else:
                    vals[name] = ops.linear_op(node, ins, q)
        out = {}
        for n in self.layers:
            out[n] = vals[graph.inputs_of(n)[0]].reshape(B, -1).numpy()
        for o in self.sinks:
            out[o] = vals[graph.inputs_of(o)[0]].reshape(B, -1).numpy()
        if x_dense is not None:
            out[self.input_name] = vals[self.input_name].reshape((B,) + tuple(self.input_node.shape)).numpy()
        return out

    def _as_dtype(self, a, what):
        a = np.asarray(a, np.float64)
        if self.quantized:
            r = np.round(a)
            if np.any(r != a):
                raise NeurodeployError(f"{what} is not integer in a quantised graph")
            return r.astype(np.int64)
        return a

    # -- running ----------------------------------------------------------------------------------
    def prepare(self, x):
        """Split one sample into (input addresses, timestamps, dense raster or None)."""
        node = self.input_node
        shape = tuple(node.shape)
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        if isinstance(arr, np.ndarray) and arr.dtype.names:
            addr, t = events_to_addresses(arr, shape)
            if node.is_spikes:
                return addr, t, None
            raster = np.bincount(addr, minlength=int(np.prod(shape))).astype(np.float64).reshape(shape)
            return np.zeros(0, np.int64), np.zeros(0, np.int64), raster
        arr = np.asarray(arr, np.float64)
        if arr.shape != shape:
            if arr.size == int(np.prod(shape)) and arr.shape[:1] == (1,):
                arr = arr.reshape(shape)
            else:
                raise NeurodeployError(f"input raster has shape {arr.shape}, the graph's input is {shape}",
                                       layer=self.input_name)
        if node.is_spikes:
            addr = events_from_raster(arr)
            return addr, np.arange(addr.size, dtype=np.int64), None
        return np.zeros(0, np.int64), np.zeros(0, np.int64), arr

    def _set_gates(self, gates: list) -> None:
        """Gate features (Speck's layer barrier): [(IF layer name, weights [channels][, coverage])]; gate
        event e adds weights[f] to neuron (f, p) of every channel f for each output position p in
        coverage[e] (default: event e reaches position e only), as one input event (``run(stream=)``)."""
        g_layer, g_woff, g_hw, g_cl, g_stage, gw = [], [0], [], [], [], []
        g_eoff, gp_ptr, gp_pos = [], [0], []
        for name, w, *cov in gates:
            if name not in self.lid:
                raise NeurodeployError("a gate must feed an IF layer", layer=name)
            shape = tuple(self.graph.nodes[name].shape)
            w = self._as_dtype(np.asarray(w).reshape(-1), f"gate weights of {name}")
            if w.size != shape[0]:
                raise NeurodeployError(f"{w.size} gate weights for {shape[0]} channels", layer=name)
            feeder = self.graph.inputs_of(name)[0]
            g_layer.append(self.lid[name])
            g_woff.append(g_woff[-1] + w.size)
            g_hw.append(int(np.prod(shape[1:])))
            g_cl.append(int(self.cl[name]))
            g_stage.append(self.sid.get(feeder, self.st.shape[0]))
            gw.append(w)
            cover = cov[0] if cov else [[p] for p in range(g_hw[-1])]
            g_eoff.append(len(gp_ptr) - 1)
            for c in cover:
                gp_pos.extend(int(p) for p in c)
                gp_ptr.append(len(gp_pos))
        self.gate_args = (np.array(g_layer + [0], np.int64), np.array(g_woff, np.int64),
                          np.array(g_hw + [1], np.int64), np.array(g_cl + [0], np.int64),
                          np.array(g_stage + [0], np.int64),
                          np.concatenate(gw).astype(self.dtype) if gw else np.zeros(1, self.dtype),
                          np.array(g_eoff + [0], np.int64), np.array(gp_ptr, np.int64),
                          np.array(gp_pos + [0], np.int64))

    @staticmethod
    def gate_code(gate: int, position) -> np.ndarray:
        """Stream codes of gate events (``gate``: index in ``gates``; ``position``: the event's index in
        that gate's coverage list, by default the flat output position)."""
        return -1 - (np.int64(gate) * K.GATE_STRIDE + np.asarray(position, np.int64))

    def run(self, x, *, record_events: bool = False, progress: bool = False, static=None,
            stream=None, offsets: dict | None = None) -> EventResult:
        """Run one sample: an event stream (structured array) or a raster (per-sample shape).

        ``stream`` (depth order; ``x`` is then ignored): (codes, timestamps), codes >= 0 flat input
        addresses, < 0 gate events (``gate_code``), processed in this order. ``offsets``:
        {IF layer: flat C-order array} added to the initial membranes (Speck's held values)."""
        if stream is not None:
            if self.order != "depth":
                raise NeurodeployError("a host stream with gate events runs in depth order")
            codes = np.asarray(stream[0], np.int64)
            tstamp = np.asarray(stream[1], np.int64)
            addr, dense = codes[codes >= 0], None
        else:
            addr, tstamp, dense = self.prepare(x)
        if static is None:
            if dense is not None:
                static = {k: v[0] for k, v in self._static_currents(dense[None]).items()}
            else:
                if self._static is None:
                    self._static = {k: v[0] for k, v in self._static_currents(None).items()}
                static = self._static
        dt = self.dtype
        nL = len(self.layers)
        N = int(self.loff[-1])
        v = np.empty(N, dt)
        for i, n in enumerate(self.layers):
            v0 = self._to_internal(n, self._as_dtype(static[n], f"static current of {n}")) + self.vinit[i]
            if offsets and n in offsets:
                v0 = v0 + self._to_internal(n, self._as_dtype(offsets[n], f"initial offset of {n}").reshape(-1))
            v[self.loff[i]:self.loff[i + 1]] = np.clip(v0, self.lo[i], self.hi[i])
        cnt = np.zeros(N, np.int64)
        stamp = np.zeros(max(N, 1), np.int64)
        touched = np.zeros(max(N, 1), np.int64)
        sink = np.zeros(max(int(self.soff[-1]), 1), dt)
        for i, o in enumerate(self.sinks):
            sink[self.soff[i]:self.soff[i + 1]] = self._as_dtype(static[o], f"static current of {o}")
        nst = self.st.shape[0]
        synops = np.zeros(nst + 1, np.int64)
        ctr = np.zeros(4, np.int64)
        wcap = (nst + 1) * self.maxfan + 64 + len(self.src_kind)
        wst_s, wst_a, wst_v = np.zeros(wcap, np.int64), np.zeros(wcap, np.int64), np.zeros(wcap, dt)
        so, sw = np.zeros(self.maxfan, np.int64), np.zeros(self.maxfan, dt)
        lcap = self.spike_bound if record_events else 1
        log_l, log_a, log_t = np.zeros(lcap, np.int64), np.zeros(lcap, np.int64), np.zeros(lcap, np.int64)
        single = self.rule == "single"
        plan = (self.st, self.ryp, self.ryo, self.ryk, self.rxp, self.rxo, self.rxk, self.wt, self.mask,
                self.tg_ptr, self.tg_kind, self.tg_id, self.src_ptr, self.src_kind, self.src_id)
        work = (wst_s, wst_a, wst_v, so, sw)
        n_in = addr.size
        iaddr = self._to_internal_addr(self.input_name, addr)
        if stream is not None:
            n_in = codes.size
            iaddr = np.where(codes >= 0, self._to_internal_addr(self.input_name, np.maximum(codes, 0)), codes)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_in, unit="ev", desc=f"events ({self.order}, {self.rule})", leave=False)
        es_cap = self.spike_bound if self.order == "depth" else 2
        es_l, es_a = np.zeros(es_cap, np.int64), np.zeros(es_cap, np.int64)
        args = plan + (self.srcval, self.loff, self.theta, self.lo, self.hi, self.dmax, self.nlayer,
                       self.soff, v, cnt, stamp, touched, sink, synops, ctr) + work + (es_l, es_a, log_l, log_a, log_t) \
            + self.gate_args
        none = np.zeros(1, np.int64)
        try:
            if self.order == "depth":
                if self.start_tick:
                    for L in range(nL):
                        K.process(2, L, none, none, 0, int(self.loff[L + 1] - self.loff[L]), single, record_events,
                                  *args)
                for e0 in range(0, n_in, CHUNK):
                    e1 = min(n_in, e0 + CHUNK)
                    K.process(3 if stream is not None else 1, nL, iaddr, tstamp, e0, e1, single, record_events,
                              *args)
                    if bar is not None:
                        bar.update(e1 - e0)
            else:
                if self.input_node.is_spikes:
                    for e0 in range(0, n_in, CHUNK):
                        e1 = min(n_in, e0 + CHUNK)
                        K.process(0, nL, iaddr, tstamp, e0, e1, single, record_events, *args)
                        if bar is not None:
                            bar.update(e1 - e0)
                kk = np.zeros(max(int(np.diff(self.loff).max(initial=0)), 1), np.int64)
                for L in range(nL):
                    out_a = np.zeros(int((self.loff[L + 1] - self.loff[L]) * self.dmax[L]) + 1, np.int64)
                    m = K.barrier_fire(L, single, record_events, self.loff, self.theta, self.dmax, self.heven,
                                       v, cnt, kk, out_a, ctr, log_l, log_a, log_t)
                    K.process(0, L, out_a, out_a, 0, m, single, record_events, *args)
        finally:
            if bar is not None:
                bar.close()
        in_t = tstamp if stream is None else tstamp[np.asarray(stream[0]) >= 0]  # gate events are no input events
        return self._result(addr, in_t, dense, cnt, sink, synops, ctr, log_l, log_a, log_t, record_events)

    def _result(self, addr, tstamp, dense, cnt, sink, synops, ctr, log_l, log_a, log_t, record):
        graph = self.graph
        counts = {}
        in_shape = tuple(self.input_node.shape)
        if dense is None:
            counts[self.input_name] = np.bincount(addr, minlength=int(np.prod(in_shape))).reshape(in_shape)
        else:
            x = ops.quantize_input(self.input_node, torch.as_tensor(dense)[None], self.quantized)[0].numpy()
            counts[self.input_name] = x.astype(np.int64) if self.quantized else x
        for i, n in enumerate(self.layers):
            counts[n] = self._from_internal(n, cnt[self.loff[i]:self.loff[i + 1]]).copy()
        for o, src in self.output_src.items():
            counts[o] = counts[src].reshape(graph.nodes[o].shape)
        for i, o in enumerate(self.sinks):
            counts[o] = sink[self.soff[i]:self.soff[i + 1]].reshape(graph.nodes[o].shape).copy()
        events = None
        if record:
            n = int(ctr[1])
            events = {}
            in_ev = np.zeros(addr.size, EVENT_DTYPE)
            C, H, W = _addr_fields(in_shape)
            in_ev["c"], in_ev["y"], in_ev["x"] = addr // (H * W), (addr // W) % H, addr % W
            in_ev["t"], in_ev["seq"] = tstamp, -1
            events[self.input_name] = in_ev
            ll, la, lt = log_l[:n], log_a[:n], log_t[:n]
            seq = np.arange(n, dtype=np.int64)
            for i, name in enumerate(self.layers):
                sel = ll == i
                ev = np.zeros(int(sel.sum()), EVENT_DTYPE)
                ev["c"], ev["y"], ev["x"] = self._addr_from_internal(name, la[sel])
                ev["t"], ev["seq"] = lt[sel], seq[sel]
                events[name] = ev
        syn = {t.name: int(synops[t.index]) for t in self.routing.tables}
        syn["<identity>"] = int(synops[-1])
        return EventResult(counts=counts, events=events, synaptic_events=int(synops.sum()), synops=syn,
                           saturations=int(ctr[2]), rule=self.rule, order=self.order, input_events=int(addr.size))

    def run_batch(self, batch, *, record_events: bool = False, progress: bool = False) -> list[EventResult]:
        """Run every sample of ``batch`` (array [B, ...] of rasters, or a list of event arrays)."""
        if isinstance(batch, np.ndarray) and batch.dtype.names:  # one event stream
            samples = [batch]
        elif isinstance(batch, (np.ndarray, torch.Tensor)):
            samples = [batch[i] for i in range(len(batch))]
        else:
            samples = list(batch)
        statics = [None] * len(samples)
        if not self.input_node.is_spikes and samples and not (isinstance(samples[0], np.ndarray)
                                                                  and samples[0].dtype.names):
            dense = np.stack([np.asarray(s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else s,
                                         np.float64).reshape(self.input_node.shape) for s in samples])
            st = self._static_currents(dense)
            statics = [{k: v[b] for k, v in st.items()} for b in range(len(samples))]
        it = range(len(samples))
        if progress:
            from tqdm.auto import tqdm
            it = tqdm(it, unit="sample", desc="event engine")
        return [self.run(samples[b], record_events=record_events, static=statics[b]) for b in it]


def run_events(graph: ir.Graph, events_or_raster, *, rule: str = "multi", order: str = "breadth",
               routing: Routing | None = None, record_events: bool = False, progress: bool = False,
               saturate: bool = True, max_spikes: int | None = None, start_tick: bool = True,
               sparse_conv_masks: dict | None = None) -> EventResult:
    """Run one sample event by event (see :class:`EventEngine` for the options)."""
    eng = EventEngine(graph, routing=routing, rule=rule, order=order, saturate=saturate, max_spikes=max_spikes,
                      start_tick=start_tick, sparse_conv_masks=sparse_conv_masks)
    return eng.run(events_or_raster, record_events=record_events, progress=progress)


def run_events_batch(graph: ir.Graph, batch, **options) -> list[EventResult]:
    """Run every sample of ``batch`` with one compiled engine; options as :func:`run_events`."""
    record = options.pop("record_events", False)
    progress = options.pop("progress", False)
    eng = EventEngine(graph, **options)
    return eng.run_batch(batch, record_events=record, progress=progress)


def stack_counts(results: list[EventResult]) -> dict:
    """{name: array [B, ...]} from per-sample results."""
    return {k: np.stack([r.counts[k] for r in results]) for k in results[0].counts}
