"""The Python API: everything the CLI does, as functions.

    load  ->  convert (trace to IR)  ->  canonicalize (fold BN/pools/norms)  ->  target.check
          ->  target.quantize  ->  target.map  ->  emit artefacts (+ NIR, IR, profile, manifest)

``compile`` writes all artefacts into a temp folder and renames it into place only when every
step succeeded, so a failure never leaves a partial output folder.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, ir
from .artifacts import GENERATOR, ArtifactDir, check_output, sha256_file, write_json
from .data import Dataset, load_data
from .errors import DesignRuleError, NeurodeployError

MANIFEST_VERSION = 1


@dataclass
class Prepared:
    """A model loaded and converted: the traced graph, its canonical form, and the loaded model."""

    loaded: Any
    graph: ir.Graph  # as traced (BatchNorm, AvgPool, norms still present)
    canonical: ir.Graph
    options: dict = field(default_factory=dict)

    @property
    def module(self):
        return self.loaded.module

    @property
    def probe(self) -> dict | None:
        probe = self.loaded.extras.get("probe") if self.loaded.extras else None
        if not probe:
            return None
        return {"weight": np.asarray(probe["weight"], dtype=np.float64),
                "bias": np.asarray(probe["bias"], dtype=np.float64)}


def prepare(model: str | Path, *, arch: str | None = None, arch_kwargs: dict | None = None,
            trust: bool = False, input_shape: tuple | None = None, until: str | None = None,
            spike: dict | None = None, override_activation: bool = False,
            data_shape: tuple | None = None, fold: bool = True) -> Prepared:
    """Load ``model`` safely and convert it to a canonical IR graph.

    ``data_shape``: the per-sample shape of the ``--data`` inputs, used as the input shape when
    neither ``input_shape`` nor the model file gives one (TorchScript, pickled modules).

    ``spike`` settings that contradict what the model's code states (D, rounding, norm) are refused
    unless ``override_activation``; an override is then warned about and kept in ``options``.
    ``fold=False`` skips the folding passes (``canonical`` is then None): the raw traced graph."""
    from .converters import to_graph
    from .converters.load import load_model
    from .passes import canonicalize

    loaded = load_model(model, arch=arch, arch_kwargs=arch_kwargs, trust=trust)
    _refuse_time_stepped(loaded.module)
    if until is None and loaded.extras:
        until = loaded.extras.get("until")
    from_data = input_shape is None and data_shape is not None and loaded.module is not None \
        and not (loaded.extras or {}).get("input_shape")
    if from_data:
        input_shape = tuple(data_shape)
    try:
        graph = to_graph(loaded, input_shape, until=until, spike=spike, override_activation=override_activation)
    except NeurodeployError as e:
        if not from_data:
            raise
        raise NeurodeployError(f"the model does not take inputs of the --data shape {tuple(data_shape)} (used as "
                               f"the input shape: neither --input-shape nor the model file gives one): {e.message}",
                               layer=e.layer, fix="pass --input-shape C,H,W, or data shaped [N, *input_shape]") from None
    options = {"arch": arch, "arch_kwargs": arch_kwargs or {}, "trust": trust,
               "input_shape": list(graph.nodes[graph.input_names()[0]].input_shape),
               "until": until, "spike": spike or {}, "override_activation": bool(override_activation)}
    if graph.metadata.get("activation_overrides"):
        options["activation_overrides"] = graph.metadata["activation_overrides"]
    return Prepared(loaded, graph, canonical_with_cut(graph) if fold else None, options)


def _refuse_time_stepped(module) -> None:
    """A model with LIF / IF neuron modules is time-stepped: say so, instead of a tracing error."""
    from .converters.neurons import is_neuron_module

    found = [(p, type(m).__name__) for p, m in module.named_modules() if is_neuron_module(m)] \
        if hasattr(module, "named_modules") else []
    if found:
        path, name = found[0]
        raise NeurodeployError(f"the model is a time-stepped SNN ({name} at '{path or 'model'}', {len(found)} neuron "
                               "module(s)); it needs a time axis", fix="pass --timesteps T and --input-layout "
                               "(static | NT | TN | N*T: how its forward takes the input)")


def canonical_with_cut(graph: ir.Graph) -> ir.Graph:
    """``canonicalize``; a refusal proposes the furthest ``--until`` that works (``err.until``)."""
    from .passes import canonicalize
    from .passes.cut import with_until_proposal

    try:
        return canonicalize(graph)
    except NeurodeployError as e:
        with_until_proposal(e, graph)
        raise


def _data_shape(data, load_options: dict) -> tuple | None:
    """Per-sample shape of the ``data`` file's inputs, when the model may need it as its input shape."""
    if not data or load_options.get("input_shape") is not None:
        return None
    from .datasets import open_source

    return tuple(open_source(data).shards(1, 1)[0].read().x.shape[1:])


def calibration_inputs(calibration, dataset: Dataset | None, input_shape=None, runner=None) -> tuple[Any, str]:
    """The inputs quantisers choose scales from, and a note saying where they came from: the
    ``--calibration`` file, else the ``--data`` inputs (they double as calibration), else none.
    ``runner``: read the calibration source on Ray workers (as verify/profile read ``--data``)."""
    if calibration:
        from .calibration_sample import sample_calibration

        sample = sample_calibration(calibration, input_shape, runner=runner)
        extra = "" if len(sample.x) == sample.total else \
            f" ({sample.describe()}; input range and sign from all {sample.total})"
        return sample.x, f"calibration file {Path(calibration).name}{extra}"
    if dataset is not None:
        return dataset.x, (f"--data {Path(dataset.path).name} (no --calibration given: the data double "
                           "as calibration)")
    return None, "no calibration data (the target's default input range)"


def _check(target, graph: ir.Graph, *inputs) -> None:
    """Every design-rule violation at once; targets whose rules depend on the input values (Speck:
    no negative input events) also see the data/calibration inputs."""
    import inspect

    from .calibration import carried_statistics

    # calibration inputs that are a subsample carry the whole source's minimum
    lows = [np.array([s.min]) for a in inputs if (s := carried_statistics(a)) is not None]
    inputs = [np.asarray(a) for a in inputs if a is not None and np.asarray(a).size] + lows
    if inputs and "inputs" in inspect.signature(target.check).parameters:
        violations = target.check(graph, inputs=min(inputs, key=lambda a: float(a.min())))
    else:
        violations = target.check(graph)
    if violations:
        from .passes.cut import with_until_proposal

        err = with_until_proposal(DesignRuleError(violations, target.name), graph,
                                  accept=lambda prefix: not target.check(prefix))
        if err.until and target.name in ("speck", "loihi"):
            err.fix += "; or add --host-rest: deploy that prefix and run the rest on the host (host_program.pt2)"
            err.args = (err._format(),)
        raise err


@dataclass
class CompileResult:
    out_dir: Path
    artifacts: dict[str, str]
    manifest: dict
    quantized: ir.Graph
    profile: Any = None
    verify: Any = None
    calibration_note: str = ""
    written: bool = False  # False when verification failed: out_dir was left as it was
    split_note: str = ""  # --host-rest: what runs on the chip and what on the host
    calibration_effect: Any = None  # counts equal to the model before/after calibration, on --data


def compile(model: str | Path, *, target: str = "sim", out_dir: str | Path, data: str | Path | None = None,
            calibration: str | Path | None = None, verify: bool = False, profile: bool = True,
            limit: int | None = None, emit: tuple[str, ...] = (), target_options: dict | None = None,
            energy: dict | None = None, force: bool = False, calibration_record: str | Path | None = None,
            host_rest: bool = False, **load_options) -> CompileResult:
    """Compile ``model`` for ``target`` into ``out_dir`` (atomically).

    ``out_dir`` is replaced only when every step, verification included, succeeded, and only if it
    is a previous neurodeploy output; ``force=True`` writes the artefacts into a folder holding other
    files and keeps them (see :mod:`neurodeploy.artifacts`). A failed verification writes nothing
    (``result.written`` is False).

    ``data``: an ``.npz`` with ``x`` (and ``y``) used for profiling and, with ``verify=True``, for
    spike-count verification. ``calibration``: an ``.npz`` with ``x`` used by targets that choose
    quantisation scales from data; for targets with a calibration stage (loihi) it also runs the
    layer-wise search (:mod:`neurodeploy.calibration`). ``calibration_record``: a record written by
    :func:`calibrate` whose parameters are used instead of searching. ``emit``: extra artefacts (``'routing'``).
    ``host_rest``: where the model fails the target's design rules, deploy the furthest prefix that
    passes and write the rest as a host program (:mod:`neurodeploy.split`).
    """
    from .nir_io import write_nir
    from .ir_io import save_graph
    from .targets import get_target

    inputs = _input_files(model, load_options.get("arch"), data, calibration)
    check_output(out_dir, force=force, inputs=inputs)  # refuse a folder that would lose files, before the work
    prepared = prepare(model, **load_options, data_shape=_data_shape(data, load_options))
    tgt = get_target(target)
    target_options = dict(target_options or {})
    shape = prepared.options["input_shape"]
    source, dataset, partial = _compile_data(data, shape, limit)  # dataset: the first samples (streamed on)
    calib, calib_note = calibration_inputs(calibration, dataset, shape)
    calib_note += "" if calibration or dataset is None else partial
    if calibration_record:
        calib_note = f"calibration record {Path(calibration_record).name}"
    split = _host_rest_split(tgt, prepared.canonical, calib) if host_rest else None
    if host_rest:
        prepared.options["host_rest"] = True
    chip = split.chip if split else prepared.canonical
    _check(tgt, chip, calib, None if dataset is None else dataset.x)
    quantized = tgt.quantize(chip, calibration=calib, **target_options)
    uncalibrated = quantized
    quantized = _calibration_stage(target, chip, quantized, calibration, calib,
                                   calibration_record, target_options)
    mapping = tgt.map(quantized, **target_options)

    result = CompileResult(Path(out_dir), {}, {}, quantized, calibration_note=calib_note)
    if host_rest:
        result.split_note = split.note() if split else f"--host-rest: the whole model passes the {target} " \
            "design rules, so everything runs on the chip (no host part)"
    with ArtifactDir(out_dir, force=force, inputs=inputs) as art:
        save_graph(quantized, art.path("graph.ir.npz"))
        if split:
            from .split import write_split
            write_split(split, art.tmp, mapping)
            write_nir(quantized, art.path("network.nir"))
        elif has_host_ops(quantized):  # NIR has no activation × activation product: the host part is a program
            from .host_program import write_host_program
            write_host_program(quantized, art.tmp)
        else:
            write_nir(quantized, art.path("network.nir"))
        tgt.emit(quantized, art.tmp, mapping=mapping, **target_options)
        if "routing" in emit:
            from .routing import build_routing, save_routing
            save_routing(build_routing(quantized), art.path("routing.npz"))
        if "nir-pulse" in emit:  # SFA counts as a standard reader (sinabs.from_nir) runs them: nir_pulse.py
            from .nir_pulse import write_nir_pulse
            write_nir_pulse(prepared.canonical, art.path("network_pulse.nir"))
        if dataset is not None and profile:
            from .streaming import stream_profile
            result.profile = stream_profile(quantized, source, input_shape=shape, energy=energy, limit=limit)
            if target == "loihi":
                from .targets.loihi.quantize import synapse_group_notes
                result.profile.notes += synapse_group_notes(quantized)
            if (art.tmp / "speck_host_program.json").exists():  # the deployed layer barrier's cost
                import json
                result.profile.barrier = json.loads((art.tmp / "speck_host_program.json").read_text())["cost"]
            art.path("profile.json").write_text(result.profile.format("json"))
            art.path("profile.csv").write_text(result.profile.format("csv"))
            result.profile.plot(art.path("profile.png"))
        if dataset is not None and quantized is not uncalibrated:  # before/after on the held-out --data
            result.calibration_effect = calibration_effect(uncalibrated, quantized, dataset, calibration, data,
                                                           record=calibration_record)
            write_json(art.path("calibration_effect.json"), result.calibration_effect.to_dict())
            if result.calibration_effect.rows:
                result.calibration_effect.plot(art.path("calibration.png"))
        if dataset is not None and verify and split:
            from .split import verify_split
            result.verify = verify_split(prepared, split, quantized, load_data(data, limit, input_shape=shape),
                                         art.tmp, calibration_note=calib_note)
            write_json(art.path("verify.json"), result.verify.to_dict())
            if not result.verify.ok():
                art.discard()
        elif dataset is not None and verify:
            from .streaming import stream_verify
            result.verify = stream_verify(prepared, quantized, source, limit=limit, target=target,
                                          calibration_note=calib_note)
            write_json(art.path("verify.json"), result.verify.to_dict())
            if not result.verify.ok():
                art.discard()
        result.manifest = _manifest(model, target, prepared, art.tmp, data, calibration, emit, target_options)
        write_json(art.path("manifest.json"), result.manifest)
    result.written = art.committed
    if result.written:
        names = sorted([*result.manifest["artefacts"], "manifest.json"])
        result.artifacts = {name: str(Path(out_dir) / name) for name in names}
    return result


def _compile_data(data, shape, limit):
    """(DataSource, its first samples, a note when they are not all of it) for compile's ``--data``
    (any source :mod:`neurodeploy.datasets` reads); profile and verify stream the source batch by batch."""
    if not data:
        return None, None, ""
    from .datasets import open_source
    from .streaming import calibration_head

    source = open_source(data, image_size=int(shape[-1]) if shape and len(shape) == 3 else 224)
    head, partial = calibration_head(source, shape, limit)
    return source, head, partial


def _host_rest_split(tgt, canonical: ir.Graph, calib):
    """--host-rest: the chip / host split (None when the whole graph passes the rules)."""
    from .split import split_for_target

    if tgt.name == "sim":
        raise NeurodeployError("--host-rest applies to --target speck or loihi (sim runs the whole model, host "
                               "ops included)", fix="drop --host-rest")
    return split_for_target(tgt, canonical, calib)


def _verify_split(prepared: Prepared, split, tgt, dataset: Dataset, calib, calib_note: str, target_options,
                  schedules=None, runtime: str = "sim"):
    """verify --host-rest: the composed system, the host program written to and loaded from a temp folder."""
    import tempfile

    from .split import verify_split, write_split

    _check(tgt, split.chip, calib, dataset.x)
    quantized = tgt.quantize(split.chip, calibration=calib, **(target_options or {}))
    with tempfile.TemporaryDirectory(prefix="neurodeploy-host-") as tmp:
        write_split(split, tmp)
        return verify_split(prepared, split, quantized, dataset, tmp, calibration_note=calib_note,
                            schedules=schedules, runtime=runtime)


def _calibration_stage(target: str, canonical, quantized, calibration, calib, record, target_options):
    """The target's calibration stage (only on an explicit --calibration file or a record)."""
    from .targets import calibrate as stage

    if record:
        return stage.from_record(target, canonical, record, target_options)
    if calibration and calib is not None and stage.supports(target):
        return stage.run(target, canonical, calib, data_path=calibration, target_options=target_options)[0]
    return quantized


def calibrate(model: str | Path, *, target: str, calibration: str | Path, out: str | Path,
              target_options: dict | None = None, max_samples: int | None = None, runner=None,
              **load_options) -> dict:
    """Search the target's calibration on ``calibration`` (an ``.npz`` with ``x``, or any source
    :mod:`neurodeploy.datasets` reads: a deterministic subsample of at most ``max_samples``, see
    :mod:`neurodeploy.calibration_sample`) and write the record to ``out`` (atomically); returns it.
    ``runner`` (a ``distributed.Runner``): the pass that reads the source (statistics and subsample)
    runs batch by batch on Ray workers; the record is the same."""
    from .targets import calibrate as stage
    from .targets import get_target

    if not stage.supports(target):
        raise NeurodeployError(f"target '{target}' has no calibration stage",
                               fix=f"use one of: {', '.join(stage.CALIBRATED_TARGETS)}")
    check_output_file = Path(out)
    if check_output_file.resolve() in {Path(p).resolve() for p in (model, calibration)}:
        raise NeurodeployError(f"-o {out} would overwrite an input file", fix="choose another output path")
    from .calibration_sample import sample_calibration

    prepared = prepare(model, **load_options)
    sample = sample_calibration(calibration, prepared.options["input_shape"], max_samples=max_samples, runner=runner)
    _check(get_target(target), prepared.canonical, sample.x)
    _, record = stage.run(target, prepared.canonical, sample.x, target_options=target_options, sample=sample)
    write_json(out, record)
    return record


def _input_files(model, arch, data, calibration) -> list[tuple[str, Any]]:
    """The files a compile reads, which its output folder must not hold."""
    arch_file = None
    if arch and ":" in arch and Path(arch.rsplit(":", 1)[0]).is_file():
        arch_file = arch.rsplit(":", 1)[0]
    return [("the model file", model), ("the --arch file", arch_file), ("the --data file", data),
            ("the --calibration file", calibration)]


def _versions() -> dict:
    import nir
    import torch

    return {"neurodeploy": __version__, "torch": torch.__version__, "nir": nir.__version__,
            "numpy": np.__version__, "python": platform.python_version()}


def _data_entry(data) -> dict | None:
    """A data file's name and sha256; a folder / glob (streamed, possibly larger than memory) is not
    hashed whole: its name and sample count."""
    if not data:
        return None
    if Path(str(data)).is_file() and not str(data).endswith(".npy"):
        return {"path": Path(data).name, "sha256": sha256_file(data)}
    from .datasets import open_source

    return {"path": Path(str(data)).name, "sha256": None, "samples": open_source(data).n_samples}


def _manifest(model, target, prepared: Prepared, folder: Path, data, calibration, emit, target_options) -> dict:
    artefacts = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    return {
        "generator": GENERATOR,
        "manifest_version": MANIFEST_VERSION,
        "input": {"path": Path(model).name, "sha256": prepared.loaded.sha256, "format": prepared.loaded.format},
        "data": _data_entry(data),
        "calibration": _data_entry(calibration),
        "target": target,
        "options": {**prepared.options, "emit": sorted(emit), "target_options": target_options},
        "versions": _versions(),
        "artefacts": artefacts,
    }


def run_profile(graph: ir.Graph, x, *, energy: dict | None = None):
    """Profile a (quantised or float) canonical graph on inputs ``x``, layer-synchronous schedule
    (whose spike counts are the closed form ``ops.evaluate`` computes, equal to the simulator's)."""
    from . import ops
    from .profile import profile as _profile

    return _profile(graph, ops.evaluate(graph, x), **(energy or {}))


# Which schedules each target simulates in verify, and which must equal the model exactly.
TARGET_SCHEDULES = {"sim": ("sync", "streaming"), "speck": ("sync", "speck"), "loihi": ("sync",)}
REQUIRED_EXACT = {"sim": ("sync",), "speck": (), "loihi": ()}


def verify_prepared(prepared: Prepared, quantized: ir.Graph, dataset: Dataset, *, target: str = "sim",
                    schedules: tuple[str, ...] | None = None, runtime: str = "sim", calibration_note: str = ""):
    """Compare the model's own PyTorch forward with the target simulation, layer by layer.

    sim: two separate checks (:mod:`neurodeploy.precision`): *conversion exactness* -- the program's
    layer-synchronous run must equal the integer reference of the same quantised parameters
    exactly; *precision* -- every difference between that integer reference and the model's float
    forward must be explained by the fixed-point precision (a value within the error bound of a
    rounding boundary, or propagated from such a flip). Streaming is reported. speck: the quantised
    layer barrier and the chip's asynchronous rules are reported, with the causes of deviation
    separated (the Speck ladder). loihi: the Loihi fixed-point simulation is reported; with
    ``runtime='lava'`` the .net file also runs in Lava's fixed-point CPU model and must equal the
    simulator exactly (counts and spike times).
    """
    from .targets import get_target
    from .verify import ExtraCheck, build_report

    if prepared.module is None and prepared.loaded.format != "onnx":
        raise NeurodeployError("verify needs the model's own forward (checkpoint + --arch, TorchScript, exported "
                               "program, or ONNX through onnx.reference); a NIR file has no forward of its own",
                               fix="verify against the model file the NIR was made from")
    if runtime == "lava" and target != "loihi":
        raise NeurodeployError("--runtime lava needs --target loihi")
    schedules = tuple(schedules or TARGET_SCHEDULES[target])
    if target != "sim" or has_host_products(quantized):
        schedules = tuple(s for s in schedules if s != "streaming") or TARGET_SCHEDULES[target]
    reference = _reference_counts(prepared, dataset.x)
    tgt = get_target(target)
    results = {s: tgt.simulate(quantized, dataset.x, schedule=s) for s in schedules}
    report = build_report(reference, results, quantized, probe=prepared.probe, labels=dataset.y)
    report.target = target
    report.required_exact = tuple(s for s in REQUIRED_EXACT[target] if s in schedules)
    overrides = prepared.options.get("activation_overrides")
    if overrides:
        report.checks.append(ExtraCheck("activation_overrides", True, _overrides_text(overrides),
                                        {"overrides": overrides}, required=False))
    report.calibration = calibration_note
    if target == "sim":
        _exactness_and_precision(report, reference, results, quantized, dataset.x, calibration_note)
    elif "sync" in results:  # the target's own simulator against the integer model of its quantised graph
        from .precision import exactness, integer_reference

        report.exactness = exactness(integer_reference(quantized, dataset.x), results["sync"].counts, quantized,
                                     compared=f"{target} simulator (sync schedule) vs integer reference "
                                              f"(ops.evaluate of the {target}-quantised graph)")
    if target == "speck":
        probe = prepared.probe
        ladder = tgt.verify(prepared.canonical, dataset.x, qgraph=quantized, labels=dataset.y,
                            probe=(probe["weight"], probe["bias"]) if probe else None)
        report.checks.append(ExtraCheck("speck_ladder", True, ladder.table(), ladder.to_dict(), required=False))
    if runtime == "lava":
        from .targets.loihi import verify_lava

        lava = verify_lava(quantized, dataset.x)
        report.checks.append(ExtraCheck("lava_vs_simulator", bool(lava["exact"]), _lava_text(lava), lava))
    return report


def _reference_counts(prepared: Prepared, x) -> dict:
    """Spike counts from the model's own forward: PyTorch (float64), or for an ONNX file the ONNX
    reference evaluator (``onnx.reference``, float64)."""
    if prepared.module is None:
        from .converters.onnx_reference import onnx_capture_counts

        return onnx_capture_counts(prepared.loaded.path, prepared.graph, x)
    from .converters.capture import capture_counts

    return capture_counts(prepared.module, prepared.graph, x)


def _exactness_and_precision(report, reference: dict, results: dict, quantized: ir.Graph, x, note: str) -> None:
    """sim target: program vs integer reference (exact), integer reference vs model (explained)."""
    from .precision import exactness, integer_reference, precision
    from .targets import get_target
    from .verify import _ref_key

    full = integer_reference(quantized, x)
    sync = results["sync"] if "sync" in results else get_target("sim").simulate(quantized, x, schedule="sync")
    report.exactness = exactness(full, sync.counts, quantized)
    model = {n: reference[k] for n in quantized.neurons() if (k := _ref_key(reference, quantized, n))}
    report.precision = precision(quantized, x, model, full, calibration=note)
    report.required_exact = ()  # sync vs model is judged by the two checks above


def has_host_ops(graph: ir.Graph) -> bool:
    return any(isinstance(node, ir.HostOp) for node in graph.nodes.values())


def has_host_products(graph: ir.Graph) -> bool:
    """True when the host multiplies activations (streaming spike trains then mean nothing)."""
    return any(isinstance(node, ir.HostOp) and node.bilinear for node in graph.nodes.values())


def _overrides_text(overrides: list[dict]) -> str:
    names = {"max_spikes": "D", "rounding": "rounding", "norm": "norm"}
    lines = [f"warning: --override-activation: {len(overrides)} activation setting(s) differ from the model's own, "
             "so the model's forward is expected to deviate in those layers:"]
    lines += [f"  layer '{o['source'] or o['layer']}': {names[o['setting']]} {o['used']!r} (model: {o['code']!r})"
              for o in overrides]
    return "\n".join(lines)


def _lava_text(lava: dict) -> str:
    lines = [f"Lava fixed_pt vs neurodeploy Loihi simulator: {'EXACT' if lava['exact'] else 'MISMATCH'} "
             f"({lava['samples']} samples, {lava['timesteps_per_sample']} steps each, simulator "
             f"{lava['speedup_sim_over_lava']:.0f}x faster)",
             f"  {'layer':<24} {'count ≠':>8} {'time ≠':>8} {'spikes lava':>12} {'spikes sim':>11}"]
    for name, row in lava["layers"].items():
        lines.append(f"  {name[:24]:<24} {row['count_mismatches']:>8} {row['spike_time_mismatches']:>8} "
                     f"{row['spikes_lava']:>12} {row['spikes_sim']:>11}")
    return "\n".join(lines)


def verify(model: str | Path, *, data: str | Path, target: str = "sim", limit: int | None = None,
           schedules: tuple[str, ...] | None = None, target_options: dict | None = None,
           calibration: str | Path | None = None, runtime: str = "sim", batch_size: int | None = None,
           runner=None, host_rest: bool = False, **load_options):
    """Load, convert and quantise ``model`` for ``target``, then verify spike counts on ``data``
    (an .npz, .npy, folder / glob of .npz shards or image folder: see :mod:`neurodeploy.datasets`),
    batch by batch (``batch_size``), on Ray workers when ``runner`` (a ``distributed.Runner``) says so."""
    from .datasets import DEFAULT_BATCH, open_source
    from .streaming import calibration_head, stream_verify
    from .targets import get_target

    prepared = prepare(model, **load_options, data_shape=_data_shape(data, load_options))
    tgt = get_target(target)
    shape = prepared.options["input_shape"]
    source = open_source(data, image_size=int(shape[-1]) if shape and len(shape) == 3 else 224)
    head, partial = calibration_head(source, shape, limit)
    calib, calib_note = calibration_inputs(calibration, head, shape, runner)
    calib_note += "" if calibration else partial
    split = _host_rest_split(tgt, prepared.canonical, calib) if host_rest else None
    if split:
        return _verify_split(prepared, split, tgt, load_data(data, limit, input_shape=shape), calib, calib_note,
                             target_options, schedules, runtime)
    _check(tgt, prepared.canonical, calib, head.x)
    quantized = tgt.quantize(prepared.canonical, calibration=calib, **(target_options or {}))
    uncalibrated = quantized
    quantized = _calibration_stage(target, prepared.canonical, quantized, calibration, calib, None, target_options)
    report = stream_verify(prepared, quantized, source, limit=limit, batch_size=batch_size or DEFAULT_BATCH,
                           runner=runner, target=target, schedules=schedules, runtime=runtime,
                           calibration_note=calib_note)
    if quantized is not uncalibrated:
        report.calibration_effect = calibration_effect(uncalibrated, quantized, head, calibration, data)
    return report


def calibration_effect(before, after, dataset: Dataset, calibration, data, record=None):
    """Before/after table of a calibration on ``dataset`` (never on the calibration data itself:
    the ``calibration`` file's or the ``record``'s data sha256 must differ from ``data``'s)."""
    from .calibration.effect import CalibrationEffect, measure
    from .calibration.record import read_record

    name = f"{Path(str(data)).name} ({len(dataset.x)} samples)"
    if _same_data(data, calibration, read_record(record) if record else None):
        return CalibrationEffect(name, note="--data is the --calibration file: no held-out data to measure on")
    return measure(before, after, dataset.x, name)


def _same_data(data, calibration, record: dict | None) -> bool:
    """True when ``data`` is the calibration data: the same file, or (shards, globs, records written
    by 'calibrate') the same calibration subsample by content (:mod:`neurodeploy.calibration_sample`)."""
    from .calibration_sample import sample_calibration

    def plain(p):
        return Path(str(p)).is_file() and not str(p).endswith(".npy")

    calib_sha = record.get("data_sha256") if record else None
    if plain(data) and (sha256_file(data) == calib_sha or (calibration and plain(calibration)
                                                            and sha256_file(data) == sha256_file(calibration))):
        return True
    from .datasets import open_source

    total = open_source(data).n_samples  # from file headers: a different size needs no pass over the data
    if record:
        if record.get("data_total_samples") not in (None, total):
            return False
        return calib_sha == sample_calibration(data, max_samples=record.get("data_samples"), statistics=False).digest
    if (plain(data) and plain(calibration)) or open_source(calibration).n_samples != total:
        return False
    return sample_calibration(data, statistics=False).digest == sample_calibration(calibration, statistics=False).digest


def profile(model: str | Path, *, data: str | Path, target: str = "sim", limit: int | None = None,
            energy: dict | None = None, calibration: str | Path | None = None, batch_size: int | None = None,
            runner=None, **load_options):
    """Per-layer SynOps / MACs / firing rates / energy of ``model`` on ``data`` (quantised with scales
    from ``calibration``, else from ``data``, as ``compile`` does), batch by batch as :func:`verify`."""
    from .datasets import DEFAULT_BATCH, open_source
    from .streaming import calibration_head, stream_profile
    from .targets import get_target

    prepared = prepare(model, **load_options, data_shape=_data_shape(data, load_options))
    shape = prepared.options["input_shape"]
    source = open_source(data, image_size=int(shape[-1]) if shape and len(shape) == 3 else 224)
    head, _ = calibration_head(source, shape, limit)
    calib, _ = calibration_inputs(calibration, head, shape, runner)
    tgt = get_target(target)
    quantized = tgt.quantize(prepared.canonical, calibration=calib)
    report = stream_profile(quantized, source, input_shape=shape, energy=energy, limit=limit,
                            batch_size=batch_size or DEFAULT_BATCH, runner=runner)
    report.barrier = tgt.barrier_cost(quantized)  # Speck: what the deployed layer barrier adds
    return report


def speck_barrier_cost_text(host_program_path) -> str:
    """The layer barrier's cost table of a compiled Speck artefact (from ``speck_host_program.json``)."""
    import json

    from .targets.speck.barrier import cost_text
    return cost_text(json.loads(Path(host_program_path).read_text())["cost"])


__all__ = ["prepare", "compile", "verify", "profile", "run_profile", "verify_prepared", "CompileResult", "Prepared"]


def study_weight_bits(model: str | Path, *, calibration: str | Path, data: str | Path, bits, limit: int | None = None,
                      **load_options):
    """``neurodeploy study --weight-bits``: final-layer count agreement of N-bit integer versions of
    ``model`` on ``data``, before and after calibration on ``calibration`` (which must differ)."""
    from .calibration.study import study

    if sha256_file(calibration) == sha256_file(data):
        raise NeurodeployError("--data is the --calibration file: the study must measure on held-out data",
                               fix="pass different files to --calibration and --data")
    prepared = prepare(model, **load_options)
    shape = prepared.options["input_shape"]
    xc = load_data(calibration, input_shape=shape).x
    xt = load_data(data, limit, input_shape=shape).x
    return study(prepared.canonical, xc, xt, list(bits), f"{Path(data).name} ({len(xt)} samples)")
