"""Chip probes: a tiny Speck configuration + event sequence for each chip behaviour the layer barrier
relies on, with the outcome our Speck simulator expects.

    python -m neurodeploy.targets.speck.probe OUT_DIR            write OUT_DIR/probes.json + one file per probe
    python -m neurodeploy.targets.speck.probe OUT_DIR --run      also run them on a Speck (real samna only)

A probe file (``format`` = "neurodeploy.speck.probe", ``format_version`` 1) holds ``config`` (our
``speck_config.json`` format, every core monitored) and ``samples``: for each, the host applies the
configuration (which writes ``neurons_initial_value``), then sends ``events`` ``[core, x, y,
feature, timestamp_us]``; ``expected_output`` lists the output events ``[core, x, y, feature,
index of the input event that caused it]`` and ``expected_counts`` the spikes per
``"core:x:y:feature"``. The chip's own output timestamps cannot be matched to ours, so the runner
compares counts; every probe is built so that the behaviour under test changes the counts (each
file says what another outcome would mean).

Expected outcomes come from the shared event engine under the chip's rules (``simulate_probe``:
rule 'single', depth first, 16-bit / threshold_low saturation, no spike budget, a neuron fires
only on an input event). An event the host sends to a core other than the input core is delivered
with that core's weight column for its feature — the same model as the barrier's gate events.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ... import ir
from ...artifacts import dumps_json, atomic_write
from ...errors import NeurodeployError
from . import drc
from . import mapping as mapping_mod
from .config import build_config
from .examples import chain
from .quantize import SpeckQuantizationWarning, quantize

FORMAT = "neurodeploy.speck.probe"
FORMAT_VERSION = 1
T0_US = 1000  # first event 1 ms after the configuration was applied
DT_US = 1000  # events 1 ms apart: each is fully processed before the next
SINABS_TIPS = "sinabs docs, Speck 'Troubleshooting and Tips' (docs/speck/faqs/tips_for_training.md)"


@dataclass
class Probe:
    name: str
    behaviour: str
    barrier_use: str
    status: str  # 'documented' | 'assumed'
    source: str
    otherwise: str  # what a different outcome would mean
    graph: ir.Graph  # Speck-quantised (scale 1: the integers below are the chip's)
    samples: list  # [[(core_of_layer_or_int, feature), ...]] host events per sample
    extra_features: dict = field(default_factory=dict)  # layer -> weights per neuron of one host-only input feature
    first_event_us: int = T0_US


def _layer(weights, theta: float, initial=None, low=None):
    return dict(w=np.asarray(weights, dtype=np.float64), theta=theta, initial=initial, low=low)


def _graph(layers: list) -> ir.Graph:
    """A chain of Linear+IF layers with the given integer weights, thresholds and per-neuron initial
    values (carried by the bias, which ``bias_mode='initial'`` folds into ``neurons_initial_value``)."""
    g = chain([l["w"] for l in layers], in_shape=(layers[0]["w"].shape[1],),
              thresholds=[l["theta"] for l in layers], v_init=[0.0] * len(layers), D=1)
    for i, l in enumerate(layers):
        if l["initial"] is not None:
            g.nodes[f"fc{i}"].bias = np.asarray(l["initial"], dtype=np.float64)
    low = {f"fc{i}": l["low"] for i, l in enumerate(layers) if l["low"] is not None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpeckQuantizationWarning)
        return quantize(g, scales={f"fc{i}": 1.0 for i in range(len(layers))}, low_threshold=low or None)


def probes() -> list[Probe]:
    """Every chip behaviour the barrier relies on, one probe each (hand-derived numbers in the docstrings
    of the tests: tests/test_speck_probe.py)."""
    one = [("fc0", 0)]
    return [
        Probe("initial_value_kept", "each neuron starts from its own neurons_initial_value, kept (no leak) until "
              "its first input event; applying the configuration again before a sample rewrites the state",
              "the hold: every neuron starts far below threshold by its own held value, rewritten by the host "
              "before each sample", "assumed",
              "neurons_initial_value is a documented per-neuron configuration field ([f][x][y], sinabs "
              "chips/dynapcnn.py make_config); that applying it sets the live state is assumed (sinabs' "
              "DynapcnnNetwork.reset_states also erases v_mem with set_all_v_mem_to_zeros, 'shouldn't be "
              "necessary ideally')",
              "0 spikes: the initial values were not applied (state 0); sample 2 differing from sample 1: the "
              "host cannot rewrite the state by applying the configuration",
              _graph([_layer([[1], [1], [1]], 10, initial=[9, 5, -5])]), [one * 15, one * 15],
              first_event_us=1_000_000),
        Probe("one_spike_per_event", "a neuron emits at most one spike per input event, and a neuron left above "
              "threshold stays silent until its next input event",
              "the release: each gate event lifts a neuron by at most θ, so it fires once per event; counts are "
              "read as one spike per release round", "documented",
              f"{SINABS_TIPS}, section 'Weight Clipping During Training'",
              "more than 2 spikes: the chip emits several spikes per event (floor(v/θ)), as sinabs' MultiSpike",
              _graph([_layer([[25]], 10)]), [one * 2]),
        Probe("subtractive_reset", "after a spike the state is reduced by threshold_high (return_to_zero=False)",
              "a neuron's residue below θ carries over between release rounds: count = floor((x + v0)/θ)",
              "documented", f"{SINABS_TIPS}, section 'The Reset Mechanism Of Neuron Membrane Potential'",
              "2 spikes: the state is reset to 0 after a spike", _graph([_layer([[6]], 10)]), [one * 5]),
        Probe("fires_at_threshold", "a neuron fires when v >= threshold_high (equality included)",
              "ties: round-half-up needs v = θ exactly to fire", "assumed",
              "sinabs docs say 'goes above the spiking threshold' (tips_for_training.md) without settling the "
              "tie; sinabs' IAF fires at v >= threshold", "0 spikes: the chip fires only at v > threshold_high",
              _graph([_layer([[5]], 10)]), [one * 2]),
        Probe("threshold_low_saturation", "the state never goes below threshold_low (it saturates there)",
              "the hold plus negative partial sums must not wrap; the barrier bounds them above threshold_low",
              "assumed", "threshold_low is a documented configuration field (sinabs chips/dynapcnn.py writes "
              "min_v_mem to it); saturation rather than a wrap or a reset is assumed",
              "0 spikes: the state went below threshold_low (no floor); other counts: it wraps or resets",
              _graph([_layer([[15, -15]], 10, low=-20)]), [[("fc0", 1), ("fc0", 1), ("fc0", 0), ("fc0", 0)]]),
        Probe("state_saturates_at_16_bits", "the state saturates at the top of the signed 16-bit range (32767)",
              "the release lifts held neurons by up to the hold; a state that wrapped would lose the count",
              "assumed", "the 16-bit state is documented (samna Speck key features); saturation rather than a "
              "wrap or a wider accumulator is assumed",
              "0 spikes: the state wraps around; 2 spikes: the state is wider than 16 bits",
              _graph([_layer([[127]], 32767)]), [one * 517]),
        Probe("host_event_to_any_core", "the host may send an input event to any core, on any of its input "
              "features — also one that no source layer produces (an extra 'gate' feature)",
              "the gate events: the host releases each layer through an extra input feature of its core",
              "documented", "sinabs ChipFactory.raster_to_events(raster, layer=...) builds Spike events for any "
              "layer (core) (chip_factory.py); an input feature beyond the source's features is assumed",
              "no spike on the second core: host events reach only the input core, or the extra feature is "
              "ignored; a spike on the first core: events are routed by feature, not by core",
              _graph([_layer([[1]], 10), _layer([[5]], 10)]), [[("fc1", 1), ("fc1", 0), ("fc1", 0), ("fc0", 0)]],
              extra_features={"fc1": [10]}),
        Probe("zero_and_negative_weight_events", "an event whose weight is 0 or negative still makes the neuron "
              "check its threshold; a neuron set above threshold by its initial value stays silent until an "
              "event reaches it", "partial sums: an event may lower a neuron that is above threshold; zero-weight "
              "gate entries reach neurons that must not change", "assumed",
              "not documented (the one-spike rule in tips_for_training.md speaks of input spikes, not weights)",
              "sample 2 with 0 spikes: zero-weight synapses are skipped (no threshold check); sample 1 with 0 "
              "spikes: negative events never trigger a spike; sample 3 with a spike: neurons fire without input",
              _graph([_layer([[0, -3]], 10, initial=[15])]), [[("fc0", 1)], [("fc0", 0)], []]),
        Probe("events_in_order", "a core processes its input events in the order the host sends them",
              "the barrier's phases: a layer's release must come after all of its input", "assumed",
              "not documented (the chip is asynchronous; the host stream is ordered by timestamp)",
              "sample 1 with 0 spikes or sample 2 with 1: the events were reordered",
              _graph([_layer([[15, -15]], 10)]), [[("fc0", 0), ("fc0", 1)], [("fc0", 1), ("fc0", 0)]]),
    ]


def _mapping(graph: ir.Graph):
    rep = drc.run_drc(graph.copy())
    rep.raise_if_failed()
    mem = {n: mapping_mod.layer_memory(l) for n, l in rep.net.layers.items()}
    return rep.net, mapping_mod.CoreMapping(rep.layer_to_core, mem)


def probe_config(p: Probe) -> dict:
    """The probe's ``speck_config.json`` dict: every core monitored, host-only features appended."""
    net, m = _mapping(p.graph)
    conf = build_config(p.graph, net, m, bias_mode="initial", samna_status={"note": "chip probe"})
    for core in conf["cores"].values():
        core["monitor_enable"] = True
    for lname, column in p.extra_features.items():
        core = conf["cores"][str(m.layer_to_core[lname])]
        w = np.asarray(core["weights"], np.int64)  # [f][c][x][y]
        extra = np.asarray(column, np.int64).reshape(-1, 1, 1, 1) * np.ones((1, 1) + w.shape[2:], np.int64)
        core["weights"] = np.concatenate([w, extra], 1).tolist()
        core["dimensions"]["input_shape"]["feature_count"] = int(w.shape[1] + 1)
    return conf


def _events(p: Probe, sample: list, l2c: dict) -> list:
    return [[int(l2c[lname]), 0, 0, int(f), p.first_event_us + i * DT_US] for i, (lname, f) in enumerate(sample)]


def simulate_probe(p: Probe) -> list[list]:
    """Expected output events of each sample: [core, x, y, feature, index of the causing input event]."""
    from ...engine import EventEngine
    from .simulate import speck_engine_graph

    net, m = _mapping(p.graph)
    l2c = m.layer_to_core
    first = next(iter(net.layers))
    gates, gate_of = [], {}
    for lname, l in net.layers.items():  # every (core, feature) a host event can address
        w = np.asarray(p.graph.nodes[lname].weight_q, np.int64)
        columns = [w[:, c] for c in range(w.shape[1])]
        if lname in p.extra_features:
            columns.append(np.asarray(p.extra_features[lname], np.int64))
        for c, col in enumerate(columns):
            gate_of[(lname, c)] = len(gates)
            gates.append((l.neuron, col))
    eng = EventEngine(speck_engine_graph(p.graph), rule="single", order="depth", saturate=True, max_spikes=1000,
                      start_tick=False, gates=gates)
    out = []
    for sample in p.samples:
        codes = [f if lname == first else int(EventEngine.gate_code(gate_of[(lname, f)], 0)) for lname, f in sample]
        r = eng.run(None, stream=(np.asarray(codes, np.int64), np.arange(len(codes), dtype=np.int64)),
                    record_events=True)
        rows = []
        for lname, l in net.layers.items():
            for e in r.events[l.neuron]:
                rows.append((int(e["seq"]), [int(l2c[lname]), int(e["x"]), int(e["y"]), int(e["c"]), int(e["t"])]))
        out.append([row for _, row in sorted(rows)])
    return out


def _counts(events: list) -> dict:
    counts: dict = {}
    for core, x, y, f, *_ in events:
        key = f"{core}:{x}:{y}:{f}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def probe_document(p: Probe) -> dict:
    conf = probe_config(p)
    expected = simulate_probe(p)
    l2c = conf["layer_to_core"]
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": p.name, "behaviour": p.behaviour,
        "barrier_relies_on_it_for": p.barrier_use, "status": p.status, "source": p.source,
        "if_the_chip_differs": p.otherwise,
        "procedure": "for each sample: apply the configuration (writes neurons_initial_value), wait 1 s, send "
                     "the events (timestamps in µs after the start), collect output events of every core until "
                     "none arrive for 0.5 s, compare the counts per core:x:y:feature",
        "config": conf,
        "samples": [{"events": _events(p, s, l2c), "expected_output": e, "expected_counts": _counts(e)}
                    for s, e in zip(p.samples, expected)],
    }


def write_probes(out_dir: str | Path) -> list[Path]:
    """Write one JSON file per probe and an index ``probes.json``; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, index = [], []
    for p in probes():
        doc = probe_document(p)
        paths.append(atomic_write(out / f"probe_{p.name}.json", dumps_json(doc)))
        index.append({"name": p.name, "file": paths[-1].name, "status": p.status, "behaviour": p.behaviour})
    paths.append(atomic_write(out / "probes.json", dumps_json({"format": FORMAT + ".index",
                                                               "format_version": FORMAT_VERSION, "probes": index})))
    return paths


# -- on a chip (real samna only) ------------------------------------------------------------------

def run_on_chip(out_dir: str | Path, device: str = "speck2fdevkit:0") -> list[dict]:
    """Apply every probe of ``out_dir`` to a connected Speck and compare the output counts.

    Imports samna only after ``samna_available()`` said a real (compiled) samna is installed."""
    import json

    from .config import import_samna, to_samna
    samna = import_samna("run the probes on a chip",
                         fix="install SynSense's samna (with its compiled modules) on the machine the Speck "
                             "is connected to, then run with --run")
    dev = _open_device(samna, device)
    results = []
    for entry in json.loads((Path(out_dir) / "probes.json").read_text())["probes"]:
        doc = json.loads((Path(out_dir) / entry["file"]).read_text())
        cfg, (valid, msg) = to_samna(doc["config"])
        if not valid:
            results.append({"name": doc["name"], "ok": False, "detail": f"samna refused the configuration: {msg}"})
            continue
        got = [_run_sample(samna, dev, cfg, s["events"]) for s in doc["samples"]]
        want = [s["expected_counts"] for s in doc["samples"]]
        results.append({"name": doc["name"], "ok": got == want, "expected": want, "measured": got,
                        "if_different": doc["if_the_chip_differs"]})
    return results


def _open_device(samna, device: str):
    """As sinabs' backend/dynapcnn/io.py open_device: the n-th device of that type."""
    kind, _, idx = device.partition(":")
    names = {"speck2fdevkit": "Speck2fDevKit", "speck2fmodule": "Speck2fModuleDevKit"}
    found = sorted((d for d in samna.device.get_all_devices() if d.device_type_name == names.get(kind, kind)),
                   key=lambda d: d.usb_device_address)
    if len(found) <= int(idx or 0):
        raise NeurodeployError(f"no device {device} connected", fix="connect the Speck dev kit, or pass --device")
    return samna.device.open_device(found[int(idx or 0)])


def _run_sample(samna, dev, cfg, events: list) -> dict:
    """Apply the configuration (rewrites the initial states), send the events, count the output."""
    model = dev.get_model()
    model.apply_configuration(cfg)
    time.sleep(1.0)
    source = samna.BasicSourceNode_speck2f_event_input_event()
    sink = samna.BasicSinkNode_speck2f_event_output_event()
    graph_in, graph_out = samna.graph.EventFilterGraph(), samna.graph.EventFilterGraph()
    graph_in.sequential([source, model.get_sink_node()])
    graph_out.sequential([model.get_source_node(), sink])
    graph_in.start()
    graph_out.start()
    try:
        sink.get_events()
        dev.get_stop_watch().reset()
        dev.get_stop_watch().start()
        spikes = []
        for core, x, y, f, t in events:
            ev = samna.speck2f.event.Spike()
            ev.layer, ev.x, ev.y, ev.feature, ev.timestamp = core, x, y, f, t
            spikes.append(ev)
        source.write(spikes)
        time.sleep((events[-1][4] if events else 0) * 1e-6 + 0.1)
        received = []
        while True:
            new = [e for e in sink.get_events() if isinstance(e, samna.speck2f.event.Spike)]
            if not new:
                break
            received += new
            time.sleep(0.5)
        return _counts([[e.layer, e.x, e.y, e.feature] for e in received])
    finally:
        dev.get_stop_watch().stop()
        graph_in.stop()
        graph_out.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write (and with --run, run on a Speck) the chip probes of the "
                                             "behaviours neurodeploy's layer barrier relies on.")
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--run", action="store_true", help="apply the probes to a connected Speck (needs real samna)")
    ap.add_argument("--device", default="speck2fdevkit:0", help="samna device, as sinabs names it")
    a = ap.parse_args(argv)
    try:
        paths = write_probes(a.out_dir)
        print(f"wrote {len(paths) - 1} probes and probes.json into {a.out_dir}/")
        for p in probes():
            print(f"  {p.name:<34} {p.status:<11} {p.behaviour}")
        if not a.run:
            return 0
        results = run_on_chip(a.out_dir, a.device)
    except NeurodeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in results:
        print(f"  {'OK  ' if r['ok'] else 'DIFF'} {r['name']}" + ("" if r["ok"] else
              f": expected {r.get('expected')}, measured {r.get('measured')} — {r.get('if_different', r.get('detail'))}"))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
