"""Custom Lava process model: integrate-and-fire with subtractive reset on a layer-synchronous
schedule, in Loihi's fixed-point arithmetic. Imports Lava at module level: import this module
only where Lava is needed (the runner does).

Lava ships no subtractive-reset neuron (its CUBA LIF resets v to 0). NetX builds its layers with
the standard ``LIF`` process; the runner maps every ``LIF`` to :class:`PySfaIfModel` through
``Loihi2SimCfg(exception_proc_model_map={LIF: PySfaIfModel})`` and gives each neuron process its
schedule in ``proc_params['neurodeploy_sfa']`` (period, window start, D, v_init). This runs in
Lava's CPU simulation only; on Loihi 2 hardware the same behaviour needs a custom neuron
microcode program (Loihi 2 neurons are programmable): a one-shot initial membrane at τ = 1, the
gated firing window, and ``v -= θ << 6`` instead of ``v = 0`` on a spike. Everything else
(u/v update, decays, 24-bit wrap/saturation, strict ``v > vth << 6``) is Lava's own
``PyLifModelBitAcc`` code, inherited unchanged.
"""

from __future__ import annotations

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifModelBitAcc
from lava.proc.lif.process import LIF

SFA_KEY = "neurodeploy_sfa"


@implements(proc=LIF, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySfaIfModel(PyLifModelBitAcc):
    """Bit-accurate CUBA arithmetic + subtractive reset + per-layer firing window."""

    def run_spk(self):
        sfa = self.proc_params.get(SFA_KEY)
        if sfa is None:  # a LIF the schedule does not know about: stock Lava behaviour
            return super().run_spk()
        a_in_data = self.a_in.recv()
        if not self.isthrscaled:
            self.scale_threshold()
        tau = (int(self.time_step) - 1) % int(sfa["period"]) + 1
        if tau == 1:  # new sample: re-initialise the state (bias and v_init applied once)
            hi = self.max_uv_val - 1
            v0 = (np.int64(sfa["v_init"]) + self.bias_mant.astype(np.int64)) << 6
            self.u[:] = 0
            self.v[:] = np.clip(v0, -hi, hi)
            self._nd_fired = np.zeros(self.v.shape, dtype=np.int64)
        self.effective_bias = 0
        self.subthr_dynamics(activation_in=a_in_data)
        start, graded = int(sfa["start"]), bool(sfa.get("graded"))
        if start <= tau < start + (1 if graded else int(sfa["D"])):
            out = np.zeros(self.v.shape, dtype=np.int32)
            sub = (int(self.vth) + 1) << self.vth_shift
            # graded: D compare-and-subtract iterations in one step, the count as the payload
            for _ in range(int(sfa["D"]) if graded else 1):
                spikes = self.v > self.effective_vth
                if sfa.get("half_even"):  # an exact tie fires only after an odd number of spikes
                    fired = getattr(self, "_nd_fired", None)
                    if fired is None or fired.shape != self.v.shape:
                        fired = self._nd_fired = np.zeros(self.v.shape, dtype=np.int64)
                    spikes &= ~((self.v == sub) & (fired % 2 == 0))
                    fired += spikes
                self.v[spikes] -= sub
                out += spikes
        else:
            out = np.zeros(self.v.shape, dtype=np.int32)
        self.s_out.send(out if graded else out.astype(bool))
