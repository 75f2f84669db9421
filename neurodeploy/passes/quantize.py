"""Fixed-point quantisation for the bit-accurate ``sim`` target.

Every tensor in a canonical graph lives in a *scale domain*: the integer value carried by the
simulator is ``round(real · 2**F)`` for the domain's fractional bits ``F``.

* Input: ``F_in`` (``Input.scale_q = 2**F_in``); spike inputs (``is_spikes``) have ``F = 0``.
* IF neuron outputs are spike counts: ``F = 0`` (norms are folded by ``fold_norms``).
* Every weight layer starts a domain; SumPool2d/Flatten/Reshape/Output join their input's domain,
  an Add joins all of its inputs' domains (union-find), and an IF neuron's threshold and initial
  membrane live in the domain of its input. So all weight layers whose outputs meet in the same
  neuron layer (directly, through residual Adds, or because one pre-activation feeds several
  neuron layers) share one power-of-two scale: a *scale group*.

For a weight layer mapping domain ``i`` to domain ``g``: ``w_q = round(w · 2**(F_g − F_i))`` and
``b_q = round(b · 2**F_g)``; for a neuron fed from ``g``: ``θ_q = round(θ · 2**F_g)``,
``v_init_q = round(v_init · 2**F_g)``.

``F_g`` is chosen as large as possible such that every integer accumulation
(Σ|w_q|·max|input| + |b_q|, sums at Adds and SumPools, and neuron membranes |current| + |v_init_q|
+ D·θ_q) stays below ``2**50`` (checked exactly on the integer weights afterwards; the hard limit
is ``2**52``), so float64 arithmetic on these integers is exact in any summation order
(``accumulator_bits=24`` does the same for float32). ``max|input|`` is ``input_range`` (from the
calibration data) for the network input and D (times the pooled window) for spike counts.

Input fractional bits ``F_in`` (default automatic): the fewest bits that represent the calibration
data exactly when they are dyadic (integer pixels, x/16, x/256: then the input adds no error at
all), else half of the first layer's headroom (about 20-24 bits). A domain
that itself feeds a weight layer (the input, or a linear chain conv -> conv without activation)
gets at most half of its consumer's headroom so that both the values and the next weights keep
precision.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ir
from ..calibration import dyadic_bits, input_peak
from ..errors import NeurodeployError

HARD_LIMIT = 2 ** 52
TARGET_LIMIT = 2 ** 50


class _UF:
    def __init__(self):
        self.p: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.p.setdefault(a, a)
        while self.p[a] != a:
            self.p[a] = self.p[self.p[a]]
            a = self.p[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def scale_domains(graph: ir.Graph) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Map each node to its output's scale domain (a representative node name); also
    ``domain -> member nodes`` in topological order. An IF neuron's *output* domain is its own."""
    uf = _UF()
    order = graph.topo_order()
    for n in order:
        uf.find(n)
        node = graph.nodes[n]
        if isinstance(node, (ir.Input, ir.IFNeuron) + ir.WEIGHT_NODES) or _is_product(node):
            continue
        for i in graph.inputs_of(n):
            uf.union(n, i)
    dom = {n: uf.find(n) for n in order}
    members: dict[str, list[str]] = {}
    for n in order:
        members.setdefault(dom[n], []).append(n)
    return dom, members


def _is_product(node: ir.Node) -> bool:
    """A host activation × activation product starts a scale domain (like a weight layer)."""
    return isinstance(node, ir.HostOp) and node.bilinear


def _product_bound(graph: ir.Graph, n: str, node: ir.HostOp, ins: list):
    k = graph.nodes[graph.inputs_of(n)[0]].shape[-1] if node.op == "matmul" else 1
    return ins[0] * ins[1] * k * 2 ** int(node.shift_q or 0)


def _place_products(g: ir.Graph, dom: dict, F: dict) -> None:
    """A product's integer is exact at the sum of its inputs' fractional bits; one feeding another
    product stays there (shift 0), the last one may shift left into its domain's headroom."""
    products = [n for n in g.topo_order() if _is_product(g.nodes[n])]
    feeding = {dom[i] for p in products for i in g.inputs_of(p)}
    for p in products:
        exact = sum(F[dom[i]] for i in g.inputs_of(p))
        F[dom[p]] = exact if dom[p] in feeding else max(F[dom[p]], exact)


def _propagate_bounds(graph: ir.Graph, in_bound, weight_bound) -> dict[str, float | int]:
    """Max |value| of every node's output, given max |input| and, per weight layer,
    ``weight_bound(node) -> (max row Σ|w|, max |b|)``."""
    B: dict = {}
    for n in graph.topo_order():
        node = graph.nodes[n]
        ins = [B[i] for i in graph.inputs_of(n)]
        if isinstance(node, ir.Input):
            B[n] = in_bound
        elif isinstance(node, ir.IFNeuron):
            B[n] = int(node.max_spikes)
        elif isinstance(node, ir.WEIGHT_NODES):
            row_sum, bias = weight_bound(node)
            B[n] = row_sum * ins[0] + bias
        elif isinstance(node, ir.SumPool2d):
            B[n] = ins[0] * node.kernel[0] * node.kernel[1]
        elif isinstance(node, ir.Add):
            B[n] = sum(ins)
        elif _is_product(node):
            B[n] = _product_bound(graph, n, node, ins)
        else:
            B[n] = ins[0]
    return B


def _float_weight_bound(node) -> tuple[float, float]:
    w = np.abs(np.asarray(node.weight, dtype=np.float64)).reshape(node.weight.shape[0], -1).sum(1)
    return float(w.max()), 0.0 if node.bias is None else float(np.max(np.abs(node.bias)))


def _int_weight_bound(node) -> tuple[int, int]:
    """Exact: int64 row sums when they cannot overflow, Python ints otherwise."""
    wq = np.abs(np.asarray(node.weight_q, dtype=np.int64)).reshape(node.weight_q.shape[0], -1)
    if not wq.size:
        row_sum = 0
    elif int(wq.max()) * wq.shape[1] < 2 ** 62:
        row_sum = int(wq.sum(1).max())
    else:  # pragma: no cover - far outside any quantiser output
        row_sum = max(sum(int(v) for v in r) for r in wq)
    bias = 0 if node.bias_q is None else int(np.max(np.abs(np.asarray(node.bias_q, dtype=np.int64))))
    return row_sum, bias


def _float_bounds(graph: ir.Graph, input_range: float) -> dict[str, float]:
    """Max |value| of every node's output (real units), from weights and ranges alone."""
    return _propagate_bounds(graph, float(input_range), _float_weight_bound)


def integer_bounds(graph: ir.Graph, in_bound: int) -> tuple[dict[str, int], dict[str, int]]:
    """Exact integer bounds of every node's value and every neuron's membrane (quantised graph)."""
    B = _propagate_bounds(graph, int(in_bound), _int_weight_bound)
    M = {n: B[graph.inputs_of(n)[0]] + abs(int(graph.nodes[n].v_init_q))
         + graph.nodes[n].max_spikes * int(graph.nodes[n].threshold_q) for n in graph.neurons()}
    return B, M


def _balanced_input_bits(node, frac_out: int, calibration) -> int:
    """Input fractional bits F_in for a weight layer reading the real-valued input at ``frac_out``
    bits: its pre-activation error is about S_w·2^-F_in (input rounding) + S_x·2^-(frac_out−F_in)
    (weight rounding), S_w the typical row Σ|w| and S_x = fan-in · mean|x| over the calibration
    data; the sum is smallest at F_in = (frac_out + log2(S_w/S_x)) / 2. Without calibration data:
    half of ``frac_out``."""
    from ..calibration import as_array

    x = as_array(calibration)
    w = np.abs(np.asarray(node.weight, dtype=np.float64)).reshape(node.weight.shape[0], -1)
    s_w = float(w.sum(1).mean()) if w.size else 0.0
    s_x = w.shape[1] * float(np.mean(np.abs(x))) if x is not None and w.size else 0.0
    if s_w <= 0 or s_x <= 0:
        return frac_out // 2
    return int(round((frac_out + math.log2(s_w / s_x)) / 2))


def _log2_floor(x: float) -> int:
    return int(math.floor(math.log2(x))) if x > 0 else 60


def quantize_fixed_point(graph: ir.Graph, calibration=None, *, input_frac_bits: int | None = None,
                         input_range: float | None = None, accumulator_bits: int = 52,
                         max_frac_bits: int = 60, **_ignored) -> ir.Graph:
    """Return a quantised copy of a canonical ``graph`` for the ``sim`` target (see module doc).

    ``input_frac_bits``: fractional bits of the input (None: automatic — the fewest bits that
    represent the calibration data exactly if they are dyadic with <= 16 fractional bits, e.g.
    integer pixels; otherwise half of the first layer's headroom, at most 32).
    ``input_range``: max |input| the program must handle exactly (None: 2·max|calibration| when
    calibration data is given, else 1024; the simulator refuses larger inputs).
    ``accumulator_bits``: every integer accumulation stays below ``2**accumulator_bits`` (scales are
    chosen for ``2**(accumulator_bits-2)``). 52 (default) keeps float64 sums exact; 24 makes float32
    sums exact (the simulator then runs in float32 — faster, but ~2^-20 relative precision).
    """
    if not 8 <= accumulator_bits <= 52:
        raise NeurodeployError(f"accumulator_bits={accumulator_bits} outside 8..52",
                               fix="use 52 (float64-exact, default) or 24 (float32-exact)")
    hard_limit = 2 ** int(accumulator_bits)
    limit = 2 ** (int(accumulator_bits) - 2)
    from .fold import check_canonical

    g = graph.copy()
    ir.infer_shapes(g)
    check_canonical(g)
    ins = g.input_names()
    if len(ins) != 1:
        raise NeurodeployError(f"the sim target supports one Input, graph has {len(ins)}")
    inp: ir.Input = g.nodes[ins[0]]
    if input_range is None:
        peak = input_peak(calibration)
        input_range = 2.0 * peak if peak else 1024.0
    input_range = float(input_range)

    dom, members = scale_domains(g)
    V = _float_bounds(g, input_range)
    # float accumulation bound of each domain (incl. neuron membranes fed from it)
    A: dict[str, float] = {d: 0.0 for d in members}
    for n, node in g.nodes.items():
        A[dom[n]] = max(A[dom[n]], V[n])
        if isinstance(node, ir.IFNeuron):
            d_in = dom[g.inputs_of(n)[0]]
            A[d_in] = max(A[d_in], V[g.inputs_of(n)[0]] + abs(node.v_init) + node.max_spikes * node.threshold)

    # domains holding spike counts (an IF neuron's output) have the fixed scale 1
    fixed = {dom[n]: 0 for n, node in g.nodes.items() if isinstance(node, ir.IFNeuron)}
    weight_domains = {dom[n] for n in g.of_type(*ir.WEIGHT_NODES)} | {dom[n] for n in g.nodes if _is_product(g.nodes[n])}
    # conflicts: a weight domain that also contains spike counts (neuron output added to a pre-activation)
    for d, mem in members.items():
        has_w = any(isinstance(g.nodes[m], ir.WEIGHT_NODES) for m in mem)
        has_counts = any(isinstance(g.nodes[m], ir.IFNeuron) for m in mem)
        if has_w and has_counts:
            nrn = next(m for m in mem if isinstance(g.nodes[m], ir.IFNeuron))
            raise NeurodeployError(
                "spike counts are added to a weighted pre-activation without a weight layer in between; "
                "the fixed-point sim target needs one scale per sum", layer=g.nodes[nrn].source or nrn,
                fix="add the residual before the activation (membrane shortcut) or insert an identity 1x1 conv")

    fmax = {d: min(max_frac_bits, _log2_floor(limit / max(A[d], 1e-300))) for d in members}
    # domains that feed weight layers keep half of their consumers' headroom
    feeds: dict[str, list[str]] = {}
    for w in g.of_type(*ir.WEIGHT_NODES):
        feeds.setdefault(dom[g.inputs_of(w)[0]], []).append(dom[w])

    d_in = dom[ins[0]]
    F: dict[str, int] = {}
    for d in members:
        if d == d_in:
            if inp.is_spikes:
                F[d] = 0
            elif input_frac_bits is not None:
                F[d] = int(input_frac_bits)
            elif (k := dyadic_bits(calibration)) is not None:
                F[d] = k  # calibration data are exact multiples of 2^-k (e.g. integer pixels): no input error
            else:
                readers = [w for w in g.of_type(*ir.WEIGHT_NODES) if dom[g.inputs_of(w)[0]] == d]
                f = min([fmax[d]] + [_balanced_input_bits(g.nodes[w], fmax[dom[w]], calibration) for w in readers]
                        + [fmax[c] // 2 for c in feeds.get(d, []) if c not in {dom[w] for w in readers}])
                F[d] = int(max(0, min(32, f)))
        elif d in fixed:
            F[d] = 0
        else:
            f = fmax[d]
            for c in feeds.get(d, []):
                f = min(f, fmax[c] // 2)
            F[d] = f
    _place_products(g, dom, F)
    free = [d for d in members if d != d_in and d not in fixed and d in weight_domains]
    in_domain_weights = any(isinstance(g.nodes[m], ir.WEIGHT_NODES) for m in members[d_in])
    if in_domain_weights:
        free = [d for d in free if d != d_in]

    def apply():
        inp.scale_q = 1 if inp.is_spikes else 2 ** F[d_in]
        for n in g.of_type(*ir.WEIGHT_NODES):
            node = g.nodes[n]
            fo, fi = F[dom[n]], F[dom[g.inputs_of(n)[0]]]
            node.weight_q = np.rint(np.ldexp(np.asarray(node.weight, np.float64), fo - fi)).astype(np.int64)
            node.bias_q = (None if node.bias is None else
                           np.rint(np.ldexp(np.asarray(node.bias, np.float64), fo)).astype(np.int64))
        for n in g.nodes:
            if _is_product(g.nodes[n]):
                shift = F[dom[n]] - sum(F[dom[i]] for i in g.inputs_of(n))
                if shift < 0:
                    raise NeurodeployError(
                        f"the host product needs {-shift} more fractional bits than its scale domain has",
                        layer=g.nodes[n].source or n, fix="multiply spike counts (activation outputs), not "
                                                          "pre-activation currents, on the host")
                g.nodes[n].shift_q = int(shift)
        for n in g.neurons():
            node = g.nodes[n]
            f = F[dom[g.inputs_of(n)[0]]]
            node.threshold_q = int(np.rint(math.ldexp(node.threshold, f)))
            node.v_init_q = int(np.rint(math.ldexp(node.v_init, f)))
            if node.threshold_q < 1:
                raise NeurodeployError(f"threshold {node.threshold:g} rounds to 0 at 2^{f}: the inputs (range "
                                       f"{input_range:g}) or the weights feeding this layer are too large for "
                                       "exact integer arithmetic", layer=node.source or n,
                                       fix="check the magnitude of the inputs (--data / --calibration) and of this "
                                           "layer's weights; or increase input_frac_bits / check the activation scale")
        in_bound = int(math.ceil(input_range * inp.scale_q))
        return integer_bounds(g, in_bound)

    for _ in range(64):
        B, M = apply()
        over = {dom[n] for n, b in B.items() if b >= limit}
        over |= {dom[g.inputs_of(n)[0]] for n, m in M.items() if m >= limit}
        if not over:
            break
        adjustable = [d for d in over if d in free]
        if not adjustable:
            names = ", ".join(sorted(over))
            raise NeurodeployError(
                f"integer accumulation bound reaches 2^{math.log2(max(max(B.values()), max(M.values(), default=0))):.1f} "
                f"in scale domain(s) {names} with fixed scale", layer=names,
                fix="lower input_frac_bits or input_range")
        for d in adjustable:
            F[d] -= 1
    else:  # pragma: no cover
        raise NeurodeployError("could not choose fixed-point scales")
    worst = max(list(B.values()) + list(M.values()))
    if worst >= hard_limit:  # pragma: no cover - guarded by the loop above
        raise NeurodeployError(f"integer accumulation exceeds 2^{accumulator_bits}")

    groups = []
    for d, mem in members.items():
        wl = [m for m in mem if isinstance(g.nodes[m], ir.WEIGHT_NODES)]
        fed = [n for n in g.neurons() if dom[g.inputs_of(n)[0]] == d]
        if not wl and not fed:
            continue
        bound = max([B[m] for m in mem] + [M[n] for n in fed])
        groups.append({"domain": d, "frac_bits": int(F[d]), "weight_layers": wl, "neurons": fed,
                       "max_abs_int": int(bound), "max_abs_int_log2": round(math.log2(max(bound, 1)), 2)})
    frac_bits = {n: int(F[dom[n]]) for n in g.topo_order()}
    out_scales = {}
    for o in g.output_names():
        out_scales[o] = math.ldexp(float(g.metadata.get("output_scales", {}).get(o, 1.0)), -frac_bits[o])
    g.metadata["quantization"] = {
        "target": "sim",
        "scheme": "fixed-point, one power-of-two scale per scale group",
        "input_frac_bits": int(F[d_in]),
        "input_range": input_range,
        "input_bound_int": int(math.ceil(input_range * inp.scale_q)),
        "accumulation_limit": hard_limit,
        "accumulator_bits": int(accumulator_bits),
        "max_abs_int": int(worst),
        "groups": groups,
        "frac_bits": frac_bits,
        "output_dequant": out_scales,
    }
    return g
