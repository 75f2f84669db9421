"""Simulator benchmark: neurodeploy's sim target vs. a plain PyTorch forward vs. sinabs IAF.

For the demo-sized net (1×8×8 digits, 3 SFA conv layers + SFA linear, D=4) and a larger conv net
(3×64×64, 6 SFA conv layers + pool + SFA linear, D=4) it times

* the model's own PyTorch forward (float32, as users run it; float64 for reference),
* the physical floor: a float32 forward of the *folded* network (conv/linear + clamp/round in
  place, no BN, no autograd; :func:`folded_forward`) — goal: sync simulator <= 1.1× of it. Method:
  the floor and the simulator alternate in this process, median of 15 runs each, both on the same
  number of threads (``torch.set_num_threads``: PyTorch's convolutions and element-wise ops, and
  the simulator's numba kernels, which split their work over that many threads), once with
  PyTorch's default thread count and once with one thread; then both sides part by part on one
  thread (:func:`print_breakdown`: convolutions, the floor's clamp/round, the simulator's closed
  form + undecided test, exact refinement, int64 results, input check, and the rest), with the
  simulator's exactness work over the floor's activation as a share of the floor,
* the neurodeploy simulator on the quantised (integer) program, layer-synchronous schedule
  (goal: <= 2× the PyTorch float32 forward; default exact fast path — one float32 convolution per
  layer with an a-priori error bound, closed-form counts, exact refinement of the few undecided
  neurons — and, for reference, ``fast_sync=False``, which steps every neuron through its D
  timesteps on exact limb convolutions) and streaming schedule; also the sync schedule of a program
  quantised with 24-bit accumulators (exact in float32, so it can use PyTorch's fast float32
  convolutions; its counts may differ from the model's where 2^-20 relative precision matters),
* sinabs 3.1.3 ``IAFSqueeze`` (SingleSpike, MembraneSubtract, threshold 1, initial membrane
  0.5 + bias, input given at the first of D timesteps, zero delay between layers inside a step) —
  and, for reference, the same sinabs layers run one layer at a time with a barrier,

and checks whether each one's spike counts agree with the model's own activations.
Run: ``python benchmarks/bench_simulator.py`` (< 3 minutes on 2 cores). On a busy machine run it
with ``OMP_WAIT_POLICY=PASSIVE``: by default PyTorch's OpenMP workers spin after every convolution
and, with more runnable threads than cores, steal the core the simulator's numba steps need (seen:
sync 754 ms vs 50 ms on the large net at load 13 on 2 cores; the floor itself 254 ms vs 43 ms).
Allocator: minor page faults cost ~4 µs per 4 KB here, and with glibc's defaults which side of the
alternation pays them depends on the other's frees (seen: the floor 0 faults per call alone and
5.4k when alternated with the simulator, which then looked faster than the floor). So the benchmark
first makes glibc keep freed memory (:func:`keep_freed_memory`; ``--default-allocator`` skips it)
and prints the faults per call of both sides (0 after warm-up with it).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nets import SFA, DigitsConvNet, LargeConvNet, activation_counts, digits_like_input, image_input, to_graph  # noqa: E402

from neurodeploy import ir  # noqa: E402
from neurodeploy.passes import canonicalize, quantize_fixed_point  # noqa: E402
from neurodeploy.simulator import kernels, simulate  # noqa: E402


def timeit(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)  # the machine is shared: the fastest run is the least disturbed one


def timeit_paired(fa, fb, repeat: int = 5, warmup: int = 1, stat=min) -> tuple[float, float]:
    """``stat`` (best, or median) of ``repeat`` times of ``fa`` and ``fb`` measured alternately, so
    that the ratio of the two is not skewed by load that comes and goes on a shared machine."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    return stat(ta), stat(tb)


def floor_ratios(floor_forward, sim, runs: int) -> list[tuple[int, float, float]]:
    """(threads, floor time, sync time): medians of ``runs`` alternating runs of the folded-net
    forward and the sync simulator, both on the same number of threads (``torch.set_num_threads``:
    PyTorch's convolutions and element-wise ops use it, and so do the simulator's numba kernels),
    with PyTorch's current thread count and with one thread (less exposed to a shared machine's
    load)."""
    threads = torch.get_num_threads()
    out = []
    for th in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(th)
        try:
            out.append((th, *timeit_paired(floor_forward, sim, runs, stat=statistics.median)))
        finally:
            torch.set_num_threads(threads)
    return out


# -- sinabs --------------------------------------------------------------------------------------

def sinabs_layers(model: nn.Module, B: int):
    """Sinabs version of a Sequential SFA net: [(kind, module, init_vmem or None, ir_name)]."""
    import sinabs.layers as sl
    from sinabs.activation import MembraneSubtract, SingleSpike

    seq = model.net
    out, pending_bias = [], None
    for i, m in enumerate(seq):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            mm = m.__class__(*( (m.in_channels, m.out_channels, m.kernel_size) if isinstance(m, nn.Conv2d)
                                else (m.in_features, m.out_features)), bias=False,
                             **({"stride": m.stride, "padding": m.padding} if isinstance(m, nn.Conv2d) else {}))
            mm.weight.data = m.weight.data.double().clone()
            pending_bias = m.bias.data.double().clone()
            out.append(("lin", mm.double(), None, None))
        elif isinstance(m, SFA):
            layer = sl.IAFSqueeze(batch_size=B, spike_threshold=1.0, spike_fn=SingleSpike,
                                  reset_fn=MembraneSubtract(), min_v_mem=None)
            out.append(("if", layer, pending_bias, f"l{i}"))
            pending_bias = None
        else:
            out.append(("lin", m, None, None))
    return out


def _init_vmem(layer, bias, shape, B):
    layer.init_state_with_shape((B,) + tuple(shape))
    v = torch.full((B,) + tuple(shape), 0.5, dtype=torch.float64)
    if bias is not None:
        v = v + bias.view((1, -1) + (1,) * (len(shape) - 1))
    layer.v_mem = v


def run_sinabs(layers, x: torch.Tensor, D: int, barrier: bool) -> dict[str, np.ndarray]:
    """Zero-delay streaming over D steps (barrier=False) or one layer at a time (barrier=True).
    Input (and biases, via the initial membrane) arrive at the first step only."""
    B = x.shape[0]
    counts = {}
    with torch.inference_mode():
        if not barrier:
            h = torch.zeros((B, D) + tuple(x.shape[1:]), dtype=torch.float64)
            h[:, 0] = x
            h = h.reshape((B * D,) + tuple(x.shape[1:]))
            for kind, m, bias, name in layers:
                if kind == "if":
                    _init_vmem(m, bias, h.shape[1:], B)
                    h = m(h).double()
                    counts[name] = h.reshape((B, D) + tuple(h.shape[1:])).sum(1).numpy()
                else:
                    h = m(h)
        else:
            h = x
            for kind, m, bias, name in layers:
                if kind == "if":  # whole current at step 0, then D steps with no input
                    _init_vmem(m, bias, h.shape[1:], B)
                    seq = torch.zeros((B, D) + tuple(h.shape[1:]), dtype=torch.float64)
                    seq[:, 0] = h
                    s = m(seq.reshape((B * D,) + tuple(h.shape[1:]))).double()
                    h = s.reshape((B, D) + tuple(h.shape[1:])).sum(1)
                    counts[name] = h.numpy()
                else:
                    h = m(h)
    return counts


# -- the physical floor ------------------------------------------------------------------------------

def folded_forward(graph: ir.Graph):
    """The physical floor of a layer-synchronous simulation: a float32 forward of the *folded*
    network (``canonicalize``: BN, pools and norms already in the weights), i.e. each layer's
    convolution / linear op plus the activation as clamp/round in place — no BN, no autograd, no
    bookkeeping. Returns ``run(x) -> {neuron name: counts}``."""
    import torch.nn.functional as F

    order = ir.topological_order(list(graph.nodes), graph.edges)
    t32 = lambda a: None if a is None else torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    params = {n: (t32(graph.nodes[n].weight), t32(graph.nodes[n].bias)) for n in order
              if isinstance(graph.nodes[n], (ir.Conv2d, ir.Conv1d, ir.Linear))}

    def activation(node: ir.IFNeuron, v):
        if node.threshold != 1.0:
            v.mul_(1.0 / node.threshold)
        if node.rounding == "half_even":
            v.clamp_(0, node.max_spikes).round_()
        else:
            v.add_(node.v_init / node.threshold).floor_().clamp_(0, node.max_spikes)
        return v

    def run(x: torch.Tensor) -> dict:
        vals, counts = {}, {}
        for name in order:
            node, ins = graph.nodes[name], [vals[i] for i in graph.inputs_of(name)]
            if isinstance(node, ir.Input):
                h = x
            elif isinstance(node, ir.Conv2d):
                h = F.conv2d(ins[0], *params[name], node.stride, node.padding, node.dilation, node.groups)
            elif isinstance(node, ir.Conv1d):
                h = F.conv1d(ins[0], *params[name], node.stride, node.padding, node.dilation, node.groups)
            elif isinstance(node, ir.Linear):
                h = F.linear(ins[0], *params[name])
            elif isinstance(node, ir.IFNeuron):
                h = counts[name] = activation(node, ins[0])
                if node.norm != 1.0:
                    h = h * (1.0 / node.norm)
            elif isinstance(node, ir.AvgPool2d) or isinstance(node, ir.SumPool2d):
                h = F.avg_pool2d(ins[0], node.kernel, node.stride or node.kernel, node.padding,
                                 divisor_override=None if isinstance(node, ir.AvgPool2d) else 1)
            elif isinstance(node, ir.Flatten):
                h = ins[0].flatten(node.start_dim + 1)
            elif isinstance(node, ir.Reshape):
                h = ins[0].reshape((ins[0].shape[0],) + tuple(node.target_shape))
            elif isinstance(node, ir.Add):
                h = ins[0] + ins[1] if len(ins) == 2 else sum(ins)
            elif isinstance(node, ir.Scale):
                h = ins[0] * float(node.scale)
            elif isinstance(node, ir.Output):
                continue
            else:
                raise TypeError(f"floor forward: unsupported node {node.kind}")
            vals[name] = h
        return counts

    return run


def page_faults(fn, repeat: int = 10) -> float:
    """Minor page faults per call (memory the allocator handed back to the OS and takes again):
    a load-independent count, unlike times on a shared machine."""
    import resource

    fn()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeat):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / repeat


# Where each side of the floor comparison spends its time: every call of these is timed (the
# simulator calls its kernels and PyTorch's functional ops through module attributes, the floor
# its in-place tensor methods, so wrapping the attributes sees every call).
FLOOR_PARTS = {"linear ops (conv, linear, pool)": [(F, "conv2d"), (F, "conv1d"), (F, "linear"), (F, "avg_pool2d")],
               "activation (clamp_/round_ in place)": [(torch.Tensor, m) for m in
                                                       ("clamp_", "round_", "add_", "floor_", "mul_")],
               "float64 copies of the counts": [(torch.Tensor, "double")]}
SIM_PARTS = {"linear ops (conv, linear, pool)": FLOOR_PARTS["linear ops (conv, linear, pool)"],
             "closed form + undecided test": [(kernels, k) for k in ("if_sync_closed_form32_inplace",
                                                                     "if_sync_closed_form32_rows",
                                                                     "if_sync_closed_form32", "if_sync_closed_form")],
             "exact refinement (gathers, steps)": [(kernels, k) for k in ("conv2d_exact_at", "conv2d_exact_at_nchw",
                                                                          "linear_exact_at", "if_sync_refine")],
             "int64 results": [(kernels, "counts_to_int64")],
             "input check + quantisation": [(kernels, k) for k in ("max_abs", "quantize_input_f32",
                                                                   "quantize_input_f32_cl")]}


def timed_parts(fn, parts: dict, runs: int) -> dict:
    """Mean ms per call of ``fn`` and of each part (wrapped callables), plus the rest."""
    spent = dict.fromkeys(parts, 0.0)
    saved = []

    def timer(label, f):
        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t
        return wrapped

    for label, targets in parts.items():
        for owner, name in targets:
            f = getattr(owner, name, None)
            if f is not None:
                saved.append((owner, name, f))
                setattr(owner, name, timer(label, f))
    try:
        fn()
        spent.update(dict.fromkeys(parts, 0.0))
        t = time.perf_counter()
        for _ in range(runs):
            fn()
        total = (time.perf_counter() - t) / runs
    finally:
        for owner, name, f in saved:
            setattr(owner, name, f)
    out = {label: 1e3 * v / runs for label, v in spent.items()}
    out["rest (Python, bookkeeping)"] = 1e3 * total - sum(out.values())
    out["total"] = 1e3 * total
    return out


def print_breakdown(floor_forward, sim, runs: int = 20) -> dict:
    """One thread, each side timed part by part; the exactness work the simulator does where the
    floor only rounds, as a share of the floor."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fl = timed_parts(floor_forward, FLOOR_PARTS, runs)
        sm = timed_parts(sim, SIM_PARTS, runs)
    finally:
        torch.set_num_threads(threads)
    for name, parts in (("floor", fl), ("sim", sm)):
        body = " + ".join(f"{k} {v:.2f}" for k, v in parts.items() if k != "total")
        print(f"  breakdown, 1 thread, ms per call, {name}: {parts['total']:.2f} = {body}")
    extra = (sm["closed form + undecided test"] - fl["activation (clamp_/round_ in place)"]
             + sm["exact refinement (gathers, steps)"] + sm["input check + quantisation"])
    print(f"  exactness work over the floor's activation (closed form + test - clamp/round, + refinement, + input "
          f"check): {extra:.2f} ms = {100 * extra / fl['total']:.0f}% of the floor (the 1.1x goal allows 10% for all)")
    return {"floor": fl, "sim": sm, "exactness_ms": extra}


def agreement(ref: dict, got: dict) -> tuple[float, int]:
    """Fraction of all counts equal, number of layers that agree fully."""
    tot = eq = layers = 0
    for k, r in ref.items():
        g = got[k]
        eq += int((np.asarray(r) == np.asarray(g)).sum())
        tot += int(np.asarray(r).size)
        layers += int(np.array_equal(r, g))
    return eq / max(tot, 1), layers


def bench(name: str, model: nn.Module, x: np.ndarray, D: int, repeat: int) -> dict:
    torch.set_grad_enabled(False)
    model = model.eval()
    x32 = torch.tensor(x, dtype=torch.float32)
    x64 = torch.tensor(x, dtype=torch.float64)
    m64 = type(model)().eval().double()
    m64.load_state_dict(model.state_dict())
    reference = activation_counts(m64, x64)  # the model's own activations (float64 forward)

    t0 = time.perf_counter()
    q = quantize_fixed_point(canonicalize(to_graph(model)), calibration=x)
    t_compile = time.perf_counter() - t0

    with torch.inference_mode():
        t_f64 = timeit(lambda: m64(x64), repeat)
    q24 = quantize_fixed_point(canonicalize(to_graph(model)), calibration=x, accumulator_bits=24)
    res = {}

    def f32_forward():
        with torch.inference_mode():
            model(x32)

    # the goal's ratio: the f32 forward and the sync simulator timed alternately (same conditions)
    t_f32, t_sync = timeit_paired(f32_forward, lambda: res.__setitem__("sync", simulate(q, x)), 2 * repeat)
    # the physical floor: the folded network's float32 forward, timed alternately with the simulator
    floor_run = folded_forward(canonicalize(to_graph(model)))

    def floor_forward():
        with torch.inference_mode():
            res["floor"] = {k: v.double().numpy() for k, v in floor_run(x32).items()}

    floor_runs = max(15, 2 * repeat)
    floors = floor_ratios(floor_forward, lambda: simulate(q, x), floor_runs)
    t_floor, t_sync_f = floors[0][1:]
    faults_sync, faults_floor = page_faults(lambda: simulate(q, x)), page_faults(floor_forward)
    parts = print_breakdown(floor_forward, lambda: simulate(q, x))
    t_stepped = timeit(lambda: res.__setitem__("stepped", simulate(q, x, fast_sync=False)), max(1, repeat // 2))
    t_sync24 = timeit(lambda: res.__setitem__("sync24", simulate(q24, x)), repeat)
    t_stream = timeit(lambda: res.__setitem__("streaming", simulate(q, x, schedule="streaming")), max(1, repeat // 2))
    lay = sinabs_layers(m64, x.shape[0])
    sres = {}
    t_sinabs = timeit(lambda: sres.__setitem__("s", run_sinabs(lay, x64, D, barrier=False)), max(1, repeat // 2))
    t_sinabs_b = timeit(lambda: sres.__setitem__("b", run_sinabs(lay, x64, D, barrier=True)), max(1, repeat // 2))

    rows = [
        ("pytorch forward f32", t_f32, None, None),
        ("pytorch forward f64", t_f64, None, None),
        ("folded net f32 forward (floor)", t_floor, *agreement(reference, res["floor"])),
        ("neurodeploy sim sync", t_sync, *agreement(reference, res["sync"].counts)),
        ("sim sync, every neuron time-stepped", t_stepped, *agreement(reference, res["stepped"].counts)),
        ("sim sync, 24-bit acc. (float32)", t_sync24, *agreement(reference, res["sync24"].counts)),
        ("neurodeploy sim streaming", t_stream, *agreement(reference, res["streaming"].counts)),
        ("sinabs IAF (streaming, D steps)", t_sinabs, *agreement(reference, sres["s"])),
        ("sinabs IAF (per-layer barrier)", t_sinabs_b, *agreement(reference, sres["b"])),
    ]
    n_layers = len(reference)
    print(f"\n== {name}: input {tuple(x.shape[1:])}, batch {x.shape[0]}, {n_layers} SFA layers, D={D}, "
          f"sync latency {res['sync'].timesteps} steps, streaming ran {res['streaming'].timesteps} steps "
          f"(quantise {t_compile * 1e3:.0f} ms)")
    print(f"  {'method':<36} {'time ms':>9} {'× f32 fwd':>10} {'counts':>10} {'equal %':>9} {'layers ok':>10}")
    for label, t, frac, nl in rows:
        if frac is None:
            verdict, eqp, lok = "", "", ""
        else:
            verdict = "agree" if frac == 1.0 else "disagree"
            eqp, lok = f"{100 * frac:.3f}", f"{nl}/{n_layers}"
        print(f"  {label:<36} {t * 1e3:>9.1f} {t / t_f32:>9.2f}× {verdict:>10} {eqp:>9} {lok:>10}")
    goal = t_sync / t_f32
    print(f"  sync simulator / PyTorch f32 forward = {goal:.2f}× (goal <= 2×: {'met' if goal <= 2 else 'NOT met'}); "
          f"/ f64 forward = {t_sync / t_f64:.2f}×")
    floor = t_sync_f / t_floor
    for th, tf, ts in floors:
        r = ts / tf
        print(f"  sync simulator / folded-net f32 forward (physical floor), median of {floor_runs} alternating "
              f"runs, {th} thread{'s' if th > 1 else ''} each: sync {ts * 1e3:.1f} ms / floor {tf * 1e3:.1f} ms "
              f"= {r:.2f}× (goal <= 1.1×: {'met' if r <= 1.1 else 'NOT met'})")
    print(f"  minor page faults per call: sync {faults_sync:.0f}, floor {faults_floor:.0f}")
    print(f"  (sync: float32 filter + exact refinement, default; time-stepped path (fast_sync=False) "
          f"/ f32 forward = {t_stepped / t_f32:.2f}×)")
    print(f"  24-bit accumulators (float32-exact, ~2^-20 precision) / f32 forward = {t_sync24 / t_f32:.2f}×")
    return {"name": name, "t_f32": t_f32, "t_floor": t_floor, "t_sync_vs_floor": floor,
            "sync_vs_floor_by_threads": {th: ts / tf for th, tf, ts in floors},
            "faults_sync": faults_sync, "breakdown": parts, "t_sync24": t_sync24, "t_f64": t_f64, "t_sync": t_sync,
            "t_sync_stepped": t_stepped, "t_stream": t_stream,
            "t_sinabs": t_sinabs, "t_sinabs_barrier": t_sinabs_b}


def keep_freed_memory() -> str:
    """glibc only: serve allocations up to 32 MB (glibc's largest mmap threshold) from the heap and
    never give freed heap memory back to the OS (``mallopt``: mmap threshold 32 MB, trim threshold
    2 GB; as ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``). Otherwise whichever side of an alternating comparison frees a large
    block last decides which side pays ~4 µs minor page faults per 4 KB on its next run (seen: the
    floor 0 faults per call alone, 5.4k when alternated with the simulator). Returns what was done."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 32 << 20) == 1 and libc.mallopt(-1, (1 << 31) - 1) == 1  # M_MMAP_/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        ok = False
    return ("glibc keeps freed memory (mallopt mmap threshold 32 MB, trim threshold 2 GB)"
            if ok else "default allocator (no glibc mallopt)")


def main() -> None:
    t = time.perf_counter()
    allocator = "default allocator (--default-allocator)" if "--default-allocator" in sys.argv else keep_freed_memory()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; {allocator}")
    # warm up the numba kernels (compiled once, cached on disk)
    small = DigitsConvNet()
    xs = digits_like_input(4)
    qs = quantize_fixed_point(canonicalize(to_graph(small)), calibration=xs)
    simulate(qs, xs)
    simulate(qs, xs, schedule="streaming")
    bench("digits conv net (demo size)", DigitsConvNet(), digits_like_input(1024), D=4, repeat=7)
    bench("large conv net", LargeConvNet(), image_input(32), D=4, repeat=5)
    print(f"\ntotal benchmark time {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
