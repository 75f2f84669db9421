"""Fused per-neuron IF kernels (numba): one pass over memory per layer instead of ~5·D tensor ops.

``if_sync_kernel*`` / ``if_stream_kernel`` / ``if_sync_refine`` step every neuron they handle
through its timesteps (membrane, threshold, subtractive reset, one spike per step); they only fuse
the loops. The exact fast sync path (see :mod:`neurodeploy.simulator.core`) adds
``if_sync_closed_form*`` (closed-form counts where a float32 error bound decides them, and the list
of neurons it cannot decide), ``conv2d_exact_at*`` / ``linear_exact_at`` (exact integer sums at those
neurons) and ``if_sync_refine`` (their time-stepped dynamics). No kernel uses threads. A pure-torch
fallback (time-stepped path only) is used when numba is not available.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - numba is a dependency, the fallback is defensive
    from numba import njit
    HAVE_NUMBA = True
except Exception:  # pragma: no cover
    HAVE_NUMBA = False

    def njit(*a, **k):
        def wrap(f):
            return f
        return wrap

from ..numba_cache import numba_cache  # noqa: E402

CACHE = numba_cache(__file__) if HAVE_NUMBA else False


@njit(cache=CACHE, nogil=True)
def if_sync_kernel(cur, add, div, hi, theta, D, half_even, tol, counts, train, record, S):
    """Layer-synchronous IF: v = min((cur + add) / div, hi); then D steps of fire/subtract.

    ``cur``/``counts``: flat [B*S]; ``train``: flat [B*D*S] uint8 (only written if ``record``).
    Returns the number of near-ties (|v/θ − k| < tol for an integer 1 <= k <= D)."""
    n = cur.shape[0]
    near = 0
    inv = 1.0 / theta
    for i in range(n):
        v = (cur[i] + add) / div
        if v > hi:
            v = hi
        u = v * inv
        r = np.floor(u + 0.5)
        if abs(u - r) < tol and r >= 1.0 and r <= D:
            near += 1
        c = 0
        if record:
            b = i // S
            j = i - b * S
        for t in range(D):
            if half_even:
                fire = v > theta or (v == theta and (c & 1) == 1)
            else:
                fire = v >= theta
            if fire:
                c += 1
                v -= theta
                if record:
                    train[(b * D + t) * S + j] = 1
            else:
                # no spike: the state is unchanged and no input arrives later, so every remaining
                # step would repeat this one: stop stepping this neuron
                break
        counts[i] = c
    return near


@njit(cache=CACHE, nogil=True)
def if_stream_kernel(v, cur, has_cur, div, count, spikes, theta, D, half_even, hi, lo):
    """One streaming step for a layer, in place: v += cur/div (if has_cur), clamp, fire at most
    once if the budget allows, subtract. ``spikes`` (float64 0/1) is written. Returns #spikes."""
    n = v.shape[0]
    total = 0
    for i in range(n):
        x = v[i]
        if has_cur:
            x += cur[i] / div
        if x > hi:
            x = hi
        if x < lo:
            x = lo
        c = count[i]
        fire = False
        if c < D:
            if half_even:
                fire = x > theta or (x == theta and (int(c) & 1) == 1)
            else:
                fire = x >= theta
        if fire:
            x -= theta
            count[i] = c + 1.0
            spikes[i] = 1.0
            total += 1
        else:
            spikes[i] = 0.0
        v[i] = x
    return total


@njit(cache=CACHE, nogil=True)
def if_sync_kernel_blocked(cur, add, div, hi, theta, D, half_even, tol, counts):
    """Same dynamics and result as :func:`if_sync_kernel` (without recording trains), stepped block
    by block: 2048 neurons' membranes and counts stay in cache while all D timesteps are applied to
    them with branch-free (vectorisable) updates. ~3x faster."""
    n = cur.shape[0]
    near = 0
    inv = 1.0 / theta
    BS = 2048
    v = np.empty(BS)
    c = np.empty(BS)
    for s in range(0, n, BS):
        m = min(BS, n - s)
        for j in range(m):
            x = (cur[s + j] + add) / div
            x = x if x < hi else hi
            v[j] = x
            c[j] = 0.0
            u = x * inv
            r = np.floor(u + 0.5)
            if abs(u - r) < tol and r >= 1.0 and r <= D:
                near += 1
        for t in range(D):  # timestep t for the whole block
            if half_even:
                for j in range(m):
                    x = v[j]
                    cc = c[j]
                    odd = cc - 2.0 * np.floor(cc * 0.5)
                    f = 1.0 if (x > theta) or (x == theta and odd == 1.0) else 0.0
                    c[j] = cc + f
                    v[j] = x - theta * f
            else:
                for j in range(m):
                    x = v[j]
                    f = 1.0 if x >= theta else 0.0
                    c[j] += f
                    v[j] = x - theta * f
        for j in range(m):
            counts[s + j] = c[j]
    return near


@njit(cache=CACHE, nogil=True)
def recombine_limbs(y, pw, bias, has_bias, S, out):
    """out[r, p] = Σ_j y[r, j, p]·pw[j] (+ bias[(r % G)·Og + p // S]) for limb results ``y``
    [R, L, P] (float32 integers) -> ``out`` [R, P] float64; exact (see simulator.core)."""
    R, L, P = y.shape
    nb = bias.shape[0]
    Og = P // S
    for r in range(R):
        for p in range(P):  # contiguous, vectorisable passes, one per limb
            out[r, p] = np.float64(y[r, 0, p]) * pw[0]
        for j in range(1, L):
            w = pw[j]
            for p in range(P):
                out[r, p] += np.float64(y[r, j, p]) * w
        if has_bias:
            base = (r * Og) % nb
            for o in range(Og):
                b = bias[base + o]
                for p in range(o * S, (o + 1) * S):
                    out[r, p] += b


# -- filter-and-refine sync path (see simulator.core, "fast exact sync path") ----------------------

@njit(cache=CACHE, nogil=True)
def if_sync_closed_form(y, v0, hi, theta, D, m, counts, counts64, flagged):
    """Counts from *approximate* membranes ``y + v0`` (``y``: float32 currents, bias included)
    whose error is at most ``m - 2·tol·θ``: n = clip(floor((y + v0)/θ), 0, D), written to ``counts``
    (float32, the next layer's input) and ``counts64`` (int64, the result).

    A neuron whose approximate membrane lies within ``m`` of a firing boundary k·θ (1 <= k <= D),
    or above ``hi - m`` (saturation), is not decided here: its flat index is written to
    ``flagged`` (its count is recomputed from the exact current). Every other neuron's exact
    membrane is on the same side of every boundary as the approximate one and is no tie, so its
    count is exact. Returns the number of flagged neurons."""
    n = y.shape[0]
    inv = 1.0 / theta
    Df = float(D)
    lo_hi = hi - m
    nf = 0
    BS = 128  # blocks: the (rare) flagged neurons are collected only in blocks that have some
    fb = np.zeros(BS, dtype=np.int32)
    nb = (n + BS - 1) // BS
    for b in range(nb):
        s0 = b * BS
        L = min(n - s0, BS)
        anyf = 0
        for j in range(L):  # branch-free, vectorisable
            v = np.float64(y[s0 + j]) + v0
            u = v * inv
            c = min(max(np.floor(u), 0.0), Df)
            counts[s0 + j] = c
            counts64[s0 + j] = np.int64(c)
            k = min(max(np.floor(u + 0.5), 1.0), Df)
            anyf += (np.abs(v - k * theta) <= m) | (v >= lo_hi)
        if anyf:
            for j in range(L):
                v = np.float64(y[s0 + j]) + v0
                k = min(max(np.floor(v * inv + 0.5), 1.0), Df)
                fb[j] = (np.abs(v - k * theta) <= m) | (v >= lo_hi)
            for j in range(L):
                if fb[j]:
                    flagged[nf] = s0 + j
                    nf += 1
    return nf


@njit(cache=CACHE, nogil=True)
def if_sync_closed_form32(y, inv, a, lo_hi, D, m, counts, counts64, flagged):
    """:func:`if_sync_closed_form` in float32 and threshold units: u = y·inv + a (``inv`` ≈ 1/θ,
    ``a`` ≈ v0/θ, all float32), n = clip(floor(u), 0, D); flagged where |u − k| <= ``m`` for the
    nearest k in 1..D, or u >= ``lo_hi``. The caller folds the float32 roundings of inv, a, the
    product and the sum into ``m`` and ``lo_hi`` (see simulator.core._if_sync_fast)."""
    n = y.shape[0]
    Df = np.float32(D)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    half = np.float32(0.5)
    nf = 0
    BS = 128  # blocks: the (rare) flagged neurons are collected only in blocks that have some
    fb = np.zeros(BS, dtype=np.int32)
    nb = (n + BS - 1) // BS
    for b in range(nb):
        s0 = b * BS
        L = min(n - s0, BS)
        anyf = 0
        for j in range(L):  # branch-free, vectorisable
            u = y[s0 + j] * inv + a
            c = min(max(np.floor(u), zero), Df)
            counts[s0 + j] = c
            counts64[s0 + j] = np.int64(c)
            k = min(max(np.floor(u + half), one), Df)
            anyf += (np.abs(u - k) <= m) | (u >= lo_hi)
        if anyf:
            for j in range(L):
                u = y[s0 + j] * inv + a
                k = min(max(np.floor(u + half), one), Df)
                fb[j] = (np.abs(u - k) <= m) | (u >= lo_hi)
            for j in range(L):
                if fb[j]:
                    flagged[nf] = s0 + j
                    nf += 1
    return nf


@njit(cache=CACHE, nogil=True, fastmath={"reassoc", "contract"})
def conv2d_exact_at(x, w, idx, nidx, O, Ho, Wo, sh, sw, ph, pw, dh, dw, groups, out):
    """Exact integer conv outputs (no bias) at the flat output indices ``idx[:nidx]`` of an
    [B, O, Ho, Wo] result. ``x``: channels-last [B, H, W, C] (float32 integers); ``w``:
    [O, KH, KW, C/groups] float64 integers. Float64 products and sums of integers are exact in any
    order (every partial sum is bounded by Σ|w|·max|x| < 2**52), hence ``reassoc`` is harmless."""
    H, W, C = x.shape[1], x.shape[2], x.shape[3]
    KH, KW, Cg = w.shape[1], w.shape[2], w.shape[3]
    Og = O // groups
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    for t in range(nidx):
        i = idx[t]
        ow = i % Wo
        q = i // Wo
        oh = q % Ho
        q = q // Ho
        o = q % O
        b = q // O
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        # kernel rows / columns that fall inside the (unpadded) input
        kh0 = 0 if h0 >= 0 else (-h0 + dh - 1) // dh
        kh1 = min(KH, (H - 1 - h0) // dh + 1) if H - 1 - h0 >= 0 else 0
        kw0 = 0 if w0 >= 0 else (-w0 + dw - 1) // dw
        kw1 = min(KW, (W - 1 - w0) // dw + 1) if W - 1 - w0 >= 0 else 0
        c0 = (o // Og) * Cg
        acc = 0.0
        # unsigned offsets: numba then skips its negative-index wraparound, and the inner loops
        # vectorise (~8x)
        for kh in range(kh0, kh1):
            if dw == 1 and Cg == C:  # the kernel row's inputs are one contiguous run
                if kw1 <= kw0:
                    continue
                xr = np.uint64(((b * H + h0 + kh * dh) * W + w0 + kw0) * C)
                wr = np.uint64(((o * KH + kh) * KW + kw0) * Cg)
                for j in range(np.uint64((kw1 - kw0) * C)):
                    acc += np.float64(xf[xr + j]) * wf[wr + j]
            else:
                for kw in range(kw0, kw1):
                    xr = np.uint64(((b * H + h0 + kh * dh) * W + w0 + kw * dw) * C + c0)
                    wr = np.uint64(((o * KH + kh) * KW + kw) * Cg)
                    for c in range(np.uint64(Cg)):  # contiguous in both
                        acc += np.float64(xf[xr + c]) * wf[wr + c]
        out[t] = acc


@njit(cache=CACHE, nogil=True, fastmath={"reassoc", "contract"})
def conv2d_exact_at_nchw(x, w, idx, nidx, O, Ho, Wo, sh, sw, ph, pw, dh, dw, groups, out):
    """:func:`conv2d_exact_at` reading ``x`` [B, C, H, W] and ``w`` [O, C/groups, KH, KW] directly
    (cheaper than a channels-last copy of ``x`` when few outputs are needed)."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    Cg, KH, KW = w.shape[1], w.shape[2], w.shape[3]
    Og = O // groups
    xf = x.reshape(-1)
    wf = w.reshape(-1)
    HW = H * W
    KK = KH * KW
    for t in range(nidx):
        i = idx[t]
        ow = i % Wo
        q = i // Wo
        oh = q % Ho
        q = q // Ho
        o = q % O
        b = q // O
        h0 = oh * sh - ph
        w0 = ow * sw - pw
        kh0 = 0 if h0 >= 0 else (-h0 + dh - 1) // dh
        kh1 = min(KH, (H - 1 - h0) // dh + 1) if H - 1 - h0 >= 0 else 0
        kw0 = 0 if w0 >= 0 else (-w0 + dw - 1) // dw
        kw1 = min(KW, (W - 1 - w0) // dw + 1) if W - 1 - w0 >= 0 else 0
        xb = (b * C + (o // Og) * Cg) * HW
        wb = o * Cg * KK
        acc = 0.0  # exact integers: the order is irrelevant
        for kh in range(kh0, kh1):
            for kw in range(kw0, kw1):
                xr = np.uint64(xb + (h0 + kh * dh) * W + w0 + kw * dw)  # unsigned: no wraparound checks
                wr = np.uint64(wb + kh * KW + kw)
                for c in range(np.uint64(Cg)):
                    acc += np.float64(xf[xr + c * np.uint64(HW)]) * wf[wr + c * np.uint64(KK)]
        out[t] = acc


@njit(cache=CACHE, nogil=True, fastmath={"reassoc", "contract"})
def linear_exact_at(x, w, idx, nidx, out):
    """Exact ``x @ w.T`` (no bias) at flat indices of an [R, O] result; ``x`` [R, K], ``w`` [O, K]."""
    O, K = w.shape
    for t in range(nidx):
        i = idx[t]
        r = i // O
        o = i - r * O
        acc = 0.0
        for k in range(K):
            acc += np.float64(x[r, k]) * w[o, k]
        out[t] = acc


@njit(cache=CACHE, nogil=True)
def if_sync_refine(cur, idx, nidx, bias, has_bias, O, S, v0, hi, theta, D, half_even, tol, counts, counts64):
    """The flagged neurons of :func:`if_sync_closed_form`, from their exact currents ``cur[:nidx]``:
    v = min(cur + bias[o] + v0, hi), then D timesteps of fire / subtract (as :func:`if_sync_kernel`).
    ``counts64`` may be ``counts`` itself. Returns the number of near-ties among them."""
    near = 0
    inv = 1.0 / theta
    for t in range(nidx):
        i = idx[t]
        o = (i // S) % O
        v = cur[t] + v0
        if has_bias:
            v += bias[o]
        if v > hi:
            v = hi
        u = v * inv
        r = np.floor(u + 0.5)
        if abs(u - r) < tol and r >= 1.0 and r <= D:
            near += 1
        c = 0
        for _ in range(D):
            if half_even:
                fire = v > theta or (v == theta and (c & 1) == 1)
            else:
                fire = v >= theta
            if not fire:
                break
            c += 1
            v -= theta
        counts[i] = c
        counts64[i] = c
    return near


@njit(cache=CACHE, nogil=True)
def quantize_input_f32(x, scale, out):
    """out = round_half_even(x·scale) as float32 (the caller guarantees |result| < 2**24, so it is
    exact), the same integers as :func:`neurodeploy.ops.quantize_input` in one pass."""
    for i in range(x.shape[0]):
        out[i] = np.rint(x[i] * scale)


@njit(cache=CACHE, nogil=True, inline="always")
def _block_test(m, lo_hi, C, S, start, L):
    """(margin, bound) of the neurons start .. start+L-1 of a layer viewed as [B·C, S] (row r is
    channel r % C): the largest margin and the lowest bound of the rows the block spans (a wider
    test than each row's own: never a wrong decision)."""
    r0 = start // S
    mc = m[r0 % C]
    lc = lo_hi[r0 % C]
    for r in range(r0 + 1, (start + L - 1) // S + 1):
        mc = max(mc, m[r % C])
        lc = min(lc, lo_hi[r % C])
    return mc, lc


@njit(cache=CACHE, nogil=True)
def if_sync_closed_form32_rows(y, C, S, inv, a, lo_hi, D, m, counts, counts8, w8, flagged, base):
    """:func:`if_sync_closed_form32` with one margin ``m[c]`` / saturation bound ``lo_hi[c]`` per
    output channel, writing float32 counts only (the int64 copy is made later, off the layer chain),
    for a part ``y`` (and ``counts``: the same part) of a layer's flat result that starts at flat
    index ``base``; with ``w8`` also a uint8 copy ``counts8`` (D <= 255: the next layer's exact
    gathers read 4x less memory). The layer is viewed as ``[B·C, S]`` (row r is
    channel r % C). A block that spans rows of several channels uses the largest margin and the
    lowest bound among them (a wider test: never a wrong decision). The flagged neurons' layer-wide
    flat indices are written to ``flagged`` (a caller splitting a layer across threads gives each
    part its own slice). Returns the number flagged."""
    n = y.shape[0]
    Df = np.float32(D)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    half = np.float32(0.5)
    nf = 0
    BS = 128  # blocks: the (rare) flagged neurons are collected only in blocks that have some
    fb = np.zeros(BS, dtype=np.uint8)
    for blk in range((n + BS - 1) // BS):  # indices provably >= 0 (else no vectorisation)
        s0 = blk * BS
        L = min(n - s0, BS)
        mc, lc = _block_test(m, lo_hi, C, S, base + s0, L)
        anyf = 0
        if w8:
            for j in range(L):  # branch-free, vectorisable
                u = y[s0 + j] * inv + a
                c = min(max(np.floor(u), zero), Df)
                counts[s0 + j] = c
                counts8[s0 + j] = np.uint8(c)
                k = min(max(np.floor(u + half), one), Df)
                f = (np.abs(u - k) <= mc) | (u >= lc)
                fb[j] = f
                anyf += f
        else:
            for j in range(L):
                u = y[s0 + j] * inv + a
                counts[s0 + j] = min(max(np.floor(u), zero), Df)
                k = min(max(np.floor(u + half), one), Df)
                f = (np.abs(u - k) <= mc) | (u >= lc)
                fb[j] = f
                anyf += f
        if anyf:
            for j in range(L):
                if fb[j]:
                    flagged[nf] = base + s0 + j
                    nf += 1
    return nf


@njit(cache=CACHE, nogil=True)
def if_sync_closed_form32_inplace(y, C, S, inv, a, lo_hi, D, m, counts8, w8, flagged, base):
    """:func:`if_sync_closed_form32_rows` writing the float32 counts over ``y`` itself (the layer's
    convolution result, read by nothing else): the next convolution then reads the memory the last
    one wrote, as a PyTorch forward that applies its activation in place does, and no separate
    counts buffer is streamed through the caches. ~2x faster than the rows kernel: one pass per
    128-block that ORs the flags into one boolean (vectorised) and keeps the block's membranes in a
    small buffer, scanned again only in the (rare) blocks that have a flagged neuron. Same tests,
    counts, uint8 copy and flagged indices as the rows kernel."""
    n = y.shape[0]
    Df = np.float32(D)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    half = np.float32(0.5)
    nf = 0
    BS = 128
    u_blk = np.empty(BS, dtype=np.float32)
    for blk in range((n + BS - 1) // BS):  # indices provably >= 0 (else no vectorisation)
        s0 = blk * BS
        L = min(n - s0, BS)
        mc, lc = _block_test(m, lo_hi, C, S, base + s0, L)
        anyf = False
        if w8:
            for j in range(L):  # branch-free, vectorisable
                u = y[s0 + j] * inv + a
                u_blk[j] = u
                c = min(max(np.floor(u), zero), Df)
                k = min(max(np.floor(u + half), one), Df)
                anyf |= (np.abs(u - k) <= mc) | (u >= lc)
                y[s0 + j] = c
                counts8[s0 + j] = np.uint8(c)
        else:
            for j in range(L):
                u = y[s0 + j] * inv + a
                u_blk[j] = u
                k = min(max(np.floor(u + half), one), Df)
                anyf |= (np.abs(u - k) <= mc) | (u >= lc)
                y[s0 + j] = min(max(np.floor(u), zero), Df)
        if anyf:
            for j in range(L):
                u = u_blk[j]
                k = min(max(np.floor(u + half), one), Df)
                if (np.abs(u - k) <= mc) | (u >= lc):
                    flagged[nf] = base + s0 + j
                    nf += 1
    return nf


@njit(cache=CACHE, nogil=True)
def quantize_input_f32_cl(x, C, S, scale, out):
    """:func:`quantize_input_f32` writing channels-last: ``x`` flat NCHW [B, C, S] (float64),
    ``out`` flat [B, S, C] float32."""
    B = x.shape[0] // (C * S)
    for b in range(B):
        for c in range(C):
            src = (b * C + c) * S
            dst = b * S * C + c
            for s in range(S):
                out[dst + s * C] = np.rint(x[src + s] * scale)


@njit(cache=CACHE, nogil=True)
def max_abs(x):
    """max |x| of a flat float64 array in one pass (inf if any NaN; 0 if empty). On the bit
    patterns: without the sign bit, non-negative doubles order as integers, and every NaN lies
    above inf; an integer max vectorises (a float max with NaN checks does not: ~5x slower)."""
    bits = x.view(np.int64)
    m = np.int64(0)
    mask = np.int64(0x7FFFFFFFFFFFFFFF)
    for i in range(bits.shape[0]):
        m = max(m, bits[i] & mask)
    if m > np.int64(0x7FF0000000000000):  # a NaN
        return np.inf
    out = np.empty(1, dtype=np.int64)
    out[0] = m
    return out.view(np.float64)[0]


@njit(cache=CACHE, nogil=True)
def counts_to_int64(c, out):
    """int64 copy of float32 spike counts (integers below 2**31; via int32: ~1.3x faster than a
    direct float -> int64 conversion without AVX-512), or of their uint8 copy (~15 % faster)."""
    for i in range(c.shape[0]):
        out[i] = np.int32(c[i])
