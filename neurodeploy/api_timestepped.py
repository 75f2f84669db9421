"""compile / verify / profile / inspect for *time-stepped* SNNs (``--timesteps T``).

The time-stepped core (``ir.LIFNeuron``, :func:`converters.neurons.from_timestepped`,
``nir_io.from_nir(timesteps=T)``, :mod:`verify_timestepped`, :mod:`profile_timestepped`, the Loihi
LIF lowering and the Speck IAF graph) behind the same commands as SFA models. A model enters as a
checkpoint + ``--arch`` (or any torch file :mod:`converters.load` reads) with ``input_layout``
saying how its forward takes the input, or as a NIR file (snnTorch ``export_to_nir``,
``sinabs.to_nir``, our own) read with ``timesteps=T``.

Data ``x`` is the graph's: ``[N, T, *input_shape]`` (event data) or ``[N, *input_shape]`` (static,
repeated for T steps); the model's own input is made from it by ``input_layout``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import ir
from .artifacts import ArtifactDir, check_output, sha256_file, write_json
from .data import load_data
from .errors import NeurodeployError

TARGETS = ("sim", "loihi", "speck")
LAYOUT_HELP = ("'static' (forward takes [N, ...] and loops T times itself: snnTorch, SpikingJelly single-step), "
               "'NT' ([N, T, ...]: sinabs), 'TN' ([T, N, ...]: SpikingJelly multi-step), 'N*T' ([N·T, ...]: "
               "sinabs Squeeze)")


@dataclass
class TimeSteppedModel:
    graph: ir.Graph
    module: torch.nn.Module | None   # None for a NIR file: the reference is then the graph itself
    layout: str
    source_format: str
    sha256: str
    options: dict = field(default_factory=dict)
    probe: dict | None = None   # a checkpoint's linear probe {'weight', 'bias'} on the output spike counts


def _check_timesteps(timesteps) -> int:
    if timesteps is None or int(timesteps) < 1:
        raise NeurodeployError(f"--timesteps {timesteps}: a time-stepped model needs T >= 1",
                               fix="pass --timesteps T (the number of steps the model runs, e.g. 8)")
    return int(timesteps)


def graph_data(x: np.ndarray, T: int, input_shape: tuple) -> np.ndarray:
    """``x`` as graph data, checked: [N, T, *shape] or static [N, *shape]."""
    shape = tuple(input_shape)
    if tuple(x.shape[1:]) == shape or (x.ndim == len(shape) + 2 and tuple(x.shape[1:]) == (T,) + shape):
        return x
    raise NeurodeployError(f"data x of shape {tuple(x.shape)} fits neither [N, {T}, *{shape}] (event data) nor "
                           f"[N, *{shape}] (static, repeated for {T} steps)",
                           fix="save x in one of these layouts, or pass --timesteps / --input-shape matching it")


def model_input(x: np.ndarray, T: int, layout: str, input_shape: tuple) -> torch.Tensor:
    """The model's own input for graph data ``x`` (``input_layout``)."""
    from .converters.neurons import model_input_from_x

    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    static = xt.dim() == len(input_shape) + 1
    if layout == "static":
        if not static:
            raise NeurodeployError("data x has a time axis [N, T, ...], but --input-layout static means the model "
                                   "loops over T itself on one static input",
                                   fix="pass static data [N, ...], or the layout the model's forward takes (NT, TN, N*T)")
        return xt
    if static:
        xt = xt.unsqueeze(1).expand((xt.shape[0], T) + tuple(xt.shape[1:]))
    return model_input_from_x(xt, T, layout)


def _input_shape(loaded, input_shape, x, T: int, layout: str) -> tuple:
    if input_shape:
        return tuple(input_shape)
    if (loaded.extras or {}).get("input_shape"):
        return tuple(loaded.extras["input_shape"])
    if x is None:
        raise NeurodeployError("the input shape is unknown", fix="pass --input-shape (per sample, without N and T) "
                               "or --data")
    if layout != "static" and x.ndim >= 3 and x.shape[1] == T:
        return tuple(x.shape[2:])
    return tuple(x.shape[1:])


def load_timestepped(model, *, timesteps, input_layout: str | None = None, arch: str | None = None,
                     arch_kwargs: dict | None = None, trust: bool = False, input_shape=None, x=None,
                     convention: str = "auto") -> TimeSteppedModel:
    """Read ``model`` as a time-stepped SNN over ``timesteps`` steps (see the module docstring)."""
    from .converters.load import detect_format, load_model
    from .converters.neurons import EXAMPLE_BATCH, INPUT_LAYOUTS, from_timestepped

    T = _check_timesteps(timesteps)
    if detect_format(model) == "hdf5":
        from .nir_io import from_nir

        g = from_nir(model, timesteps=T, convention=convention)
        return TimeSteppedModel(g, None, "NT", "nir", sha256_file(model),
                                {"timesteps": T, "convention": convention, "path": str(model)})
    if input_layout is None:
        raise NeurodeployError("a time-stepped PyTorch model needs --input-layout: how its forward takes the input",
                               fix=f"pass --input-layout: {LAYOUT_HELP}")
    if input_layout not in INPUT_LAYOUTS:
        raise NeurodeployError(f"unknown --input-layout {input_layout!r}", fix=f"use one of: {LAYOUT_HELP}")
    loaded = load_model(model, arch=arch, arch_kwargs=arch_kwargs, trust=trust)
    if not isinstance(loaded.module, torch.nn.Module) or isinstance(loaded.module, torch.jit.ScriptModule):
        raise NeurodeployError(f"{model}: a {loaded.format} file cannot be read as a time-stepped model (its neuron "
                               "modules must be visible)", fix="pass a checkpoint + --arch, or a NIR file")
    shape = _input_shape(loaded, input_shape, x, T, input_layout)
    if x is not None:
        example = graph_data(np.asarray(x[:EXAMPLE_BATCH]), T, shape)
    else:
        example = np.random.default_rng(0).random((EXAMPLE_BATCH,) + shape)
    xm = model_input(example, T, input_layout, shape)
    try:
        g = from_timestepped(loaded.module, xm, T, input_layout=input_layout)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        raise NeurodeployError(f"the model's forward fails on an input of shape {tuple(xm.shape)} (--input-layout "
                               f"{input_layout}, T = {T}, per sample {shape}): {type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}",
                               fix="check --input-layout, --timesteps, --input-shape and --arch-kwargs") from None
    if input_layout == "static" and T > 1 and g.metadata.get("step_mode") != "step":
        raise NeurodeployError(f"with --input-layout static the forward loops over the steps itself, but it did not "
                               f"call its layers {T} times", fix="pass --timesteps equal to the number of steps the "
                               "model's forward runs (or the layout its forward takes)")
    probe = (loaded.extras or {}).get("probe")
    return TimeSteppedModel(g, loaded.module, input_layout, loaded.format, loaded.sha256,
                            {"timesteps": T, "input_layout": input_layout, "arch": arch,
                             "arch_kwargs": arch_kwargs or {}, "input_shape": list(shape)},
                            probe if isinstance(probe, dict) and {"weight", "bias"} <= set(probe) else None)


def _data(data, limit, T: int, shape) -> tuple[np.ndarray, np.ndarray | None]:
    ds = load_data(data, limit)
    return graph_data(np.asarray(ds.x, dtype=np.float64), T, shape), ds.y


def _raw_x(data, limit):
    return None if data is None else np.asarray(load_data(data, limit).x, dtype=np.float64)


def _labels(data, limit):
    return None if data is None else load_data(data, limit).y


def _shape(m: TimeSteppedModel) -> tuple:
    """Per-sample shape of the data (the model's input; the graph's may be flattened)."""
    return tuple(m.options.get("input_shape") or _graph_shape(m.graph))


def _gx(m: TimeSteppedModel, x: np.ndarray) -> np.ndarray:
    """Data ``x`` (model shape) as the graph's input (a leading Flatten is not a graph node)."""
    shape, gshape = _shape(m), _graph_shape(m.graph)
    if shape == gshape:
        return x
    lead = x.shape[:x.ndim - len(shape)]
    return x.reshape(tuple(lead) + gshape)


def _check_target(target: str) -> None:
    if target not in TARGETS:
        raise NeurodeployError(f"target {target!r} does not take time-stepped models",
                               fix=f"use --target {' / '.join(TARGETS)}")


# ---- the sides a verification compares -------------------------------------------------------

def reference_trains(m: TimeSteppedModel, x: np.ndarray) -> tuple[dict, str]:
    """Spike trains [N, T, ...] per LIF layer from the model's own forward (a NIR file: the float64
    simulation of the graph read from it, which then is the reference)."""
    from .simulator.timestepped import simulate_timestepped

    T = ir.timesteps(m.graph)
    if m.module is None:
        sim = simulate_timestepped(m.graph, torch.as_tensor(_gx(m, x), dtype=torch.float64))
        return {n: a.astype(np.float64) for n, a in sim.trains.items()}, "NIR graph (float64)"
    from .converters.neurons import model_spike_trains

    return model_spike_trains(m.module, m.graph, model_input(x, T, m.layout, _shape(m))), "model forward"


def agreement(ours: dict, ref: dict) -> dict:
    """Per layer: neuron-steps and spike counts that agree (the precision side)."""
    out = {}
    for name, a in ours.items():
        b = np.asarray(ref[name], dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        out[name] = {"spikes_reference": int(b.sum()), "spikes_target": int(a.sum()),
                     "train_agreement": float((a == b).mean()),
                     "count_mismatches": int((a.sum(1) != b.sum(1)).sum()), "neurons": int(b[:, 0].size)}
    return out


def loihi_program(graph: ir.Graph, x_calib):
    from .targets.loihi.lif import lower_lif

    return lower_lif(graph, x_calib)


def speck_quantized(graph: ir.Graph, x_calib):
    from .targets import get_target
    from .targets.speck.timestepped import speck_graph

    sg = speck_graph(graph)
    return get_target("speck").quantize(sg, calibration=x_calib, barrier=False)


def target_trains(target: str, graph: ir.Graph, x: np.ndarray, x_calib) -> tuple[dict, dict]:
    """The target's integer spike trains on ``x`` and what it was (program / extra info)."""
    if target == "loihi":
        from .targets.loihi.lif import quantize_lif_input, simulate_lif

        prog = loihi_program(graph, x_calib)
        xi = quantize_lif_input(prog, x)
        return {k: v.astype(np.float64) for k, v in simulate_lif(prog, xi).items()}, {"program": prog, "x_int": xi}
    from .targets import get_target

    qg = speck_quantized(graph, x_calib)
    xs = x if x.ndim == len(_graph_shape(graph)) + 2 else np.repeat(x[:, None], ir.timesteps(graph), axis=1)
    res = get_target("speck").simulate(qg, xs, mode="binned")
    return {k: np.asarray(v, dtype=np.float64) for k, v in res.per_bin.items()}, {"graph": qg}


def _graph_shape(graph: ir.Graph) -> tuple:
    return tuple(graph.nodes[graph.input_names()[0]].input_shape)


# ---- verify -----------------------------------------------------------------------------------

@dataclass
class TimeSteppedVerify:
    target: str
    conversion: dict            # the float64 IR simulation vs the model, spike trains per step
    precision: dict | None      # the target's integer program vs the model (loihi / speck)
    lava: dict | None = None    # loihi --runtime lava: simulator vs Lava fixed_pt
    reference: str = "model forward"
    end_task: dict | None = None  # the checkpoint's probe on the output spike counts: accuracy per side

    def ok(self) -> bool:
        first = self.conversion.get("first_divergence")
        if first is not None and first["kind"] == "conversion":
            return False
        return self.lava is None or self.lava["exact"]

    def to_dict(self) -> dict:
        return {"target": self.target, "reference": self.reference, "conversion": self.conversion,
                "precision": self.precision, "lava": self.lava, "end_task": self.end_task, "ok": self.ok()}

    def format_table(self) -> str:
        from .verify_timestepped import format_report

        lines = [f"conversion exactness (float64 IR simulation vs {self.reference}, spike trains per step):",
                 format_report(self.conversion)]
        f = self.conversion.get("first_divergence")
        if f is not None and f["kind"] == "float rounding":
            lines.append("  (float rounding: the model's float32 arithmetic lands on the other side of a "
                         "boundary; not a conversion error)")
        if self.precision is not None:
            lines.append(f"precision ({self.target} integer program vs {self.reference}; quantised weights / "
                         "decays, reported, not required):")
            for name, r in self.precision.items():
                lines.append(f"  {name:<20} spikes ref {r['spikes_reference']:>8} target {r['spikes_target']:>8}  "
                             f"neuron-steps agreeing {100 * r['train_agreement']:.2f} %  "
                             f"count mismatches {r['count_mismatches']}")
        if self.lava is not None:
            lines.append(f"Lava fixed_pt vs neurodeploy Loihi simulator: {'EXACT' if self.lava['exact'] else 'MISMATCH'}"
                         f" ({self.lava['mismatches']} spike-time mismatches over {self.lava['neuron_steps']} "
                         "neuron-steps)")
        if self.end_task is not None:
            lines.append("end task (the checkpoint's linear probe on the output spike counts over T): accuracy "
                         + ", ".join(f"{k} {100 * v:.2f} %" for k, v in self.end_task.items()))
        lines.append("OK" if self.ok() else "FAILED: a conversion divergence or a Lava mismatch (see above)")
        return "\n".join(lines)


def probe_accuracy(probe: dict, trains: np.ndarray, y) -> float:
    counts = np.asarray(trains, dtype=np.float64).sum(1).reshape(len(y), -1)
    w, b = (np.asarray(probe[k], dtype=np.float64) for k in ("weight", "bias"))
    return float(np.mean(np.argmax(counts @ w.T + b, 1) == np.asarray(y)))


def _end_task(m: TimeSteppedModel, rep: TimeSteppedVerify, x, y, ours: dict | None) -> None:
    if m.probe is None or y is None:
        return
    last = m.graph.of_type(ir.LIFNeuron)[-1]
    ref, _ = reference_trains(m, x)
    rep.end_task = {"model": probe_accuracy(m.probe, ref[last], y)}
    if ours is not None:
        rep.end_task[rep.target] = probe_accuracy(m.probe, ours[last], y)


def nir_reference(m: TimeSteppedModel, N: int):
    """For a NIR file read in sinabs' convention: the module ``sinabs.from_nir`` builds from it (what
    sinabs users run), the graph with that module's names and time layout, and the module's input
    layout, so that verification compares against the writer's framework, not against our own
    reading. None where that does not apply (another convention, sinabs not installed, names that
    differ). Not for snnTorch files: snnTorch 1.0's ``import_from_nir`` does not reproduce the model
    it exported (τ = inf layers get NaN weights, leaky layers diverge), while our reading does
    (tests/test_timestepped.py), so it is no reference."""
    if m.module is not None or "path" not in m.options:
        return None
    lif = m.graph.of_type(ir.LIFNeuron)
    if not lif or any(m.graph.nodes[n].meta.get("nir_convention") != "sinabs" for n in lif):
        return None
    import warnings

    try:
        import nir
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sinabs
            net = sinabs.from_nir(nir.read(m.options["path"], type_check=False), batch_size=N,
                                  num_timesteps=ir.timesteps(m.graph))
    except ImportError:
        return None
    g = m.graph.copy()
    names = {n for n, _ in net.named_modules()}
    for n in lif:
        node = g.nodes[n]
        name = node.source[4:] if node.source.startswith("nir:") else node.source  # our reader's "nir:NODE"
        if name not in names:
            return None
        node.source = name
        node.meta["time_layout"] = "N*T"
    return net, g


def verify_model(m: TimeSteppedModel, x: np.ndarray, *, target: str = "sim", x_calib=None,
                 runtime: str = "sim", y=None) -> TimeSteppedVerify:
    from .verify_timestepped import verify_timestepped

    _check_target(target)
    T = ir.timesteps(m.graph)
    nref = nir_reference(m, int(x.shape[0]))
    if nref is not None:
        net, g = nref
        xt = torch.as_tensor(_gx(m, x), dtype=torch.float32)
        if xt.dim() == len(_graph_shape(m.graph)) + 1:
            xt = xt.unsqueeze(1).expand((xt.shape[0], T) + tuple(xt.shape[1:]))
        xm = xt.reshape((-1,) + tuple(xt.shape[2:]))  # sinabs Squeeze layers: [N·T, ...]
        conv = verify_timestepped(net, g, _gx(m, x), model_input=xm)
        rep = TimeSteppedVerify(target, conv, None, reference="sinabs.from_nir module")
        if target == "sim":
            return rep
        from .converters.neurons import model_spike_trains

        ref = model_spike_trains(net, g, xm)
        ours, info = target_trains(target, m.graph, _gx(m, x), _gx(m, x if x_calib is None else x_calib))
        rep.precision = agreement(ours, ref)
        return rep
    if m.module is not None:
        conv = verify_timestepped(m.module, m.graph, _gx(m, x), model_input=model_input(x, ir.timesteps(m.graph), m.layout,
                                                                                _shape(m)))
        ref, what = None, "model forward"
    else:
        ref, what = reference_trains(m, x)
        conv = {"timesteps": ir.timesteps(m.graph), "samples": int(x.shape[0]), "first_divergence": None,
                "exact": True, "layers": {n: {"source": m.graph.nodes[n].source, "spikes_model": int(a.sum()),
                                              "spikes_ours": int(a.sum()), "train_mismatches": 0,
                                              "count_mismatches": 0, "neuron_steps": int(a.size)}
                                          for n, a in ref.items()}}
    rep = TimeSteppedVerify(target, conv, None, reference=what)
    if target == "sim":
        _end_task(m, rep, x, y, None)
        return rep
    if ref is None:
        ref, _ = reference_trains(m, x)
    ours, info = target_trains(target, m.graph, _gx(m, x), _gx(m, x if x_calib is None else x_calib))
    rep.precision = agreement(ours, ref)
    if target == "loihi" and runtime == "lava":
        from .targets.loihi.lif import run_lif_lava

        lava = run_lif_lava(info["program"], info["x_int"])
        bad = sum(int((ours[n] != lava[n]).sum()) for n in ours)
        rep.lava = {"exact": bad == 0, "mismatches": bad, "neuron_steps": sum(int(a.size) for a in ours.values())}
    _end_task(m, rep, x, y, ours)
    return rep


def verify(model, *, data, target: str = "sim", timesteps, input_layout=None, limit=None, calibration=None,
           runtime: str = "sim", convention: str = "auto", **load_options) -> TimeSteppedVerify:
    _check_target(target)
    x_raw = _raw_x(data, limit)
    m = load_timestepped(model, timesteps=timesteps, input_layout=input_layout, x=x_raw, convention=convention,
                         **load_options)
    x = graph_data(x_raw, ir.timesteps(m.graph), _shape(m))
    calib = None if calibration is None else graph_data(_raw_x(calibration, None), ir.timesteps(m.graph), _shape(m))
    return verify_model(m, x, target=target, x_calib=calib, runtime=runtime, y=_labels(data, limit))


def mark_event_input(m: TimeSteppedModel, x: np.ndarray) -> None:
    """Event data (a time axis, non-negative integer values) is spikes: the first layer then costs
    SynOps (spikes × fan-out), not dense MACs, in the profile."""
    if x.ndim == len(_shape(m)) + 2 and x.size and x.min() >= 0 and np.array_equal(x, np.floor(x)):
        m.graph.nodes[m.graph.input_names()[0]].is_spikes = True


# ---- profile ----------------------------------------------------------------------------------

def profile(model, *, data, timesteps, input_layout=None, limit=None, energy: dict | None = None,
            convention: str = "auto", **load_options) -> dict:
    from .profile_timestepped import profile_timestepped

    x_raw = _raw_x(data, limit)
    m = load_timestepped(model, timesteps=timesteps, input_layout=input_layout, x=x_raw, convention=convention,
                         **load_options)
    x = graph_data(x_raw, ir.timesteps(m.graph), _shape(m))
    mark_event_input(m, x)
    return profile_timestepped(m.graph, torch.as_tensor(_gx(m, x), dtype=torch.float64), **(energy or {}))


def format_profile(report: dict, fmt: str = "table") -> str:
    from .artifacts import dumps_json
    from .profile_timestepped import format_timestepped

    if fmt == "json":
        return dumps_json(report)
    if fmt == "csv":
        rows = ["step,synops,macs,spikes,energy_pj"]
        rows += [f"{s['step']},{s['synops']!r},{s['macs']!r},{s['spikes']!r},{s['energy_pj']!r}"
                 for s in report["per_step"]]
        t = report["total"]
        rows.append(f"all,{t['synops']!r},{t['macs']!r},{t['spikes']!r},{t['energy_pj']!r}")
        return "\n".join(rows)
    return format_timestepped(report)


def inspect(model, *, timesteps, input_layout=None, convention: str = "auto", **load_options) -> str:
    m = load_timestepped(model, timesteps=timesteps, input_layout=input_layout, convention=convention, **load_options)
    return f"time-stepped graph, T = {ir.timesteps(m.graph)}, model input layout '{m.layout}'\n" + m.graph.summary()


# ---- compile ----------------------------------------------------------------------------------

@dataclass
class TimeSteppedCompile:
    out_dir: Path
    artifacts: dict
    profile: dict | None = None
    verify: TimeSteppedVerify | None = None
    written: bool = False
    manifest: dict = field(default_factory=dict)


def loihi_description(prog) -> tuple[dict, dict]:
    """The Lava network the LIF lowering builds, as JSON + arrays (``loihi_lif.json`` /
    ``loihi_lif.npz``): per layer the synapse (Dense or Conv, integer weights as Lava stores them),
    the CUBA neuron (du: 4095 without a synaptic current, dv, vth, bias mantissa with exponent 6) and which process model runs
    it (Lava's stock LIF for reset to zero + strict firing, else ours)."""
    desc = {"format": "neurodeploy Loihi LIF program (Lava CUBA, fixed_pt)", "input_scale": prog.input_scale,
            "input_shape": list(prog.input_shape), "timesteps": prog.timesteps, "bias_exp": 6, "layers": []}
    arrays = {}
    for i, L in enumerate(prog.layers):
        desc["layers"].append({
            "name": L.name, "synapse": "Conv" if L.kind == "conv" else "Dense", "du": L.du, "dv": L.dv, "vth": L.vth,
            "reset": L.reset, "reset_timing": L.reset_timing, "firing": L.firing,
            "process_model": "lava PyLifModelBitAcc (stock Loihi 2 LIF)" if L.stock else
            "neurodeploy PyTimeSteppedLifModel (needs neuron microcode on hardware)",
            "in_shape": list(L.in_shape), "out_shape": list(L.out_shape), "stride": list(L.stride),
            "padding": list(L.padding), "dilation": list(L.dilation), "groups": L.groups,
            "weight": f"layer{i}_weight", "bias_mant": f"layer{i}_bias_mant"})
        arrays[f"layer{i}_weight"] = L.weight
        arrays[f"layer{i}_bias_mant"] = L.bias_mant
    return desc, arrays


def _write_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def _emit_target(target: str, graph: ir.Graph, x_calib, art) -> None:
    if target == "loihi":
        desc, arrays = loihi_description(loihi_program(graph, x_calib))
        write_json(art.path("loihi_lif.json"), desc)
        _write_npz(art.path("loihi_lif.npz"), arrays)
    elif target == "speck":
        from .ir_io import save_graph
        from .targets import get_target

        qg = speck_quantized(graph, x_calib)
        tgt = get_target("speck")
        mapping = tgt.map(qg, barrier=False)
        save_graph(qg, art.path("speck_graph.ir.npz"))
        tgt.emit(qg, art.tmp, mapping=mapping, barrier=False)


def compile(model, *, target: str = "sim", out_dir, timesteps, input_layout=None, data=None, calibration=None,
            verify: bool = False, profile: bool = True, limit=None, energy: dict | None = None,
            force: bool = False, runtime: str = "sim", convention: str = "auto", **load_options) -> TimeSteppedCompile:
    """Compile a time-stepped model into ``out_dir`` (atomically, as :func:`api.compile`): the IR
    (``graph.ir.npz``), NIR (``network.nir``, as ``sinabs.from_nir`` runs it), the target's
    artefacts (loihi: ``loihi_lif.json`` + ``loihi_lif.npz``; speck: the Speck configuration), the
    profile per timestep (``profile_timestepped.json`` + ``.png``) and ``manifest.json``."""
    from .api import MANIFEST_VERSION, _input_files, _versions
    from .artifacts import GENERATOR
    from .ir_io import save_graph
    from .nir_io import write_nir
    from .profile_timestepped import plot_timestepped, profile_timestepped

    _check_target(target)
    inputs = _input_files(model, load_options.get("arch"), data, calibration)
    check_output(out_dir, force=force, inputs=inputs)
    x_raw = _raw_x(data, limit)
    m = load_timestepped(model, timesteps=timesteps, input_layout=input_layout, x=x_raw, convention=convention,
                         **load_options)
    T, shape = ir.timesteps(m.graph), _shape(m)
    x = None if x_raw is None else graph_data(x_raw, T, shape)
    calib = x if calibration is None else graph_data(_raw_x(calibration, None), T, shape)
    if target != "sim" and calib is None:
        raise NeurodeployError(f"--target {target} chooses its integer scales from data", fix="pass --data or --calibration")
    res = TimeSteppedCompile(Path(out_dir), {})
    with ArtifactDir(out_dir, force=force, inputs=inputs) as art:
        save_graph(m.graph, art.path("graph.ir.npz"))
        write_nir(m.graph, art.path("network.nir"))
        _emit_target(target, m.graph, None if calib is None else _gx(m, calib), art)
        if x is not None and profile:
            mark_event_input(m, x)
            res.profile = profile_timestepped(m.graph, torch.as_tensor(_gx(m, x), dtype=torch.float64),
                                              **(energy or {}))
            write_json(art.path("profile_timestepped.json"), res.profile)
            plot_timestepped(res.profile, art.path("profile_timestepped.png"))
        if x is not None and verify:
            res.verify = verify_model(m, x, target=target, x_calib=calib, runtime=runtime, y=_labels(data, limit))
            write_json(art.path("verify.json"), res.verify.to_dict())
            if not res.verify.ok():
                art.discard()
        res.manifest = {
            "generator": GENERATOR, "manifest_version": MANIFEST_VERSION,
            "input": {"path": Path(model).name, "sha256": m.sha256, "format": m.source_format},
            "data": {"path": Path(data).name, "sha256": sha256_file(data)} if data else None,
            "calibration": {"path": Path(calibration).name, "sha256": sha256_file(calibration)} if calibration else None,
            "target": target, "options": {**m.options, "time_stepped": True}, "versions": _versions(),
            "artefacts": {p.name: sha256_file(p) for p in sorted(art.tmp.iterdir()) if p.is_file()}}
        write_json(art.path("manifest.json"), res.manifest)
    res.written = art.committed
    if res.written:
        res.artifacts = {n: str(Path(out_dir) / n) for n in sorted([*res.manifest["artefacts"], "manifest.json"])}
    return res
