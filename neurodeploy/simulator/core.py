"""Time-stepped integrate-and-fire simulator (subtractive reset, at most one spike per neuron per
timestep, at most D spikes per neuron), batched over samples.

Arithmetic: in a quantised graph (``graph.metadata['quantization']``) every value is an integer
(inputs ``round(x·scale_q)``, ``*_q`` weights, thresholds and membranes). They are held in float64
tensors so that PyTorch's convolutions can be used; the quantiser keeps every accumulation below
2**52, so all sums are exact integers whatever the summation order: the simulation is
deterministic integer arithmetic. An unquantised graph is simulated in float64 with the float
parameters; there, membranes are kept in units of the threshold (``v = (x + v_init)/θ``), which
makes the repeated subtraction of one threshold exact, so the sync schedule equals
:func:`neurodeploy.ops.evaluate` bit for bit in both modes.

Speed: the sync schedule of a quantised (52-bit) program has two exact execution paths.

* **Fast path** (default: ``simulate(..., fast_sync=True)``, sync schedule, ``record_trains=False``):
  *filter and refine*. A weight layer (Conv2d/Conv1d/Linear) that only IF neurons read and whose
  inputs are integers below 2**24 runs as ONE float32 convolution of the float32-rounded integer
  weights and bias. Its error is bounded a priori: with fan-in ``n`` the result differs from the
  exact integer sum by at most ``E = γ_{n+3}·max_o(Σ_i|w_oi|·max|x| + |b_o|)`` (``γ_k = k·u/(1−k·u)``,
  ``u = 2**-24``: the weight and bias roundings, the product roundings and any summation order,
  FMA or not). The neuron layer then takes the closed form ``n = clip(floor((y + v0)/θ), 0, D)``
  for every neuron whose approximate membrane is farther than ``E + 2·1e-9·θ + 16`` from every
  firing boundary ``k·θ`` (1 ≤ k ≤ D) and below ``hi − margin`` (membrane saturation): its exact
  membrane lies on the same side of every boundary, is no tie, is not saturated and is no near
  tie, so this count is what the D timesteps produce. Every other neuron (typically 0.1–0.5 %) is
  *refined*: its exact integer current is recomputed in float64 (exact: every partial sum is an
  integer below 2**52) and it is stepped through its D timesteps by the same dynamics as below.
  The bound assumes IEEE float32 arithmetic in PyTorch's kernels: the fast path is off when
  TF32/bf16 "fast math" is allowed (``torch.set_float32_matmul_precision`` other than
  ``'highest'``, oneDNN fp32_precision other than ieee, ``ONEDNN_DEFAULT_FPMATH_MODE``), and NNPACK
  (Winograd/FFT convolutions) is disabled while simulating. Layers with very few input channels
  convolve in channels-last memory format (oneDNN's NCHW kernels are slow there).
* **Time-stepped path** (``fast_sync=False``, ``record_trains=True``, the streaming schedule, and
  the layers the fast path does not cover: Adds, conv→conv chains, outputs that read
  pre-activations, inputs with more than 24 bits): weight layers whose inputs are small integers
  run as *limbs* on float32 convolutions: ``w_q = Σ_j w_j·2^(jk)`` with every limb's accumulation
  below 2**24 (exact in float32), all limbs in one convolution, recombined exactly in float64
  (see ``_Exec._plan_limbs``); the IF dynamics run in fused numba kernels
  (:mod:`neurodeploy.simulator.kernels`) that step every neuron through its D timesteps.

Both paths give the same counts and near-tie counts (tests/test_simulator.py checks them against
each other and against :func:`neurodeploy.ops.evaluate`).

Schedules
---------
``sync`` (layer-synchronous): a neuron layer starts when every neuron layer upstream of it has
finished; it receives its whole input current at its first step and steps ``D`` timesteps. The
latency is the sum of ``D`` along the longest chain of neuron layers (``L·D`` for a plain chain).

``streaming``: all layers step together. A spike fired at step ``t`` reaches the next layer's
membrane at ``t + 1`` (one timestep per synapse); the real-valued input current and all biases
arrive at step 0 (Prop. 1 of Yao et al.). Each neuron still fires at most ``D`` spikes. The run
stops when no spike was fired in a step (the network is quiescent) or at ``horizon`` steps. This
is what an asynchronous chip does without barriers; with mixed-sign weights counts deviate.

Half-even rounding (``torch.round`` models) is realised in the dynamics: a neuron whose membrane
equals the threshold *exactly* fires only if it has fired an odd number of times so far — this
makes an exact tie ``(x + v_init)/θ = n`` fire ``n − 1`` spikes when ``n`` is odd.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .. import ir, ops
from ..passes.quantize import integer_bounds
from ..errors import NeurodeployError
from ..data import check_input_range, quantized_input_range
from . import kernels
from .kernels import HAVE_NUMBA

SCHEDULES = ("sync", "streaming")
NEAR_TIE_TOL = 1e-9
_EMPTY = {torch.float64: np.zeros(1), torch.float32: np.zeros(1, dtype=np.float32)}


@dataclass
class SimResult:
    """Result of :func:`simulate`.

    ``counts``: per IF neuron layer, int64 ``[B, *shape]``. ``trains``: per layer ``[B, T, *shape]``
    uint8 (``record_trains=True``), else None. ``outputs``: per Output node, the real-valued output
    (dequantised; activation norms applied). ``timesteps``: steps simulated (sync: the latency).
    ``near_ties`` (sync only): per layer, the number of neuron inputs within 1e-9·θ of a firing
    boundary (a count that could flip under a different rounding of the same real number).
    ``start_step`` (sync): the first timestep of each neuron layer.
    """

    counts: dict[str, np.ndarray]
    trains: dict[str, np.ndarray] | None
    outputs: dict[str, np.ndarray]
    timesteps: int
    schedule: str
    near_ties: dict[str, int] | None = None
    start_step: dict[str, int] = field(default_factory=dict)
    quantized: bool = False

    def total_spikes(self) -> dict[str, int]:
        return {k: int(v.sum()) for k, v in self.counts.items()}


# -- neuron dynamics -------------------------------------------------------------------------------

def _neuron_params(node: ir.IFNeuron, quantized: bool):
    if quantized:
        if node.threshold_q is None:
            raise NeurodeployError("quantised graph has an IF neuron without threshold_q", layer=node.source)
        hi = float(2 ** (node.state_bits - 1) - 1) if node.state_bits is not None else None
        lo = float(node.low_threshold_q) if node.low_threshold_q is not None else None
        return float(node.threshold_q), float(node.v_init_q or 0), hi, lo
    return 1.0, None, None, None


def _fire(v: torch.Tensor, theta: float, count: torch.Tensor, half_even: bool) -> torch.Tensor:
    if half_even:
        return (v > theta) | ((v == theta) & (torch.remainder(count, 2) == 1))
    return v >= theta


def _if_sync(node: ir.IFNeuron, current: torch.Tensor, quantized: bool, record: bool, count_dtype=np.float64):
    """Give the whole current at step 0, then step D timesteps. Returns (counts, train|None, near_ties)."""
    theta, v0, hi, _ = _neuron_params(node, quantized)
    D = int(node.max_spikes)
    half_even = node.rounding == "half_even"
    if HAVE_NUMBA:
        cur = np.ascontiguousarray(current.numpy()).reshape(-1)
        B = current.shape[0]
        S = cur.size // max(B, 1)
        counts = np.empty(cur.size, dtype=count_dtype)
        train = np.zeros(B * D * S if record else 1, dtype=np.uint8)
        add, div = (v0, 1.0) if quantized else (float(node.v_init), float(node.threshold))
        hi_ = np.inf if hi is None else hi
        if record:
            near = kernels.if_sync_kernel(cur, add, div, hi_, theta, D, half_even, NEAR_TIE_TOL, counts, train,
                                          record, S)
        else:
            near = kernels.if_sync_kernel_blocked(cur, add, div, hi_, theta, D, half_even, NEAR_TIE_TOL, counts)
        c = torch.from_numpy(counts.reshape(current.shape))
        tr = torch.from_numpy(train.reshape((B, D) + tuple(current.shape[1:]))) if record else None
        return c, tr, int(near)
    if quantized:
        v = current + v0
        if hi is not None:
            v = v.clamp(max=hi)
    else:
        v = (current + node.v_init) / node.threshold
    # near ties: the starting membrane (in threshold units) within NEAR_TIE_TOL of a firing boundary
    u = v * (1.0 / theta)
    r = torch.floor(u + 0.5)
    near = int((((u - r).abs() < NEAR_TIE_TOL) & (r >= 1) & (r <= D)).sum())
    count = torch.zeros_like(v)
    train = [] if record else None
    for _ in range(D):
        s = _fire(v, theta, count, half_even).to(v.dtype)
        count += s
        v -= s * theta
        if record:
            train.append(s.to(torch.uint8))
    return count, (torch.stack(train, 1) if record else None), near


def _float32_test_params(theta: float, v0: float, hi: float | None, D: int, margin: float):
    """Parameters of :func:`kernels.if_sync_closed_form32` (threshold units, float32) for a margin
    ``margin`` (membrane units) that already covers the current's error, the near-tie tolerance
    and float64 slack. Let t = (exact membrane)/θ and u = fl(fl(y·fl(1/θ)) + fl(v0/θ)). Where it
    matters (|t| <= D + 1: near a boundary 1..D, or deciding that t is beyond one) the float32
    roundings add at most 2**-24·(3·(D + 2 + |a| + e) + |a|) to |u − t| (a = v0/θ, e = margin/θ),
    so the threshold-unit margin gets 2**-20·(D + 2 + 2|a| + e) more, and a factor 1 + 2**-20 that
    also covers rounding the margin itself and the subtraction u − k. Values far beyond D (or
    below 1) stay beyond D + margin (below 1 − margin) or get flagged: their counts are D (0)."""
    a = v0 / theta
    e = np.asarray(margin, dtype=np.float64) / theta  # a scalar, or one margin per channel
    m_u = (e + 2.0 ** -20 * (D + 2 + 2 * abs(a) + e)) * (1.0 + 2.0 ** -20)
    m32 = m_u.astype(np.float32)
    m32 = np.where(m32.astype(np.float64) < m_u, np.nextafter(m32, np.float32(np.inf)), m32)
    if hi is None:
        lo32 = np.full(m32.shape, np.inf, dtype=np.float32)
    else:  # saturation: flag everything that may reach hi (in threshold units, rounded down)
        h = hi / theta
        lo = h - m_u - 2.0 ** -20 * abs(h)
        lo32 = lo.astype(np.float32)
        lo32 = np.where(lo32.astype(np.float64) > lo, np.nextafter(lo32, np.float32(-np.inf)), lo32)
    return np.float32(1.0 / theta), np.float32(a), m32, lo32


def _is_channels_last(t: torch.Tensor) -> bool:
    """A 4-d tensor stored channels-last (NHWC) and not also plain contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _if_sync_fast(node: ir.IFNeuron, ap, fl, count_dtype=np.float32, arena: "_Arena | None" = None,
                  name: str | None = None, small: dict | None = None):
    """Sync IF layer fed by a fast layer (filter and refine, exact): closed-form counts from the
    float32 currents, then the time-stepped kernel on the exact currents of the neurons that the
    float32 error bound cannot decide. The float32 counts overwrite the convolution result when this
    is its only reader (``fl.sole_reader``: the next convolution reads the memory the last one
    wrote); otherwise, with ``arena`` and ``name``, they go to a reused buffer (only for layers
    whose counts do not leave the simulation). Returns (counts, result,
    near_ties): the result is int64, or the float32 counts themselves (the caller converts them
    after the last layer, as a PyTorch forward would: off the layer chain, so the int64 writes do
    not push the next convolution's input out of the caches). ``small``: a dict that receives the
    counts as uint8 under ``name`` (for the next layer's exact gathers)."""
    arena = arena if arena is not None else _Arena()
    theta, v0, hi, _ = _neuron_params(node, True)
    D = int(node.max_spikes)
    shape = tuple(ap.y.shape)
    y = ap.y.contiguous().numpy().reshape(-1)
    S = 1 if isinstance(ap.node, ir.Linear) else math.prod(shape[2:])
    hi_ = np.inf if hi is None else hi
    # error bound (per output channel) + near-tie tolerance (so every near tie is refined) + float64
    # rounding slack
    def margin():  # (computed only when the layer's test parameters are not cached yet)
        return np.full(fl.O, np.inf) if _REFINE_ALL else fl.err_c + (2.0 * NEAR_TIE_TOL * theta + 16.0)
    key = (theta, v0, hi, D, _REFINE_ALL)
    n = y.size
    fast_rows = bool(_CLOSED_FORM_F32 and count_dtype == np.float32 and S >= _ROWS_MIN)
    in_place = fast_rows and fl.sole_reader and y.dtype == np.float32 and y.flags.writeable  # over the result
    if in_place:
        counts = y
    else:
        counts = arena.get(("counts", name), n, count_dtype) if name is not None else np.empty(n, dtype=count_dtype)
    flagged = arena.get("flagged", n, np.int64)  # only its first few entries are ever written
    if fast_rows:
        counts64 = counts  # (the result: converted by the caller)
    else:
        counts64 = np.empty(n, dtype=np.int64)
    w8 = bool(fast_rows and small is not None and name is not None and D <= 255)
    counts8 = arena.get(("u8", name), n, np.uint8) if w8 else np.zeros(1, dtype=np.uint8)
    if _CLOSED_FORM_F32 and count_dtype == np.float32:
        if key not in fl.tests:
            fl.tests[key] = _float32_test_params(theta, v0, hi, D, margin())
        inv32, a32, m32, lo32 = fl.tests[key]
        if fast_rows:  # rows of one channel each: per-channel margins
            def part(a, b):
                c8 = counts8[a:b] if w8 else counts8
                if in_place:
                    return kernels.if_sync_closed_form32_inplace(y[a:b], fl.O, S, inv32, a32, lo32, D, m32, c8, w8,
                                                                 flagged[a:b], a)
                return kernels.if_sync_closed_form32_rows(y[a:b], fl.O, S, inv32, a32, lo32, D, m32, counts[a:b],
                                                          c8, w8, flagged[a:b], a)
            ranges = _split(n, _threads(n), 128)
            found = _parallel(part, ranges)
            nf = found[0] if found else 0
            for (a, _), k in zip(ranges[1:], found[1:]):  # pack the parts' flagged indices
                flagged[nf:nf + k] = flagged[a:a + k].copy()
                nf += k
        else:
            nf = kernels.if_sync_closed_form32(y, inv32, a32, np.float32(lo32.min()), D, np.float32(m32.max()),
                                               counts, counts64, flagged)
    else:
        nf = kernels.if_sync_closed_form(y, v0, hi_, theta, D, float(margin().max()), counts, counts64, flagged)
    near = 0
    if nf:
        cur = _exact_at(ap, fl, flagged[:nf], nf, arena)
        half_even = node.rounding == "half_even"

        def refine(a, b):
            return kernels.if_sync_refine(cur[a:b], flagged[a:b], b - a, fl.bias, fl.has_bias, fl.O, S, v0, hi_,
                                          theta, D, half_even, NEAR_TIE_TOL, counts, counts8 if w8 else counts64)
        near = sum(_parallel(refine, _split(nf, _threads(nf * 64))))
    if w8:
        small[name] = counts8
    c = torch.from_numpy(counts.reshape(shape))
    return c, (c if counts64 is counts else counts64.reshape(shape)), int(near)


# -- the numba kernels on PyTorch's thread count ---------------------------------------------------

_POOL: list = []  # [ThreadPoolExecutor] once needed
_PARALLEL_MIN = 1 << 18  # elements (or products) below which one thread is faster than dispatching
_ROWS_MIN = 16  # per-channel rows kernel from this row length (shorter: one margin for the layer)


def _split(n: int, parts: int, align: int = 1) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``range(n)``, their bounds multiples of ``align``."""
    step = max(1, -(-n // parts))
    step = -(-step // align) * align
    return [(a, min(a + step, n)) for a in range(0, n, step)]


def _parallel(fn, ranges: list) -> list:
    """``[fn(a, b) for a, b in ranges]``, the first range on this thread and the others on worker
    threads (the kernels release the GIL). Uses as many threads as PyTorch does
    (``torch.get_num_threads()``), so that the simulator and a PyTorch forward get the same cores."""
    if len(ranges) <= 1:
        return [fn(a, b) for a, b in ranges]
    if not _POOL or _POOL[0]._max_workers < len(ranges) - 1:
        from concurrent.futures import ThreadPoolExecutor

        _POOL[:] = [ThreadPoolExecutor(max_workers=len(ranges) - 1, thread_name_prefix="neurodeploy-sim")]
    futures = [_POOL[0].submit(fn, a, b) for a, b in ranges[1:]]
    first = fn(*ranges[0])
    return [first] + [f.result() for f in futures]


def _threads(work: int) -> int:
    return 1 if work < _PARALLEL_MIN else max(1, min(torch.get_num_threads(), work // (_PARALLEL_MIN // 2)))


# -- graph walking ---------------------------------------------------------------------------------

class _Arena:
    """Work buffers reused across layers, batches and calls of one cached ``_Exec`` (fresh arrays
    per layer cost ~1.5k minor page faults per call once glibc hands freed memory back to the OS).
    Only for arrays that never leave a simulation; ``lock`` keeps concurrent simulations of the
    same graph apart (the one that does not get it uses a throwaway arena)."""

    LIMIT = 2 ** 28  # bytes kept between calls (beyond it, buffers are allocated per use as before)

    def __init__(self):
        import threading

        self.bufs: dict = {}
        self.lock = threading.Lock()

    def get(self, key, n: int, dtype) -> np.ndarray:
        buf = self.bufs.get(key)
        if buf is not None and buf.size >= n and buf.dtype == np.dtype(dtype):
            return buf[:n]
        buf = np.empty(n, dtype=dtype)
        kept = sum(b.nbytes for k, b in self.bufs.items() if k != key)
        if kept + buf.nbytes <= self.LIMIT:
            self.bufs[key] = buf
        return buf



_U32 = 2.0 ** -24  # unit roundoff of float32
_REFINE_ALL = False  # tests: refine every neuron of the fast path (exercises the exact refinement)
_CLOSED_FORM_F32 = True  # the closed form / filter in float32 (else float64) arithmetic
# fast Conv2d layers convolve channels-last (NHWC; inputs quantised straight to NHWC). Off: oneDNN's
# NHWC kernels are 10-20 % faster for 16-64 channels, but bringing their results back to NCHW for
# the closed form costs more (~1 ns per value: 2 ms for the 3x64x64 net's first layer). A 3-channel
# NCHW convolution measured 10x slower than NHWC only in a fresh process, where the time is the page
# faults of its new buffers, not the arithmetic.
_CHANNELS_LAST = False


@dataclass
class _FastLayer:
    w32: torch.Tensor  # float32 weights (rounded to nearest)
    b32: torch.Tensor | None  # float32 bias (rounded to nearest)
    w64: np.ndarray  # exact integer weights, float64 ([O, C/g, KH, KW]; Conv1d: KH = 1)
    w64_cl: np.ndarray | None  # the same, channels-last [O, KH, KW, C/g] (convolutions)
    bias: np.ndarray  # float64 integer bias (zeros(1) if none)
    has_bias: bool
    err: float  # bound on |float32 result - exact integer result| (bias included)
    O: int
    channels_last: bool = False  # convolve in channels-last memory format
    err_c: np.ndarray | None = None  # the bound per output channel (err = its maximum)
    tests: dict = field(default_factory=dict)  # the closed form's float32 test parameters, per neuron setting
    sole_reader: bool = False  # one IF layer reads it: its counts may overwrite the float32 result


@dataclass
class _Approx:
    """Value of a fast layer inside ``_sync``: its float32 result and its (float32) input."""
    y: torch.Tensor
    x: torch.Tensor
    name: str
    node: ir.Node
    x8: np.ndarray | None = None  # the input as uint8 (flat, same layout), when the layer before wrote it


def _fp32_is_ieee() -> bool:
    """True when PyTorch's float32 convolutions / matmuls use plain IEEE float32 arithmetic (no
    TF32/bf16 'fast math'), which the error bound of the fast sync path assumes."""
    for var in ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE"):
        if os.environ.get(var, "STRICT").upper() != "STRICT":
            return False
    if torch.get_float32_matmul_precision() != "highest":
        return False
    try:
        mk = torch.backends.mkldnn
        precs = [mk.fp32_precision, mk.conv.fp32_precision, mk.matmul.fp32_precision,
                 getattr(torch.backends, "fp32_precision", "none")]
    except Exception:  # pragma: no cover - older/newer torch without these knobs
        precs = []
    return all(str(p) in ("none", "ieee") for p in precs)


def _exact_at(ap: _Approx, fl: _FastLayer, idx: np.ndarray, nidx: int, arena: "_Arena") -> np.ndarray:
    """Exact integer sums (no bias) of a fast layer at flat output indices ``idx[:nidx]``."""
    node, w64, out = ap.node, fl.w64, np.empty(nidx)
    x = ap.x.numpy() if ap.x8 is None else ap.x8.reshape(tuple(ap.x.shape))
    if isinstance(node, ir.Linear):
        K = x.shape[-1]
        x2 = np.ascontiguousarray(x.reshape(-1, K))
        kernels.linear_exact_at(x2, w64, idx, nidx, out)
        return out
    if isinstance(node, ir.Conv1d):
        def one(v):
            return int(np.atleast_1d(v)[0])
        x4 = x[:, :, None, :]
        Ho, Wo = 1, ap.y.shape[2]
        sh, sw, ph, pw, dh, dw = 1, one(node.stride), 0, one(node.padding), 1, one(node.dilation)
    else:
        x4 = x
        Ho, Wo = ap.y.shape[2], ap.y.shape[3]
        (sh, sw), (ph, pw), (dh, dw) = node.stride, node.padding, node.dilation
    geo = (ap.y.shape[1], Ho, Wo, int(sh), int(sw), int(ph), int(pw), int(dh), int(dw), int(node.groups))
    fan = w64.shape[1] * w64.shape[2] * w64.shape[3]
    if _is_channels_last(ap.x):  # stored NHWC: every gathered patch is KH·KW contiguous channel runs
        xl, wk, kernel = np.ascontiguousarray(x4.transpose(0, 2, 3, 1)), fl.w64_cl, kernels.conv2d_exact_at
    elif nidx * fan > 2 * x4.size:
        # many outputs: a channels-last copy of x (~1 ns per element) makes every gathered patch a
        # few contiguous runs (~0.2 ns per product instead of ~1 ns strided)
        B, C, H, W = x4.shape
        xl = arena.get(("nhwc", ap.name), x4.size, x4.dtype).reshape(B, H, W, C)
        torch.from_numpy(xl).copy_(torch.from_numpy(x4).permute(0, 2, 3, 1))  # on PyTorch's threads
        wk, kernel = fl.w64_cl, kernels.conv2d_exact_at
    else:
        xl, wk, kernel = np.ascontiguousarray(x4), w64, kernels.conv2d_exact_at_nchw

    def part(a, b):
        kernel(xl, wk, idx[a:b], b - a, *geo, out[a:b])
    _parallel(part, _split(nidx, _threads(4 * nidx * fan)))  # a gathered product ~4x an element-wise op
    return out



class _Exec:
    """Weight tensors converted once, in the simulation dtype: float64, or float32 when the
    quantiser bounded every accumulation below 2**24 (then float32 sums are exact too)."""

    def __init__(self, graph: ir.Graph, quantized: bool, fast: bool = False):
        q = graph.metadata.get("quantization") or {}
        self.quantized = quantized
        self.order = graph.topo_order()  # (a cached _Exec is reused only for the same nodes and edges)
        self.dtype = (torch.float32 if quantized and int(q.get("accumulation_limit", 2 ** 52)) <= 2 ** 24
                      else torch.float64)
        self.limbs: dict[str, tuple] = {}
        self.fast: dict[str, _FastLayer] = {}
        bounds = None
        if quantized and self.dtype == torch.float64 and q.get("input_bound_int") is not None:
            try:
                bounds = integer_bounds(graph, int(q["input_bound_int"]))[0]
            except Exception:  # pragma: no cover - incomplete quantisation: stay on float64
                bounds = None
        self.input_f32: set[str] = set()
        self.channels_last: set[str] = set()  # inputs quantised straight to NHWC float32
        self.arena = _Arena()
        self.internal: set[str] = set()  # IF layers and inputs read only by fast layers: buffers reused
        if bounds is not None and fast and _fp32_is_ieee():
            self._plan_fast(graph, bounds)
            for n in graph.input_names():  # real-valued inputs quantised straight to float32
                inp = graph.nodes[n]
                cons = graph.consumers_of(n)
                if (not inp.is_spikes and inp.scale_q is not None and cons and all(c in self.fast for c in cons)
                        and bounds[n] < 2 ** 24):
                    self.input_f32.add(n)
            self.internal = {n for n in set(graph.neurons()) | self.input_f32
                             if graph.consumers_of(n) and all(c in self.fast for c in graph.consumers_of(n))}
            # inputs read only by channels-last fast convolutions are quantised channels-last
            for n in self.input_f32:
                cons = graph.consumers_of(n)
                if (len(graph.nodes[n].shape or ()) == 3 and cons
                        and all(c in self.fast and self.fast[c].channels_last for c in cons)):
                    self.channels_last.add(n)
        self.w, self.b = {}, {}
        for n in graph.of_type(*ir.WEIGHT_NODES):
            node = graph.nodes[n]
            w, b = (node.weight_q, node.bias_q) if quantized else (node.weight, node.bias)
            if w is None:
                raise NeurodeployError("weight layer has no quantised weights", layer=node.source or n,
                                       fix="run the target's quantize first")
            if n in self.fast:  # its own float32 / exact float64 copies
                continue
            self.w[n] = torch.as_tensor(np.asarray(w), dtype=self.dtype)
            self.b[n] = None if b is None else torch.as_tensor(np.asarray(b), dtype=self.dtype)
        if bounds is not None:
            # exact limb convolutions for the layers the fast path does not cover (and for the
            # time-stepped path, record_trains=True)
            self._plan_limbs(graph, bounds, skip=set(self.fast))
        # spike counts (<= D) are exact in float32; limb/fast layers read float32, others convert
        self.count_dtype = (np.float32 if (self.limbs or self.fast or self.dtype == torch.float32)
                            else np.float64)

    # Fast exact sync path (filter and refine), see the module docstring. A weight layer qualifies
    # when only IF neurons read it (so only their counts, not its exact values, are needed), its
    # inputs are integers below 2**24 (exact in float32) and its fan-in n keeps (n+2)·2**-24 small.
    def _plan_fast(self, graph: ir.Graph, bounds: dict) -> None:
        for n in graph.of_type(ir.Conv2d, ir.Conv1d, ir.Linear):
            node = graph.nodes[n]
            cons = graph.consumers_of(n)
            if not cons or not all(isinstance(graph.nodes[c], ir.IFNeuron) for c in cons):
                continue
            src = graph.nodes[graph.inputs_of(n)[0]]
            if isinstance(src, ir.Input) and src.is_spikes:  # used as given: integrality not guaranteed
                continue
            bx = int(bounds[graph.inputs_of(n)[0]])
            wq = np.asarray(node.weight_q, dtype=np.int64)
            fan = int(np.prod(wq.shape[1:]))
            if not wq.size or bx >= 2 ** 24 or (fan + 2) * _U32 > 1e-3:
                continue
            O = wq.shape[0]
            bq = None if node.bias_q is None else np.asarray(node.bias_q, dtype=np.int64).reshape(-1)
            # Σ_i |w_oi|·max|x| + |b_o| (< 2**52 by the quantiser), in float64: no overflow whatever
            # the weights, relative rounding ≤ 2**-52 (covered by the (1 + 2**-20) factor below)
            tot = (np.abs(wq).reshape(O, -1).astype(np.float64).sum(1) * float(bx)
                   + (0.0 if bq is None else np.abs(bq).astype(np.float64)))
            if not float(tot.max()) < 2.0 ** 52:  # outside the quantiser's guarantee: exact path
                continue
            # fan + 1 products (the bias is one more term, times 1), each rounded to float32 twice
            # (the weight, the product) and summed in any order: |error| <= γ_{fan+3}·Σ|terms|
            gamma = (fan + 3) * _U32 / (1.0 - (fan + 3) * _U32) * (1.0 + 2.0 ** -20)
            w64 = wq.astype(np.float64)
            if isinstance(node, ir.Conv1d):
                w64 = w64[:, :, None, :]

            self.fast[n] = _FastLayer(
                w32=torch.as_tensor(wq, dtype=torch.float32),
                b32=None if bq is None else torch.as_tensor(bq, dtype=torch.float32),
                w64=np.ascontiguousarray(w64),
                w64_cl=None if w64.ndim != 4 else np.ascontiguousarray(w64.transpose(0, 2, 3, 1)),
                bias=(np.zeros(1) if bq is None else bq.astype(np.float64)),
                has_bias=bq is not None, err=float(gamma * float(tot.max())), O=O,
                channels_last=isinstance(node, ir.Conv2d) and _CHANNELS_LAST,
                err_c=gamma * tot, sole_reader=len(cons) == 1)

    def lin_fast(self, name: str, node, x: torch.Tensor) -> "_Approx":
        """Float32 result of a fast layer, with its float32 input for the exact refinement."""
        fl = self.fast[name]
        xf = x.to(torch.float32)  # integers below 2**24: exact
        if isinstance(node, ir.Conv2d):
            if fl.channels_last:  # (no copy when the input was produced channels-last)
                xf = xf.contiguous(memory_format=torch.channels_last)
                y = F.conv2d(xf, fl.w32, fl.b32, node.stride, node.padding, node.dilation, node.groups)
            else:
                y = F.conv2d(xf, fl.w32, fl.b32, node.stride, node.padding, node.dilation, node.groups)
        elif isinstance(node, ir.Conv1d):
            y = F.conv1d(xf, fl.w32, fl.b32, node.stride, node.padding, node.dilation, node.groups)
        else:
            y = F.linear(xf, fl.w32, fl.b32)
        return _Approx(y.contiguous(), xf, name, node)

    # Exact integer convolutions on float32 hardware paths: a weight layer whose inputs are small
    # integers (spike counts) is split into L weight "limbs" of k bits, w = Σ_j w_j·2^(jk), chosen so
    # that every limb's accumulation max_o Σ|w_j[o]|·max|x| stays below 2**24: each limb's float32
    # convolution is then exact, and the float64 recombination Σ_j y_j·2^(jk) is exact too (every
    # partial sum is an integer bounded by Σ|w|·max|x| < 2**52). All limbs run as one convolution.
    def _plan_limbs(self, graph: ir.Graph, bounds: dict, skip: set, max_limbs: int = 5) -> None:
        for n in graph.of_type(*ir.WEIGHT_NODES):
            if n in skip:
                continue
            node = graph.nodes[n]
            bx = bounds[graph.inputs_of(n)[0]]
            wq = np.asarray(node.weight_q, dtype=np.int64)
            if bx <= 0 or not wq.size:
                continue
            mag, sign = np.abs(wq), np.sign(wq)
            top = int(mag.max()).bit_length()
            fan = int(np.prod(wq.shape[1:]))
            k_safe = max(4, int(np.floor(np.log2(2 ** 24 / (bx * fan + 1)))))  # always passes the check
            for k in range(min(23, k_safe + 6), 3, -1):
                L = max(1, -(-top // k))
                if L > max_limbs:
                    break
                parts = [sign * ((mag >> (j * k)) & ((1 << k) - 1)) for j in range(L)]
                worst = max(int(np.abs(p).reshape(p.shape[0], -1).sum(1).max()) for p in parts)
                if worst * bx < 2 ** 24:
                    self.limbs[n] = self._stack(node, parts, k)
                    break

    @staticmethod
    def _stack(node, parts: list, k: int):
        L = len(parts)
        g = getattr(node, "groups", 1)
        W = np.stack(parts, 0)  # [L, O, ...]
        O, tail = W.shape[1], W.shape[2:]
        # order output channels as [group, limb, O/g] so that grouped convolutions stay grouped
        W = W.reshape((L, g, O // g) + tail).swapaxes(0, 1).reshape((L * O,) + tail)
        pw = torch.tensor([float(2 ** (j * k)) for j in range(L)], dtype=torch.float64)
        return torch.as_tensor(W, dtype=torch.float32), pw, L, g, O

    def _lin_limbs(self, name: str, node, x: torch.Tensor, with_bias: bool) -> torch.Tensor:
        W, pw, L, g, O = self.limbs[name]
        xf = x.to(torch.float32)
        if isinstance(node, ir.Conv2d):
            y = F.conv2d(xf, W, None, node.stride, node.padding, node.dilation, node.groups)
        elif isinstance(node, ir.Conv1d):
            y = F.conv1d(xf, W, None, node.stride, node.padding, node.dilation, node.groups)
        else:
            y = F.linear(xf, W)
        b = self.b[name]
        has_b = bool(with_bias and b is not None)
        bias = b.numpy() if b is not None else _EMPTY[torch.float64]
        if isinstance(node, ir.Linear):
            lead = tuple(y.shape[:-1])
            R, S, gg = int(np.prod(lead)), 1, 1
            yv = y.reshape(R, L, O)
        else:
            lead, sp = (y.shape[0],), tuple(y.shape[2:])
            S = int(np.prod(sp))
            gg = g
            yv = y.reshape(y.shape[0] * g, L, (O // g) * S)
        out = np.empty((yv.shape[0], yv.shape[2]), dtype=np.float64)
        kernels.recombine_limbs(np.ascontiguousarray(yv.numpy()), pw.numpy(), bias, has_b, S, out)
        if isinstance(node, ir.Linear):
            return torch.from_numpy(out.reshape(lead + (O,)))
        return torch.from_numpy(out.reshape(lead + (O,) + sp))

    def lin(self, name: str, node, ins: list, with_bias: bool = True) -> torch.Tensor:
        x = ins[0] if ins else None
        if name in self.limbs:
            return self._lin_limbs(name, node, x, with_bias)
        if isinstance(node, ir.WEIGHT_NODES) and x.dtype != self.dtype:
            x = x.to(self.dtype)
        if isinstance(node, ir.Conv2d):
            return F.conv2d(x, self.w[name], self.b[name] if with_bias else None, node.stride, node.padding,
                            node.dilation, node.groups)
        if isinstance(node, ir.Conv1d):
            return F.conv1d(x, self.w[name], self.b[name] if with_bias else None, node.stride, node.padding,
                            node.dilation, node.groups)
        if isinstance(node, ir.Linear):
            return F.linear(x, self.w[name], self.b[name] if with_bias else None)
        if self.quantized and isinstance(node, ir.SumPool2d) and not isinstance(node, ir.AvgPool2d):
            # exact integer window sums (equal to ops' round(avg·k) below 2**51)
            return F.avg_pool2d(x, node.kernel, node.stride, node.padding, count_include_pad=True,
                                divisor_override=1)
        return ops.linear_op(node, ins, self.quantized)  # pools/flatten/reshape/add keep the dtype


_EXEC_CACHE: dict[int, tuple] = {}  # id(graph) -> (signature, copies of the integer weights, _Exec)
_EXEC_CACHE_SIZE = 8


def _exec_signature(graph: ir.Graph, quantized: bool, fast: bool):
    """Everything an ``_Exec`` depends on except the integer weight arrays: flags, the quantiser's
    limits, edges, node names/types and every non-array node field (but free-form ``meta`` and
    ``source``); arrays by shape and dtype."""
    q = graph.metadata.get("quantization") or {}
    nodes = []
    for name, node in graph.nodes.items():
        # vars(): the dataclass fields (and any other attribute: stricter), 15x faster than
        # dataclasses.fields; dtype.str is cheaper than str(dtype)
        f = tuple((k, ("array", v.shape, v.dtype.str) if isinstance(v, np.ndarray) else v)
                  for k, v in vars(node).items() if k != "meta" and k != "source")
        nodes.append((name, type(node).__name__, f))
    return (quantized, fast, _fp32_is_ieee(), _CHANNELS_LAST, q.get("accumulation_limit"), q.get("input_bound_int"),
            tuple(map(tuple, graph.edges)), tuple(nodes))


def _exec_arrays(graph: ir.Graph) -> list:
    out = []
    for node in graph.nodes.values():  # (insertion order: part of the signature; no sort needed)
        if isinstance(node, ir.WEIGHT_NODES):
            out += [node.weight_q, node.bias_q]
    return out


def _get_exec(graph: ir.Graph, quantized: bool, fast: bool) -> "_Exec":
    """A cached ``_Exec`` for a quantised graph simulated again unchanged (the weight conversions and
    the fast-path / limb planning cost ~1 ms): reused only if the signature and every integer weight
    array are equal to those it was built from, so edits in place are seen."""
    if not quantized:
        return _Exec(graph, quantized, fast=fast)
    try:
        sig = _exec_signature(graph, quantized, fast)
        hash(sig)
    except Exception:  # unhashable field values: no caching
        return _Exec(graph, quantized, fast=fast)
    arrays = _exec_arrays(graph)
    hit = _EXEC_CACHE.get(id(graph))
    if (hit is not None and hit[0] == sig and len(hit[1]) == len(arrays)
            and all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
                    for a, b in zip(hit[1], arrays))):
        return hit[2]
    ex = _Exec(graph, quantized, fast=fast)
    if len(_EXEC_CACHE) >= _EXEC_CACHE_SIZE:
        _EXEC_CACHE.pop(next(iter(_EXEC_CACHE)))
    _EXEC_CACHE[id(graph)] = (sig, [None if a is None else np.array(a, copy=True) for a in arrays], ex)
    return ex


def _prepare_input(graph: ir.Graph, x) -> np.ndarray:
    ins = graph.input_names()
    if len(ins) != 1:
        raise NeurodeployError(f"the simulator supports graphs with one Input, got {len(ins)}")
    node = graph.nodes[ins[0]]
    x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    shape = tuple(node.input_shape)
    if x.shape == shape:
        x = x[None]
    if tuple(x.shape[1:]) != shape:
        raise NeurodeployError(f"input batch has per-sample shape {tuple(x.shape[1:])}, graph expects {shape}",
                               layer=node.source or ins[0], fix="pass x as [batch, *input_shape]")
    rng = quantized_input_range(graph.metadata.get("quantization"))
    # one pass when every value is inside (NaN counts as outside); the full check names the sample
    if rng is not None and not (HAVE_NUMBA and kernels.max_abs(np.ascontiguousarray(x).reshape(-1)) <= rng):
        check_input_range(x, rng, layer=node.source or ins[0])
    return x


def _output_factor(graph: ir.Graph, out: str, quantized: bool) -> float:
    q = graph.metadata.get("quantization") or {}
    if quantized and "output_dequant" in q:
        return float(q["output_dequant"].get(out, 1.0))
    return float((graph.metadata.get("output_scales") or {}).get(out, 1.0))


def _sync(graph: ir.Graph, x: torch.Tensor, quantized: bool, record: bool, ex: _Exec, arena: _Arena):
    values: dict[str, torch.Tensor] = {}
    ready: dict[str, int] = {}
    start: dict[str, int] = {}
    counts, trains, near = {}, {}, {}
    small: dict[str, np.ndarray] = {}  # uint8 copies of counts read by fast layers' exact gathers
    order = ex.order
    for name in order:
        node = graph.nodes[name]
        in_names = graph.inputs_of(name)
        if isinstance(node, ir.Input):
            if name in ex.input_f32 and not record:  # read only by fast layers: float32 integers
                xn = np.ascontiguousarray(x.numpy()).reshape(-1)
                out = arena.get(("input", name), xn.size, np.float32)
                if name in ex.channels_last:
                    B, C, H, W = x.shape
                    kernels.quantize_input_f32_cl(xn, C, H * W, float(node.scale_q), out)
                    values[name] = torch.from_numpy(out.reshape(B, H, W, C)).permute(0, 3, 1, 2)
                else:
                    kernels.quantize_input_f32(xn, float(node.scale_q), out)
                    values[name] = torch.from_numpy(out.reshape(tuple(x.shape)))
            else:
                values[name] = ops.quantize_input(node, x, quantized).to(ex.dtype)
            ready[name] = 0
            continue
        ins = [ops.neuron_output(graph.nodes[i], values[i], quantized) if isinstance(graph.nodes[i], ir.IFNeuron)
               else values[i] for i in in_names]
        t0 = max(ready[i] for i in in_names)
        if isinstance(node, ir.IFNeuron):
            start[name] = t0
            if isinstance(ins[0], _Approx):
                c, c64, nt = _if_sync_fast(node, ins[0], ex.fast[ins[0].name], ex.count_dtype, arena,
                                           name if name in ex.internal else None, small)
                values[name], counts[name], near[name] = c, c64, nt
            else:
                c, tr, nt = _if_sync(node, ins[0], quantized, record, ex.count_dtype)
                values[name], counts[name], near[name] = c, c, nt
                if record:
                    trains[name] = tr
            ready[name] = t0 + node.max_spikes
        elif name in ex.fast and not record:
            values[name] = ex.lin_fast(name, node, ins[0])
            values[name].x8 = small.get(in_names[0])
            ready[name] = t0
        else:
            values[name] = ex.lin(name, node, ins)
            ready[name] = t0
    jobs = []  # float32 counts of the fast path: int64, after the last layer
    for n, c in counts.items():
        if isinstance(c, torch.Tensor) and c.dtype == torch.float32 and HAVE_NUMBA:
            # from the uint8 copy where there is one (the same counts, a quarter of the bytes to read)
            flat = small[n] if n in small else c.contiguous().numpy().reshape(-1)
            counts[n] = np.empty(tuple(c.shape), dtype=np.int64)
            jobs.append((flat, counts[n].reshape(-1)))
    parts = _threads(sum(f.size for f, _ in jobs))

    def convert(k, _):  # the k-th of `parts` slices of every layer: one thread hand-off in all
        for flat, o in jobs:
            ranges = _split(flat.size, parts)
            if k < len(ranges):
                a, b = ranges[k]
                kernels.counts_to_int64(flat[a:b], o[a:b])
    _parallel(convert, [(k, k + 1) for k in range(parts)])
    T = max([ready[n] for n in order] + [0])
    outs = {o: values[o] for o in graph.output_names()}
    if record:  # place each layer's D steps at its start step
        full = {}
        for n, tr in trains.items():
            buf = torch.zeros((tr.shape[0], T) + tuple(tr.shape[2:]), dtype=torch.uint8)
            buf[:, start[n]:start[n] + tr.shape[1]] = tr
            full[n] = buf
        trains = full
    return counts, (trains if record else None), outs, T, near, start


def _linear_step(ex: _Exec, node, name: str, ins: list, with_bias: bool):
    """Apply a non-neuron node to possibly-zero (None) inputs; biases only when ``with_bias``."""
    live = [v for v in ins if v is not None]
    if isinstance(node, ir.WEIGHT_NODES):
        has_bias = ex.b[name] is not None
        if not live:
            if not (with_bias and has_bias):
                return None
            raise _NeedZeros()
        return ex.lin(name, node, ins, with_bias)
    if isinstance(node, ir.BatchNorm):
        raise NeurodeployError("BatchNorm in a streaming simulation", layer=node.source or name,
                               fix="canonicalise the graph first (passes.canonicalize)")
    if not live:
        return None
    if isinstance(node, ir.Add):
        out = live[0]
        for o in live[1:]:
            out = out + o
        return out
    return ex.lin(name, node, ins)


class _NeedZeros(Exception):
    pass


def _streaming(graph: ir.Graph, x: torch.Tensor, quantized: bool, record: bool, horizon: int | None, ex: _Exec):
    host = [n for n, node in graph.nodes.items() if isinstance(node, ir.HostOp) and node.bilinear]
    if host:  # a product of spike trains is not the product of spike counts
        raise NeurodeployError("the streaming schedule has no meaning for host products: the host multiplies "
                               "whole spike counts", layer=graph.nodes[host[0]].source or host[0],
                               fix="simulate with schedule='sync' (the layer barrier)")
    order = graph.topo_order()
    B = x.shape[0]
    neurons = [n for n in order if isinstance(graph.nodes[n], ir.IFNeuron)]
    ir.infer_shapes(graph) if any(graph.nodes[n].shape is None for n in order) else None
    v = {n: None for n in neurons}
    count = {n: torch.zeros((B,) + tuple(graph.nodes[n].shape), dtype=ex.dtype) for n in neurons}
    prev = {n: None for n in neurons}  # spikes of the previous step (None: none)
    outs = {o: None for o in graph.output_names()}
    trains = {n: [] for n in neurons} if record else None
    params = {n: _neuron_params(graph.nodes[n], quantized) for n in neurons}
    spike_buf = {n: torch.zeros_like(count[n]) for n in neurons}
    total_d = sum(graph.nodes[n].max_spikes for n in neurons)
    cap = horizon if horizon is not None else 4 * total_d + 16
    xin = ops.quantize_input(graph.nodes[graph.input_names()[0]], x, quantized).to(ex.dtype)
    t = 0
    while t < cap:
        vals: dict[str, torch.Tensor | None] = {}
        for name in order:
            node = graph.nodes[name]
            if isinstance(node, ir.Input):
                vals[name] = xin if t == 0 else None
            elif isinstance(node, ir.IFNeuron):
                p = prev[name]
                vals[name] = None if p is None else ops.neuron_output(node, p, quantized)
            else:
                ins = [vals[i] for i in graph.inputs_of(name)]
                try:
                    vals[name] = _linear_step(ex, node, name, ins, t == 0)
                except _NeedZeros:
                    shp = (B,) + tuple(graph.nodes[graph.inputs_of(name)[0]].shape)
                    vals[name] = _linear_step(ex, node, name, [torch.zeros(shp, dtype=ex.dtype)], True)
        any_spike = False
        for n in neurons:
            node = graph.nodes[n]
            theta, v0, hi, lo = params[n]
            cur = vals[graph.inputs_of(n)[0]]
            if t == 0:  # input current and biases arrive; same formula as the sync schedule
                if quantized:
                    vv = torch.full_like(count[n], v0)
                    if cur is not None:
                        vv = vv + cur
                else:
                    vv = ((cur if cur is not None else torch.zeros_like(count[n])) + node.v_init) / node.threshold
                vv = vv.contiguous()
                cur = None
            else:
                vv = v[n]
            D = int(node.max_spikes)
            half_even = node.rounding == "half_even"
            if HAVE_NUMBA:
                sp = spike_buf[n]
                c = cur.contiguous().numpy().reshape(-1) if cur is not None else _EMPTY[ex.dtype]
                k = kernels.if_stream_kernel(vv.numpy().reshape(-1), c, cur is not None,
                                             1.0 if quantized else float(node.threshold),
                                             count[n].numpy().reshape(-1), sp.numpy().reshape(-1), theta, D,
                                             half_even, np.inf if hi is None else hi, -np.inf if lo is None else lo)
                s = sp.to(torch.bool) if record else None
                if k:
                    any_spike = True
                    prev[n] = sp.clone()
                else:
                    prev[n] = None
            else:
                if cur is not None:
                    vv = vv + (cur if quantized else cur / node.threshold)
                if hi is not None:
                    vv = vv.clamp(max=hi)
                if lo is not None:
                    vv = vv.clamp(min=lo)
                s = _fire(vv, theta, count[n], half_even) & (count[n] < D)
                if bool(s.any()):
                    any_spike = True
                    sf = s.to(ex.dtype)
                    count[n] += sf
                    vv = vv - sf * theta
                    prev[n] = sf
                else:
                    prev[n] = None
            v[n] = vv
            if record:
                trains[n].append(s.to(torch.uint8))
        for o in outs:
            if vals[o] is not None:
                outs[o] = vals[o] if outs[o] is None else outs[o] + vals[o]
        t += 1
        if horizon is None and not any_spike:
            break
    for o in outs:
        if outs[o] is None:
            shp = (B,) + tuple(graph.nodes[o].shape)
            outs[o] = torch.zeros(shp, dtype=ex.dtype)
    tr = {n: torch.stack(trains[n], 1) for n in neurons} if record else None
    return count, tr, outs, t


def simulate(graph: ir.Graph, x, *, schedule: str = "sync", record_trains: bool = False,
             batch_size: int | None = None, progress: bool = False, horizon: int | None = None,
             fast_sync: bool = True) -> SimResult:
    """Time-stepped IF simulation of ``graph`` on the batch ``x`` (``[B, *input_shape]``).

    ``schedule``: ``'sync'`` (layer-synchronous, equals :func:`neurodeploy.ops.evaluate` exactly) or
    ``'streaming'`` (all layers at once, one timestep per synapse). ``batch_size``: simulate in
    chunks of that many samples. ``horizon`` (streaming): run exactly that many steps instead of
    stopping when quiescent. ``fast_sync`` (sync schedule of a quantised program, without
    ``record_trains``): use the exact filter-and-refine path (see the module docstring; same counts
    and near ties); ``False`` steps every neuron through its D timesteps.
    """
    if ir.is_time_stepped(graph):  # LIF/IF over T steps: one step per timestep, no D budget
        from .timestepped import simulate_timestepped

        graph.validate()
        if any(n.shape is None for n in graph.nodes.values()):
            graph = ir.infer_shapes(graph.copy())
        return simulate_timestepped(graph, x, batch_size=batch_size)
    if schedule not in SCHEDULES:
        raise NeurodeployError(f"unknown schedule {schedule!r}", fix=f"use one of {', '.join(SCHEDULES)}")
    graph.validate()
    if any(n.shape is None for n in graph.nodes.values()):
        graph = ir.infer_shapes(graph.copy())
    quantized = graph.is_quantized
    xs = _prepare_input(graph, x)
    B = xs.shape[0]
    bs = B if not batch_size else int(batch_size)
    chunks = range(0, max(B, 1), max(bs, 1))
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc=f"simulate ({schedule})", unit="batch")
    parts = []
    fast = bool(fast_sync and quantized and schedule == "sync" and not record_trains and HAVE_NUMBA)
    ex = _get_exec(graph, quantized, fast)
    # NNPACK (used by PyTorch for float32 convolutions when oneDNN is disabled) computes Winograd/FFT
    # convolutions whose rounding errors the fast path does not bound: keep it off
    own_arena = ex.arena.lock.acquire(blocking=False)  # a concurrent simulation of this graph: its own
    arena = ex.arena if own_arena else _Arena()
    try:
        with torch.inference_mode(), torch.backends.nnpack.flags(enabled=False):
            for i in chunks:
                xb = torch.as_tensor(xs[i:i + bs], dtype=ops.DTYPE)
                if schedule == "sync":
                    parts.append(_sync(graph, xb, quantized, record_trains, ex, arena))
                else:
                    parts.append(_streaming(graph, xb, quantized, record_trains, horizon, ex))
    finally:
        if own_arena:
            ex.arena.lock.release()
    neurons = [n for n in ex.order if isinstance(graph.nodes[n], ir.IFNeuron)]
    def _np(a):
        return a.numpy() if isinstance(a, torch.Tensor) else a

    counts = {}
    for n in neurons:
        arrs = [_np(p[0][n]) for p in parts]
        c = arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
        counts[n] = c if c.dtype == np.int64 else c.astype(np.int64)
    T = max(p[3] for p in parts)
    trains = None
    if record_trains:
        trains = {}
        for n in neurons:
            arrs = []
            for p in parts:
                a = p[1][n].numpy()
                if a.shape[1] < T:  # streaming chunks may stop at different steps
                    pad = np.zeros((a.shape[0], T - a.shape[1]) + a.shape[2:], dtype=np.uint8)
                    a = np.concatenate([a, pad], 1)
                arrs.append(a)
            trains[n] = np.concatenate(arrs)
    outputs = {o: np.concatenate([p[2][o].numpy() for p in parts]).astype(np.float64) * _output_factor(graph, o, quantized)
               for o in graph.output_names()}
    near = None
    start = {}
    if schedule == "sync":
        near = {n: int(sum(p[4][n] for p in parts)) for n in neurons}
        start = dict(parts[0][5]) if parts else {}
    return SimResult(counts=counts, trains=trains, outputs=outputs, timesteps=int(T), schedule=schedule,
                     near_ties=near, start_step=start, quantized=quantized)
