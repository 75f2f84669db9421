"""The ``--timesteps T`` branch of ``neurodeploy compile|verify|profile|inspect`` (time-stepped
SNNs): options and command bodies, a thin layer over :mod:`neurodeploy.api_timestepped`.
Imports only click at module level (``neurodeploy --help`` stays light)."""

from __future__ import annotations

import json
import sys

import click

LAYOUTS = ("static", "NT", "TN", "N*T")
_UNUSED = {"until": None, "spike_d": None, "rounding": None, "norm": None, "override_activation": False}


def timestepped_options(f):
    opts = [
        click.option("--timesteps", type=click.IntRange(min=1), help="Read MODEL as a time-stepped SNN (LIF / IF "
                     "neurons: snnTorch, SpikingJelly, sinabs, NIR LIF/IF) run for T steps."),
        click.option("--input-layout", type=click.Choice(LAYOUTS), help="With --timesteps, how the model's forward "
                     "takes its input: static [N, ...] (loops T itself), NT [N, T, ...] (sinabs), TN [T, N, ...] "
                     "(SpikingJelly multi-step), N*T [N·T, ...] (sinabs Squeeze). Needed for PyTorch models."),
        click.option("--nir-convention", type=click.Choice(["auto", "snntorch", "sinabs"]), default="auto",
                     show_default=True, help="With --timesteps, a NIR file's LIF/IF as which framework runs them."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def pop_options(kw: dict) -> dict | None:
    """The time-stepped options (None without --timesteps; --input-layout alone is refused)."""
    ts = {"timesteps": kw.pop("timesteps", None), "input_layout": kw.pop("input_layout", None),
          "convention": kw.pop("nir_convention", "auto")}
    if ts["timesteps"] is None:
        if ts["input_layout"] is not None:
            raise click.UsageError("--input-layout is for time-stepped models: pass --timesteps T with it")
        return None
    return ts


def load_options(kw: dict, command: str) -> dict:
    """Model-loading options for a time-stepped model; SFA-only options are refused by name."""
    for k, default in _UNUSED.items():
        if kw.get(k, default) not in (default, None):
            raise click.UsageError(f"--{k.replace('_', '-')} is an SFA option; {command} --timesteps does not use it")
    return {"arch": kw.get("arch"), "arch_kwargs": kw.get("arch_kwargs"), "trust": kw.get("trust", False),
            "input_shape": kw.get("input_shape")}


def compile_cmd(ts: dict, kw: dict, *, target, out_dir, force, data, calibration, verify, profile, limit, energy):
    from . import api_timestepped as tsa

    res = tsa.compile(kw["model"], target=target, out_dir=out_dir, data=data, calibration=calibration, verify=verify,
                      profile=profile, limit=limit, energy=energy, force=force, **ts, **load_options(kw, "compile"))
    where = f"into {res.out_dir}/" if res.written else "(nothing written: verification failed)"
    click.echo(f"compiled time-stepped model (T = {ts['timesteps']}) for '{target}' {where}")
    for name in sorted(res.artifacts):
        click.echo(f"  {name}")
    if res.profile is not None:
        click.echo("\nprofile per timestep (per sample):")
        click.echo(tsa.format_profile(res.profile))
    if res.verify is not None:
        click.echo("\nverify:")
        click.echo(res.verify.format_table())
        if not res.verify.ok():
            click.secho(f"error: verification failed, so {out_dir} was not written\n  fix: see the report above; "
                        "re-run with --no-verify to write the artefacts anyway", fg="red", err=True)
            sys.exit(1)


def verify_cmd(ts: dict, kw: dict, *, data, target, runtime, limit, calibration, as_json):
    from . import api_timestepped as tsa

    rep = tsa.verify(kw["model"], data=data, target=target, limit=limit, calibration=calibration, runtime=runtime,
                     **ts, **load_options(kw, "verify"))
    click.echo(json.dumps(rep.to_dict(), indent=2, sort_keys=True, default=str) if as_json else rep.format_table())
    if not rep.ok():
        sys.exit(1)


def profile_cmd(ts: dict, kw: dict, *, data, limit, fmt, plot, energy):
    from . import api_timestepped as tsa

    report = tsa.profile(kw["model"], data=data, limit=limit, energy=energy, **ts, **load_options(kw, "profile"))
    click.echo(tsa.format_profile(report, fmt))
    if plot:
        from .profile_timestepped import plot_timestepped

        plot_timestepped(report, plot)
        click.echo(f"plot written to {plot}", err=True)


def inspect_cmd(ts: dict, kw: dict):
    from . import api_timestepped as tsa

    click.echo(tsa.inspect(kw["model"], **ts, **load_options(kw, "inspect")))
