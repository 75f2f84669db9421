"""Core placement on Speck: memory formulas, per-core limits, bipartite matching, reports.

Memory per layer (sinabs 3.1.3 ``DynapcnnLayer.memory_summary``, REFERENCE §3)::

    kernel = c · 2^(⌈log2 k²⌉ + ⌈log2 f⌉)      (k² = kH·kW; a Linear's kernel is its whole input)
    neuron = f · 2^(⌈log2 H⌉ + ⌈log2 W⌉)       (H, W: the neuron (conv output) map)
    bias   = f, or 0 for a layer without bias   (as sinabs: ``len(conv.bias)`` or 0 when it is None)

Per-core limits (words): cores 0–2 kernel 16Ki / neuron 64Ki; 3–4 32Ki / 32Ki; 5–6 64Ki / 16Ki;
7–8 16Ki / 16Ki; bias 1024 everywhere. Layers are assigned to cores by a maximum bipartite
matching (augmenting paths, layers in topological order, cores in increasing order), as sinabs
does with its flow graph; ``core_map`` overrides are validated and the rest is matched around them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import DesignRuleError
from .layers import SpeckLayer, Violation

KI = 1024
N_CORES = 9
KERNEL_MEMORY = [16 * KI] * 3 + [32 * KI] * 2 + [64 * KI] * 2 + [16 * KI] * 2
NEURON_MEMORY = [64 * KI] * 3 + [32 * KI] * 2 + [16 * KI] * 2 + [16 * KI] * 2
BIAS_MEMORY = [1024] * N_CORES


def ceil_log2(n: int) -> int:
    """⌈log2 n⌉ for n ≥ 1, exact (integer arithmetic)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"ceil_log2 of {n}")
    return (n - 1).bit_length()


def kernel_memory(c: int, k2: int, f: int) -> int:
    return int(c) * 2 ** (ceil_log2(k2) + ceil_log2(f))


def neuron_memory(f: int, h: int, w: int) -> int:
    return int(f) * 2 ** (ceil_log2(h) + ceil_log2(w))


def layer_memory(layer: SpeckLayer) -> dict:
    c = layer.channels_in
    f, h, w = layer.out_shape
    kh, kw = layer.kernel
    return {"kernel": kernel_memory(c, kh * kw, f), "neuron": neuron_memory(f, h, w),
            "bias": int(f) if layer.has_bias else 0}


def fits(mem: dict, core: int) -> bool:
    return (mem["kernel"] <= KERNEL_MEMORY[core] and mem["neuron"] <= NEURON_MEMORY[core]
            and mem["bias"] <= BIAS_MEMORY[core])


def candidate_cores(mem: dict) -> list[int]:
    return [c for c in range(N_CORES) if fits(mem, c)]


def _match(cands: dict[str, list[int]], taken: dict[str, int]) -> dict[str, int] | None:
    """Maximum bipartite matching (Kuhn's augmenting paths); None if some layer is left out."""
    owner: dict[int, str] = {c: l for l, c in taken.items()}
    free = [l for l in cands if l not in taken]

    def augment(layer: str, seen: set) -> bool:
        for core in cands[layer]:  # a free core first (keeps layer i on the lowest fitting core)
            if core not in owner:
                owner[core] = layer
                return True
        for core in cands[layer]:
            if core in seen:
                continue
            seen.add(core)
            cur = owner.get(core)
            if cur is None or (cur not in taken and augment(cur, seen)):
                owner[core] = layer
                return True
        return False

    for layer in free:
        if not augment(layer, set()):
            return None
    return {l: c for c, l in sorted(owner.items())}


@dataclass
class CoreMapping:
    layer_to_core: dict  # layer name -> core index
    memory: dict  # layer name -> {'kernel','neuron','bias'}

    @property
    def core_to_layer(self) -> dict:
        return {c: l for l, c in self.layer_to_core.items()}


def mapping_violations(layers: dict[str, SpeckLayer], core_map: dict | None = None) -> tuple[list, dict | None]:
    """All placement problems (as Violations) and, if there are none, the layer→core map."""
    V: list[Violation] = []
    mem = {name: layer_memory(l) for name, l in layers.items()}
    if len(layers) > N_CORES:
        V.append(Violation("<graph>", "number of layers (cores)", f"<= {N_CORES}", str(len(layers)),
                           "merge or remove layers (every weight+neuron layer takes one core)"))
    cands = {}
    for name, m in mem.items():
        c = candidate_cores(m)
        if not c:
            V.append(Violation(name, "core memory", "kernel <= 64Ki and neuron <= 64Ki words on some core "
                               "(0-2: 16Ki/64Ki, 3-4: 32Ki/32Ki, 5-6: 64Ki/16Ki, 7-8: 16Ki/16Ki)",
                               f"kernel {m['kernel']} ({m['kernel'] / KI:g}Ki), neuron {m['neuron']} "
                               f"({m['neuron'] / KI:g}Ki), bias {m['bias']}",
                               "reduce channels, kernel size or feature-map size (stride/pooling earlier); "
                               "memory grows with powers of two of k², f, H and W"))
        cands[name] = c
    taken: dict[str, int] = {}
    for lname, core in (core_map or {}).items():
        if lname not in layers:
            V.append(Violation(str(lname), "core_map override", f"one of the layers {sorted(layers)}",
                               "unknown layer", "name layers by their weight node"))
            continue
        if not isinstance(core, int) or not 0 <= core < N_CORES:
            V.append(Violation(lname, "core_map override", f"core 0..{N_CORES - 1}", repr(core), "pick a valid core"))
            continue
        if core in taken.values():
            other = [l for l, c in taken.items() if c == core][0]
            V.append(Violation(lname, "core_map override", "one layer per core",
                               f"core {core} also given to '{other}'", "give each layer its own core"))
            continue
        if not fits(mem[lname], core):
            m = mem[lname]
            V.append(Violation(lname, "core_map override: core memory",
                               f"core {core}: kernel {KERNEL_MEMORY[core]}, neuron {NEURON_MEMORY[core]}, "
                               f"bias {BIAS_MEMORY[core]}",
                               f"kernel {m['kernel']}, neuron {m['neuron']}, bias {m['bias']}",
                               f"use one of the cores it fits: {cands[lname] or 'none'}"))
            continue
        taken[lname] = core
    if V:
        return V, None
    result = _match(cands, taken)
    if result is None:
        V.append(Violation("<graph>", "core assignment", "each layer on its own core within that core's memory",
                           "no assignment exists: " + ", ".join(f"{l}->{cands[l]}" for l in layers),
                           "shrink the layers that fit only the big cores (see memory_report.txt)"))
        return V, None
    # keep the layers' order
    return [], {name: result[name] for name in layers}


def map_layers(layers: dict[str, SpeckLayer], core_map: dict | None = None) -> CoreMapping:
    V, l2c = mapping_violations(layers, core_map)
    if V:
        raise DesignRuleError([str(v) for v in V], "speck")
    return CoreMapping(l2c, {n: layer_memory(l) for n, l in layers.items()})


def memory_report(layers: dict[str, SpeckLayer], mapping: CoreMapping | None) -> str:
    """A per-core table: layer, shapes, memory use against that core's limits."""
    lines = ["Speck core memory (words; sinabs 3.1.3 formulas: kernel = c*2^(ceil(log2 k^2)+ceil(log2 f)),"
             " neuron = f*2^(ceil(log2 H)+ceil(log2 W)), bias = f if the layer has a bias, else 0)", ""]
    hdr = f"{'core':>4}  {'layer':<24} {'in (C,H,W)':<16} {'out (F,H,W)':<16} {'k':>5} " \
          f"{'kernel':>15} {'neuron':>15} {'bias':>11}"
    lines += [hdr, "-" * len(hdr)]
    c2l = mapping.core_to_layer if mapping else {}
    for core in range(N_CORES):
        lname = c2l.get(core)
        if lname is None:
            lines.append(f"{core:>4}  {'(free)':<24} {'':<16} {'':<16} {'':>5} "
                         f"{'0/' + str(KERNEL_MEMORY[core]):>15} {'0/' + str(NEURON_MEMORY[core]):>15} "
                         f"{'0/' + str(BIAS_MEMORY[core]):>11}")
            continue
        l = layers[lname]
        m = layer_memory(l)
        k = f"{l.kernel[0]}x{l.kernel[1]}"
        lines.append(f"{core:>4}  {lname:<24} {str(tuple(l.in_shape)):<16} {str(tuple(l.out_shape)):<16} {k:>5} "
                     f"{str(m['kernel']) + '/' + str(KERNEL_MEMORY[core]):>15} "
                     f"{str(m['neuron']) + '/' + str(NEURON_MEMORY[core]):>15} "
                     f"{str(m['bias']) + '/' + str(BIAS_MEMORY[core]):>11}")
    if not mapping:
        lines.append("")
        for name, l in layers.items():
            m = layer_memory(l)
            lines.append(f"  {name}: kernel {m['kernel']}, neuron {m['neuron']}, bias {m['bias']}, "
                         f"fits cores {candidate_cores(m)}")
    return "\n".join(lines) + "\n"


def synops_per_event(layer: SpeckLayer) -> float:
    """SynOps per input event, averaged over input pixels: C_out · H_out·W_out·k_y·k_x / (H_in·W_in).

    That is REFERENCE §3's C_out · k_x · k_y / (s_x · s_y) with the output map size written
    exactly (H_out ≈ H_in / s), so that a Linear (kernel = whole input, 1×1 output) gives C_out.
    Border taps falling in the padding are counted (an upper bound near the borders).
    """
    f, ho, wo = layer.out_shape
    _, h, w = layer.in_shape
    return f * ho * wo * layer.kernel[0] * layer.kernel[1] / (h * w)


def bandwidth_report(layers: dict[str, SpeckLayer], mapping: CoreMapping, input_events_per_s: dict,
                     synops_limit_per_core: float | None = None) -> tuple[str, dict]:
    """Per-core SynOps/s ≈ input events/s × SynOps per event (see ``synops_per_event``).

    ``input_events_per_s``: {layer: events/s arriving at that layer's core} (e.g. events per sample
    from ``simulate`` × samples/s). ``synops_limit_per_core``: the chip's per-core bandwidth (not
    published: a parameter; past it the whole chip stalls). Returns (text, {layer: SynOps/s}).
    """
    rates = {}
    lines = [f"{'core':>4}  {'layer':<24} {'in events/s':>14} {'SynOps/event':>13} {'SynOps/s':>14}  status"]
    for name, l in layers.items():
        ev = float(input_events_per_s.get(name, 0.0))
        r = ev * synops_per_event(l)
        rates[name] = r
        if synops_limit_per_core is None:
            status = "limit not given"
        else:
            status = "OK" if r <= synops_limit_per_core else f"OVER the limit {synops_limit_per_core:g}: chip stalls"
        lines.append(f"{mapping.layer_to_core[name]:>4}  {name:<24} {ev:>14.4g} {synops_per_event(l):>13.4g} "
                     f"{r:>14.4g}  {status}")
    return "\n".join(lines) + "\n", rates
