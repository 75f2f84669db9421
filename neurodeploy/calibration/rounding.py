"""Adaptive rounding of one weight layer's integer weights (AdaRound-style, closed form on a CPU).

Each output channel ``o`` picks, for every weight, the integer just below or just above its scaled
float value ``s·w`` so that the layer's integer current on the calibration rows ``X`` (the
*quantised* previous layers' actual values) comes closest to a target current ``y`` (the float
model's pre-activation, in integer units). The objective is a weighted least-squares surrogate of
the spike-count error:

    L(q) = Σ_r h_r (X_r·q + c − y_r)² + λ Σ_j G_jj (q_j − s·w_j)²,

``h_r`` large where the float pre-activation lies near a count boundary (where a rounding error
changes the count), ``c`` a free per-channel offset (the bias correction that follows absorbs it),
and the ridge term (``λ`` times the diagonal of the Gram matrix) pulls towards nearest rounding so
that a small calibration set cannot buy a fit that does not hold on other data. Greedy coordinate
descent over the weights, all channels at once, with the Gram matrix ``XᵀhX`` (fan-in²): a few
sweeps, every accepted flip strictly lowers L.
"""

from __future__ import annotations

import numpy as np
import torch


def boundary_weights(u: torch.Tensor, max_spikes: int, sigma: float = 0.25, floor: float = 0.05) -> torch.Tensor:
    """Row weights from the float pre-activation ``u`` in units of θ (count = floor(u) clipped to
    [0, D]): ~1 within ``sigma`` of a boundary 1..D, ``floor`` far from every boundary."""
    k = torch.clamp(torch.round(u), 1, max_spikes)
    d = (u - k).abs()
    return floor + (1 - floor) * torch.exp(-(d / sigma) ** 2)


class RoundingProblem:
    """The Gram matrices of one layer's calibration rows ``X`` [R, F] (shared by all channels) under
    row weights ``h`` [R, O]; :meth:`solve` then rounds for any target (thresholds change only it)."""

    def __init__(self, X: torch.Tensor, h: torch.Tensor, ridge: float = 0.1):
        self.X = X.to(torch.float64)
        self.h = h.to(torch.float64)
        self.hsum = self.h.sum(0).clamp_min(1e-12)                         # [O]
        self.mx = (self.h / self.hsum).T @ self.X                          # [O, F] weighted means
        # G_o = Σ_r h_ro (x_r − m_o)(x_r − m_o)ᵀ (weighted covariance, unnormalised)
        n_out, (n_rows, n_in) = self.h.shape[1], self.X.shape
        chunk = max(1, int(2 ** 24 // max(n_rows * n_in, 1)))              # bounds the [c, R, F] temporary
        self.G = torch.cat([(self.h.T[o:o + chunk, :, None] * self.X[None]).transpose(1, 2) @ self.X
                            for o in range(0, n_out, chunk)])
        self.G -= self.hsum[:, None, None] * self.mx[:, :, None] * self.mx[:, None, :]
        self.diag = torch.diagonal(self.G, dim1=1, dim2=2).clone()
        self.reg = ridge * self.diag + 1e-9
        self._Gt = None

    def solve(self, y: torch.Tensor, w_scaled: torch.Tensor, lo, hi, sweeps: int = 4) -> torch.Tensor:
        """Integer weights [O, F] for targets ``y`` [R, O] and scaled float weights [O, F]; each
        weight stays at floor or ceil of ``w_scaled`` (within ``lo``/``hi``)."""
        if self._Gt is None:  # column j of every channel's G as one contiguous [O, F] block
            self._Gt = np.ascontiguousarray(self.G.numpy().transpose(2, 0, 1))
        Gt, diag, reg = self._Gt, self.diag.numpy(), self.reg.numpy()
        ws = w_scaled.numpy()
        lo, hi = np.broadcast_to(np.asarray(lo), ws.shape), np.broadcast_to(np.asarray(hi), ws.shape)
        down, up = np.clip(np.floor(ws), lo, hi), np.clip(np.ceil(ws), lo, hi)
        q = np.clip(np.rint(ws), lo, hi)
        my = (self.h * y).sum(0) / self.hsum
        b = torch.einsum("ro,ri->oi", self.h * (y - my), self.X).numpy()  # Σ_r h (y − m_y) x_r
        # half the gradient of L: G q − b + reg (q − s·w)
        grad = np.einsum("oij,oj->oi", self.G.numpy(), q) - b + reg * (q - ws)
        curv = diag + reg
        for _ in range(sweeps):
            changed = False
            for j in range(q.shape[1]):
                qj = q[:, j]
                step = np.where(qj == down[:, j], up[:, j], down[:, j]) - qj       # -1, 0 or +1
                gain = 2 * step * grad[:, j] + step * step * curv[:, j]
                step = np.where(gain < -1e-9, step, 0.0)
                if not step.any():
                    continue
                changed = True
                q[:, j] += step
                grad += step[:, None] * Gt[j]
                grad[:, j] += step * reg[:, j]
            if not changed:
                break
        return torch.from_numpy(q)


def adaptive_round(X, y, h, w_scaled, lo, hi, ridge: float = 0.1, sweeps: int = 4) -> torch.Tensor:
    """One-shot :class:`RoundingProblem` (see there for the arguments)."""
    return RoundingProblem(X, h, ridge).solve(y, w_scaled, lo, hi, sweeps)
