"""Lava process model for time-stepped LIF layers that Lava's stock CUBA LIF cannot run: reset by
subtraction (same step, or one step later as snnTorch's ``reset_delay=True``) and non-strict
firing (``v >= θ``, SpikingJelly / sinabs SingleSpike). Imports Lava: import only where Lava runs.

Everything else (u/v decay, 24-bit wrap and saturation, bias) is Lava's own ``PyLifModelBitAcc``
code, inherited unchanged. Layers with reset to zero and strict firing do not use this model:
they run on the stock ``PyLifModelBitAcc``, i.e. on stock Loihi 2 neurons.
"""

from __future__ import annotations

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifModelBitAcc
from lava.proc.lif.process import LIF

LIF_KEY = "neurodeploy_lif"


@implements(proc=LIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyTimeSteppedLifModel(PyLifModelBitAcc):
    """CUBA arithmetic + subtractive reset (same or next step) + strict or non-strict firing."""

    def run_spk(self):
        cfg = self.proc_params.get(LIF_KEY)
        if cfg is None:  # a layer that runs stock: Lava's behaviour unchanged
            return super().run_spk()
        a_in_data = self.a_in.recv()
        self.scale_bias()
        if not self.isthrscaled:
            self.scale_threshold()
        theta = np.int64(self.vth) << self.vth_shift
        pending = getattr(self, "_nd_pending", None)
        if pending is not None and cfg["reset_timing"] == "next_step":
            self.effective_bias = self.effective_bias - pending * theta  # snnTorch: −θ one step later
        self.subthr_dynamics(activation_in=a_in_data)
        spikes = self.v >= theta if cfg["firing"] == "non_strict" else self.v > self.effective_vth
        if cfg["reset_timing"] == "same_step":
            self.v[spikes] -= theta
        self._nd_pending = spikes.astype(np.int64)
        self.s_out.send(spikes)
