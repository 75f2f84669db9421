"""Start-up and compile-speed benchmark (issue 12, part 5).

Prints, each as the median of ``--repeat`` fresh processes (wall and CPU seconds; on a busy machine
CPU seconds are the steadier number):

* ``neurodeploy --help`` (goal <= 0.5 s),
* compiling the bundled demo, ``neurodeploy compile examples/digits_sfa.pt --arch
  examples/digits_sfa.py:build_model --target sim -o OUT`` (goal <= 2 s), cold (empty trace cache:
  torch.export runs) and warm (the trace is read back from the cache, see
  ``neurodeploy/converters/trace_cache.py``), and checks that both give byte-identical artefacts,
* the imports a cold compile cannot avoid (fresh processes): ``import torch``, torch + the
  ``torch.export`` tracer, torch + ``make_fx``'s first trace (the lower-level tracer: it imports
  the same dynamo and sympy), and for contrast torch + ``torch.fx.symbolic_trace`` (no dynamo, but it
  cannot trace SFA code),
* with ``--stages``: where an in-process cold compile spends its time (imports, load, trace, fold,
  quantise, emit IR/NIR/target files, manifest).

Run: ``python benchmarks/bench_startup.py [--repeat 3] [--stages]`` (~1 minute on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ["examples/digits_sfa.pt", "--arch", "examples/digits_sfa.py:build_model", "--target", "sim"]
GOAL_HELP_S = 0.5
GOAL_COMPILE_S = 2.0


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("neurodeploy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "neurodeploy.cli"]


def timed_run(args: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(args, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _row(name: str, runs, goal: float) -> None:
    wall, cpu = _median(runs)
    print(f"{name:<34} {wall:8.2f} {cpu:8.2f} {goal:7.1f} {wall / goal:8.2f}x {cpu / goal:8.2f}x")


def _artefacts(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def bench_cli(repeat: int) -> None:
    print(f"{'(median of %d fresh processes)' % repeat:<34} {'wall s':>8} {'CPU s':>8} {'goal s':>7} "
          f"{'wall/goal':>9} {'CPU/goal':>9}")
    _row("neurodeploy --help", [timed_run(_cli() + ["--help"]) for _ in range(repeat)], GOAL_HELP_S)
    _row("neurodeploy --version", [timed_run(_cli() + ["--version"]) for _ in range(repeat)], GOAL_HELP_S)
    work = Path(tempfile.mkdtemp(prefix="nd-bench-startup-"))
    try:
        cold, warm = [], []
        for i in range(repeat):
            env = dict(os.environ, NEURODEPLOY_CACHE_DIR=str(work / f"cache{i}"))
            env.pop("NEURODEPLOY_CACHE", None)
            cold.append(timed_run(_cli() + ["compile", *DEMO, "-o", str(work / f"cold{i}")], env))
            warm.append(timed_run(_cli() + ["compile", *DEMO, "-o", str(work / f"warm{i}")], env))
        _row("compile demo, cold (torch.export)", cold, GOAL_COMPILE_S)
        _row("compile demo, warm (trace cache)", warm, GOAL_COMPILE_S)
        bench_import_floor(repeat)
        ref = _artefacts(work / "cold0")
        same = all(_artefacts(work / f"{kind}{i}") == ref for kind in ("cold", "warm") for i in range(repeat))
        print(f"artefacts of all {2 * repeat} compiles byte-identical: {same} ({', '.join(ref)})")
    finally:
        shutil.rmtree(work)


# What a cold compile must import before it can trace, in fresh processes: torch itself, then the
# tracer. torch.export's trace module imports dynamo (and sympy) on import; make_fx, the lower-level
# tracer torch.export is built on, imports the same on its first trace (with or without
# pre_dispatch). torch.fx.symbolic_trace stays below them, but it cannot trace real SFA code (the
# forward reads x.shape into Python ints; see converters/torch_export.py).
_TINY = "(lambda x: x + 1)(torch.zeros(1))"
IMPORT_FLOOR = [
    ("import torch", "import torch"),
    ("import torch + torch.export tracer", "import torch, torch.export._trace"),
    ("torch + make_fx, first trace", "import torch; from torch.fx.experimental.proxy_tensor import make_fx; "
                                     "make_fx" + _TINY),
    ("torch + fx.symbolic_trace (no dynamo)", "import torch, torch.fx; torch.fx.symbolic_trace(torch.nn.ReLU())"),
]


def bench_import_floor(repeat: int) -> None:
    """The imports a cold compile cannot avoid, each in fresh processes (the goal's lower bound)."""
    runs = {}
    for name, code in IMPORT_FLOOR:
        runs[name] = [timed_run([sys.executable, "-c", code]) for _ in range(repeat)]
        _row(name[:34], runs[name], GOAL_COMPILE_S)
    wall, cpu = _median(runs[IMPORT_FLOOR[1][0]])
    print(f"a cold compile imports torch and its tracer before tracing: {wall:.2f} s wall / {cpu:.2f} s CPU "
          f"here, {'above' if wall > GOAL_COMPILE_S else 'below'} the {GOAL_COMPILE_S:.0f} s goal on its own")


def bench_stages() -> None:
    """One cold compile in this process, stage by stage (the same steps as api.compile)."""
    work = Path(tempfile.mkdtemp(prefix="nd-bench-stages-"))
    os.environ["NEURODEPLOY_CACHE"] = "0"
    laps: list[tuple[str, float]] = []
    t = [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        laps.append((name, now - t[0]))
        t[0] = now

    try:
        import torch  # noqa: F401
        lap("import torch")
        from neurodeploy import api
        from neurodeploy.converters import to_graph
        from neurodeploy.converters.load import load_model
        from neurodeploy.ir_io import save_graph
        from neurodeploy.passes import canonicalize
        from neurodeploy.targets import get_target
        lap("import neurodeploy (api, converters)")
        os.chdir(ROOT)
        loaded = load_model(DEMO[0], arch=DEMO[2])
        lap("load checkpoint + build arch")
        import torch.export._trace  # noqa: F401
        lap("import torch.export (dynamo, sympy)")
        graph = to_graph(loaded, until=loaded.extras.get("until"))
        lap("trace (torch.export) + convert")
        canonical = canonicalize(graph)
        lap("fold (BN / pools / norms)")
        target = get_target("sim")
        target.check(canonical)
        quantized = target.quantize(canonical)
        mapping = target.map(quantized)
        lap("check + quantise + map")
        save_graph(quantized, work / "graph.ir.npz")
        lap("emit IR")
        from neurodeploy.nir_io import write_nir
        write_nir(quantized, work / "network.nir")
        lap("emit NIR (incl. import nir/h5py)")
        target.emit(quantized, work, mapping=mapping)
        lap("emit target files")
        api._versions()
        lap("manifest (versions)")
    finally:
        os.environ.pop("NEURODEPLOY_CACHE", None)
        shutil.rmtree(work)
    total = sum(s for _, s in laps)
    print(f"\n{'stage (one cold in-process compile)':<40} {'s':>7} {'share':>6}")
    for name, s in laps:
        print(f"{name:<40} {s:7.3f} {s / total:6.1%}")
    print(f"{'total':<40} {total:7.3f}")
    print("(no --data: the profile stage and its PNG plot do not run; matplotlib loads only when a PNG is written)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--stages", action="store_true", help="also time the stages of one in-process compile")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    bench_cli(args.repeat)
    if args.stages:
        bench_stages()


if __name__ == "__main__":
    main()
