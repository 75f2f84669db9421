"""Compiled (numba) inner loops of the event engine. See ``neurodeploy.engine`` for semantics.

Plan arrays (built by ``engine.core._Plan``), all int64 unless said:

* stages (routing layers): ``st[s]`` = C_in, H_in, W_in, dc_in, dy_in, dx_in, C_out, H_out,
  W_out, sc_out, sy_out, sx_out, kh, kw, cin_g, cout_g, ry_off, rx_off, w_off, m_off (-1: no SSC
  mask); per-axis CSR ``ryp/ryo/ryk`` and ``rxp/rxo/rxk`` (pointers are absolute into ryo/rxo);
  ``wt`` weights in [cin_g, kh, kw, C_out] layout (state dtype); ``mask`` uint8.
* stage targets ``tg_ptr/tg_kind/tg_id`` and source edges ``src_ptr/src_kind/src_id``; kind 0 = an
  IF layer's membrane (identity address), 1 = a routing stage, 2 = a sink (non-spiking output).
* neurons: ``loff`` (layer offsets into the flat state), ``theta, lo, hi`` (state dtype), ``dmax``
  (budget D), ``heven`` (1: half-even tie rule at a barrier), ``nlayer`` (layer of each neuron).
* ``srcval[src]``: the value one event of a source carries (1, or 1/norm in float graphs).
* ``ctr``: [event id, log length, saturation hits].
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..numba_cache import numba_cache

CACHE = numba_cache(__file__)


@njit(cache=CACHE, inline='always')
def _gather(s, a, st, ryp, ryo, ryk, rxp, rxo, rxk, wt, mask, so, sw):
    Cin = st[s, 0]
    Hin = st[s, 1]
    Win = st[s, 2]
    ci = (a // st[s, 3]) % Cin
    y = (a // st[s, 4]) % Hin
    x = (a // st[s, 5]) % Win
    Cout = st[s, 6]
    Wout = st[s, 8]
    sc = st[s, 9]
    sy = st[s, 10]
    sx = st[s, 11]
    kh = st[s, 12]
    kw = st[s, 13]
    cin_g = st[s, 14]
    cout_g = st[s, 15]
    ry_off = st[s, 16]
    rx_off = st[s, 17]
    w_off = st[s, 18]
    m_off = st[s, 19]
    g = ci // cin_g
    cig = ci - g * cin_g
    co0 = g * cout_g
    n = 0
    for j in range(ryp[ry_off + y], ryp[ry_off + y + 1]):
        oy = ryo[j]
        ky = ryk[j]
        for i in range(rxp[rx_off + x], rxp[rx_off + x + 1]):
            ox = rxo[i]
            if m_off >= 0:
                if mask[m_off + oy * Wout + ox] == 0:
                    continue
            kx = rxk[i]
            base = oy * sy + ox * sx
            wb = w_off + ((cig * kh + ky) * kw + kx) * Cout
            for co in range(co0, co0 + cout_g):
                so[n] = base + co * sc
                sw[n] = wt[wb + co]
                n += 1
    return n


@njit(cache=CACHE, inline='always')
def _deliver(s, a, sv, L, eid, nt, st, ryp, ryo, ryk, rxp, rxo, rxk, wt, mask,
             loff, theta, lo, hi, dmax, v, cnt, stamp, touched, ctr):
    """Fused gather + accumulate for a stage whose only target is IF layer L."""
    Cin = st[s, 0]
    ci = (a // st[s, 3]) % Cin
    y = (a // st[s, 4]) % st[s, 1]
    x = (a // st[s, 5]) % st[s, 2]
    Cout = st[s, 6]
    Wout = st[s, 8]
    sc = st[s, 9]
    sy = st[s, 10]
    sx = st[s, 11]
    kh = st[s, 12]
    kw = st[s, 13]
    cin_g = st[s, 14]
    cout_g = st[s, 15]
    m_off = st[s, 19]
    g = ci // cin_g
    cig = ci - g * cin_g
    co0 = g * cout_g
    base0 = loff[L]
    th = theta[L]
    dm = dmax[L]
    h = hi[L]
    l = lo[L]
    n = 0
    for j in range(ryp[st[s, 16] + y], ryp[st[s, 16] + y + 1]):
        oy = ryo[j]
        ky = ryk[j]
        for i in range(rxp[st[s, 17] + x], rxp[st[s, 17] + x + 1]):
            ox = rxo[i]
            if m_off >= 0:
                if mask[m_off + oy * Wout + ox] == 0:
                    continue
            kx = rxk[i]
            base = base0 + oy * sy + ox * sx + co0 * sc
            wb = st[s, 18] + ((cig * kh + ky) * kw + kx) * Cout + co0
            for c in range(cout_g):
                idx = base + c * sc
                nv = v[idx] + sv * wt[wb + c]
                if nv > h:
                    nv = h
                    ctr[2] += 1
                elif nv < l:
                    nv = l
                    ctr[2] += 1
                v[idx] = nv
                if nv >= th and cnt[idx] < dm:
                    if stamp[idx] != eid:
                        stamp[idx] = eid
                        touched[nt] = idx
                        nt += 1
            n += cout_g
    return nt, n


@njit(cache=CACHE, inline='always')
def _accumulate(i, L, val, eid, nt, theta, lo, hi, dmax, v, cnt, stamp, touched, ctr):
    """Add ``val`` to neuron ``i`` of IF layer ``L`` (saturating at lo/hi, counted in ctr[2]) and
    list it in ``touched`` once per event when it may fire; the new length of ``touched``."""
    nv = v[i] + val
    if nv > hi[L]:
        nv = hi[L]
        ctr[2] += 1
    elif nv < lo[L]:
        nv = lo[L]
        ctr[2] += 1
    v[i] = nv
    if nv >= theta[L] and cnt[i] < dmax[L]:
        if stamp[i] != eid:
            stamp[i] = eid
            touched[nt] = i
            nt += 1
    return nt


GATE_STRIDE = 1 << 32


@njit(cache=CACHE, inline='always')
def _deliver_gate(gid, p, eid, nt, g_layer, g_woff, g_hw, g_cl, gw, loff, theta, lo, hi, dmax, v, cnt, stamp,
                  touched, ctr):
    """Gate ``gid`` at output position ``p``: channel f of IF layer g_layer[gid] gets gw[g_woff[gid]+f]."""
    L = g_layer[gid]
    w0 = g_woff[gid]
    F = g_woff[gid + 1] - w0
    hw = g_hw[gid]
    for f in range(F):
        if g_cl[gid] != 0:
            i = loff[L] + p * F + f
        else:
            i = loff[L] + f * hw + p
        nt = _accumulate(i, L, gw[w0 + f], eid, nt, theta, lo, hi, dmax, v, cnt, stamp, touched, ctr)
    return nt


@njit(cache=CACHE, inline='always')
def _fire(i, L, single, v, cnt, theta, dmax):
    """Per-event firing check of neuron ``i`` (layer ``L``): number of spikes fired now."""
    th = theta[L]
    if v[i] >= th and cnt[i] < dmax[L]:
        if single:
            k = 1
        else:
            k = np.int64(v[i] // th)
            rem = dmax[L] - cnt[i]
            if k > rem:
                k = rem
        v[i] -= k * th
        cnt[i] += k
        return k
    return 0


@njit(cache=CACHE)
def process(mode, src0, addrs, tstamps, e0, e1, single, record,
            st, ryp, ryo, ryk, rxp, rxo, rxk, wt, mask, tg_ptr, tg_kind, tg_id,
            src_ptr, src_kind, src_id, srcval, loff, theta, lo, hi, dmax, nlayer, soff,
            v, cnt, stamp, touched, sink, synops, ctr, wst_s, wst_a, wst_v, so, sw,
            es_l, es_a, log_l, log_a, log_t, g_layer, g_woff, g_hw, g_cl, g_stage, gw, g_eoff, gp_ptr, gp_pos):
    """The event loop (one function, so that nothing per event pays a call with many arrays).

    mode 0 (breadth, integrate only): deliver events ``addrs[e0:e1]`` of source ``src0``, no firing.
    mode 1 (depth): for each event of ``src0``: deliver it, let the neurons it brought to/above
    threshold fire per the rule (in the order they got there) and process the output events
    depth-first (LIFO stack; the first emitted is processed next) before the next input event.
    mode 2 (depth start tick): for neurons ``e0..e1-1`` of layer ``src0``: fire per the rule
    if at/above threshold, each neuron's events fully propagated before the next neuron.
    mode 3 (depth, host stream): as mode 1, but an address < 0 is a gate event -(1 + gid·2^32 + e):
    gate ``gid`` (an extra input feature of IF layer ``g_layer[gid]``) adds ``gw[g_woff[gid] + f]`` to
    the neuron (f, p) of every channel f at each output position p its event e reaches
    (``gp_pos[gp_ptr[g_eoff[gid] + e] : gp_ptr[g_eoff[gid] + e + 1]]``).
    """
    nst = st.shape[0]
    for e in range(e0, e1):
        sp = 0
        cur_t = -1
        if mode == 2:
            L = src0
            i = loff[L] + e
            k = _fire(i, L, single, v, cnt, theta, dmax)
            for r in range(k):
                es_l[sp] = L
                es_a[sp] = e
                sp += 1
                if record:
                    n = ctr[1]
                    log_l[n] = L
                    log_a[n] = e
                    log_t[n] = -1
                    ctr[1] = n + 1
        else:
            es_l[0] = src0
            es_a[0] = addrs[e]
            if mode == 3 and addrs[e] < 0:
                code = -1 - addrs[e]
                es_l[0] = -1 - code // GATE_STRIDE
                es_a[0] = code % GATE_STRIDE
            sp = 1
            cur_t = tstamps[e]
        while sp > 0:
            sp -= 1
            src = es_l[sp]
            a = es_a[sp]
            ctr[0] += 1
            eid = ctr[0]
            # ---- synaptic phase: deliver the event to every membrane it reaches
            nt = 0
            nw = 0
            if src < 0:
                gid = -1 - src
                ge = g_eoff[gid] + a
                for j in range(gp_ptr[ge], gp_ptr[ge + 1]):
                    nt = _deliver_gate(gid, gp_pos[j], eid, nt, g_layer, g_woff, g_hw, g_cl, gw, loff, theta, lo,
                                       hi, dmax, v, cnt, stamp, touched, ctr)
                    synops[g_stage[gid]] += g_woff[gid + 1] - g_woff[gid]
                src = 0
                val = srcval[0]
                ed0 = src_ptr[1]  # no source edges to walk
            else:
                val = srcval[src]
                ed0 = src_ptr[src]
            for ed in range(ed0, src_ptr[src + 1]):
                kd = src_kind[ed]
                tid = src_id[ed]
                if kd == 1:
                    wst_s[nw] = tid
                    wst_a[nw] = a
                    wst_v[nw] = val
                    nw += 1
                elif kd == 0:
                    nt = _accumulate(loff[tid] + a, tid, val, eid, nt, theta, lo, hi, dmax, v, cnt, stamp,
                                     touched, ctr)
                    synops[nst] += 1
                else:
                    sink[soff[tid] + a] += val
                    synops[nst] += 1
            while nw > 0:
                nw -= 1
                s = wst_s[nw]
                sa = wst_a[nw]
                sv = wst_v[nw]
                t0 = tg_ptr[s]
                if tg_ptr[s + 1] - t0 == 1 and tg_kind[t0] == 0:
                    nt, n = _deliver(s, sa, sv, tg_id[t0], eid, nt, st, ryp, ryo, ryk, rxp, rxo, rxk, wt, mask,
                                     loff, theta, lo, hi, dmax, v, cnt, stamp, touched, ctr)
                    synops[s] += n
                    continue
                n = _gather(s, sa, st, ryp, ryo, ryk, rxp, rxo, rxk, wt, mask, so, sw)
                for t in range(t0, tg_ptr[s + 1]):
                    kd = tg_kind[t]
                    tid = tg_id[t]
                    synops[s] += n
                    if kd == 0:
                        base = loff[tid]
                        th = theta[tid]
                        dm = dmax[tid]
                        h = hi[tid]
                        lw = lo[tid]
                        for j in range(n):
                            i = base + so[j]
                            nv = v[i] + sv * sw[j]
                            if nv > h:
                                nv = h
                                ctr[2] += 1
                            elif nv < lw:
                                nv = lw
                                ctr[2] += 1
                            v[i] = nv
                            if nv >= th and cnt[i] < dm:
                                if stamp[i] != eid:
                                    stamp[i] = eid
                                    touched[nt] = i
                                    nt += 1
                    elif kd == 1:
                        for j in range(n):
                            wst_s[nw] = tid
                            wst_a[nw] = so[j]
                            wst_v[nw] = sv * sw[j]
                            nw += 1
                    else:
                        base = soff[tid]
                        for j in range(n):
                            sink[base + so[j]] += sv * sw[j]
            if mode == 0:
                continue
            # ---- firing phase (depth order)
            sp0 = sp
            for j in range(nt):
                i = touched[j]
                L = nlayer[i]
                k = _fire(i, L, single, v, cnt, theta, dmax)
                o = i - loff[L]
                for r in range(k):
                    es_l[sp] = L
                    es_a[sp] = o
                    sp += 1
                    if record:
                        n = ctr[1]
                        log_l[n] = L
                        log_a[n] = o
                        log_t[n] = cur_t
                        ctr[1] = n + 1
            lo_i = sp0
            hi_i = sp - 1
            while lo_i < hi_i:
                tl = es_l[lo_i]
                ta = es_a[lo_i]
                es_l[lo_i] = es_l[hi_i]
                es_a[lo_i] = es_a[hi_i]
                es_l[hi_i] = tl
                es_a[hi_i] = ta
                lo_i += 1
                hi_i -= 1


@njit(cache=CACHE)
def barrier_fire(L, single, record, loff, theta, dmax, heven, v, cnt, kk, out_a, ctr, log_l, log_a, log_t):
    """Fire layer L after its barrier: each neuron fires n = clip(floor(v/θ), 0, D - fired)
    (one fewer on an exact half-even tie). Events: neuron-major ('multi') or timestep-major
    ('single': D rounds of at most one spike per neuron). Returns the number of events."""
    base = loff[L]
    N = loff[L + 1] - base
    th = theta[L]
    kmax = 0
    for o in range(N):
        i = base + o
        q = np.int64(v[i] // th)
        if heven[L] != 0 and q % 2 == 1 and v[i] - q * th == 0:
            q -= 1
        rem = dmax[L] - cnt[i]
        if q > rem:
            q = rem
        if q < 0:
            q = 0
        kk[o] = q
        if q > kmax:
            kmax = q
        v[i] -= q * th
        cnt[i] += q
    m = 0
    if single:
        for r in range(kmax):
            for o in range(N):
                if kk[o] > r:
                    out_a[m] = o
                    m += 1
    else:
        for o in range(N):
            for r in range(kk[o]):
                out_a[m] = o
                m += 1
    if record:
        n = ctr[1]
        for j in range(m):
            log_l[n] = L
            log_a[n] = out_a[j]
            log_t[n] = -1
            n += 1
        ctr[1] = n
    return m
