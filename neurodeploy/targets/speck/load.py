"""Load a ``speck_config.json`` into samna on a machine with SynSense's (real) samna.

    python -m neurodeploy.targets.speck.load out/speck_config.json [--flash speck_flash.bin]

Builds the ``samna.speck2f`` configuration object, runs ``samna.speck2f.validate_configuration``
and writes the flash binary. Refuses to run (without importing samna) when only the PyPI stub is
installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ...artifacts import atomic_write
from .config import samna_available, samna_flash_binary, to_samna


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--flash", type=Path, default=None, help="flash binary path (default: beside the config)")
    a = ap.parse_args(argv)
    ok, why = samna_available()
    if not ok:
        print(f"cannot load into samna: {why}", file=sys.stderr)
        return 2
    cfg, (valid, msg) = to_samna(json.loads(a.config.read_text()))
    print(f"samna.speck2f.validate_configuration: {'OK' if valid else 'FAILED'} {msg}")
    if not valid:
        return 1
    out = a.flash or a.config.with_name("speck_flash.bin")
    atomic_write(out, samna_flash_binary(cfg))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
