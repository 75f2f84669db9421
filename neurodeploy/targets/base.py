"""The one small interface every target implements.

A target receives a *canonical* graph (``passes.canonicalize``: BatchNorm folded, AvgPool turned
into SumPool, Scale nodes and activation norms folded away, so weight layers feed IF neurons
directly or through SumPool/Flatten/Add) and goes through the Rockpool-style stages::

    check (design rules) -> quantize -> map -> emit artefacts ; simulate (bit-accurate)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import ir


class Target:
    name: str = "?"

    def check(self, graph: ir.Graph) -> list[str]:
        """Every design-rule violation, one message each (layer, limit, actual value, fix)."""
        return []

    def quantize(self, graph: ir.Graph, calibration=None, **options) -> ir.Graph:
        """Return a copy with the ``*_q`` fields and ``metadata['quantization']`` set."""
        raise NotImplementedError

    def map(self, graph: ir.Graph, **options) -> dict[str, Any]:
        """Placement of layers on cores (targets without cores return {})."""
        return {}

    def emit(self, graph: ir.Graph, out_dir: Path, **options) -> dict[str, Path]:
        """Write the target's artefacts into ``out_dir`` (a temp folder: it is renamed into
        place by the caller only when everything succeeded). Returns {artefact name: path}."""
        return {}

    def simulate(self, graph: ir.Graph, x, **options):
        """Bit-accurate simulation of the target on a batch; returns a SimResult."""
        raise NotImplementedError

    def barrier_cost(self, graph: ir.Graph, **options) -> dict | None:
        """What an in-network layer barrier adds on the chip (host events, kernel memory, SynOps);
        None for targets without one (only Speck has one)."""
        return None
