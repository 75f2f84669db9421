"""Loihi 2 quantisation (8-bit weight mantissa, 17-bit threshold mantissa, 24-bit state).

Rules (per spiking layer, canonical graph; counts flow between layers so every layer has its own
scale ``S``; the first layer's input is the graded integer ``x_int = round(x · s_in)``):

* weights: ``w_q = round(w · s)`` with ``s = M / max|w|``; ``M = 255`` for an all-non-negative
  (excitatory) layer, ``M = 127`` otherwise. Those ranges are exactly the ones NetX's
  ``optimize_weight_bits`` + Lava's Dense synapse (clip to 8 bits, truncate by ``num_weight_bits``,
  shift the sum by ``weight_exp``) reproduce without loss. (Mixed-sign weights in [−256, 255]
  through a plain Lava ``Dense`` with ``num_weight_bits=8`` lose their LSB; NetX avoids that by
  pre-shifting the weights by ``scale_bits`` and setting ``weight_exp = −scale_bits``, which is
  what the ``.net`` loader does and what :func:`netx_dense_weights` emulates bit for bit.)
* ``S = s · s_dom`` (``s_dom = s_in`` for the first layer, 1 for layers fed by spike counts);
  ``b_q = round(b·S)``, ``θ_q = round(θ·S)`` written as ``vThMant = θ_q − 1`` (Lava fires on
  ``v > vThMant << 6`` while the IF model fires on ``V ≥ θ``, and ``v = 64·V`` exactly),
  ``v_init_q = round(v_init · S)``.
* ``vThMant`` is 17-bit: if ``θ_q − 1 > 131071`` the layer scale is lowered until it fits (the
  weights lose precision; reported as ``threshold_at_limit``).
* state: ``v`` saturates at ±(2^23 − 1) = 64·131071.98 and ``u = a_in << 6`` wraps at 2^23. The
  worst-case membrane (``fan_bound``·max input + |b_q| + |v_init_q|; ``fan_bound`` is the larger of
  a neuron's positive and negative weight sums for non-negative input, Σ|w_q| for signed input)
  and per-timestep input must
  stay below 2^17; with ``guard_state=True`` (default) the layer's weight scale is lowered until
  they do (reported as ``state_guard_scale``; typically only the first layer, whose 8-bit graded
  input arrives in one timestep), so the chip's counts equal the integer model exactly. With
  ``guard_state=False`` the overflow risk is only reported (``may_saturate`` / ``may_wrap``); the
  simulator reproduces saturation and wrapping exactly, so Lava and the simulator still agree, but
  counts can then deviate from the integer model.

* ``synapse_groups=2`` (conv layers): each weight is two 8-bit synapse groups,
  ``w_q = hi·2^k + lo`` with ``|hi| ≤ M`` at weight exponent ``k`` and ``lo`` in
  ``[−2^(k−1), 2^(k−1))`` at exponent 0, so a layer gets up to 8 more bits of weight resolution
  (``M·2^8``), still bounded by the 17-bit threshold and the state guard above; ``k`` is the
  smallest that holds the layer's largest weight. Every input spike then reaches two synapses
  (twice the synapse memory and synaptic operations of the layer). Lava's CPU ``Conv`` ignores
  ``weight_exp`` and takes the integer ``w_q`` as it is, which equals the two groups' sum by
  construction; on a chip the groups are two synapse lists per source (not run here: no Loihi).
  Dense layers keep one group (Lava's ``Dense`` applies ``weight_exp`` and clips to 8 bits, so a
  second group would need a second ``Dense`` process per layer, which the NetX file cannot hold).

The report (``graph.metadata['quantization']``) lists per layer: scale, ``θ_q``, ``vThMant``,
weights that round to zero, clipped weights, threshold relative error, bounds, and the NetX
representation of dense weights (``weight_exp``, ``num_weight_bits``, sign mode, stored mantissas).
"""

from __future__ import annotations

import math

import numpy as np

from ... import ir
from ...calibration import input_peak, is_signed
from ...errors import NeurodeployError

VTH_MAX = (1 << 17) - 1
THETA_MAX = VTH_MAX + 1
STATE_LIMIT = 1 << 17            # |V| (current units) where 64·V reaches the 24-bit limit


# -- NetX + Lava dense-synapse weight pipeline, verbatim in numpy (no Lava import) -----------------

def netx_optimize_weight_bits(weight: np.ndarray):
    """``lava.lib.dl.netx.utils.optimize_weight_bits`` (lava-dl 0.6.0), without the prints.

    Returns (weight, num_weight_bits, weight_exponent, sign_mode, warnings); sign_mode 1 = mixed,
    2 = excitatory, 3 = inhibitory (NetX's enum).
    """
    warnings = []
    weight = np.asarray(weight).astype(int)
    max_weight = np.max(weight)
    min_weight = np.min(weight)
    if max_weight > 254 and min_weight < 0:
        warnings.append(f"NetX clips mixed-sign weights to [-256, 254] (max {max_weight})")
        weight = np.clip(weight, -256, 254)
        max_weight = np.max(weight)
    if min_weight < -256 and max_weight > 0:
        warnings.append(f"NetX clips mixed-sign weights to [-256, 254] (min {min_weight})")
        weight = np.clip(weight, -256, 254)
        min_weight = np.min(weight)
    if max_weight < 0:
        sign_mode, is_signed = 3, 0
    elif min_weight >= 0:
        sign_mode, is_signed = 2, 0
    else:
        sign_mode, is_signed = 1, 1
    with np.errstate(divide="ignore"):
        if sign_mode == 1:
            scale = np.min([127 / max_weight if max_weight else np.inf, -128 / min_weight])
        elif sign_mode == 3:
            scale = -256 / min_weight
        else:
            scale = 255 / max_weight if max_weight else np.inf
    if not np.isfinite(scale):
        raise NeurodeployError("all weights of this dense layer are zero: NetX cannot load it "
                               "(log2 of an infinite scale)",
                               fix="remove the layer or use a larger weight scale")
    scale_bits = np.floor(np.log2(scale)) + is_signed
    precision_found = False
    n = 8
    while (precision_found is False) and (n > 0):
        rounding_error = np.sum(np.abs(weight / (2 ** n) - np.round(weight / (2 ** n))))
        if rounding_error == 0:
            precision_found = True
        else:
            n -= 1
    n -= is_signed
    num_weight_bits = 8 - scale_bits - n
    weight_exponent = -scale_bits
    with np.errstate(all="ignore"):
        weight = np.left_shift(weight.astype(np.int32), int(scale_bits))
    return weight.astype(int), int(num_weight_bits), int(weight_exponent), sign_mode, warnings


def lava_sign_mode(w: np.ndarray) -> int:
    """``lava.utils.weightutils.determine_sign_mode`` (1 mixed, 2 excitatory, 3 inhibitory)."""
    if np.min(w) >= 0:
        return 2
    if np.max(w) <= 0:
        return 3
    return 1


def lava_clip_truncate(w: np.ndarray, num_weight_bits: int) -> np.ndarray:
    """``clip_weights(.., num_bits=8)`` then ``truncate_weights`` of Lava's PyDenseModelBitAcc."""
    sign_mode = lava_sign_mode(w)
    mixed, inhib = int(sign_mode == 1), sign_mode == 3
    w = np.asarray(w).astype(np.int32).copy()
    # clip_weights
    if inhib:
        w = -w
    w = np.clip(w, (-2 ** 8) * mixed, 2 ** 8 - 1)
    if inhib:
        w = -w
    # truncate_weights
    w = w.astype(np.int32)
    if inhib:
        w = -w
    ntb = 8 - num_weight_bits + mixed
    with np.errstate(all="ignore"):
        w = (w >> ntb) << ntb
    if inhib:
        w = -w
    return w.astype(np.int64)


def netx_dense_weights(w_file: np.ndarray) -> dict:
    """What a NetX ``dense`` layer with file weights ``w_file`` computes in Lava fixed_pt.

    The synapse output per timestep is ``shift(stored @ s, weight_exp)`` with an arithmetic
    shift (right for negative ``weight_exp``). ``exact`` says whether that equals ``w_file @ s``
    for every binary ``s`` *and* sums of them (it does when every stored weight is a multiple of
    2^-weight_exp and stored >> -weight_exp == w_file).
    """
    w_file = np.asarray(w_file).astype(np.int64)
    stored, nwb, wexp, netx_mode, warns = netx_optimize_weight_bits(w_file)
    stored = lava_clip_truncate(stored, nwb)
    if wexp <= 0:
        sh = -wexp
        exact = bool(np.all((stored >> sh) << sh == stored) and np.array_equal(stored >> sh, w_file))
    else:
        exact = bool(np.array_equal(stored << wexp, w_file))
    if not exact:
        warns.append("NetX/Lava dense pipeline changes these weights (clipping, LSB truncation or "
                     "a sign-mode mismatch between NetX and Lava); the simulator reproduces it")
    return {"stored": stored, "weight_exp": wexp, "num_weight_bits": nwb,
            "netx_sign_mode": {1: "mixed", 2: "excitatory", 3: "inhibitory"}[netx_mode],
            "lava_sign_mode": {1: "mixed", 2: "excitatory", 3: "inhibitory"}[lava_sign_mode(stored)],
            "exact": exact, "warnings": warns}


def dense_synapse(stored: np.ndarray, weight_exp: int, s) -> "np.ndarray":
    """Lava's dense fixed-point synapse on a batch ``s`` [B, I] (ints): [B, O]."""
    import torch

    st = torch.as_tensor(stored, dtype=torch.int64)
    a = torch.as_tensor(s).to(torch.int64) @ st.T
    return a << weight_exp if weight_exp > 0 else a >> (-weight_exp)


# -- quantisation of a canonical graph ------------------------------------------------------------

GROUP_SHIFT = 8                  # a second synapse group adds at most 8 bits (weight exponent k <= 8)


def group_max(M: int, k: int) -> int:
    """Largest |w_q| two groups hold at weight exponent ``k``: hi·2^k + lo, |hi| <= M, lo < 2^(k-1)."""
    return M if k == 0 else M * (1 << k) + (1 << (k - 1)) - 1


def group_exponent(wq: np.ndarray, M: int) -> int:
    """Smallest weight exponent k (0..8) whose two groups hold every weight of ``wq``."""
    peak = int(np.abs(wq).max(initial=0))
    for k in range(GROUP_SHIFT + 1):
        if peak <= group_max(M, k):
            return k
    raise NeurodeployError(f"weight {peak} does not fit two 8-bit synapse groups (max {group_max(M, GROUP_SHIFT)})")


def split_groups(wq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) with ``wq == hi·2^k + lo`` and ``lo`` in [−2^(k−1), 2^(k−1)); (wq, 0) for k = 0."""
    wq = np.asarray(wq, dtype=np.int64)
    if k == 0:
        return wq, np.zeros_like(wq)
    hi = (wq + (1 << (k - 1))) >> k
    return hi, wq - (hi << k)


def describe_groups(wq: np.ndarray, k: int) -> list[dict]:
    """The report entry of a layer's synapse groups (weight exponent and stored mantissa range)."""
    hi, lo = split_groups(wq, k)
    groups = [{"weight_exp": k, "mantissa_range": [int(hi.min()), int(hi.max())]}]
    if k:
        groups.append({"weight_exp": 0, "mantissa_range": [int(lo.min()), int(lo.max())]})
    return groups


def fan_bound(wq: np.ndarray, nonnegative_input: bool) -> float:
    """Largest |partial sum| per unit of input over the layer's neurons. With non-negative inputs
    (spike counts, unsigned graded input) a neuron's sum lies in [−Σw⁻·x, Σw⁺·x]: the bound is the
    larger of its positive and negative weight sums, not Σ|w| (it integrates before its firing
    window, so no reset lowers it in between). Signed input: Σ|w|."""
    w = np.asarray(wq, dtype=np.int64).reshape(len(wq), -1)
    if not nonnegative_input:
        return float(np.abs(w).sum(axis=1).max(initial=0))
    return float(np.maximum(np.clip(w, 0, None).sum(axis=1), np.clip(-w, 0, None).sum(axis=1)).max(initial=0))


def quantize(graph: ir.Graph, calibration=None, *, input_bits: int = 8,
             input_range: float | None = None, guard_state: bool = True,
             input_scale: float | None = None, synapse_groups: int = 1) -> ir.Graph:
    """Quantised copy of a canonical graph for Loihi 2 (see the module docstring). ``input_scale``:
    use this input scale instead of ``qmax / range`` (calibration picks one that keeps dyadic inputs
    exact); it must keep the calibration range within the input bits. ``synapse_groups``: 1, or 2
    (conv layers get two 8-bit synapse groups per weight)."""
    from .program import _chain, lower

    if synapse_groups not in (1, 2):
        raise NeurodeployError(f"--synapse-groups {synapse_groups}: Loihi layers here have 1 or 2 synapse groups",
                               fix="use --synapse-groups 1 (8-bit weights) or 2 (up to 16-bit conv weights)")

    g = graph.copy()
    ir.infer_shapes(g)
    order = _chain(g)
    inp: ir.Input = g.nodes[order[0]]
    report: dict = {"target": "loihi", "input_message_bits": input_bits, "layers": {},
                    "warnings": [], "synapse_groups": synapse_groups}
    signed = False
    if inp.is_spikes:
        s_in, max_in = 1.0, None
        inp.scale_q = 1
    else:
        if calibration is not None:
            amax, signed = input_peak(calibration) or 1.0, is_signed(calibration)
        else:
            amax, signed = float(input_range or 1.0), True
        qmax = 2 ** (input_bits - 1) - 1 if signed else 2 ** input_bits - 1
        s_in = qmax / amax
        if input_scale is not None:
            if not 0 < input_scale * amax <= qmax + 0.5:
                raise NeurodeployError(f"input scale {input_scale:g} maps the input range {amax:g} outside "
                                       f"{input_bits}-bit integers", fix=f"use a scale <= {qmax / amax:g}")
            s_in = float(input_scale)
        inp.scale_q = s_in
        # the largest payload of an accepted input: every runtime refuses |x| beyond the range
        max_in = min(qmax, int(round(amax * s_in)))
        report["input"] = {"scale_q": s_in, "signed": signed, "range": amax, "max_int": max_in}
    dom_scale, prev_D, pool_gain = s_in, None, 1
    for idx, name in enumerate(order):
        node = g.nodes[name]
        if isinstance(node, ir.SumPool2d):
            pool_gain *= node.kernel[0] * node.kernel[1]
            continue
        if not isinstance(node, (ir.Conv2d, ir.Linear)):
            continue
        nxt = order[idx + 1] if idx + 1 < len(order) else None
        neuron = g.nodes[nxt] if nxt and isinstance(g.nodes[nxt], ir.IFNeuron) else None
        W = np.asarray(node.weight, dtype=np.float64)
        wmax = float(np.max(np.abs(W)))
        if wmax == 0:
            raise NeurodeployError("all weights are zero", layer=name,
                                   fix="check the model; NetX cannot load an all-zero layer")
        M = 255 if W.min() >= 0 else 127
        grouped = synapse_groups == 2 and isinstance(node, ir.Conv2d)
        s = (M << GROUP_SHIFT if grouped else M) / wmax
        rep: dict = {"mantissa_max": M}
        if neuron is not None:
            theta_float = neuron.threshold * s * dom_scale
            if theta_float > THETA_MAX:
                s *= THETA_MAX / theta_float
                rep["threshold_at_limit"] = True
                report["warnings"].append(
                    f"layer '{nxt}': threshold {theta_float:.0f} exceeds the 17-bit vThMant; weight "
                    f"scale lowered (max weight {round(wmax * s)} instead of {M})")
        for _attempt in range(8):
            S = s * dom_scale
            wq = np.rint(W * s).astype(np.int64)
            bq = None if node.bias is None else np.rint(np.asarray(node.bias) * S).astype(np.int64)
            if neuron is None:
                break
            th = min(max(1, int(round(neuron.threshold * S))), THETA_MAX)
            v0 = int(round(neuron.v_init * S))
            # bounds: worst-case membrane and per-timestep synaptic input (current units)
            fan = fan_bound(wq, nonnegative_input=bool(prev_D) or inp.is_spikes or not signed)
            if max_in is not None and prev_D is None:         # graded real input, one step
                per_step = fan * max_in
                total = per_step
            else:
                per_step = fan * (pool_gain if prev_D else 1)
                total = fan * (prev_D or 1) * pool_gain
            total += float(np.max(np.abs(bq))) if bq is not None else 0.0
            total += abs(v0)
            worst = max(total, per_step)
            if not guard_state or worst < STATE_LIMIT:
                break
            shrink = (STATE_LIMIT - 1) / worst * 0.98
            s *= shrink
            rep["state_guard_scale"] = rep.get("state_guard_scale", 1.0) * shrink
        node.weight_q = wq
        node.bias_q = bq
        if grouped:
            k = group_exponent(wq, M)
            rep.update({"group_exp": k, "mantissa_max": group_max(M, k), "synapse_groups": describe_groups(wq, k)})
        rep.update({
            "scale": S, "weight_scale": s,
            "weights_rounded_to_zero": int(np.sum((wq == 0) & (W != 0))),
            "weights_clipped": 0,
            "weight_rel_error_max": float(np.max(np.abs(wq - W * s)) / max(1.0, rep["mantissa_max"])),
        })
        if "state_guard_scale" in rep:
            report["warnings"].append(
                f"layer '{name}': weight scale lowered ×{rep['state_guard_scale']:.3f} so that the "
                f"worst-case membrane/timestep input fits 24-bit state (max weight "
                f"{int(np.abs(wq).max())} instead of {M})")
        if neuron is not None:
            neuron.threshold_q = th
            neuron.v_init_q = v0
            neuron.state_bits = None
            rep.update({"threshold_q": th, "vThMant": th - 1, "v_init_q": v0,
                        "threshold_rel_error": abs(th - neuron.threshold * S) / (neuron.threshold * S)})
            if th - 1 >= VTH_MAX:
                rep["threshold_at_limit"] = True
            if th < 8:
                report["warnings"].append(f"layer '{nxt}': coarse threshold θ_q = {th}")
            if neuron.rounding == "half_even":
                rep["half_even"] = True
                report["warnings"].append(
                    f"layer '{nxt}': model rounds half to even (torch.round): the neuron model "
                    "needs a spike counter for exact ties (custom model only; stock CUBA cannot)")
            rep.update({"worst_case_membrane": total, "worst_case_step_input": per_step})
            if total >= STATE_LIMIT:
                rep["may_saturate"] = True
                report["warnings"].append(
                    f"layer '{nxt}': worst-case membrane {total:.0f} ≥ 2^17 (24-bit v saturates)")
            if per_step >= STATE_LIMIT:
                rep["may_wrap"] = True
                report["warnings"].append(
                    f"layer '{nxt}': worst-case input in one timestep {per_step:.0f} ≥ 2^17 "
                    "(24-bit u wraps)")
            prev_D, dom_scale, pool_gain, max_in = neuron.max_spikes, 1.0, 1, None
        report["layers"][name] = rep
    g.metadata["quantization"] = report
    # NetX representation of every layer (dense weights go through optimize_weight_bits)
    prog = lower(g)
    for spec in prog.layers:
        entry = report["layers"].setdefault(spec.sources[-2] if not spec.passthrough else spec.name, {})
        entry["netx_layer"] = spec.kind
        entry["timestep_window"] = [spec.window_start, spec.window_start + spec.D - 1]
        if spec.kind == "dense":
            d = netx_dense_weights(spec.weight)
            entry.update({"weight_exp": d["weight_exp"], "num_weight_bits": d["num_weight_bits"],
                          "netx_sign_mode": d["netx_sign_mode"],
                          "lava_sign_mode": d["lava_sign_mode"],
                          "mantissa_range": [int(d["stored"].min()), int(d["stored"].max())],
                          "netx_exact": d["exact"]})
            for wmsg in d["warnings"]:
                report["warnings"].append(f"layer '{spec.name}': {wmsg}")
        else:
            entry.update({"weight_exp": 0, "mantissa_range": [int(spec.weight.min()),
                                                              int(spec.weight.max())]})
            if "group_exp" in entry:
                entry["synapse_groups"] = describe_groups(spec.weight, entry["group_exp"])
            elif spec.weight.max() > 255 or spec.weight.min() < -256:
                report["warnings"].append(
                    f"layer '{spec.name}': conv weights exceed 8 bits (Lava's CPU conv accepts "
                    "them, Loihi 2 hardware does not)")
    report["timesteps_per_sample"] = prog.period
    return g


def synapse_group_notes(graph: ir.Graph) -> list[str]:
    """Profile notes for layers whose weights are two synapse groups (the profile counts network
    synapse events; the chip makes one per group)."""
    layers = ((graph.metadata.get("quantization") or {}).get("layers") or {})
    grouped = [name for name, rep in layers.items() if len(rep.get("synapse_groups") or []) == 2]
    if not grouped:
        return []
    return [f"loihi: {', '.join(grouped)} hold each weight in two synapse groups (--synapse-groups 2): the chip "
            "makes twice the SynOps counted here and stores twice the synapses for these layers"]


def precision_report(graph: ir.Graph) -> dict:
    return dict(graph.metadata.get("quantization") or {})
