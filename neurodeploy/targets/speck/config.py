"""The Speck artefact: a versioned JSON chip configuration (+ samna objects when a real samna exists).

``speck_config.json`` (``format`` = "neurodeploy.speck.config", ``format_version`` = 1)::

    {"format", "format_version", "chip": "speck2f", "samna_status": {...},
     "layer_to_core": {layer: core}, "bias_mode": "initial" | "leak",
     "input":  {"event": ["core", "x", "y", "feature", "timestamp_us"], "destinations": [{core, pooling}],
                "shape": [C, H, W], "is_spikes", "scale_q", "order": "round-robin ..."},
     "output": {"event": [...], "monitored_cores": [core], "layers": {layer: {core, neuron, shape, ...}}},
     "quantization": {...},
     "cores": {"<core>": {layer, neuron,
        weights [f][c][x][y]  (PyTorch [f][c][y][x] with x/y transposed, as sinabs' make_config),
        biases [f], leak_enable,
        dimensions {input_shape {size {x, y}, feature_count}, output_shape {...}, padding {x, y},
                    stride {x, y}, kernel_size},
        destinations [{layer: core, enable, pooling}] (at most 2),
        threshold_high, threshold_low, return_to_zero (False), monitor_enable,
        neurons_initial_value [f][x][y]}}}

Bias: with ``bias_mode='initial'`` (default) the bias is added once, through the initial membrane
(``neurons_initial_value = v_init_q + b_q``), ``biases`` are 0 and ``leak_enable`` False: no slow
clock, no leak power, and the arithmetic of ``ops.evaluate`` (a bias acts once). With
``bias_mode='leak'`` biases are written as chip biases (``leak_enable`` True) and act on every
slow-clock tick: the result then depends on how long the slow clock runs (not simulated).

samna: never imported unless a real (compiled) samna is installed (``samna_available``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ... import ir
from ...errors import NeurodeployError
from .events import EVENT_DTYPE, events_to_raster, raster_to_events  # noqa: F401  (re-exported helpers)
from .layers import SpeckNet, bias_vec, weight4
from .mapping import CoreMapping
from .quantize import MAX_BIAS_BITS

FORMAT = "neurodeploy.speck.config"
FORMAT_VERSION = 1
CHIP = "speck2f"


def samna_available() -> tuple[bool, str]:
    """Is a real samna (compiled extension modules) installed? Decided WITHOUT importing it.

    The PyPI ``samna`` is a 15 kB stub that runs pip against SynSense's index on import (hangs,
    then fails); the real one ships ``.so``/``.pyd`` extension modules.
    """
    try:
        spec = importlib.util.find_spec("samna")  # top-level: finds, does not import
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return False, "samna is not installed"
    if spec.origin and spec.origin.endswith((".so", ".pyd")):
        return True, f"samna extension module at {spec.origin}"
    for p in spec.submodule_search_locations or []:  # a package: look for compiled modules inside it
        root = Path(p)
        if root.is_dir():
            for f in root.rglob("*"):
                if f.suffix in (".so", ".pyd") or ".so." in f.name:
                    return True, f"real samna (compiled modules in {root})"
    return False, ("the installed samna is the PyPI stub (no compiled extension modules): it cannot build or "
                   "validate a configuration")


def import_samna(action: str, fix: str):
    """The real samna module, imported only after :func:`samna_available` found one; otherwise
    ``cannot {action}: {why}`` as a :class:`NeurodeployError` with ``fix``."""
    ok, why = samna_available()
    if not ok:
        raise NeurodeployError(f"cannot {action}: {why}", fix=fix)
    return importlib.import_module("samna")


def _dims(l) -> dict:
    c, h, w = l.in_shape
    f, ho, wo = l.out_shape
    return {"input_shape": {"size": {"x": int(w), "y": int(h)}, "feature_count": int(c)},
            "output_shape": {"size": {"x": int(wo), "y": int(ho)}, "feature_count": int(f)},
            "padding": {"x": int(l.padding[1]), "y": int(l.padding[0])},
            "stride": {"x": int(l.stride[1]), "y": int(l.stride[0])},
            "kernel_size": int(l.kernel[0])}


def _check_leak_biases(graph: ir.Graph, net: SpeckNet) -> None:
    """Chip biases are 8-bit (sinabs 3.1.3 discretises them like the weights): a graph quantised
    for ``bias_mode='initial'`` (bias in the 16-bit initial value) may hold wider ones."""
    q = graph.metadata.get("quantization", {})
    bits = int(q.get("bias_bits") or MAX_BIAS_BITS["leak"]) if q.get("bias_mode") == "leak" else MAX_BIAS_BITS["leak"]
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    for lname in net.layers:
        bq = bias_vec(graph.nodes[lname], quantized=True)
        if len(bq) and (bq.min() < lo or bq.max() > hi):
            raise NeurodeployError(f"bias_mode='leak' writes chip biases of {bits} bits, but the quantised biases "
                                   f"span [{int(bq.min())}, {int(bq.max())}]", layer=lname,
                                   fix="quantise with bias_mode='leak' too (compile --bias-mode leak does), or keep "
                                       "bias_mode='initial'")


def build_config(graph: ir.Graph, net: SpeckNet, mapping: CoreMapping, *, bias_mode: str = "initial",
                 samna_status: dict | None = None) -> dict:
    """The JSON-able configuration of a Speck-quantised graph (no file I/O)."""
    if bias_mode not in ("initial", "leak"):
        raise ValueError(f"bias_mode must be 'initial' or 'leak', not {bias_mode!r}")
    l2c = mapping.layer_to_core
    if bias_mode == "leak":
        _check_leak_biases(graph, net)
    cores = {}
    for lname, l in net.layers.items():
        node = graph.nodes[lname]
        neuron = graph.nodes[l.neuron]
        wq = weight4(node, l, quantized=True).astype(np.int64)  # [f][c][y][x]
        bq = bias_vec(node, quantized=True).astype(np.int64)
        f, ho, wo = l.out_shape
        v0 = int(neuron.v_init_q or 0)
        init = np.full((f, wo, ho), v0, dtype=np.int64)  # [f][x][y]
        if bias_mode == "initial":
            init += bq[:, None, None]
        cores[str(l2c[lname])] = {
            "layer": lname, "neuron": l.neuron,
            "weights": wq.transpose(0, 1, 3, 2).tolist(),  # [f][c][x][y]
            "biases": (bq if bias_mode == "leak" else np.zeros_like(bq)).tolist(),
            "leak_enable": bool(bias_mode == "leak" and np.any(bq)),
            "dimensions": _dims(l),
            "destinations": [{"layer": int(l2c[d.layer]), "enable": True, "pooling": int(d.pool)}
                             for d in l.destinations],
            "threshold_high": int(neuron.threshold_q),
            "threshold_low": int(neuron.low_threshold_q if neuron.low_threshold_q is not None else -(2 ** 15)),
            "return_to_zero": False,
            "monitor_enable": bool(l.exits),
            "neurons_initial_value": init.tolist(),
        }
    inp = graph.nodes[net.input_name]
    outputs = {}
    for lname, l in net.layers.items():
        if l.exits:
            outputs[lname] = {"core": int(l2c[lname]), "neuron": l.neuron,
                              "shape": list(graph.nodes[l.neuron].shape),
                              "outputs": [o for o, _ in l.exits],
                              "host_pooling": [int(p) for _, p in l.exits]}
    q = graph.metadata.get("quantization", {})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "chip": CHIP,
        "samna_status": samna_status or {},
        "layer_to_core": {k: int(v) for k, v in l2c.items()},
        "bias_mode": bias_mode,
        "input": {
            "event": ["core", "x", "y", "feature", "timestamp_us"],
            "shape": list(net.input_shape),
            "destinations": [{"core": int(l2c[d.layer]), "layer": d.layer, "pooling": int(d.pool)}
                             for d in net.input_destinations],
            "is_spikes": bool(inp.is_spikes),
            "scale_q": inp.scale_q,
            "encoding": ("integer counts, one event per unit" if inp.is_spikes else
                         "rate code: round(x * scale_q) events per pixel (negative values refused)"),
            "order": "round-robin: round r sends one event of every pixel with count > r, in (feature, y, x) "
                     "order, timestamp t0 + r*dt_us; send each event to every input destination core "
                     "(pooling: x//p, y//p)",
        },
        "output": {
            "event": ["core", "x", "y", "feature", "timestamp_us"],
            "monitored_cores": sorted(int(l2c[l]) for l in outputs),
            "layers": outputs,
            "decode": "events_to_raster(events of one core, neuron shape) gives spike counts; apply host_pooling "
                      "(sum) if an Output came after a SumPool2d (monitor events are unpooled)",
        },
        "quantization": {k: v for k, v in q.items() if k != "calibration"},
        "cores": cores,
    }


def to_samna(config: dict):
    """Build and validate a ``samna.speck2f`` configuration object. Only call when ``samna_available()``.

    Returns (samna config object, (ok, message)). The import happens here, never at module level.
    """
    samna = importlib.import_module("samna")  # real samna only: callers check samna_available() first
    cfg = importlib.import_module("samna.speck2f.configuration").SpeckConfiguration()
    cfg.dvs_layer.pass_sensor_events = False
    for core, c in config["cores"].items():  # as sinabs' DynapcnnConfigBuilder.write_dynapcnn_layer_config
        lay = cfg.cnn_layers[int(core)]
        lay.dimensions = c["dimensions"]
        for i, d in enumerate(c["destinations"]):
            lay.destinations[i].layer = d["layer"]
            lay.destinations[i].enable = d["enable"]
            lay.destinations[i].pooling = d["pooling"]
        for key in ("weights", "biases", "leak_enable", "threshold_high", "threshold_low", "return_to_zero",
                    "monitor_enable", "neurons_initial_value"):
            setattr(lay, key, c[key])
    ok, msg = samna.speck2f.validate_configuration(cfg)
    return cfg, (bool(ok), str(msg))


def samna_flash_binary(cfg) -> bytes:
    samna = importlib.import_module("samna")  # real samna only
    return bytes(samna.speck2f.configuration_to_flash_binary(cfg))


NO_SAMNA_TEXT = (
    "No samna configuration object, no samna validation and no flash binary were produced: {reason}. "
    "speck_config.json holds everything samna needs (per core: weights [f][c][x][y], biases, dimensions, "
    "destinations, thresholds, neurons_initial_value), checked against Speck's design rules by neurodeploy, "
    "but not by samna.speck2f.validate_configuration. On a machine with SynSense's samna, run "
    "`python -m neurodeploy.targets.speck.load speck_config.json` (builds the SpeckConfiguration, validates it "
    "and writes speck_flash.bin)."
)
