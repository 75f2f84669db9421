"""What calibration changed, measured on data it did not see: per neuron layer, the share of spike
counts equal to the float (integer-activation) model before and after calibration, as a table, a
dict and a PNG. Both graphs are evaluated in free run (each layer fed by its own quantised
predecessors), as the deployed program runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import ir, ops


@dataclass
class EffectRow:
    layer: str
    n_values: int
    equal_before: int
    equal_after: int

    def pct(self, which: str) -> float:
        return 100.0 * getattr(self, f"equal_{which}") / max(self.n_values, 1)


@dataclass
class CalibrationEffect:
    data: str                       # what the rows were measured on
    rows: list[EffectRow] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {"data": self.data, "note": self.note,
                "layers": [{"layer": r.layer, "n_values": r.n_values, "equal_before": r.equal_before,
                            "equal_after": r.equal_after, "pct_before": r.pct("before"),
                            "pct_after": r.pct("after")} for r in self.rows]}

    def table(self) -> str:
        lines = [f"calibration — counts equal to the model (integer activations) on {self.data}, "
                 "before -> after calibration"]
        if self.note:
            lines.append(f"  note: {self.note}")
        if self.rows:
            w = max([24] + [len(r.layer) for r in self.rows])
            lines.append(f"  {'layer':<{w}} {'values':>10} {'before':>8} {'after':>8}")
            for r in self.rows:
                lines.append(f"  {r.layer:<{w}} {r.n_values:>10,} {r.pct('before'):>7.2f}% {r.pct('after'):>7.2f}%")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..artifacts import atomic_path

        names = [r.layer for r in self.rows]
        pos = np.arange(len(names))
        fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) + 2), 3.6))
        ax.bar(pos - 0.2, [100 - r.pct("before") for r in self.rows], 0.4, label="before calibration")
        ax.bar(pos + 0.2, [100 - r.pct("after") for r in self.rows], 0.4, label="after calibration")
        ax.set_xticks(pos, names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("% counts differing from the model")
        ax.set_title(f"calibration effect on {self.data}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)


def measure(before: ir.Graph, after: ir.Graph, x, data: str) -> CalibrationEffect:
    """Per neuron layer counts equal to the float model, for two quantisations of one graph."""
    with torch.inference_mode():
        ref = ops.evaluate(before, x, quantized=False)
        qb = ops.evaluate(before, x, quantized=True)
        qa = ops.evaluate(after, x, quantized=True)
    rows = [EffectRow(n, int(ref[n].numel()), int((qb[n] == ref[n]).sum()), int((qa[n] == ref[n]).sum()))
            for n in before.neurons()]
    return CalibrationEffect(data, rows)
