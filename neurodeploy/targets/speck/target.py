"""``SpeckTarget``: check -> quantize -> map -> emit ; simulate ; verify."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ... import ir
from ...artifacts import atomic_write, dumps_json, write_json
from ...errors import NeurodeployError
from ..base import Target
from . import config as cfgmod
from . import drc
from . import mapping as mapping_mod
from . import quantize as qmod
from . import simulate as sim


class SpeckTarget(Target):
    name = "speck"

    def check(self, graph: ir.Graph, core_map: dict | None = None, inputs=None) -> list[str]:
        return drc.check(graph, core_map, inputs)

    def warnings(self, graph: ir.Graph) -> list[str]:
        """Non-fatal remarks of the design-rule check (e.g. real-valued input is rate coded)."""
        return drc.run_drc(graph.copy()).warnings

    def quantize(self, graph: ir.Graph, calibration=None, **options) -> ir.Graph:
        """Speck quantisation; with the layer barrier (default ``barrier=True``, bias in the initial
        value) each layer's scale is the quantiser's, shrunk where the 16-bit state cannot hold the
        barrier (``barrier.quantize_for_barrier``)."""
        if _uses_barrier(options):
            from .barrier import quantize_for_barrier
            return quantize_for_barrier(graph, calibration, **_barrier_options(options),
                                        **_quantize_options(options))[0]
        return qmod.quantize(graph, calibration, **_quantize_options(options))

    def map(self, graph: ir.Graph, core_map: dict | None = None, **options) -> dict[str, Any]:
        rep = drc.run_drc(graph.copy(), core_map)
        rep.raise_if_failed()
        if graph.is_quantized and _uses_barrier(options):  # the gate features take kernel memory
            from .barrier import barrier_core_map, plan_barrier
            rep = drc.run_drc(graph.copy(), barrier_core_map(rep.net, plan_barrier(graph, **_barrier_options(options)),
                                                             core_map))
            rep.raise_if_failed()
        m = mapping_mod.CoreMapping(rep.layer_to_core, {n: mapping_mod.layer_memory(l) for n, l in rep.net.layers.items()})
        return {"layer_to_core": m.layer_to_core, "memory": m.memory,
                "report": mapping_mod.memory_report(rep.net.layers, m)}

    def barrier_cost(self, graph: ir.Graph, core_map: dict | None = None, **options) -> dict | None:
        """The layer barrier's cost on the chip (``barrier.barrier_cost``: host gate events, extra
        features and kernel memory per core, gate SynOps) for a graph quantised for it, else None."""
        if not (graph.is_quantized and _uses_barrier(options) and "barrier" in graph.metadata):
            return None
        from . import barrier as bmod
        plan = bmod.plan_barrier(graph, **_barrier_options(options))
        layer_to_core = self.map(graph, core_map, **options)["layer_to_core"]
        return bmod.barrier_cost(drc.run_drc(graph.copy(), core_map).net, layer_to_core, plan)

    def emit(self, graph: ir.Graph, out_dir: Path, *, core_map: dict | None = None, bias_mode: str = "initial",
             calibration=None, mapping: dict | None = None, **options) -> dict[str, Path]:
        """Write ``speck_config.json``, ``core_map.json``, ``memory_report.txt`` (+ samna files).

        Everything is computed and checked before the first file is written: a network that does
        not fit raises :class:`DesignRuleError` listing every violation and leaves no artefact.
        """
        g = graph.copy()
        ir.infer_shapes(g)
        rep = drc.run_drc(g.copy(), core_map)
        rep.raise_if_failed()
        if not g.is_quantized or g.metadata["quantization"].get("target") != "speck":
            g = self.quantize(g, calibration, bias_mode=bias_mode, **options)
        plan = None
        if _uses_barrier({**options, "bias_mode": bias_mode}):
            from . import barrier as bmod
            plan = bmod.plan_barrier(g, **_barrier_options(options))  # raises, naming a layer that cannot hold it
            rep = drc.run_drc(g.copy(), bmod.barrier_core_map(rep.net, plan, core_map))
            rep.raise_if_failed()
        if mapping and mapping.get("layer_to_core") not in (None, rep.layer_to_core):
            raise NeurodeployError("the mapping given to emit differs from the one the design-rule check finds",
                                   fix="pass the same core_map to map() and emit()")
        m = mapping_mod.CoreMapping(rep.layer_to_core, {n: mapping_mod.layer_memory(l) for n, l in rep.net.layers.items()})
        ok, why = cfgmod.samna_available()
        status = {"samna_available": ok, "detail": why}
        conf = cfgmod.build_config(g, rep.net, m, bias_mode=bias_mode, samna_status=status)
        program = None
        if plan is not None:
            from . import host
            host.apply_barrier(conf, g, plan)
            program = host.host_program(conf, plan)
            conf["barrier"]["cost"] = program["cost"] = bmod.barrier_cost(rep.net, m.layer_to_core, plan)
        samna_files: dict[str, bytes | str] = {}
        if ok:
            scfg, (valid, msg) = cfgmod.to_samna(conf)
            status.update(validated=valid, validation_message=msg)
            if not valid:
                raise NeurodeployError(f"samna.speck2f.validate_configuration rejected the configuration: {msg}",
                                       fix="report this: neurodeploy's design-rule check should have caught it")
            samna_files["speck_flash.bin"] = cfgmod.samna_flash_binary(scfg)
            samna_files["samna_config.json"] = scfg.to_json()
            status["produced"] = sorted(samna_files)
        else:
            status.update(produced=[], not_produced=["samna configuration object", "samna validation",
                                                     "speck_flash.bin"],
                          text=cfgmod.NO_SAMNA_TEXT.format(reason=why))
        report = mapping_mod.memory_report(rep.net.layers, m)
        if program is not None:
            from .barrier import cost_text
            report += "\n" + cost_text(program["cost"])
        report += "\nsamna: " + (f"validated, flash binary written ({why})" if ok else status["text"]) + "\n"
        if rep.warnings:
            report += "\nwarnings:\n" + "".join(f"  - {w}\n" for w in rep.warnings)
        report += "\n" + qmod.quantization_report(g.metadata["quantization"])
        qwarn = g.metadata["quantization"].get("warnings") or []
        if qwarn:
            report += "\nquantisation:\n" + "".join(f"  - {w}\n" for w in qwarn)
        out_dir = Path(out_dir)
        paths = {
            "speck_config": atomic_write(out_dir / "speck_config.json", dumps_json(conf)),
            "core_map": write_json(out_dir / "core_map.json", {"layer_to_core": m.layer_to_core,
                                                               "memory": m.memory}),
            "memory_report": atomic_write(out_dir / "memory_report.txt", report),
        }
        if program is not None:
            paths["speck_host_program"] = atomic_write(out_dir / "speck_host_program.json", dumps_json(program))
        for name, data in samna_files.items():
            paths[name] = atomic_write(out_dir / name, data)
        return paths

    def simulate(self, graph: ir.Graph, x, *, mode: str = "events", schedule: str | None = None, **options):
        """``mode='events'`` (the chip, ``simulate.simulate_events``) or ``'binned'`` (sinabs,
        ``x`` given per bin [B, T, ...]).

        ``schedule`` (the generic verify's names): 'speck' = the deployed artefact: the chip (single
        spike per event, depth first, saturating, no budget) running the layer-barrier host stream
        (``simulate.simulate_barrier``; plain chip without it when ``barrier=False``); 'streaming' /
        'events' = the chip without the barrier; 'sync' = the layer barrier on the event engine
        (multi, breadth, budget D, no saturation: the quantised closed form).
        """
        barrier = False
        if schedule is not None:
            if schedule == "speck":  # the deployed artefact: the barrier when the graph was quantised for it
                barrier = _uses_barrier(options) and "barrier" in graph.metadata
            elif schedule in ("streaming", "events"):
                pass
            elif schedule == "sync":
                options = {**dict(rule="multi", order="breadth", saturate=False, budget=True), **options}
            else:
                raise NeurodeployError(f"unknown schedule {schedule!r} for Speck",
                                       fix="use 'speck' (the chip) or 'sync' (layer barrier)")
        if not graph.is_quantized:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", qmod.SpeckQuantizationWarning)
                graph = qmod.quantize(graph)
        if mode == "events" and barrier:
            res = sim.simulate_barrier(graph, x, **_barrier_options(options))
            res.schedule = schedule
            return res
        options = {k: v for k, v in options.items() if k != "barrier" and not k.startswith("barrier_")}
        if mode == "events":
            res = sim.simulate_events(graph, x, **options)
            res.schedule = schedule or "speck"
            return res
        if mode == "binned":
            return sim.simulate_binned(graph, x, **options)
        raise NeurodeployError(f"unknown simulation mode {mode!r}", fix="use 'events' or 'binned'")

    def bandwidth(self, graph: ir.Graph, x, *, samples_per_s: float, synops_limit_per_core: float | None = None,
                  core_map: dict | None = None) -> tuple[str, dict]:
        """Per-core SynOps/s: REFERENCE §3 estimate (input events/s × C_out·k²/s²) from the events
        measured on ``x`` at ``samples_per_s``, next to the exact simulated SynOps/s."""
        q = graph if graph.is_quantized else self.quantize(graph)
        rep = drc.run_drc(q.copy(), core_map)
        rep.raise_if_failed()
        res = sim.simulate_events(q, x)
        per_sample = {}
        for lname, l in rep.net.layers.items():
            ev = 0.0
            for src in l.sources:
                ev += float(np.mean(res.input_events)) if src == drc.INPUT else \
                    float(np.mean(res.spikes[rep.net.layers[src].neuron]))
            per_sample[lname] = ev * samples_per_s
        m = mapping_mod.CoreMapping(rep.layer_to_core, {})
        text, rates = mapping_mod.bandwidth_report(rep.net.layers, m, per_sample, synops_limit_per_core)
        exact = {l: float(np.mean(v)) * samples_per_s for l, v in res.synops.items()}
        text += "simulated SynOps/s (exact, border effects included): " + \
            ", ".join(f"{l}: {v:.4g}" for l, v in exact.items()) + "\n"
        return text, {"estimate": rates, "simulated": exact}

    def verify(self, graph: ir.Graph, x, **options):
        from .verify import verify
        return verify(graph, x, **options)


_QUANTIZE_OPTIONS = ("input_scale", "max_input_events", "low_threshold", "bias_bits", "scales", "bias_mode")


_BARRIER_OPTIONS = ("bounds", "input_bound", "margin")


def _uses_barrier(options: dict) -> bool:
    return bool(options.get("barrier", True)) and options.get("bias_mode", "initial") == "initial"


def _barrier_options(options: dict) -> dict:
    """``barrier_bounds`` / ``barrier_input_bound`` target options -> plan_barrier's options."""
    return {k: options[f"barrier_{k}"] for k in _BARRIER_OPTIONS if options.get(f"barrier_{k}") is not None}


def _quantize_options(options: dict) -> dict:
    """The quantiser's options out of the target options (core_map, bias_mode... are for map/emit)."""
    return {k: v for k, v in options.items() if k in _QUANTIZE_OPTIONS}
