"""Event-driven engine: executes a canonical graph event by event through its routing tables.

Each event of a source (the spiking Input, or an IF layer) at a flat address is delivered through
the routing (``neurodeploy.routing``) of every routing layer it reaches (Conv2d / Conv1d / Linear /
SumPool2d; Flatten / Reshape / Add are address-preserving, so an Add is simply fan-in: events of
either branch add into the same target membranes). Membranes are int64 (quantised graphs: only the
``*_q`` fields are used) or float64 (unquantised graphs). The inner loops are numba-compiled
(``kernels.py``, ``cache=True``).

Neuron rule (per IF layer; parameters of :class:`EventEngine`)
-------------------------------------------------------------
* initial membrane ``v = v_init + static current``, where the static current is what reaches the
  neuron with every spike source at zero: the biases (a bias acts once, at the start) and, when the
  Input is not ``is_spikes``, the real-valued input integer-quantised with ``Input.scale_q`` and
  passed densely through the first layer(s) (MAC work, no events);
* each synaptic update ``v += w`` is clipped to ``[lo, hi]`` when ``saturate``: ``hi = 2^(b-1)-1``
  and ``lo = max(-2^(b-1), low_threshold_q)`` for ``state_bits = b`` (counted in
  ``EventResult.saturations``);
* firing: subtractive reset, threshold θ, budget D (``max_spikes``, overridable):
  ``rule='single'`` — at most one spike per neuron per input event (Speck: a neuron left above
  threshold stays silent until its next input event); ``rule='multi'`` — ``min(floor(v/θ), D-n)``
  spikes at once.

Processing orders
-----------------
* ``order='depth'`` (Speck): an input event is delivered; the neurons it brought to/above threshold
  (and below their budget) check, in the order they first got there, and each output event is fully
  propagated through later layers before the next one (a LIFO event stack: the first emitted is
  processed next), then the next input event. With ``start_tick`` neurons whose initial membrane
  is at/above threshold fire first (layer by layer, address order).
* ``order='breadth'`` (layer barrier): all input events are integrated; then, layer by layer in
  topological order, each IF layer fires once its whole input is integrated
  (``n = clip(floor(v/θ), 0, D)``, one fewer on an exact tie of a ``half_even`` layer) and its
  events are delivered. 'multi' emits them neuron-major, 'single' timestep-major (D rounds of at
  most one spike per neuron, i.e. a synchronous chip with all input at the first step).

Addresses are C-order flat indices (see ``neurodeploy.routing``). Internally a ``(C, H, W)`` layer
whose routing allows it is kept channel-last (``(y, x, c)``: the channels one event reaches are
adjacent in memory); counts and recorded events are given back in ``(c, y, x)``. Neuron-order
loops (breadth-first firing, start tick) run in that internal order.

Exactness against the layer-synchronous reference ``ops.evaluate``
--------------------------------------------------------------------
=================  =======================================================================
(rule, order)      spike counts equal to ``ops.evaluate``
=================  =======================================================================
multi,  breadth    **exact** (quantised graphs; float graphs when sums are exact, e.g. dyadic
                   values), any weight signs, Add/SumPool/Linear/D clipping/half-even ties —
                   as long as no intermediate membrane value saturates (``saturations == 0``;
                   ``ops`` clamps only the final sum).
single, breadth    same counts as (multi, breadth) (only the emission order differs).
multi,  depth      exact when every weight reaching a layer is >= 0 (membranes only rise, so
                   greedy firing gives min(floor(v/θ), D)), rounding is not half-even and
                   nothing saturates; otherwise not exact (early firing before negative input:
                   REFERENCE §1, ~13% wrong counts in layer 2).
single, depth      not exact in general (Speck): a neuron fires at most once per input event,
                   so counts are <= the multi counts; equal when each neuron's floor(v/θ) never
                   exceeds one per event (e.g. every weight < θ and non-negative).
=================  =======================================================================
Every run is deterministic for a given (rule, order, input event order).
"""

import importlib


__all__ = ["EVENT_DTYPE", "ORDERS", "RULES", "EventEngine", "EventResult", "events_from_raster",
           "events_to_addresses", "run_events", "run_events_batch", "stack_counts"]


def __getattr__(name):
    # core (torch, numba) loads on first use, so that `neurodeploy --help` can import engine.cli cheaply
    if name in __all__:
        return getattr(importlib.import_module(".core", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
