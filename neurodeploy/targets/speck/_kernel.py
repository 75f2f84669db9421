"""Numba kernel of the local event-driven core simulator (the Speck arithmetic, one sample at a time).

Used by ``simulate.py`` when ``neurodeploy.engine`` is not available (or for the ladder settings
the shared engine does not expose). One call processes one sample's input events:

* an event ``(layer, c, y, x)`` at a core adds ``W[f, c, ky, kx]`` to every neuron its kernel reaches
  (one synaptic operation each), in (oy, ox, f) order, saturating the 16-bit state if ``saturate``;
* each touched neuron then fires: ``rule 0`` (single, the chip) at most one spike when v >= θ,
  ``rule 1`` (multi) floor(v/θ) spikes; subtractive reset by θ per spike; ``budget`` >= 0 caps a
  neuron's total spikes (the SFA spike budget D; the chip has none); then the floor
  ``v = max(v, low)`` if ``saturate``;
* the spikes go to the core's destinations (pooled: y//p, x//p; dropped outside the destination's
  input), processed depth-first (``order 0``: an emitted spike is followed through all downstream
  cores before the next one) or breadth-first (``order 1``: FIFO over the whole sample).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _grow(buf, n):
    new = np.empty((buf.shape[0] * 2, buf.shape[1]), dtype=buf.dtype)
    new[:n] = buf[:n]
    return new


@njit(cache=True)
def run_sample(P, wflat, vinit, dst, dpool, ev, rule, order, saturate, v, counts, synops):
    """P: int64 [L, 16] layer table (see simulate.py); ev: int64 [N, 3] (c, y, x) input events.

    ``v`` (state) and ``counts`` are flat int64 arrays (all layers) updated in place; ``synops`` [L].
    Returns the number of spikes emitted.
    """
    L = P.shape[0]
    n_in = ev.shape[0]
    # init state
    for i in range(v.shape[0]):
        v[i] = vinit[i]
        counts[i] = 0
    q = np.empty((max(1024, 4 * n_in), 4), dtype=np.int64)  # (layer, c, y, x)
    head = 0
    tail = 0
    emitted_total = 0
    emit = np.empty((1024, 3), dtype=np.int64)
    next_in = 0
    if order == 1:  # breadth: all input events first, in order
        for e in range(n_in):
            for d in range(2):
                dl = dst[L, d]
                if dl < 0:
                    continue
                p = dpool[L, d]
                yy = ev[e, 1] // p
                xx = ev[e, 2] // p
                if yy < P[dl, 1] and xx < P[dl, 2]:
                    if tail >= q.shape[0]:
                        q = _grow(q, tail)
                    q[tail, 0] = dl
                    q[tail, 1] = ev[e, 0]
                    q[tail, 2] = yy
                    q[tail, 3] = xx
                    tail += 1
        next_in = n_in
    while True:
        if order == 0:
            if tail == 0:  # stack empty: take the next input event
                if next_in >= n_in:
                    break
                e = next_in
                next_in += 1
                for dd in range(2):
                    d = 1 - dd  # push in reverse so destination 0 is processed first
                    dl = dst[L, d]
                    if dl < 0:
                        continue
                    p = dpool[L, d]
                    yy = ev[e, 1] // p
                    xx = ev[e, 2] // p
                    if yy < P[dl, 1] and xx < P[dl, 2]:
                        q[tail, 0] = dl
                        q[tail, 1] = ev[e, 0]
                        q[tail, 2] = yy
                        q[tail, 3] = xx
                        tail += 1
                continue
            tail -= 1
            l = q[tail, 0]
            c = q[tail, 1]
            y = q[tail, 2]
            x = q[tail, 3]
        else:
            if head >= tail:
                break
            l = q[head, 0]
            c = q[head, 1]
            y = q[head, 2]
            x = q[head, 3]
            head += 1
        # ---- process one event at layer l
        cin = P[l, 0]
        f = P[l, 3]
        ho = P[l, 4]
        wo = P[l, 5]
        k = P[l, 6]
        sy = P[l, 7]
        sx = P[l, 8]
        py = P[l, 9]
        px = P[l, 10]
        theta = P[l, 11]
        low = P[l, 12]
        budget = P[l, 13]
        woff = P[l, 14]
        voff = P[l, 15]
        n_emit = 0
        # output rows with 0 <= y + py - oy*sy < k
        oy0 = (y + py - k + 1 + sy - 1) // sy if y + py - k + 1 > 0 else 0
        oy1 = (y + py) // sy
        ox0 = (x + px - k + 1 + sx - 1) // sx if x + px - k + 1 > 0 else 0
        ox1 = (x + px) // sx
        if oy1 > ho - 1:
            oy1 = ho - 1
        if ox1 > wo - 1:
            ox1 = wo - 1
        for oy in range(oy1, oy0 - 1, -1):  # kernel tap ky ascending
            ky = y + py - oy * sy
            for ox in range(ox1, ox0 - 1, -1):
                kx = x + px - ox * sx
                for fo in range(f):
                    w = wflat[woff + ((fo * cin + c) * k + ky) * k + kx]
                    idx = voff + (fo * ho + oy) * wo + ox
                    vv = v[idx] + w
                    synops[l] += 1
                    if saturate:
                        if vv > 32767:
                            vv = 32767
                        elif vv < -32768:
                            vv = -32768
                    if vv >= theta:
                        if rule == 0:
                            n = 1
                        else:
                            n = vv // theta
                        if budget >= 0 and counts[idx] + n > budget:
                            n = budget - counts[idx]
                        if n > 0:
                            vv -= n * theta
                            counts[idx] += n
                            for _r in range(n):
                                if n_emit >= emit.shape[0]:
                                    emit = _grow(emit, n_emit)
                                emit[n_emit, 0] = fo
                                emit[n_emit, 1] = oy
                                emit[n_emit, 2] = ox
                                n_emit += 1
                    if saturate and vv < low:
                        vv = low
                    v[idx] = vv
        emitted_total += n_emit
        # ---- route the emitted spikes
        if order == 0:
            # push in reverse so the first emitted spike (and destination 0) is processed next
            for r in range(n_emit - 1, -1, -1):
                for dd in range(2):
                    d = 1 - dd
                    dl = dst[l, d]
                    if dl < 0:
                        continue
                    p = dpool[l, d]
                    yy = emit[r, 1] // p
                    xx = emit[r, 2] // p
                    if yy < P[dl, 1] and xx < P[dl, 2]:
                        if tail >= q.shape[0]:
                            q = _grow(q, tail)
                        q[tail, 0] = dl
                        q[tail, 1] = emit[r, 0]
                        q[tail, 2] = yy
                        q[tail, 3] = xx
                        tail += 1
        else:
            for r in range(n_emit):
                for d in range(2):
                    dl = dst[l, d]
                    if dl < 0:
                        continue
                    p = dpool[l, d]
                    yy = emit[r, 1] // p
                    xx = emit[r, 2] // p
                    if yy < P[dl, 1] and xx < P[dl, 2]:
                        if tail >= q.shape[0]:
                            if head > 0:  # compact the FIFO
                                q[:tail - head] = q[head:tail]
                                tail -= head
                                head = 0
                            if tail >= q.shape[0]:
                                q = _grow(q, tail)
                        q[tail, 0] = dl
                        q[tail, 1] = emit[r, 0]
                        q[tail, 2] = yy
                        q[tail, 3] = xx
                        tail += 1
    return emitted_total


@njit(cache=True)
def run_batch(P, wflat, vinit, dst, dpool, ev_all, ev_off, rule, order, saturate, counts_out, synops_out):
    """Samples one after another (state re-initialised per sample). ``ev_off`` [B+1] offsets into ev_all."""
    B = ev_off.shape[0] - 1
    v = np.empty(vinit.shape[0], dtype=np.int64)
    counts = np.empty(vinit.shape[0], dtype=np.int64)
    for b in range(B):
        syn = np.zeros(P.shape[0], dtype=np.int64)
        run_sample(P, wflat, vinit, dst, dpool, ev_all[ev_off[b]:ev_off[b + 1]], rule, order, saturate, v,
                   counts, syn)
        counts_out[b, :] = counts
        synops_out[b, :] = syn
