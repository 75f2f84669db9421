"""Address-event routing of conv / linear / sum-pool layers.

For every weight or pooling layer (``Conv2d``, ``Conv1d``, ``Linear``, ``SumPool2d``) of a
canonical graph, the routing says where an event at a *source address* of the layer's input goes:
the list of destinations ``(c, y, x, weight_index, weight)`` in the layer's output, honouring
stride, padding, dilation and groups. Layers are identified by IR node name or by index in
topological order among the routing layers (``Routing.layer(key)``).

Addresses
---------
Every per-sample tensor is addressed by its C-order flat index, and shown as ``(c, y, x)``:
``(C, H, W)`` tensors as usual, ``(C, L)`` (Conv1d) as ``(c, 0, x)``, ``(N,)`` vectors as
``(n, 0, 0)``. For a ``Linear`` applied to ``(*lead, N)`` the channel is the last axis and the
flattened leading axes are ``y`` (so ``(L, N)`` is addressed ``(n, l, 0)``). Flatten and Reshape
keep flat indices, so they need no table. ``weight_index`` is a flat index into the layer's weight
array in PyTorch layout (``[out, in/groups, kH, kW]``; Linear ``[out, in]``); a SumPool2d has an
implicit all-ones weight of shape ``[C, 1, kH, kW]``.

Compact (factored) form — always built, tiny
--------------------------------------------
A conv's address map is separable: the valid ``(oy, ky)`` pairs of input row ``y`` depend only on
``y`` (``oy = (y + p - ky*d) / s`` when that is an integer in range), likewise ``(ox, kx)`` for
``x``, and the output channels only on the input channel's group. So a layer is stored as two
per-axis CSR tables (``ry_ptr[H_in+1], ry_out, ry_k`` and the same for x) plus its weights. The
destinations of source ``(ci, y, x)`` are, in this order (spatial pairs major, channel minor)::

    for (oy, ky) in Ry[y]:
        for (ox, kx) in Rx[x]:
            if mask is None or mask[oy, ox]:          # SSC (submanifold) output mask
                for co in group_out(ci):
                    (co, oy, ox, ((co*cin_g + ci % cin_g)*kH + ky)*kW + kx)

Expanded form — the full per-source table, built lazily
-------------------------------------------------------
``RoutingTable.expand()`` materialises a CSR over source addresses: ``indptr[n_sources+1]``
(int64), ``dst`` (flat output address, int32/int64) and ``widx`` (int32/int64), in the order above,
generated with numpy (no per-address Python loop). Its size ``RoutingTable.nbytes`` is known
without building it; ``save_routing`` writes it only for layers with ``nbytes <= max_bytes``
(or all/none when asked) and reports the size of the others.

Sparse (submanifold) convolution — SSC
--------------------------------------
``sparse_conv_masks={layer: mask}`` with ``mask`` boolean over the layer's *input* positions
``(H_in, W_in)`` (the active set): an output position ``(oy, ox)`` exists only where its
kernel-centre input ``(oy*s - p + d*(k-1)/2, ...)`` lies inside the input and is active (odd kernels).
With stride 1 and "same" padding this is SparK's ``conv(x) * mask``.

On-disk format (``format_version`` 1)
-------------------------------------
One ``.npz`` (a zip of ``.npy`` members with fixed timestamps, so the bytes are deterministic)
holding ``schema.json`` (UTF-8 JSON, also written beside it as ``<stem>.json``) and per layer ``i``
the arrays ``L{i}.ry_ptr, L{i}.ry_out, L{i}.ry_k, L{i}.rx_ptr, L{i}.rx_out, L{i}.rx_k`` (int32),
``L{i}.weight`` (int64 when quantised, else float64; absent for SumPool2d), optional
``L{i}.mask`` (uint8 ``[H_out*W_out]``) and optional ``L{i}.indptr, L{i}.dst, L{i}.widx``
(expanded table). ``schema.json``: ``{"format": "neurodeploy-routing", "format_version": 1,
"quantized": bool, "max_bytes": int, "layers": [{index, name, kind, input_nodes, input_kind,
in_shape, out_shape, geometry{C_in,H_in,W_in,dc_in,dy_in,dx_in,C_out,H_out,W_out,sc_out,sy_out,
sx_out,kh,kw,groups,stride,padding,dilation}, n_sources, n_synapses, nbytes, expanded, sparse_conv,
arrays{name: [dtype, shape]}}]}``.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import ir
from .artifacts import atomic_write, dumps_json
from .errors import NeurodeployError

FORMAT_NAME = "neurodeploy-routing"
FORMAT_VERSION = 1
DEFAULT_MAX_BYTES = 64 << 20  # per layer: expanded tables above this are not written unless asked
ROUTING_TYPES = (ir.Conv2d, ir.Conv1d, ir.Linear, ir.SumPool2d)
IDENTITY_TYPES = (ir.Flatten, ir.Reshape, ir.Add)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

DEST_DTYPE = np.dtype([("c", np.int64), ("y", np.int64), ("x", np.int64),
                       ("weight_index", np.int64), ("weight", np.float64)])

_GEOM_KEYS = ("C_in", "H_in", "W_in", "dc_in", "dy_in", "dx_in", "C_out", "H_out", "W_out",
              "sc_out", "sy_out", "sx_out", "kh", "kw", "groups")


def _axis_table(n_in: int, n_out: int, k: int, s: int, p: int, d: int):
    """CSR over input positions of the valid (output position, kernel tap) pairs, ky ascending."""
    y = np.arange(n_in)[:, None]
    ky = np.arange(k)[None, :]
    t = y + p - ky * d
    valid = (t >= 0) & (t % s == 0) & (t // s < n_out)
    ptr = np.zeros(n_in + 1, np.int32)
    np.cumsum(valid.sum(1), out=ptr[1:])
    out = (t // s)[valid].astype(np.int32)
    kk = np.broadcast_to(ky, valid.shape)[valid].astype(np.int32)
    return ptr, out, kk


@dataclass
class RoutingTable:
    """Routing of one layer (see the module docstring for the layout)."""

    index: int
    name: str
    kind: str  # IR node kind: Conv2d, Conv1d, Linear, SumPool2d
    in_shape: tuple
    out_shape: tuple
    geometry: dict
    ry_ptr: np.ndarray
    ry_out: np.ndarray
    ry_k: np.ndarray
    rx_ptr: np.ndarray
    rx_out: np.ndarray
    rx_k: np.ndarray
    weight: np.ndarray | None  # PyTorch layout; None for SumPool2d (all ones)
    mask: np.ndarray | None = None  # SSC output mask, uint8 [H_out * W_out]
    input_nodes: list = field(default_factory=list)  # upstream sources / routing layers (summed)
    input_kind: str = "spikes"  # 'spikes' (AC work) or 'dense' (real-valued input: MAC work)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    _expanded: tuple | None = field(default=None, repr=False)

    # -- sizes --------------------------------------------------------------------------------
    @property
    def n_sources(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_outputs(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def cin_g(self) -> int:
        return self.geometry["C_in"] // self.geometry["groups"]

    @property
    def cout_g(self) -> int:
        return self.geometry["C_out"] // self.geometry["groups"]

    def weight_flat(self) -> np.ndarray:
        if self.weight is None:
            g = self.geometry
            return np.ones(g["C_out"] * g["kh"] * g["kw"], np.int64)
        return np.ascontiguousarray(self.weight).reshape(-1)

    def _spatial_fanout(self) -> np.ndarray:
        """[H_in, W_in] number of (oy, ox) destinations of an input position (mask applied)."""
        g = self.geometry
        ny = np.diff(self.ry_ptr).astype(np.int64)
        nx = np.diff(self.rx_ptr).astype(np.int64)
        if self.mask is None:
            return ny[:, None] * nx[None, :]
        m = self.mask.reshape(g["H_out"], g["W_out"]).astype(np.int64)
        ys = np.repeat(np.arange(g["H_in"]), ny)
        xs = np.repeat(np.arange(g["W_in"]), nx)
        # Σ over pairs (oy of y) x (ox of x) of mask[oy, ox]
        a = np.zeros((g["H_in"], g["W_out"]), np.int64)
        np.add.at(a, ys, m[self.ry_out])
        f = np.zeros((g["H_in"], g["W_in"]), np.int64)
        np.add.at(f.T, xs, a[:, self.rx_out].T)
        return f

    def _decode(self, a):
        g = self.geometry
        a = np.asarray(a, np.int64)
        ci = (a // g["dc_in"]) % g["C_in"]
        y = (a // g["dy_in"]) % g["H_in"]
        x = (a // g["dx_in"]) % g["W_in"]
        return ci, y, x

    def fanout(self) -> np.ndarray:
        """Number of destinations of every source address (flat order), int64."""
        ci, y, x = self._decode(np.arange(self.n_sources))
        return self._spatial_fanout()[y, x] * self.cout_g

    @property
    def n_synapses(self) -> int:
        """Σ over sources of the fan-out (n_sources = C_in * H_in * W_in)."""
        return int(self._spatial_fanout().sum()) * self.cout_g * self.geometry["C_in"]

    def _index_bytes(self) -> int:
        return 4 if max(self.n_outputs, self.weight_flat().size) < 2 ** 31 else 8

    @property
    def nbytes(self) -> int:
        """Size of the expanded table (indptr int64 + dst + widx), computed without building it."""
        return 8 * (self.n_sources + 1) + 2 * self._index_bytes() * self.n_synapses

    @property
    def compact_nbytes(self) -> int:
        arrs = [self.ry_ptr, self.ry_out, self.ry_k, self.rx_ptr, self.rx_out, self.rx_k]
        if self.weight is not None:
            arrs.append(self.weight)
        if self.mask is not None:
            arrs.append(self.mask)
        return int(sum(a.nbytes for a in arrs))

    # -- destinations -------------------------------------------------------------------------
    def _spatial_table(self):
        """Per input position (y, x): CSR of (oy, ox, ky, kx) in destination order (mask applied)."""
        g = self.geometry
        ny, nx = np.diff(self.ry_ptr), np.diff(self.rx_ptr)
        ys = np.repeat(np.arange(g["H_in"]), ny)  # pair -> y
        xs = np.repeat(np.arange(g["W_in"]), nx)
        iy, ix = np.arange(ys.size), np.arange(xs.size)
        # all (y-pair, x-pair) combinations, ordered by (y, x, y-pair, x-pair)
        IY = np.repeat(iy, ix.size)
        IX = np.tile(ix, iy.size)
        order = np.lexsort((IX, IY, xs[IX], ys[IY]))
        IY, IX = IY[order], IX[order]
        oy, ox = self.ry_out[IY].astype(np.int64), self.rx_out[IX].astype(np.int64)
        ky, kx = self.ry_k[IY].astype(np.int64), self.rx_k[IX].astype(np.int64)
        pos = ys[IY].astype(np.int64) * g["W_in"] + xs[IX]
        if self.mask is not None:
            keep = self.mask[oy * g["W_out"] + ox] != 0
            oy, ox, ky, kx, pos = oy[keep], ox[keep], ky[keep], kx[keep], pos[keep]
        ptr = np.zeros(g["H_in"] * g["W_in"] + 1, np.int64)
        np.cumsum(np.bincount(pos, minlength=g["H_in"] * g["W_in"]), out=ptr[1:])
        return ptr, oy, ox, ky, kx

    def expand(self):
        """The full per-source CSR ``(indptr, dst, widx)`` (cached). Vectorised numpy."""
        if self._expanded is not None:
            return self._expanded
        g = self.geometry
        sp_ptr, oy, ox, ky, kx = self._spatial_table()
        ci, y, x = self._decode(np.arange(self.n_sources))
        pos = y * g["W_in"] + x
        nsp = (sp_ptr[1:] - sp_ptr[:-1])[pos]
        cout_g, cin_g = self.cout_g, self.cin_g
        fan = nsp * cout_g
        indptr = np.zeros(self.n_sources + 1, np.int64)
        np.cumsum(fan, out=indptr[1:])
        total = int(indptr[-1])
        it = np.int32 if self._index_bytes() == 4 else np.int64
        dst = np.empty(total, it)
        widx = np.empty(total, it)
        # vectorised over sources, in chunks of ~4M synapses to bound temporary memory
        a0 = 0
        while a0 < self.n_sources:
            a1 = int(np.searchsorted(indptr, indptr[a0] + (1 << 22), side="right")) - 1
            a1 = min(max(a1, a0 + 1), self.n_sources)
            lo, hi = int(indptr[a0]), int(indptr[a1])
            src = np.repeat(np.arange(a0, a1), fan[a0:a1])
            j = np.arange(lo, hi, dtype=np.int64) - indptr[src]
            sp = sp_ptr[pos[src]] + j // cout_g
            co = (ci[src] // cin_g) * cout_g + j % cout_g
            dst[lo:hi] = co * g["sc_out"] + oy[sp] * g["sy_out"] + ox[sp] * g["sx_out"]
            widx[lo:hi] = ((co * cin_g + ci[src] % cin_g) * g["kh"] + ky[sp]) * g["kw"] + kx[sp]
            a0 = a1
        self._expanded = (indptr, dst, widx)
        return self._expanded

    def address_of(self, address) -> int:
        """Flat source address of ``address``: an int (flat), or (c, y, x); (c, x) and (c,) are
        accepted for Conv1d-shaped and vector inputs."""
        g = self.geometry
        if np.ndim(address) == 0:
            a = int(address)
        else:
            t = [int(v) for v in address]
            if len(t) == 1:
                t = [t[0], 0, 0]
            elif len(t) == 2:
                t = [t[0], 0, t[1]]
            if len(t) != 3:
                raise NeurodeployError(f"address {address!r} must be (c, y, x)", layer=self.name)
            c, y, x = t
            if not (0 <= c < g["C_in"] and 0 <= y < g["H_in"] and 0 <= x < g["W_in"]):
                raise NeurodeployError(
                    f"address (c={c}, y={y}, x={x}) outside the layer input "
                    f"(C={g['C_in']}, H={g['H_in']}, W={g['W_in']})", layer=self.name)
            a = c * g["dc_in"] + y * g["dy_in"] + x * g["dx_in"]
        if not 0 <= a < self.n_sources:
            raise NeurodeployError(f"address {a} outside [0, {self.n_sources})", layer=self.name)
        return a

    def destinations(self, address) -> np.ndarray:
        """Destinations of one source address, structured array of DEST_DTYPE, in routing order."""
        g = self.geometry
        a = self.address_of(address)
        ci, y, x = (int(v) for v in self._decode(a))
        rows = []
        grp = ci // self.cin_g
        for j in range(self.ry_ptr[y], self.ry_ptr[y + 1]):
            for i in range(self.rx_ptr[x], self.rx_ptr[x + 1]):
                oy, ox = int(self.ry_out[j]), int(self.rx_out[i])
                if self.mask is not None and not self.mask[oy * g["W_out"] + ox]:
                    continue
                rows.append((oy, ox, int(self.ry_k[j]), int(self.rx_k[i])))
        co = grp * self.cout_g + np.arange(self.cout_g)
        out = np.zeros(len(rows) * self.cout_g, DEST_DTYPE)
        w = self.weight_flat()
        for r, (oy, ox, ky, kx) in enumerate(rows):
            sl = slice(r * self.cout_g, (r + 1) * self.cout_g)
            out["c"][sl], out["y"][sl], out["x"][sl] = co, oy, ox
            wi = ((co * self.cin_g + ci % self.cin_g) * g["kh"] + ky) * g["kw"] + kx
            out["weight_index"][sl] = wi
            out["weight"][sl] = w[wi]
        return out

    def out_address(self, dst):
        """(c, y, x) of flat output addresses."""
        g = self.geometry
        dst = np.asarray(dst, np.int64)
        return ((dst // g["sc_out"]) % g["C_out"], (dst // g["sy_out"]) % g["H_out"],
                (dst // g["sx_out"]) % g["W_out"])

    def scatter(self, values: np.ndarray) -> np.ndarray:
        """Output of the layer (no bias) for input ``values`` (any shape with n_sources elements),
        by scattering every source through the expanded table. Test/profiling helper."""
        indptr, dst, widx = self.expand()
        v = np.asarray(values).reshape(-1)
        w = self.weight_flat()
        src = np.repeat(np.arange(self.n_sources), np.diff(indptr))
        dt = np.result_type(v.dtype, w.dtype)
        out = np.zeros(self.n_outputs, dt)
        np.add.at(out, dst, v[src] * w[widx])
        return out.reshape(self.out_shape)

    def info(self) -> dict:
        fan = self.fanout()
        return {
            "index": self.index, "name": self.name, "kind": self.kind,
            "sources": self.n_sources, "outputs": self.n_outputs,
            "max_fanout": int(fan.max()) if fan.size else 0,
            "mean_fanout": float(fan.mean()) if fan.size else 0.0,
            "synapses": self.n_synapses, "table_bytes": self.nbytes,
            "compact_bytes": self.compact_nbytes, "sparse_conv": self.mask is not None,
            "input_kind": self.input_kind,
        }


def _layer_geometry(node, in_shape, out_shape):
    """Generalised conv geometry (see module docstring)."""
    if isinstance(node, ir.Conv2d):
        C, H, W = in_shape
        Co, Ho, Wo = out_shape
        kh, kw = node.weight.shape[2:]
        g = dict(C_in=C, H_in=H, W_in=W, dc_in=H * W, dy_in=W, dx_in=1, C_out=Co, H_out=Ho, W_out=Wo,
                 sc_out=Ho * Wo, sy_out=Wo, sx_out=1, kh=kh, kw=kw, groups=node.groups)
        return g, node.stride, node.padding, node.dilation
    if isinstance(node, ir.Conv1d):
        C, L = in_shape
        Co, Lo = out_shape
        g = dict(C_in=C, H_in=1, W_in=L, dc_in=L, dy_in=L, dx_in=1, C_out=Co, H_out=1, W_out=Lo,
                 sc_out=Lo, sy_out=Lo, sx_out=1, kh=1, kw=node.weight.shape[2], groups=node.groups)
        return g, (1, node.stride), (0, node.padding), (1, node.dilation)
    if isinstance(node, ir.Linear):
        N, M = in_shape[-1], out_shape[-1]
        lead = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
        g = dict(C_in=N, H_in=lead, W_in=1, dc_in=1, dy_in=N, dx_in=1, C_out=M, H_out=lead, W_out=1,
                 sc_out=1, sy_out=M, sx_out=1, kh=1, kw=1, groups=1)
        return g, (1, 1), (0, 0), (1, 1)
    if isinstance(node, ir.SumPool2d):
        C, H, W = in_shape
        _, Ho, Wo = out_shape
        kh, kw = node.kernel
        g = dict(C_in=C, H_in=H, W_in=W, dc_in=H * W, dy_in=W, dx_in=1, C_out=C, H_out=Ho, W_out=Wo,
                 sc_out=Ho * Wo, sy_out=Wo, sx_out=1, kh=kh, kw=kw, groups=C)
        return g, node.stride, node.padding, (1, 1)
    raise NeurodeployError(f"{node.kind} has no routing", layer=node.source or None)


def _ssc_mask(name, mask, geom, stride, padding, dilation) -> np.ndarray:
    """Output mask: output (oy, ox) is active iff its kernel-centre input is inside and active."""
    m = np.asarray(mask).astype(bool)
    H, W, Ho, Wo = geom["H_in"], geom["W_in"], geom["H_out"], geom["W_out"]
    if m.shape == (H * W,) or m.ndim == 1 and geom["H_in"] == 1:
        m = m.reshape(H, W)
    if m.shape != (H, W):
        raise NeurodeployError(f"sparse_conv mask has shape {m.shape}, the layer input is (H={H}, W={W})",
                               layer=name, fix="give a boolean mask over the layer's input positions")
    kh, kw = geom["kh"], geom["kw"]
    if kh % 2 == 0 or kw % 2 == 0:
        raise NeurodeployError(f"sparse_conv needs an odd kernel, got {kh}x{kw}", layer=name)
    cy = np.arange(Ho) * stride[0] - padding[0] + dilation[0] * (kh - 1) // 2
    cx = np.arange(Wo) * stride[1] - padding[1] + dilation[1] * (kw - 1) // 2
    iny, inx = (cy >= 0) & (cy < H), (cx >= 0) & (cx < W)
    out = np.zeros((Ho, Wo), bool)
    out[np.ix_(iny, inx)] = m[np.ix_(cy[iny], cx[inx])]
    return out.reshape(-1).astype(np.uint8)


def _upstream(graph: ir.Graph, name: str) -> list[str]:
    """Nodes feeding ``name`` seen through identity nodes (Flatten/Reshape/Add)."""
    out = []
    for src in graph.inputs_of(name):
        node = graph.nodes[src]
        if isinstance(node, IDENTITY_TYPES):
            out.extend(_upstream(graph, src))
        else:
            out.append(src)
    return out


def _input_kind(graph: ir.Graph, name: str, memo: dict) -> str:
    if name in memo:
        return memo[name]
    kinds = []
    for src in _upstream(graph, name):
        node = graph.nodes[src]
        if isinstance(node, ir.IFNeuron):
            kinds.append("spikes")
        elif isinstance(node, ir.Input):
            kinds.append("spikes" if node.is_spikes else "dense")
        elif isinstance(node, ir.SumPool2d):
            kinds.append(_input_kind(graph, src, memo))
        else:
            kinds.append("dense")  # fed by a weight layer without a neuron in between
    memo[name] = "dense" if "dense" in kinds else "spikes"
    return memo[name]


def _shaped(graph: ir.Graph) -> ir.Graph:
    if any(n.shape is None for n in graph.nodes.values()):
        graph = ir.infer_shapes(graph.copy())
    return graph


class Routing:
    """Per-layer routing tables of a graph (``build_routing`` / ``load_routing``)."""

    def __init__(self, tables: list[RoutingTable], *, quantized: bool, max_bytes: int = DEFAULT_MAX_BYTES):
        self.tables = list(tables)
        self.quantized = quantized
        self.max_bytes = int(max_bytes)
        self._by_name = {t.name: t for t in self.tables}

    def __len__(self) -> int:
        return len(self.tables)

    def __iter__(self):
        return iter(self.tables)

    def layer(self, key) -> RoutingTable:
        """Table by IR node name or index (topological order among routing layers)."""
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.lstrip("-").isdigit()
                                                   and key not in self._by_name):
            i = int(key)
            if not 0 <= i < len(self.tables):
                raise NeurodeployError(f"routing layer index {i} out of range (0..{len(self.tables) - 1})")
            return self.tables[i]
        if key not in self._by_name:
            raise NeurodeployError(f"no routing layer named {key!r}",
                                   fix=f"use one of {', '.join(self._by_name) or '(none)'} or an index")
        return self._by_name[key]

    def destinations(self, layer, address) -> np.ndarray:
        """Destinations ``(c, y, x, weight_index, weight)`` of one source address of ``layer``."""
        return self.layer(layer).destinations(address)

    def summary(self) -> list[dict]:
        """Per layer: sources, max/mean fan-out, total synapses, table bytes (expanded & compact)."""
        rows = []
        for t in self.tables:
            r = t.info()
            r["expanded_written"] = t.nbytes <= self.max_bytes
            rows.append(r)
        return rows

    def summary_text(self) -> str:
        head = f"{'#':>3} {'layer':<24} {'kind':<9} {'sources':>9} {'max fo':>7} {'mean fo':>8} " \
               f"{'synapses':>12} {'table B':>12} {'compact B':>10}"
        lines = [head]
        for r in self.summary():
            lines.append(f"{r['index']:>3} {r['name']:<24} {r['kind']:<9} {r['sources']:>9} {r['max_fanout']:>7} "
                         f"{r['mean_fanout']:>8.2f} {r['synapses']:>12} {r['table_bytes']:>12}"
                         f"{'' if r['expanded_written'] else '*':1} {r['compact_bytes']:>9}")
        if any(not r["expanded_written"] for r in self.summary()):
            lines.append(f"* expanded table above max_bytes={self.max_bytes}: kept in compact form only")
        return "\n".join(lines)


def build_routing(graph: ir.Graph, *, sparse_conv_masks: dict | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> Routing:
    """Routing tables of every Conv2d/Conv1d/Linear/SumPool2d layer of ``graph``.

    ``sparse_conv_masks``: {layer name or index: bool mask over the layer's input positions}
    selects SSC (submanifold) routing for those Conv2d layers. Weights are the quantised
    ``weight_q`` (int64) when the graph is quantised, else float64.
    """
    graph = _shaped(graph)
    quantized = graph.is_quantized
    names = [n for n in graph.topo_order() if isinstance(graph.nodes[n], ROUTING_TYPES)]
    masks = {}
    for key, m in (sparse_conv_masks or {}).items():
        name = names[int(key)] if isinstance(key, (int, np.integer)) else key
        if name not in names:
            raise NeurodeployError(f"sparse_conv mask for unknown layer {key!r}")
        if not isinstance(graph.nodes[name], ir.Conv2d):
            raise NeurodeployError("sparse_conv applies to Conv2d layers only", layer=name)
        masks[name] = m
    tables, memo = [], {}
    for i, name in enumerate(names):
        node = graph.nodes[name]
        in_shape = tuple(graph.nodes[graph.inputs_of(name)[0]].shape)
        out_shape = tuple(node.shape)
        geom, s, p, d = _layer_geometry(node, in_shape, out_shape)
        geom = {k: int(v) for k, v in geom.items()}
        ry = _axis_table(geom["H_in"], geom["H_out"], geom["kh"], s[0], p[0], d[0])
        rx = _axis_table(geom["W_in"], geom["W_out"], geom["kw"], s[1], p[1], d[1])
        if isinstance(node, ir.SumPool2d):
            weight = None
        elif quantized:
            if node.weight_q is None:
                raise NeurodeployError("quantised graph: layer has no weight_q", layer=name)
            weight = np.asarray(node.weight_q, np.int64)
        else:
            weight = np.asarray(node.weight, np.float64)
        if weight is not None and isinstance(node, ir.Conv1d):
            weight = weight.reshape(weight.shape[0], weight.shape[1], 1, weight.shape[2])
        mask = _ssc_mask(name, masks[name], geom, s, p, d) if name in masks else None
        tables.append(RoutingTable(
            index=i, name=name, kind=node.kind, in_shape=in_shape, out_shape=out_shape, geometry=geom,
            ry_ptr=ry[0], ry_out=ry[1], ry_k=ry[2], rx_ptr=rx[0], rx_out=rx[1], rx_k=rx[2],
            weight=weight, mask=mask, input_nodes=_upstream(graph, name),
            input_kind=_input_kind(graph, name, memo),
            stride=tuple(int(v) for v in s), padding=tuple(int(v) for v in p),
            dilation=tuple(int(v) for v in d)))
    return Routing(tables, quantized=quantized, max_bytes=max_bytes)


# -- on-disk format -------------------------------------------------------------------------------

def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def _schema(routing: Routing, expanded: list[bool], arrays: list[dict]) -> dict:
    layers = []
    for t, exp, arrs in zip(routing.tables, expanded, arrays):
        layers.append({
            "index": t.index, "name": t.name, "kind": t.kind, "input_nodes": list(t.input_nodes),
            "input_kind": t.input_kind, "in_shape": list(t.in_shape), "out_shape": list(t.out_shape),
            "geometry": dict(t.geometry, stride=list(t.stride), padding=list(t.padding),
                             dilation=list(t.dilation)),
            "n_sources": t.n_sources, "n_synapses": t.n_synapses, "nbytes": t.nbytes,
            "compact_nbytes": t.compact_nbytes, "expanded": bool(exp), "sparse_conv": t.mask is not None,
            "arrays": arrs,
        })
    return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "quantized": routing.quantized,
            "max_bytes": routing.max_bytes, "layers": layers}


def save_routing(routing: Routing, path, *, expand: bool | None = None) -> dict:
    """Write ``routing`` to ``path`` (.npz) and its schema beside it (``<stem>.json``), atomically,
    with deterministic bytes. ``expand``: None = write expanded tables of layers with
    ``nbytes <= routing.max_bytes``; True = all; False = none. Returns the schema."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path / "routing.npz" if (path.is_dir() or not path.suffix) else path.with_suffix(".npz")
    members, expanded, arrays = [], [], []
    for t in routing.tables:
        arrs = {"ry_ptr": t.ry_ptr, "ry_out": t.ry_out, "ry_k": t.ry_k,
                "rx_ptr": t.rx_ptr, "rx_out": t.rx_out, "rx_k": t.rx_k}
        if t.weight is not None:
            arrs["weight"] = t.weight
        if t.mask is not None:
            arrs["mask"] = t.mask
        exp = (t.nbytes <= routing.max_bytes) if expand is None else bool(expand)
        if exp:
            arrs["indptr"], arrs["dst"], arrs["widx"] = t.expand()
        expanded.append(exp)
        arrays.append({k: [str(np.asarray(v).dtype), list(np.shape(v))] for k, v in arrs.items()})
        members.extend((f"L{t.index}.{k}.npy", v) for k, v in arrs.items())
    schema = _schema(routing, expanded, arrays)
    text = dumps_json(schema)

    def write(tmp):
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zi = zipfile.ZipInfo("schema.json", date_time=_ZIP_DATE)
            zi.compress_type = zipfile.ZIP_DEFLATED
            zi.external_attr = 0o644 << 16
            zf.writestr(zi, text.encode())
            for name, arr in members:
                zi = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                zi.compress_type = zipfile.ZIP_DEFLATED
                zi.external_attr = 0o644 << 16
                zf.writestr(zi, _npy_bytes(arr))

    atomic_write(path, write)
    atomic_write(path.with_suffix(".json"), text)
    return schema


def load_routing(path) -> Routing:
    """Read a routing written by :func:`save_routing` (checks ``format_version``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "routing.npz"
    if not path.exists():
        raise NeurodeployError(f"no routing file at {path}", fix="compile with routing output first")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise NeurodeployError(f"{path} is not a routing .npz file: {e}") from None
    with zf:
        try:
            schema = json.loads(zf.read("schema.json"))
        except KeyError:
            raise NeurodeployError(f"{path} has no schema.json member") from None
        if schema.get("format") != FORMAT_NAME:
            raise NeurodeployError(f"{path} is not a neurodeploy routing file")
        if schema.get("format_version") != FORMAT_VERSION:
            raise NeurodeployError(f"{path} has routing format_version {schema.get('format_version')}, "
                                   f"this neurodeploy reads {FORMAT_VERSION}", fix="rebuild the routing")

        try:
            return Routing(_read_tables(zf, schema), quantized=bool(schema["quantized"]),
                           max_bytes=int(schema["max_bytes"]))
        except (KeyError, TypeError, ValueError, IndexError, zipfile.BadZipFile, EOFError) as e:
            raise NeurodeployError(f"{path} is damaged: {type(e).__name__}: {e}",
                                   fix="rebuild it with `neurodeploy compile ... --emit routing`") from None


def _read_tables(zf: zipfile.ZipFile, schema: dict) -> list:
    def arr(i, k):
        with zf.open(f"L{i}.{k}.npy") as f:
            return np.lib.format.read_array(io.BytesIO(f.read()), allow_pickle=False)

    tables = []
    for L in schema["layers"]:
        i = L["index"]
        names = L["arrays"]
        geom = {k: int(L["geometry"][k]) for k in _GEOM_KEYS}
        t = RoutingTable(
            index=i, name=L["name"], kind=L["kind"], in_shape=tuple(L["in_shape"]),
            out_shape=tuple(L["out_shape"]), geometry=geom,
            ry_ptr=arr(i, "ry_ptr"), ry_out=arr(i, "ry_out"), ry_k=arr(i, "ry_k"),
            rx_ptr=arr(i, "rx_ptr"), rx_out=arr(i, "rx_out"), rx_k=arr(i, "rx_k"),
            weight=arr(i, "weight") if "weight" in names else None,
            mask=arr(i, "mask") if "mask" in names else None,
            input_nodes=list(L["input_nodes"]), input_kind=L["input_kind"],
            stride=tuple(L["geometry"]["stride"]), padding=tuple(L["geometry"]["padding"]),
            dilation=tuple(L["geometry"]["dilation"]))
        if L["expanded"]:
            t._expanded = (arr(i, "indptr"), arr(i, "dst"), arr(i, "widx"))
        tables.append(t)
    return tables


# -- profile ---------------------------------------------------------------------------------------

def _layer_input_values(routing: Routing, t: RoutingTable, counts: dict, memo: dict) -> np.ndarray | None:
    """Event counts arriving at ``t``'s input (flat), from the spike counts of its sources."""
    if t.name in memo:
        return memo[t.name]
    total = np.zeros(t.n_sources, np.float64)
    for src in t.input_nodes:
        if src in routing._by_name:  # fed by another routing layer (e.g. SumPool): its output
            up = routing._by_name[src]
            vals = _layer_input_values(routing, up, counts, memo)
            total += np.asarray(up.scatter(vals), np.float64).reshape(-1)
        else:
            if src not in counts:
                raise NeurodeployError(f"routing_profile needs the spike counts of {src!r}", layer=t.name)
            c = np.asarray(counts[src].detach().cpu().numpy() if hasattr(counts[src], "detach")
                           else counts[src], np.float64)
            if c.size != t.n_sources:  # batched counts: sum over the batch
                c = c.reshape(-1, t.n_sources).sum(0)
            total += c.reshape(-1)
    memo[t.name] = total
    return total


def routing_profile(routing: Routing, counts: dict) -> dict:
    """Per routing layer, from its tables and the spike counts of its sources:

    ``events`` (input events), ``synops`` (Σ over events of the source's fan-out),
    ``mean_fanout`` (synops / events), ``max_fanout`` (largest fan-out of a source that had an
    event), ``table_bytes`` (expanded), ``compact_bytes``, and for a layer fed by a real-valued input
    (``input_kind == 'dense'``) ``macs`` (every synapse once) with ``synops = 0``.
    ``counts``: {IR node name: spike counts} for IF nodes and a spiking Input (as in
    ``EventResult.counts`` or ``ops.evaluate``; a leading batch dimension is summed over).
    """
    memo: dict = {}
    out = {}
    for t in routing.tables:
        fan = t.fanout()
        row = {"index": t.index, "kind": t.kind, "table_bytes": t.nbytes, "compact_bytes": t.compact_nbytes,
               "input_kind": t.input_kind}
        if t.input_kind == "dense":
            row.update(events=0, synops=0, macs=int(fan.sum()), mean_fanout=0.0,
                       max_fanout=int(fan.max()) if fan.size else 0)
        else:
            ev = _layer_input_values(routing, t, counts, memo)
            n_ev = float(ev.sum())
            synops = float(ev @ fan)
            row.update(events=int(round(n_ev)), synops=int(round(synops)), macs=0,
                       mean_fanout=synops / n_ev if n_ev else 0.0,
                       max_fanout=int(fan[ev != 0].max()) if np.any(ev != 0) else 0)
        out[t.name] = row
    return out
