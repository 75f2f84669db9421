"""Speck design-rule check: every limit of REFERENCE §3, all violations reported at once.

Rules (per layer = per core): input ≤ 128×128, neuron (output) map ≤ 64×64, ≤ 1024 input and
output channels, square kernel ≤ 16, stride in {1, 2, 4, 8}, padding 0–7, dilation 1, sum-pooling
1/2/4 per destination (square, stride = kernel), ≤ 2 destinations (Output = monitor, not counted),
weight layer followed by a spiking layer, no max/avg pool, ≤ 9 layers, each layer fits a core's
memory and all layers fit together (bipartite matching). Linear layers are convolutions whose kernel
is their whole input (as sinabs places them), so their input must be square and ≤ 16×16.

Input: Speck is fed events. If ``Input.is_spikes`` is False the first layer's real-valued input is
*rate coded*: ``x_int = round(x · scale_q)`` events per pixel (``Input.scale_q`` is set by the
quantiser); that is a warning, not a violation, and negative input values are refused when events
are made (``config.raster_to_events``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ... import ir
from ...errors import DesignRuleError
from . import mapping as mp
from .layers import INPUT, SpeckNet, Violation, extract

MAX_INPUT_HW = 128
MAX_OUTPUT_HW = 64
MAX_CHANNELS = 1024
MAX_KERNEL = 16
STRIDES = (1, 2, 4, 8)
MAX_PADDING = 7
POOLS = (1, 2, 4)
MAX_DESTINATIONS = 2
N_CORES = mp.N_CORES


@dataclass
class DRCReport:
    net: SpeckNet
    violations: list  # [Violation]
    warnings: list  # [str]
    layer_to_core: dict | None

    @property
    def ok(self) -> bool:
        return not self.violations

    def raise_if_failed(self) -> None:
        if self.violations:
            raise DesignRuleError([str(v) for v in self.violations], "speck")


def run_drc(graph: ir.Graph, core_map: dict | None = None, inputs=None) -> DRCReport:
    """``inputs``: the data (or calibration) inputs, when known: negative values are a violation."""
    ir.infer_shapes(graph)
    net = extract(graph)
    V = list(net.violations)
    W = list(net.warnings)

    if net.input_name is not None:
        inp = graph.nodes[net.input_name]
        c, h, w = net.input_shape
        if len(tuple(inp.shape)) not in (1, 3):
            V.append(Violation(net.input_name, "input shape", "(C, H, W) or (N,)", str(tuple(inp.shape)),
                               "give the input as channels × height × width"))
        if h > MAX_INPUT_HW or w > MAX_INPUT_HW:
            V.append(Violation(net.input_name, "input size", f"<= {MAX_INPUT_HW}x{MAX_INPUT_HW} (DVS array)",
                               f"{h}x{w}", "downsample the input (crop or pool on the host)"))
        if not inp.is_spikes and (neg := _negative_input(inputs)) is not None:
            V.append(Violation(net.input_name, "input values", ">= 0 (an input event carries a count)",
                               f"real-valued with negative values (min {neg:g})",
                               "feed non-negative inputs (e.g. pixels before normalisation, with the "
                               "normalisation folded into the first layer), or compute the first layer "
                               "on the host and deploy from its activation (--until)"))
        elif not inp.is_spikes:
            W.append(f"input '{net.input_name}' is real-valued (is_spikes=False): Speck takes events, so the "
                     f"input is rate coded as round(x*scale_q) events per pixel (scale_q chosen by quantize); "
                     f"negative values cannot be sent")
        if len(net.input_destinations) > MAX_DESTINATIONS:
            V.append(Violation(net.input_name, "input destinations", f"<= {MAX_DESTINATIONS}",
                               str(len(net.input_destinations)), "feed at most two layers from the input"))

    for name, l in net.layers.items():
        c, h, w = l.in_shape
        f, ho, wo = l.out_shape
        kh, kw = l.kernel
        if h > MAX_INPUT_HW or w > MAX_INPUT_HW:
            V.append(Violation(name, "input feature map", f"<= {MAX_INPUT_HW}x{MAX_INPUT_HW}", f"{h}x{w}",
                               "pool or stride earlier"))
        if ho > MAX_OUTPUT_HW or wo > MAX_OUTPUT_HW:
            V.append(Violation(name, "output feature map", f"<= {MAX_OUTPUT_HW}x{MAX_OUTPUT_HW}", f"{ho}x{wo}",
                               "use stride 2 (or more) in this layer, or pool its input"))
        if c > MAX_CHANNELS:
            V.append(Violation(name, "input channels", f"<= {MAX_CHANNELS}", str(c),
                               "reduce channels" + (" (a Linear's input vector is its channel count: "
                                                    "flatten a (C,H,W) map instead)" if l.kind == "linear" else "")))
        if f > MAX_CHANNELS:
            V.append(Violation(name, "output channels", f"<= {MAX_CHANNELS}", str(f), "reduce output channels"))
        if kh != kw:
            what = "Linear input must be square (kernel = input H×W)" if l.kind == "linear" else "kernel shape"
            V.append(Violation(name, what, "square kernels (k×k)", f"{kh}x{kw}",
                               "use a square kernel" if l.kind == "conv" else "make the flattened map square"))
        if max(kh, kw) > MAX_KERNEL:
            V.append(Violation(name, "kernel size", f"<= {MAX_KERNEL}x{MAX_KERNEL}", f"{kh}x{kw}",
                               "use a smaller kernel" if l.kind == "conv" else
                               "pool the map before this Linear (its kernel is its whole input)"))
        for s in set(l.stride):
            if s not in STRIDES:
                V.append(Violation(name, "stride", "1, 2, 4 or 8", str(tuple(l.stride)), "use a power-of-two stride <= 8"))
                break
        if any(p < 0 or p > MAX_PADDING for p in l.padding):
            V.append(Violation(name, "padding", f"0..{MAX_PADDING}", str(tuple(l.padding)),
                               "reduce padding (pad on the host for the first layer)"))
        if tuple(l.dilation) != (1, 1):
            V.append(Violation(name, "dilation", "1", str(tuple(l.dilation)), "use an undilated (larger) kernel"))
        if len(l.destinations) > MAX_DESTINATIONS:
            V.append(Violation(name, "destinations (fan-out)", f"<= {MAX_DESTINATIONS} layers",
                               f"{len(l.destinations)} ({', '.join(d.layer for d in l.destinations)})",
                               "insert an identity relay layer, or restructure the branches"))

    neurons = [graph.nodes[l.neuron] for l in net.layers.values() if l.neuron]
    if neurons:
        ds = sorted({n.max_spikes for n in neurons})
        W.append(f"Speck has no spike budget: a neuron can fire more than D={'/'.join(map(str, ds))} spikes "
                 f"(the integer model clips at D); verify --target speck measures how often")
    ties = [l.neuron for l in net.layers.values() if l.neuron and graph.nodes[l.neuron].rounding == "half_even"]
    if ties:
        W.append(f"neurons {', '.join(ties)} round half to even; the chip fires at v >= threshold, i.e. rounds "
                 f"exact ties up (one spike more on an exact tie)")

    mV, l2c = mp.mapping_violations(net.layers, core_map)
    V += mV
    return DRCReport(net, V, W, l2c)


def _negative_input(inputs) -> float | None:
    """The minimum of ``inputs`` if it is negative, else None (also without inputs)."""
    if inputs is None:
        return None
    x = np.asarray(inputs.detach().cpu().numpy() if hasattr(inputs, "detach") else inputs, dtype=np.float64)
    low = float(x.min()) if x.size else 0.0
    return low if low < 0 else None


def check(graph: ir.Graph, core_map: dict | None = None, inputs=None) -> list[str]:
    """Every violation as one message (layer, rule, actual value, Speck's limit, fix)."""
    return [str(v) for v in run_drc(graph.copy(), core_map, inputs).violations]


__all__ = ["run_drc", "check", "DRCReport", "INPUT"]
