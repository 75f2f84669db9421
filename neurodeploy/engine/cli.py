"""CLI pieces of the event engine, registered by ``neurodeploy.cli`` on the main group:

* ``neurodeploy route OUT_DIR --layer N|NAME --address c,y,x``: destinations of one address from
  ``OUT_DIR/routing.npz`` (written by ``compile --emit routing``);
* ``neurodeploy simulate OUT_DIR --data x.npz --engine event|sync``: run a compiled graph
  (``OUT_DIR/graph.ir.npz``) with the event engine (:func:`simulate_events_cli`) or the
  layer-synchronous simulator.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from ..errors import NeurodeployError


def _parse_address(_ctx, _param, value):
    try:
        parts = [int(v) for v in value.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an address like 0,3,4") from None
    if not 1 <= len(parts) <= 3:
        raise click.BadParameter("an address is c,y,x (or c,x for 1-D layers, or a flat index)")
    return parts[0] if len(parts) == 1 else tuple(parts)


def _routing_path(out_dir) -> Path:
    p = Path(out_dir)
    return p if p.suffix == ".npz" else p / "routing.npz"


def manifest_option(f):
    """``--verify-manifest/--no-verify-manifest`` for commands that run a compiled output folder."""
    return click.option("--verify-manifest/--no-verify-manifest", default=True, show_default=True,
                        help="Check every artefact against the sha256 hashes in OUT_DIR/manifest.json "
                        "before running it.")(f)


def check_artifacts(folder, needed, verify: bool) -> None:
    """Refuse a folder whose artefacts differ from its manifest (or say on stderr that we did not look)."""
    from ..artifacts import verify_manifest

    if verify:  # a needed file that is absent is left to the loader, whose message says what the folder lacks
        verify_manifest(folder, [n for n in needed if (Path(folder) / n).exists()])
    else:
        click.echo(f"warning: --no-verify-manifest: the artefacts in {folder} are not checked against "
                   "manifest.json", err=True)


def format_destinations(table, address, dests) -> str:
    lines = [f"layer {table.index} '{table.name}' ({table.kind}), source address {address}: "
             f"{len(dests)} destination(s)"]
    lines.append(f"{'c':>6} {'y':>5} {'x':>5} {'weight_index':>13} {'weight':>10}")
    for d in dests:
        w = d["weight"]
        ws = f"{int(w)}" if float(w).is_integer() else f"{w:.6g}"
        lines.append(f"{d['c']:>6} {d['y']:>5} {d['x']:>5} {d['weight_index']:>13} {ws:>10}")
    return "\n".join(lines)


@click.command("route")
@click.argument("out_dir", type=click.Path(exists=True))
@click.option("--layer", "layer", required=True, help="Routing layer: index (topological order among "
              "conv/linear/sum-pool layers) or IR node name.")
@click.option("--address", required=True, callback=_parse_address, help="Source address c,y,x in the "
              "layer's input (c,x for 1-D inputs; a single number is a flat index).")
@click.option("--json", "as_json", is_flag=True, help="Print the destinations as JSON.")
@click.option("--summary", is_flag=True, help="Also print the per-layer routing summary.")
@manifest_option
def route_cmd(out_dir, layer, address, as_json, summary, verify_manifest):
    """Print where an event at ADDRESS of a layer goes (from OUT_DIR/routing.npz)."""
    from ..routing import load_routing

    path = _routing_path(out_dir)
    check_artifacts(path.parent, [path.name], verify_manifest)
    routing = load_routing(path)
    table = routing.layer(layer)
    dests = table.destinations(address)
    if as_json:
        click.echo(json.dumps({"layer": table.name, "index": table.index, "address": address,
                               "destinations": [{k: (d[k].item()) for k in dests.dtype.names} for d in dests]},
                              indent=2))
    else:
        click.echo(format_destinations(table, address, dests))
    if summary:
        click.echo(routing.summary_text())


def _load_inputs(path, limit, input_shape=None):
    """x from an .npz: a raster batch [N, *input_shape] (checked by :func:`data.load_data`), or one
    structured event array (``events``)."""
    import numpy as np

    from ..data import load_data

    try:
        with np.load(path, allow_pickle=False) as f:
            key = "x" if "x" in f.files else ("events" if "events" in f.files else None)
            if key is None:
                raise NeurodeployError(f"{path} has arrays {f.files}, but no 'x' or 'events'",
                                       fix="np.savez(path, x=rasters) or np.savez(path, events=structured_events)")
            events = np.asarray(f[key]) if key == "events" else None
    except NeurodeployError:
        raise
    except Exception:  # noqa: BLE001 - not an .npz (e.g. a plain .npy): load_data reads or names it
        events = None
    if events is not None and events.dtype.names:
        return [events]
    return load_data(path, limit, input_shape=input_shape).x


def _check_range(graph, x) -> None:
    """Raster inputs must lie in the range the program was quantised for (both engines, as `run`)."""
    from ..data import check_input_range, quantized_input_range

    rng = quantized_input_range(graph.metadata.get("quantization"))
    if rng is not None and not isinstance(x, list):
        check_input_range(x, rng, layer=graph.input_names()[0])


def simulate_events_cli(graph, x, *, rule: str = "multi", order: str = "breadth", routing=None,
                        record_events: bool = False, progress: bool = True, compare: bool = True,
                        echo=click.echo) -> dict:
    """Run the event engine on every sample of ``x`` (raster batch or list of event arrays), print
    a per-layer table (spikes, synaptic events, mismatches against the layer-synchronous
    reference ``ops.evaluate``) and return a JSON-able report."""
    import numpy as np
    import torch

    from .. import ops
    from .core import EventEngine, stack_counts

    eng = EventEngine(graph, routing=routing, rule=rule, order=order)
    samples = list(x) if not isinstance(x, np.ndarray) or x.dtype.names is None else [x]
    t0 = time.perf_counter()
    results = eng.run_batch(samples, record_events=record_events, progress=progress)
    dt = time.perf_counter() - t0
    counts = stack_counts(results)
    syn = sum(r.synaptic_events for r in results)
    report = {"engine": "event", "rule": rule, "order": order, "samples": len(results),
              "synaptic_events": int(syn), "seconds": dt, "synaptic_events_per_s": syn / dt if dt else None,
              "input_events": int(sum(r.input_events for r in results)),
              "saturations": int(sum(r.saturations for r in results)), "layers": {}}
    ref = None
    if compare and all(isinstance(s, np.ndarray) and s.dtype.names is None for s in samples):
        ref = ops.evaluate(eng.graph, torch.as_tensor(np.stack(samples), dtype=torch.float64))
    syn_layers = {}
    for r in results:
        for k, v in r.synops.items():
            syn_layers[k] = syn_layers.get(k, 0) + v
    for name in eng.layers:
        row = {"spikes": int(counts[name].sum()), "neurons": int(np.prod(counts[name].shape[1:]))}
        if ref is not None:
            row["mismatches"] = int((counts[name] != ref[name].numpy()).sum())
        report["layers"][name] = row
    report["synops"] = syn_layers
    echo(f"event engine ({rule}, {order}): {len(results)} sample(s), {report['input_events']} input events, "
         f"{syn} synaptic events in {dt:.3f} s ({syn / dt / 1e6 if dt else 0:.1f} M/s)")
    echo(f"{'layer':<28} {'neurons':>9} {'spikes':>10}" + (f" {'≠ sync':>9}" if ref is not None else ""))
    for name, row in report["layers"].items():
        echo(f"{name:<28} {row['neurons']:>9} {row['spikes']:>10}"
             + (f" {row['mismatches']:>9}" if ref is not None else ""))
    if ref is not None:
        bad = sum(r["mismatches"] for r in report["layers"].values())
        exact = (order == "breadth")
        echo(f"layer-synchronous reference: {bad} differing spike count(s)"
             + ("" if bad == 0 or not exact else " (saturation: intermediate membranes clipped)")
             + ("" if exact else f" — ({rule}, {order}) is not exact by design; use --order breadth"))
    if record_events:
        report["events"] = [r.events for r in results]
    return report


@click.command("simulate")
@click.argument("out_dir", type=click.Path(exists=True))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help=".npz with x (rasters [N, *input_shape]) or events (one structured event stream).")
@click.option("--engine", type=click.Choice(["event", "sync"]), default="event", show_default=True)
@click.option("--rule", type=click.Choice(["multi", "single"]), default="multi", show_default=True,
              help="Event engine: spikes per neuron per input event (single = Speck).")
@click.option("--order", type=click.Choice(["breadth", "depth"]), default="breadth", show_default=True,
              help="Event engine: layer barrier (exact) or depth-first (Speck).")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@manifest_option
def simulate_cmd(out_dir, data, engine, rule, order, limit, as_json, progress, verify_manifest):
    """Simulate a compiled graph (OUT_DIR/graph.ir.npz) on --data."""
    import numpy as np

    from ..ir_io import load_graph

    p = Path(out_dir)
    graph_path = p / "graph.ir.npz" if p.is_dir() else p
    if not graph_path.exists():
        raise NeurodeployError(f"no compiled graph at {graph_path}", fix="run neurodeploy compile -o OUT_DIR first")
    routing_used = engine == "event" and (graph_path.parent / "routing.npz").exists()
    check_artifacts(graph_path.parent, [graph_path.name] + (["routing.npz"] if routing_used else []),
                    verify_manifest)
    graph = load_graph(graph_path)
    inputs = graph.input_names()
    x = _load_inputs(data, limit, graph.nodes[inputs[0]].input_shape if len(inputs) == 1 else None)
    _check_range(graph, x)
    echo = (lambda *_a, **_k: None) if as_json else click.echo
    if engine == "event":
        routing = None
        rp = graph_path.parent / "routing.npz"
        if rp.exists():
            from ..routing import load_routing
            routing = load_routing(rp)
        report = simulate_events_cli(graph, x, rule=rule, order=order, routing=routing, progress=progress,
                                     echo=echo)
    else:
        from ..simulator import simulate

        t0 = time.perf_counter()
        res = simulate(graph, x, schedule="sync", progress=progress)
        report = {"engine": "sync", "seconds": time.perf_counter() - t0,
                  "layers": {k: {"spikes": int(np.asarray(c).sum())} for k, c in res.counts.items()}}
        for k, row in report["layers"].items():
            echo(f"{k:<28} {row['spikes']:>10}")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
