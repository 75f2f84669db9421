"""The host side of Speck's layer barrier: the versioned host program and the per-sample event stream.

``speck_host_program.json`` (``format`` = "neurodeploy.speck.host_program", ``format_version`` 1)
says what the host does for every sample (see ``barrier`` for why it is exact):

1. rewrite every core's ``neurons_initial_value`` with the held values of ``speck_config.json``
   (sinabs' device ``reset_states()`` sets the states to 0, which would erase the hold);
2. send the input events (round-robin, as ``events.raster_to_events``) to the input cores;
3. for each layer in topological order, once every event of its input has been delivered (a
   sequence point: the previous phase's last timestamp + ``gap_us``), send its release: per round
   one event on a gate feature of that layer's core at each gate position (x, y).

``sample_event_stream(artefact, raster)`` turns one sample into that full stream (structured
``events.EVENT_DTYPE`` rows: core, x, y, feature, timestamp) for samna; the simulator runs the same
stream (``stream_to_engine`` maps it back to engine addresses and gate codes).
"""

from __future__ import annotations

import numpy as np

from ... import ir
from ...errors import NeurodeployError
from .barrier import BarrierPlan
from .events import EVENT_DTYPE, raster_to_events

FORMAT = "neurodeploy.speck.host_program"
FORMAT_VERSION = 1
GAP_US = 1000  # assumed: the chip delivers every event of a phase within this gap (see README)


def apply_barrier(config: dict, graph: ir.Graph, plan: BarrierPlan) -> dict:
    """Add the gate features and held initial values to a ``speck_config.json`` dict (in place)."""
    l2c = config["layer_to_core"]
    for lname, lb in plan.layers.items():
        core = config["cores"][str(l2c[lname])]
        w = np.asarray(core["weights"], np.int64)  # [f][c][x][y]
        F, C, kx, ky = w.shape
        extra = np.zeros((F, len(lb.gates), kx, ky), np.int64)
        for j, g in enumerate(lb.gates):
            extra[:, j] = g.weights[:, None, None]  # every tap: see barrier.gate_cover
        core["weights"] = np.concatenate([w, extra], 1).tolist()
        core["dimensions"]["input_shape"]["feature_count"] = int(C + len(lb.gates))
        core["neurons_initial_value"] = plan.held_initial_values(graph, lname).transpose(0, 2, 1).tolist()
    config["barrier"] = {"bounds": plan.bounds, "input_bound": plan.input_bound, "notes": plan.notes,
                         "layers": plan.summary()}
    return config


def host_program(config: dict, plan: BarrierPlan, *, gap_us: int = GAP_US, dt_us: int = 1) -> dict:
    """The versioned host program of a barrier artefact (JSON-able)."""
    l2c = config["layer_to_core"]
    phases = []
    for lname, lb in plan.layers.items():
        phases.append({"layer": lname, "core": int(l2c[lname]),
                       "after": "all events of this layer's input delivered (sequence point)",
                       "rounds": [{"feature": int(f), "weights_per_channel": [int(v) for v in w]}
                                  for f, w in lb.schedule()],
                       "positions_xy": [[int(x), int(y)] for y, x in lb.gate_positions],
                       "events": lb.host_events})
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "before_each_sample": {"write_neurons_initial_value": {c: "cores[c].neurons_initial_value of speck_config.json"
                                                               for c in sorted(config["cores"], key=int)},
                               "why": "sinabs' reset_states() zeroes the states; the held initial values must "
                                      "be rewritten before every sample"},
        "input": {"cores": [d["core"] for d in config["input"]["destinations"]],
                  "order": config["input"]["order"], "dt_us": dt_us},
        "release": phases, "gap_us": gap_us, "dt_us": dt_us,
        "host_events_per_sample": plan.host_events(),
    }


def sample_event_stream(artefact: dict, raster, *, seed: int | None = None) -> np.ndarray:
    """All events of one sample (input, then each layer's release) for samna or the simulator.

    ``artefact``: {"config": speck_config dict, "host_program": host program dict}. ``raster``: the
    sample's integer input counts. ``seed``: shuffle the input events and the positions within each
    release round (another valid interleaving)."""
    conf, prog = artefact["config"], artefact["host_program"]
    rng = np.random.default_rng(seed) if seed is not None else None
    bound = conf.get("barrier", {}).get("input_bound")
    r = np.asarray(raster)
    if bound is not None and r.max(initial=0) > bound:
        raise NeurodeployError(f"the sample has {int(r.max())} events at one pixel; the barrier's hold assumes "
                               f"at most {bound}", fix="clip the input counts or plan the barrier with a larger "
                               "input_bound")
    dt, gap = int(prog["dt_us"]), int(prog["gap_us"])
    parts = []
    t = 0
    for d in conf["input"]["destinations"]:
        ev = raster_to_events(r if d["pooling"] == 1 else _pool(r, d["pooling"]), core=d["core"], dt_us=dt)
        if rng is not None:
            ev = ev[rng.permutation(len(ev))]
        parts.append(ev)
        t = max(t, int(ev["timestamp"].max(initial=-dt)) + dt)
    for ph in prog["release"]:
        t += gap
        pos = np.asarray(ph["positions_xy"], np.int64).reshape(-1, 2)
        for rnd in ph["rounds"]:
            order = rng.permutation(len(pos)) if rng is not None else np.arange(len(pos))
            ev = np.empty(len(pos), EVENT_DTYPE)
            ev["core"], ev["x"], ev["y"] = ph["core"], pos[order, 0], pos[order, 1]
            ev["feature"], ev["timestamp"] = rnd["feature"], t
            parts.append(ev)
            t += dt
    return np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)


def _pool(raster, p: int) -> np.ndarray:
    c, h, w = raster.shape
    return raster.reshape(c, h // p, p, w // p, p).sum((2, 4))


def barrier_artefact(graph: ir.Graph, plan: BarrierPlan | None = None, *, core_map: dict | None = None,
                     bias_mode: str = "initial", **plan_options) -> dict:
    """{"config", "host_program", "plan"} of a Speck-quantised graph: what ``compile`` writes."""
    from . import drc
    from .barrier import plan_barrier
    from .config import build_config
    from .mapping import CoreMapping

    if bias_mode != "initial":
        raise NeurodeployError("the layer barrier needs the bias in the initial value (bias_mode='initial'): a "
                               "leak bias keeps acting while the neurons are held", fix="use bias_mode='initial'")
    from .barrier import barrier_core_map
    rep = drc.run_drc(graph.copy(), core_map)
    rep.raise_if_failed()
    plan = plan or plan_barrier(graph, **plan_options)
    rep = drc.run_drc(graph.copy(), barrier_core_map(rep.net, plan, core_map))
    rep.raise_if_failed()
    conf = build_config(graph, rep.net, CoreMapping(rep.layer_to_core, {}), bias_mode=bias_mode)
    apply_barrier(conf, graph, plan)
    return {"config": conf, "host_program": host_program(conf, plan), "plan": plan}


def engine_gates(artefact: dict) -> tuple[list, dict]:
    """The gate features as the artefact writes them: ([(neuron, weights, coverage)] for
    ``EventEngine(gates=)``, {(core, feature): (gate index, {(y, x): event index})}). The weights come
    from the host program's rounds; which outputs an event at (y, x) reaches from the gate column of
    the core's kernel and its stride / padding (output (oy, ox) through tap (y + p - oy·s, ...))."""
    conf, prog = artefact["config"], artefact["host_program"]
    gates, ids = [], {}
    for ph in prog["release"]:
        core = conf["cores"][str(ph["core"])]
        w = np.asarray(core["weights"])  # [f][c][x][y]
        dims = core["dimensions"]
        sy, sx, py, px = dims["stride"]["y"], dims["stride"]["x"], dims["padding"]["y"], dims["padding"]["x"]
        ho, wo = dims["output_shape"]["size"]["y"], dims["output_shape"]["size"]["x"]
        pos = [(int(y), int(x)) for x, y in ph["positions_xy"]]
        for rnd in ph["rounds"]:
            key = (int(ph["core"]), int(rnd["feature"]))
            if key in ids:
                continue
            taps = np.any(w[:, rnd["feature"]] != 0, axis=0)  # [kx][ky]
            cover = []
            for y, x in pos:
                cover.append(np.array([oy * wo + ox for oy in range(ho) for ox in range(wo)
                                       if 0 <= y + py - oy * sy < taps.shape[1] and 0 <= x + px - ox * sx < taps.shape[0]
                                       and taps[x + px - ox * sx, y + py - oy * sy]], np.int64))
            ids[key] = (len(gates), {p: e for e, p in enumerate(pos)})
            gates.append((core["neuron"], np.asarray(rnd["weights_per_channel"], np.int64), cover))
    return gates, ids


def stream_to_engine(events: np.ndarray, artefact: dict, gate_ids: dict) -> tuple:
    """(codes, timestamps) for ``EventEngine.run(stream=...)``: input events of the first input core
    become flat input addresses, gate events ``gate_code(gate, event index)``; events of other
    input cores are the same input pooled (the engine routes the input to every destination)."""
    from ...engine import EventEngine
    conf = artefact["config"]
    dests = conf["input"]["destinations"]
    in_core = dests[0]["core"]
    if dests[0]["pooling"] != 1:
        raise NeurodeployError("the simulator takes the input at its first destination without pooling",
                               fix="not supported: a pooled first input destination")
    C, H, W = conf["input"]["shape"]
    ev = np.asarray(events)
    codes = np.full(len(ev), np.iinfo(np.int64).max, np.int64)
    core = ev["core"].astype(np.int64)
    feat = ev["feature"].astype(np.int64)
    is_in = (core == in_core) & (feat < C)
    codes[is_in] = (feat[is_in] * H + ev["y"][is_in]) * W + ev["x"][is_in]
    for (c, f), (gid, index) in gate_ids.items():
        sel = np.flatnonzero((core == c) & (feat == f))
        if sel.size:
            e = [index.get((int(ev["y"][i]), int(ev["x"][i])), -1) for i in sel]
            if min(e) < 0:
                raise NeurodeployError(f"a gate event of core {c} at a position outside the host program")
            codes[sel] = EventEngine.gate_code(gid, np.array(e, np.int64))
    keep = codes != np.iinfo(np.int64).max
    other = ~keep & ~np.isin(core, [d["core"] for d in dests[1:]])
    if np.any(other):
        raise NeurodeployError(f"{int(other.sum())} events of the stream address no input or gate feature")
    return codes[keep], ev["timestamp"][keep].astype(np.int64)


def load_artefact(folder) -> dict:
    """{"config", "host_program"} of a compiled Speck folder (``speck_config.json`` +
    ``speck_host_program.json``)."""
    import json
    from pathlib import Path
    folder = Path(folder)
    out = {}
    for key, name, fmt in (("config", "speck_config.json", "neurodeploy.speck.config"),
                           ("host_program", "speck_host_program.json", FORMAT)):
        path = folder / name
        if not path.exists():
            raise NeurodeployError(f"{path} is missing", fix="compile with --target speck (barrier on, the default)")
        d = json.loads(path.read_text())
        if d.get("format") != fmt:
            raise NeurodeployError(f"{path} is not a {fmt} file")
        if key == "host_program" and d.get("format_version") != FORMAT_VERSION:
            raise NeurodeployError(f"{path}: host program version {d.get('format_version')}, this neurodeploy reads "
                                   f"{FORMAT_VERSION}", fix="recompile the model")
        out[key] = d
    return out


def input_raster(config: dict, x) -> np.ndarray:
    """One sample's integer input counts as the artefact codes them (``round(x · scale_q)`` for a
    real-valued input, the counts themselves for spikes), shaped (C, H, W)."""
    from .events import as_counts
    inp = config["input"]
    a = np.asarray(x, np.float64).reshape(inp["shape"])
    if not inp["is_spikes"]:
        a = np.round(a * float(inp["scale_q"]))
    return as_counts(a)


def run_on_chip(folder, x, *, device: str = "speck2fdevkit:0") -> list[dict]:
    """Run the samples ``x`` [B, *input_shape] through a connected Speck with the artefact of
    ``folder``: per sample apply the configuration (which writes the held ``neurons_initial_value``),
    send ``sample_event_stream`` and count the monitored output events; returns per sample
    {layer: counts array [F, H, W]}. Needs SynSense's real samna (imported only then)."""
    from .config import import_samna, to_samna
    from .probe import _open_device, _run_sample
    samna = import_samna("run on a chip",
                         fix="install SynSense's samna on the machine the Speck is connected to; without it "
                             "simulate the same stream with simulate.simulate_barrier")
    art = load_artefact(folder)
    cfg, (valid, msg) = to_samna(art["config"])
    if not valid:
        raise NeurodeployError(f"samna refused the configuration: {msg}")
    dev = _open_device(samna, device)
    outputs = art["config"]["output"]["layers"]
    results = []
    for sample in np.asarray(x):
        ev = sample_event_stream(art, input_raster(art["config"], sample))
        rows = [(int(e["core"]), int(e["x"]), int(e["y"]), int(e["feature"]), int(e["timestamp"])) for e in ev]
        counts = _run_sample(samna, dev, cfg, rows)
        per_layer = {}
        for lname, o in outputs.items():
            F, H, W = (list(o["shape"]) + [1, 1])[:3]
            r = np.zeros((F, H, W), np.int64)
            for key, n in counts.items():
                core, cx, cy, f = (int(v) for v in key.split(":"))
                if core == o["core"]:
                    r[f, cy, cx] += n
            per_layer[lname] = r
        results.append(per_layer)
    return results
