"""Peak memory of `compile --data ... --verify` (profile + verify streamed) and of `calibrate` on a
folder of .npz shards as the number of samples grows (fresh process per run, peak RSS).

    .venv/bin/python benchmarks/bench_compile_memory.py [--sizes 1000,10000,100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARD = 10000


def child(cmd: str, data: str, out: str) -> None:
    from neurodeploy import api

    t = time.perf_counter()
    if cmd == "compile":
        api.compile(str(ROOT / "examples/digits_sfa.pt"), arch=f"{ROOT}/examples/digits_sfa.py:build_model",
                    target="sim", out_dir=out, data=data, verify=True)
    else:
        rec = api.calibrate(str(ROOT / "examples/digits_chain.pt"), arch=f"{ROOT}/examples/digits_chain.py:build_model",
                            target="loihi", calibration=data, out=out, max_samples=4096)
        print(rec["data_sampling"], file=sys.stderr)
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def shards(folder: Path, n: int) -> Path:
    d = folder / f"digits_{n}"
    d.mkdir()
    base = np.load(ROOT / "examples/digits_test.npz")
    rng = np.random.default_rng(0)
    for i, start in enumerate(range(0, n, SHARD)):
        idx = rng.integers(0, len(base["x"]), min(SHARD, n - start))
        np.savez(d / f"part{i:04d}.npz", x=base["x"][idx], y=base["y"][idx])
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--commands", default="compile,calibrate")
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory(prefix="nd_bench_") as tmp:
        for n in map(int, args.sizes.split(",")):
            data = shards(Path(tmp), n)
            for cmd in args.commands.split(","):
                out = Path(tmp) / f"{cmd}_{n}" / ("rec.json" if cmd == "calibrate" else "")
                out.parent.mkdir(exist_ok=True)
                r = subprocess.run([sys.executable, __file__, "--child", cmd, str(data), str(out)],
                                   capture_output=True, text=True, check=True)
                row = {"command": cmd, "samples": n, **json.loads(r.stdout.strip().splitlines()[-1])}
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
