"""``neurodeploy`` command line: a thin layer over :mod:`neurodeploy.api`."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

import click

from . import __version__
from .limits import MAX_SPIKE_BUDGET
from .errors import NeurodeployError
from . import cli_timestepped
from .cli_timestepped import timestepped_options
from .engine.cli import check_artifacts, manifest_option, route_cmd, simulate_cmd
from .targets import TARGET_NAMES

EPILOG = """\b
Examples:
  neurodeploy compile examples/digits_sfa.pt --arch examples/digits_sfa.py:build_model \\
      --target sim -o out/demo --data examples/digits_test.npz --verify
  neurodeploy verify examples/digits_sfa.pt --arch examples/digits_sfa.py:build_model \\
      --data examples/digits_test.npz
  neurodeploy profile examples/digits_sfa.pt --arch examples/digits_sfa.py:build_model \\
      --data examples/digits_test.npz --format csv
"""


def _parse_shape(_ctx, _param, value):
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a shape like 1,8,8") from None
    if not shape or min(shape) < 1:
        raise click.BadParameter(f"{value!r}: every dimension must be >= 1 (per sample C,H,W, e.g. 1,8,8)")
    return shape


def _finite(minimum: float, strict: bool):
    """Callback for a float option that must be finite and > (strict) or >= ``minimum``."""
    def check(_ctx, _param, value):
        if value is None:
            return None
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise click.BadParameter(f"{value} must be a finite number {'>' if strict else '>='} {minimum:g}")
        return value
    return check


def _spike_budget(_ctx, _param, value):
    if value is not None and not 1 <= value <= MAX_SPIKE_BUDGET:
        raise click.BadParameter(f"D = {value} is outside 1..{MAX_SPIKE_BUDGET}: every layer takes D timesteps "
                                 "per sample (SFA models use D = 4..16)")
    return value


LIMIT = click.IntRange(min=1)
ENERGY = {"type": float, "show_default": True, "callback": _finite(0.0, strict=False)}


def _parse_json(_ctx, param, value):
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not valid JSON ({e.msg}): {value!r}") from None
    if not isinstance(parsed, dict):
        raise click.BadParameter("expected a JSON object, e.g. '{\"width\": 32}'")
    return parsed


def model_options(f):
    """Options shared by every command that reads a model file."""
    opts = [
        click.argument("model", type=click.Path(exists=True, dir_okay=False)),
        click.option("--arch", help="For a checkpoint/state_dict: 'module:factory' building the nn.Module; "
                     "module is a dotted import path or a .py file (e.g. examples/digits_sfa.py:build_model)."),
        click.option("--arch-kwargs", callback=_parse_json, help="JSON object of keyword arguments for the factory."),
        click.option("--trust", is_flag=True, help="Allow unpickling a full nn.Module. Runs code from the file: "
                     "only for files you made yourself."),
        click.option("--input-shape", callback=_parse_shape, help="Per-sample input shape C,H,W (default: from "
                     "the checkpoint's 'input_shape')."),
        click.option("--until", help="Deploy up to this module/node (e.g. 'encoder'): drops SimCLR projection "
                     "heads and MIM decoders. Default: the checkpoint's 'until' entry, else the whole model."),
        click.option("--spike-d", type=int, callback=_spike_budget,
                     help=f"Spike budget D (1..{MAX_SPIKE_BUDGET}: each layer takes D timesteps) for "
                     "activations whose code does not reveal it."),
        click.option("--rounding", type=click.Choice(["half_even", "half_up", "floor"]),
                     help="Rounding rule for activations whose code does not reveal it."),
        click.option("--norm", type=float, callback=_finite(0.0, strict=True),
                     help="Activation norm (a = round(x)/norm, finite > 0) when the code hides it."),
        click.option("--override-activation", is_flag=True,
                     help="Let --spike-d/--rounding/--norm replace values the model's code states (refused "
                     "otherwise); the override is warned about and recorded in manifest.json."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _load_options(kw: dict) -> dict:
    spike = {k: v for k, v in (("max_spikes", kw.pop("spike_d")), ("rounding", kw.pop("rounding")),
                               ("norm", kw.pop("norm"))) if v is not None}
    return {"arch": kw.pop("arch"), "arch_kwargs": kw.pop("arch_kwargs"), "trust": kw.pop("trust"),
            "input_shape": kw.pop("input_shape"), "until": kw.pop("until"), "spike": spike or None,
            "override_activation": kw.pop("override_activation")}


def _energy(e_mac, e_ac):
    return {"e_mac_pj": e_mac, "e_ac_pj": e_ac}


def _format_warning(message, category, *_args, **_kwargs) -> str:
    return f"warning: {message}\n"


BUG_REPORT = "please report this as a bug with the command line you ran (NEURODEPLOY_DEBUG=1 shows the traceback)"


def _fail(text: str, status: int) -> None:
    if os.environ.get("NEURODEPLOY_DEBUG") == "1":
        traceback.print_exc()
    click.secho(text, fg="red", err=True)
    sys.exit(status)


def _os_error_text(e: OSError) -> str:
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    reason = e.strerror or str(e)
    if isinstance(e, (FileExistsError, NotADirectoryError)) and e.filename and os.path.isfile(e.filename):
        reason = "is a file, where a folder is needed"
    return f"error: {paths + ': ' if paths else ''}{reason}\n  fix: {_os_error_fix(e)}"


def _os_error_fix(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "choose a path you may read/write, or change its permissions"
    if isinstance(e, (FileExistsError, NotADirectoryError, IsADirectoryError)):
        return "a file or folder is in the way: choose another path"
    if isinstance(e, FileNotFoundError):
        return "check that the path exists"
    if e.errno == errno.ENOSPC:
        return "free some disk space, or write somewhere else"
    return "check the path and the free disk space"


class Terminated(SystemExit):
    """SIGTERM (what `kill` and `timeout` send), raised so that every `with`/`finally` runs: temp
    folders are removed, Lava's workers stopped."""


_SIGTERM_OWNER: list[int] = []


def _raise_terminated(signum, _frame):
    if os.getpid() not in _SIGTERM_OWNER:  # a forked worker (Lava) inherited this handler: die as usual
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(128 + signum)


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    _SIGTERM_OWNER.append(os.getpid())
    try:
        yield
    finally:
        _SIGTERM_OWNER.pop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


class _Group(click.Group):
    def invoke(self, ctx):
        with _sigterm_unwinds():
            return self._invoke_reporting_errors(ctx)

    def _invoke_reporting_errors(self, ctx):
        warnings.formatwarning = _format_warning
        try:
            return super().invoke(ctx)
        except NeurodeployError as e:
            _fail(f"error: {e}", 2)
        except Terminated as e:
            _fail("error: stopped by SIGTERM; cleaned up (no temporary files or worker processes left behind)", e.code)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click prints these itself (usage errors: exit 2)
        except KeyboardInterrupt:  # the shell's status for SIGINT; 1 stays "verification failed"
            _fail("error: interrupted (Ctrl-C); cleaned up", 128 + signal.SIGINT)
        except OSError as e:  # a user path we cannot read or write (permissions, disk full, gone)
            _fail(_os_error_text(e), 2)
        except MemoryError:
            _fail("error: out of memory\n  fix: use fewer samples (--limit) or a smaller --input-shape", 2)
        except Exception as e:  # noqa: BLE001 - last resort: a bug of ours, reported as one line
            first = (str(e).strip().splitlines() or [""])[0]
            _fail(f"internal error: {type(e).__name__}: {first} ({BUG_REPORT})", 3)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="neurodeploy")
def main():
    """Compile spiking networks pretrained without labels (SFA integer activations) for
    neuromorphic targets, and check that the spikes equal what PyTorch computed.

    \b
    Pipeline: load -> convert (IF neurons, soft reset) -> fold BN/pools/norms -> design-rule check
              -> quantise -> map -> emit (+ NIR, simulator program, profile, manifest) -> verify
    Targets:  sim    bit-accurate integer simulator (layer-synchronous and streaming schedules)
              speck  SynSense Speck: config JSON, core map, memory report, async event simulation
              loihi  Loihi 2 via Lava: NetX .net file, soft-reset IF, Lava fixed-point verification
    """


def speck_bias_options(f):
    """--bias-mode / --bias-bits (Speck): where the quantised bias goes, and how wide it may be."""
    f = click.option("--bias-bits", type=int,
                     help="Speck: bias width in bits (default and maximum: 16 with --bias-mode initial, 8 with "
                          "leak, the chip's bias register); a narrower bias limits the shared scale.")(f)
    return click.option("--bias-mode", type=click.Choice(["initial", "leak"]),
                        help="Speck: 'initial' (default) adds the bias once through the 16-bit initial membrane "
                             "value (no slow clock, as the integer model); 'leak' writes it to the chip's 8-bit bias "
                             "register, where it acts on every slow-clock tick (not simulated).")(f)


def loihi_options(f):
    """--synapse-groups (Loihi): one 8-bit synapse group per weight, or two."""
    return click.option("--synapse-groups", type=click.IntRange(1, 2),
                        help="Loihi: 1 (default) = 8-bit weight mantissas; 2 = every conv weight as two 8-bit synapse "
                             "groups hi*2^k + lo (up to 8 more bits, within the 17-bit threshold and the 24-bit "
                             "state), at twice the layer's synapse memory and synaptic operations.")(f)


def _loihi_options(target: str, kw: dict) -> dict:
    """Pop --synapse-groups out of ``kw`` as a target option; refused for other targets."""
    opts = {"synapse_groups": v} if (v := kw.pop("synapse_groups", None)) is not None else {}
    if opts and target != "loihi":
        raise click.UsageError("--synapse-groups applies to --target loihi only")
    return opts


def speck_barrier_options(f):
    """--barrier/--no-barrier, --barrier-bounds (Speck): the in-network layer barrier."""
    f = click.option("--barrier-input-bound", type=click.IntRange(min=1),
                     help="Speck: most input events one pixel carries per sample, for the barrier's hold (default "
                          "8: the rate code's maximum; set it for event-camera input). A sample above it is "
                          "refused.")(f)
    f = click.option("--barrier-bounds", type=click.Choice(["budget", "weights", "calibration"]),
                     help="Speck: how far the barrier holds each neuron: partial sums from the weights with every "
                          "source at most D spikes ('budget', default), guaranteed ('weights': often too far for "
                          "the 16-bit state), or 2x the largest seen on --calibration ('calibration', assumed).")(f)
    return click.option("--barrier/--no-barrier", default=None,
                        help="Speck: hold every layer below threshold until its input is complete and release it "
                             "with host gate events (default; exact for every neuron with n <= D). --no-barrier "
                             "writes the plain configuration, which the asynchronous chip does not compute "
                             "exactly.")(f)


_COUNT_MODEL_OPTIONS = ("bias_mode", "bias_bits", "barrier", "barrier_bounds", "barrier_input_bound", "synapse_groups")


def _refuse_count_options(kw: dict) -> None:
    """The SFA (spike-count) target options have no meaning for a time-stepped model: refuse, never ignore."""
    given = [k for k in _COUNT_MODEL_OPTIONS if kw.get(k) is not None]
    if given:
        names = ", ".join("--" + k.replace("_", "-") for k in given)
        raise click.UsageError(f"{names}: options of the spike-count (SFA) targets, not of a time-stepped "
                               "model (--timesteps); drop them")


def _speck_barrier_options(target: str, kw: dict) -> dict:
    """Pop --barrier/--barrier-bounds out of ``kw`` as target options; refused for other targets."""
    opts = {k: v for k in ("barrier", "barrier_bounds", "barrier_input_bound") if (v := kw.pop(k, None)) is not None}
    if opts and target != "speck":
        raise click.UsageError("--barrier/--barrier-bounds/--barrier-input-bound apply to --target speck only")
    return opts


def _speck_bias_options(target: str, kw: dict) -> dict:
    """Pop --bias-mode/--bias-bits out of ``kw`` as target options; refused for other targets."""
    opts = {k: v for k in ("bias_mode", "bias_bits") if (v := kw.pop(k, None)) is not None}
    if opts and target != "speck":
        raise click.UsageError("--bias-mode/--bias-bits apply to --target speck only")
    return opts


@main.command("compile")
@model_options
@timestepped_options
@click.option("--target", "-t", type=click.Choice(TARGET_NAMES), default="sim", show_default=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder. Built aside and put in place only when every step (--verify included) "
              "succeeded; an existing folder is replaced only if it is a previous neurodeploy output.")
@click.option("--force", is_flag=True, help="Write into an existing -o folder that holds other files: they are "
              "kept, never deleted or overwritten.")
@click.option("--data", help="Profile and verify on these inputs: an .npz with x (and y), a folder / glob of "
              ".npz shards, a memory-mapped .npy or an image folder, read batch by batch.")
@click.option("--calibration",
              help=".npz with x (or shards / .npy / image folder: a deterministic subsample): lets the target choose quantisation scales from data (default: --data "
              "doubles as calibration); for loihi and speck it also runs the layer-wise calibration search.")
@click.option("--calibration-record", type=click.Path(exists=True, dir_okay=False),
              help="JSON written by 'neurodeploy calibrate': use its parameters instead of searching (refused "
              "for another model or target).")
@click.option("--verify/--no-verify", default=False, help="Also verify spike counts on --data (exit 1 if the "
              "program differs from the integer reference, or from the model where precision does not "
              "explain it).")
@click.option("--profile/--no-profile", default=True, show_default=True, help="Profile on --data.")
@click.option("--limit", type=LIMIT, help="Use only the first N samples of --data.")
@click.option("--emit", multiple=True, type=click.Choice(["routing", "nir-pulse"]), help="Extra artefacts; "
              "nir-pulse: network_pulse.nir, the SFA counts in a form sinabs.from_nir runs exactly (input as a pulse).")
@click.option("--host-rest", is_flag=True, help="speck/loihi: where the model fails the design rules, deploy the "
              "furthest prefix that passes on the chip and run the rest on the host (host_program.pt2, fed "
              "with the chip's spike counts).")
@click.option("--core-map", callback=_parse_json, help="Speck: JSON {layer: core} placement override.")
@speck_bias_options
@speck_barrier_options
@loihi_options
@click.option("--e-mac", default=4.6, **ENERGY, help="Energy per MAC (pJ, finite >= 0).")
@click.option("--e-ac", default=0.9, **ENERGY, help="Energy per synaptic AC (pJ, finite >= 0).")
def compile_cmd(target, out_dir, force, data, calibration, calibration_record, verify, profile, limit, emit,
                host_rest, core_map, e_mac, e_ac, **kw):
    """Compile MODEL for a target into OUT: IR, NIR, target artefacts, profile, manifest.json."""
    from . import api

    if verify and not data:
        raise click.UsageError("--verify needs --data")
    ts = cli_timestepped.pop_options(kw)
    if ts:
        _refuse_count_options(kw)
        return cli_timestepped.compile_cmd(ts, kw, target=target, out_dir=out_dir, force=force, data=data,
                                           calibration=calibration, verify=verify, profile=profile, limit=limit,
                                           energy=_energy(e_mac, e_ac))
    target_options = {"core_map": core_map} if core_map else {}
    target_options.update(_speck_bias_options(target, kw))
    target_options.update(_speck_barrier_options(target, kw))
    target_options.update(_loihi_options(target, kw))
    res = api.compile(kw.pop("model"), target=target, out_dir=out_dir, data=data, calibration=calibration,
                      verify=verify, profile=profile, limit=limit, emit=tuple(emit),
                      target_options=target_options, energy=_energy(e_mac, e_ac), force=force,
                      calibration_record=calibration_record, host_rest=host_rest, **_load_options(kw))
    where = f"into {res.out_dir}/" if res.written else "(nothing written: verification failed)"
    click.echo(f"compiled for '{target}' {where} (quantisation scales from {res.calibration_note})")
    if res.split_note:
        click.echo(res.split_note)
    for name in sorted(res.artifacts):
        click.echo(f"  {name}")
    if "speck_host_program.json" in res.artifacts:
        click.echo("\n" + api.speck_barrier_cost_text(res.artifacts["speck_host_program.json"]), nl=False)
    if res.profile is not None:
        click.echo("\nprofile (per sample, layer-synchronous):")
        click.echo(res.profile.format("table"))
    if res.calibration_effect is not None:
        click.echo("\n" + res.calibration_effect.table())
    if res.verify is not None:
        click.echo("\nverify:")
        click.echo(res.verify.format_table())
        if not res.verify.ok():
            click.secho(f"error: verification failed, so {out_dir} was not written (an existing {out_dir} is "
                        "unchanged)\n  fix: see the table above; re-run with --no-verify to write the artefacts "
                        "anyway", fg="red", err=True)
            sys.exit(1)


@main.command("calibrate")
@model_options
@click.option("--target", "-t", type=click.Choice(["loihi", "speck"]), required=True)
@click.option("--calibration", required=True,
              help="The calibration inputs (keep the data you verify on apart): an .npz with x, a folder / glob "
              "of .npz shards, a memory-mapped .npy or an image folder. Beyond 4096 samples (--max-samples) "
              "or 2^25 input values the search runs on evenly spaced samples, stated in the record.")
@click.option("--max-samples", type=click.IntRange(min=1),
              help="Search on at most N evenly spaced samples (sample i*total//N; default 4096).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False),
              help="Calibration record (JSON) for 'compile --calibration-record'.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Read --calibration (decode, input statistics, subsample) one batch per task on a local Ray "
              "runtime with N workers (extra: neurodeploy[ray]); the record is identical.")
@click.option("--ray-address", help="Read --calibration on this Ray cluster (e.g. 127.0.0.1:6379 or auto); the "
              "path must be visible on every node.")
@loihi_options
def calibrate_cmd(target, calibration, max_samples, out, workers, ray_address, **kw):
    """Search quantised parameters that keep MODEL's spike counts on --calibration; write a record.

    The pass over --calibration (every sample's input statistics, the evenly spaced subsample) runs
    batch by batch, on Ray workers with --workers / --ray-address; the search runs on the subsample here."""
    from . import api
    from .distributed import Runner, import_ray

    runner = Runner(workers=workers, address=ray_address, progress=True)
    if runner.uses_ray:
        import_ray()  # says which extra to install, before any work
    target_options = _loihi_options(target, kw)
    rec = api.calibrate(kw.pop("model"), target=target, calibration=calibration, out=out, runner=runner,
                        max_samples=max_samples, target_options=target_options, **_load_options(kw))
    click.echo(f"calibration record for '{target}' written to {out} ({rec.get('data_sampling') or rec['data_samples']})")
    click.echo(f"  {'layer':<28} {'counts equal on calibration data: before -> after':>50}  choice")
    for lr in rec["layers"]:
        b, a = lr["calibration_agreement"]
        click.echo(f"  {lr['neuron']:<28} {100 * b:>40.2f}% -> {100 * a:.2f}%  {lr['choice']}")


DATA_HELP = (".npz with x (and y); or a folder / glob of .npz shards, a memory-mapped .npy, or an image "
             "folder (ImageNet eval transform), read batch by batch.")


def dataset_options(f):
    """Streaming and Ray options of verify / profile."""
    f = click.option("--resume", is_flag=True, help="Skip shards whose result is already in --out.")(f)
    f = click.option("--out", "shard_out", type=click.Path(file_okay=False),
                     help="Folder for per-shard results (cached by content hash; see --resume).")(f)
    f = click.option("--ray-address", help="Join this Ray cluster (e.g. 127.0.0.1:6379 or auto).")(f)
    f = click.option("--workers", type=click.IntRange(min=1),
                     help="Run shards on a local Ray runtime with N workers (extra: neurodeploy[ray]).")(f)
    f = click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Samples per batch (one shard of work); memory grows with it, not with N.")(f)
    return f


def _dataset_options(kw: dict):
    from .distributed import Runner, import_ray

    runner = Runner(workers=kw.pop("workers"), address=kw.pop("ray_address"), cache_dir=kw.pop("shard_out"),
                    resume=kw.pop("resume"), progress=True)
    if runner.uses_ray:
        import_ray()  # says which extra to install, before any work
    return kw.pop("batch_size"), runner


@main.command("study")
@model_options
@click.option("--weight-bits", "bits", type=click.IntRange(2, 16), multiple=True, required=True,
              help="Weight width N to study (repeat for several).")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False), required=True,
              help=".npz with x: the calibration inputs.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), required=True,
              help=".npz with x: held-out inputs the count error is measured on.")
@click.option("--limit", type=LIMIT, help="Use only the first N samples of --data.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def study_cmd(bits, calibration, data, limit, as_json, **kw):
    """Sim study: spike-count error of MODEL with N-bit weights vs N, before/after calibration."""
    from dataclasses import asdict

    from . import api
    from .calibration.study import study_table

    rows = api.study_weight_bits(kw.pop("model"), calibration=calibration, data=data, bits=bits, limit=limit,
                                 **_load_options(kw))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        click.echo(study_table(rows, Path(data).name))


@main.command("verify")
@model_options
@timestepped_options
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--target", "-t", type=click.Choice(TARGET_NAMES), default="sim", show_default=True)
@click.option("--schedule", "schedules", multiple=True, type=click.Choice(["sync", "streaming", "speck"]),
              help="Schedules to simulate (default per target: sim: sync+streaming; speck: sync+speck; "
              "loihi: sync).")
@click.option("--runtime", type=click.Choice(["sim", "lava"]), default="sim", show_default=True,
              help="loihi: also run the .net file in Lava's fixed-point CPU model and compare.")
@click.option("--limit", type=LIMIT, help="Use only the first N samples.")
@click.option("--calibration",
              help=".npz with x (or shards / .npy / image folder: a deterministic subsample, statistics from all): "
              "quantisation scales from these inputs (default: --data doubles as calibration); "
              "loihi/speck also run the calibration search and report counts before/after it on --data.")
@click.option("--calibration-plot", type=click.Path(dir_okay=False),
              help="With a calibration search: write a PNG of per-layer count differences before/after it.")
@speck_bias_options
@speck_barrier_options
@loihi_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--host-rest", is_flag=True, help="speck/loihi: where the model fails the design rules, deploy the "
              "furthest prefix that passes on the chip and run the rest on the host (host_program.pt2, fed "
              "with the chip's spike counts).")
@dataset_options
def verify_cmd(data, target, schedules, runtime, limit, calibration, as_json, calibration_plot, host_rest, **kw):
    """Compare the model's own PyTorch forward with the simulation, layer by layer.

    \b
    Exit status 1 when something that must be exact is not:
      sim    conversion exactness: the program must equal the integer reference of the same
             quantised parameters exactly; precision: every difference between that reference
             and the model's float forward must lie within the fixed-point error bound of a
             rounding boundary (or follow from such a flip upstream);
      loihi  the Loihi simulator must equal the integer reference of its quantised graph; with
             --runtime lava, Lava's fixed-point run must equal the simulator exactly;
      speck  the quantised layer barrier must equal the integer reference of its quantised
             graph; the deviation from the model (8-bit weights, one spike per event) is
             reported cause by cause, not required.
    """
    from . import api

    ts = cli_timestepped.pop_options(kw)
    if ts:
        _refuse_count_options(kw)
        return cli_timestepped.verify_cmd(ts, kw, data=data, target=target, runtime=runtime, limit=limit,
                                          calibration=calibration, as_json=as_json)
    target_options = _speck_bias_options(target, kw)
    target_options.update(_speck_barrier_options(target, kw))
    target_options.update(_loihi_options(target, kw))
    batch_size, runner = _dataset_options(kw)
    report = api.verify(kw.pop("model"), data=data, target=target, limit=limit, schedules=tuple(schedules) or None,
                        calibration=calibration, runtime=runtime, target_options=target_options,
                        batch_size=batch_size, runner=runner, host_rest=host_rest, **_load_options(kw))
    effect = getattr(report, "calibration_effect", None)
    if as_json:
        d = report.to_dict()
        if effect is not None:
            d["calibration_effect"] = effect.to_dict()
        click.echo(json.dumps(d, indent=2, sort_keys=True))
    else:
        click.echo(report.format_table())
        if effect is not None:
            click.echo(effect.table())
    if effect is not None and calibration_plot and effect.rows:
        effect.plot(calibration_plot)
    if not report.ok():
        sys.exit(1)


@main.command("profile")
@model_options
@timestepped_options
@click.option("--data", required=True, help=DATA_HELP)
@click.option("--target", "-t", type=click.Choice(TARGET_NAMES), default="sim", show_default=True)
@click.option("--limit", type=LIMIT)
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG of per-layer SynOps and energy.")
@click.option("--e-mac", default=4.6, **ENERGY, help="Energy per MAC (pJ, finite >= 0).")
@click.option("--e-ac", default=0.9, **ENERGY, help="Energy per synaptic AC (pJ, finite >= 0).")
@click.option("--calibration",
              help=".npz with x (or shards / .npy / image folder, as compile): quantisation scales from these "
              "inputs (default: from --data).")
@dataset_options
def profile_cmd(data, target, limit, fmt, plot, e_mac, e_ac, calibration, **kw):
    """Per-layer neurons, synapses, SynOps, MACs, firing rates and energy."""
    from . import api

    ts = cli_timestepped.pop_options(kw)
    if ts:
        return cli_timestepped.profile_cmd(ts, kw, data=data, limit=limit, fmt=fmt, plot=plot, energy=_energy(e_mac, e_ac))
    batch_size, runner = _dataset_options(kw)
    report = api.profile(kw.pop("model"), data=data, target=target, limit=limit, energy=_energy(e_mac, e_ac),
                         calibration=calibration, batch_size=batch_size, runner=runner, **_load_options(kw))
    click.echo(report.format(fmt))
    if plot:
        report.plot(plot)
        click.echo(f"plot written to {plot}", err=True)


@main.command("inspect")
@model_options
@timestepped_options
@click.option("--canonical", is_flag=True, help="Show the graph after BN/pool/norm folding.")
def inspect_cmd(canonical, **kw):
    """Print the IR graph neurodeploy makes of MODEL (what was recognised, with shapes)."""
    from . import api

    ts = cli_timestepped.pop_options(kw)
    if ts:
        return cli_timestepped.inspect_cmd(ts, kw)
    prepared = api.prepare(kw.pop("model"), fold=canonical, **_load_options(kw))
    click.echo((prepared.canonical if canonical else prepared.graph).summary())


@main.command("run")
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help=".npz with x.")
@click.option("--runtime", type=click.Choice(["lava", "sim"]), default="lava", show_default=True,
              help="lava: Lava's fixed-point CPU model of Loihi 2; sim: neurodeploy's bit-accurate simulator.")
@click.option("--limit", type=LIMIT, help="Use only the first N samples.")
@click.option("--json", "as_json", is_flag=True, help="Print per-layer counts as JSON.")
@manifest_option
def run_cmd(out_dir, data, runtime, limit, as_json, verify_manifest):
    """Run a compiled Loihi artefact (OUT_DIR from `compile --target loihi`) and print per-layer spikes;
    with a host part (`compile --host-rest`), host_program.pt2 runs on the chip's counts after it."""
    import numpy as np

    from .data import load_data
    from .host_program import INTERFACE_FILE, PROGRAM_FILE
    from .split import HOST_GRAPH_FILE, run_composed
    from .targets.loihi import NET_FILE, SIDECAR, load_artifact, run_artifact

    check_artifacts(out_dir, [NET_FILE, SIDECAR, PROGRAM_FILE, INTERFACE_FILE, HOST_GRAPH_FILE], verify_manifest)
    x = load_data(data, limit, input_shape=load_artifact(out_dir)[0].input_shape).x
    res = run_artifact(out_dir, x, runtime=runtime)
    totals = {name: int(np.asarray(c).sum()) for name, c in res.counts.items()}
    host = run_composed(out_dir, res.counts, x) or {}
    host_totals = {name: int(np.asarray(v).sum()) for name, v in host.items()}
    if as_json:
        click.echo(json.dumps({"runtime": runtime, "samples": len(x), "spikes": totals,
                               **({"host": {"program": PROGRAM_FILE, "values": host_totals}} if host else {})},
                              indent=2, sort_keys=True))
        return
    click.echo(f"runtime {runtime}: {len(x)} sample(s)")
    click.echo(f"{'layer':<28} {'spikes':>10} {'per sample':>11}")
    for name, total in totals.items():
        click.echo(f"{name:<28} {total:>10} {total / len(x):>11.2f}")
    if host:
        click.echo(f"host part ({PROGRAM_FILE}, fed with the {runtime} run's counts; outputs are integer values):")
        for name, total in host_totals.items():
            click.echo(f"{name:<28} {total:>10} {total / len(x):>11.2f}")


main.add_command(route_cmd)
main.add_command(simulate_cmd)


if __name__ == "__main__":
    main()
