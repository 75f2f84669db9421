"""Start-up stays fast because the command line imports nothing heavy before a command runs.

Checked as an import-graph property in a fresh interpreter (not as a timing, which depends on the
machine): after ``--help`` / ``--version`` / ``COMMAND --help`` no heavy library is in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numba", "llvmlite", "matplotlib", "nir", "h5py", "lava", "onnx", "numpy", "scipy", "sympy")

PROBE = """
import json, sys
from neurodeploy.cli import main
args = json.loads(sys.argv[1])
try:
    main(args, standalone_mode=False)
except SystemExit:
    pass
heavy = json.loads(sys.argv[2])
print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))
"""


def _heavy_modules_after(args: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)],
                         capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_no_heavy_library():
    code = ("import sys, json, neurodeploy.cli; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({list(HEAVY)!r}))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["compile", "--help"], ["simulate", "--help"],
                                  ["route", "--help"], ["verify", "--help"]])
def test_help_and_version_load_no_heavy_library(args):
    assert _heavy_modules_after(args) == []


def test_engine_package_exports_stay_available_lazily():
    code = ("import sys, neurodeploy.engine as e; assert 'torch' not in sys.modules; "
            "assert e.EventEngine.__name__ == 'EventEngine' and 'neurodeploy.engine.core' in sys.modules; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
