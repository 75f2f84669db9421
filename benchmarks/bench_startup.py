"""Start-up and compile-speed benchmark (issue 12, part 5).

Prints, each as the median of ``--repeat`` fresh processes (wall and CPU seconds; on a busy machine
CPU seconds are the steadier number):

* ``neurodeploy --help`` (goal <= 0.5 s),
* compiling the bundled demo, ``neurodeploy compile examples/digits_sfa.pt --arch
  examples/digits_sfa.py:build_model --target sim -o OUT`` (goal <= 2 s), cold (empty trace cache:
  torch.export runs) and warm (the trace is read back from the cache, see
  ``neurodeploy/converters/trace_cache.py``), and checks that both give byte-identical artefacts,
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
        ref = _artefacts(work / "cold0")
        same = all(_artefacts(work / f"{kind}{i}") == ref for kind in ("cold", "warm") for i in range(repeat))
        print(f"artefacts of all {2 * repeat} compiles byte-identical: {same} ({', '.join(ref)})")
    finally:
        shutil.rmtree(work)


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
