"""MGDA: the min-norm point of the convex hull of K gradients (problem 1), and the weighting strategies.

``min_norm_weights`` solves min_{gamma in simplex} || sum_k gamma_k g_k ||^2 on the K x K Gram matrix with the
Frank-Wolfe algorithm the paper names, in its away-step form (linear convergence on the simplex), exact line
search, a certified stopping rule (the Frank-Wolfe duality gap bounds the objective error) and a real iteration
cap. K = 1 and K = 2 use the closed form.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

NORMALIZATIONS = ("none", "l2", "loss", "loss+l2")
#: ``paper``: step along sum_k gamma_k g_k (eq. 10, the authors' code); ``normalized``: sum_k gamma_k g_k / n_k.
MGDA_UPDATES = ("paper", "normalized")
#: a normaliser (|g_k|, L_k) at or below this is "zero": the objective sits out that step's MGDA (docs/mgda.md)
DEGENERATE = 1e-10


def _min_norm_2(v11: float, v12: float, v22: float) -> float:
    """Weight a on the first vector of argmin_{a in [0,1]} |a u + (1-a) w|^2 given u.u, u.w, w.w."""
    denom = v11 + v22 - 2 * v12
    if denom <= 0:  # identical vectors: any point is optimal
        return 0.5
    return float(min(1.0, max(0.0, (v22 - v12) / denom)))


def min_norm_weights(grads: torch.Tensor, *, max_iter: int = 1000, tol: float = 1e-10) -> torch.Tensor:
    """Weights gamma (K,) on the simplex minimising |gamma^T G|^2 for gradients ``grads`` (K, P).

    Stops when the Frank-Wolfe gap (an upper bound on the objective error) falls below ``tol`` times the
    largest squared gradient norm, or after ``max_iter`` iterations.
    """
    if grads.ndim != 2 or grads.shape[0] == 0:
        raise ValueError(f"grads must be (K, P) with K >= 1, got {tuple(grads.shape)}")
    K = grads.shape[0]
    G = grads.detach().to(torch.float64)
    M = G @ G.T
    if K == 1:
        return torch.ones(1, dtype=grads.dtype)
    if K == 2:
        a = _min_norm_2(float(M[0, 0]), float(M[0, 1]), float(M[1, 1]))
        return torch.tensor([a, 1 - a], dtype=grads.dtype)
    scale = float(M.diagonal().max())
    if scale == 0.0:
        return torch.full((K,), 1.0 / K, dtype=grads.dtype)
    M = M / scale
    # Start from the best pair (the MGDA-UB initialisation), then away-step Frank-Wolfe.
    best, gamma = float("inf"), torch.zeros(K, dtype=torch.float64)
    for i in range(K):
        for j in range(i + 1, K):
            a = _min_norm_2(float(M[i, i]), float(M[i, j]), float(M[j, j]))
            cost = a * a * M[i, i] + 2 * a * (1 - a) * M[i, j] + (1 - a) ** 2 * M[j, j]
            if cost < best:
                best, gamma = float(cost), torch.zeros(K, dtype=torch.float64)
                gamma[i], gamma[j] = a, 1 - a
    for _ in range(max_iter):
        grad = M @ gamma  # half the gradient of gamma^T M gamma
        s = int(torch.argmin(grad))
        active = (gamma > 0).nonzero().flatten()
        v = int(active[torch.argmax(grad[active])])
        fw_dir = -gamma.clone()
        fw_dir[s] += 1.0
        fw_gap = float(-(grad @ fw_dir))
        if fw_gap <= tol:
            break
        away_dir = gamma.clone()
        away_dir[v] -= 1.0
        away_gap = float(-(grad @ away_dir))
        if fw_gap >= away_gap:
            d, step_max = fw_dir, 1.0
        else:
            d = away_dir
            step_max = float(gamma[v] / (1 - gamma[v])) if gamma[v] < 1 else float("inf")
        curvature = float(d @ M @ d)
        step = step_max if curvature <= 0 else min(step_max, float(-(grad @ d)) / curvature)
        gamma = (gamma + step * d).clamp_min(0.0)
        gamma /= gamma.sum()
    else:
        return gamma.to(grads.dtype)  # the iteration cap: Frank-Wolfe's own iterate
    return _polish(M, gamma).to(grads.dtype)


def _polish(M: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Converged Frank-Wolfe has found the optimum's support; the KKT system on that support gives the optimum to
    machine precision (Frank-Wolfe's gamma is certified only to the square root of its gap). Kept only if feasible
    and no worse."""
    support = (gamma > 0).to(M.dtype)[None]
    exact, solved = _kkt_weights(M, support)
    exact = exact[0]
    if not bool(solved[0]) or bool((exact < 0).any()) or abs(float(exact.sum()) - 1) > 1e-9:
        return gamma
    return exact if float(exact @ M @ exact) <= float(gamma @ M @ gamma) + 1e-15 else gamma


@functools.cache  # never evicted: a captured CUDA graph reads it by address
def _supports(K: int, device: torch.device) -> torch.Tensor:
    """(2^K - 1, K) float64: row s marks the objectives in support s. Cached per device: made once, before any
    CUDA-graph capture (a tensor built from host data inside a capture is an illegal copy)."""
    return torch.tensor([[(s >> k) & 1 for k in range(K)] for s in range(1, 2 ** K)], dtype=torch.float64,
                        device=device)


def _kkt_weights(M: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each support (rows of ``masks``), gamma solving [M_SS 1; 1^T 0] [gamma_S; -lambda] = [0; 1] (0 off S),
    and whether that system had a solution (``linalg.solve_ex``: no error check, so no host read)."""
    K = M.shape[0]
    n = masks.shape[0]
    A = torch.zeros(n, K + 1, K + 1, dtype=M.dtype, device=M.device)
    on = masks[:, :, None] * masks[:, None, :]
    A[:, :K, :K] = on * M + torch.diag_embed(1 - masks)  # off the support: gamma_k = 0
    A[:, :K, K] = masks
    A[:, K, :K] = masks
    rhs = torch.zeros(n, K + 1, 1, dtype=M.dtype, device=M.device)
    rhs[:, K, 0] = 1.0
    solution, info = torch.linalg.solve_ex(A, rhs)
    gamma = solution[:, :K, 0] * masks
    return gamma, (info == 0) & torch.isfinite(gamma).all(dim=1)


def min_norm_weights_sync_free(grads: torch.Tensor, *, live: torch.Tensor | None = None,
                               feasibility_tol: float = 1e-9) -> torch.Tensor:
    """The same min-norm weights as ``min_norm_weights``, computed without a host synchronisation (issue 26).

    For small K (the <= 6 objectives of E2RNAS) the optimum is the KKT point of one support S of the simplex:
    gamma_S solves [M_SS 1; 1^T 0] [gamma_S; -lambda] = [0; 1] and gamma is 0 off S. All 2^K - 1 supports are solved
    at once (one batched ``solve_ex``; a singular support is marked unsolved, never raised), the feasible ones
    (gamma >= 0, summing to 1) kept, and the one of least |gamma^T G|^2 taken: no ``.item()``, no data-dependent
    Python branch, a fixed amount of work, so it can sit inside a CUDA graph. ``live`` (K,) bool: only supports
    within it count, the others get 0 (all 0 when none is live), as ``Weighting`` drops a degenerate objective.
    ``min_norm_weights`` (Frank-Wolfe) stays the reference.
    """
    if grads.ndim != 2 or grads.shape[0] == 0:
        raise ValueError(f"grads must be (K, P) with K >= 1, got {tuple(grads.shape)}")
    K = grads.shape[0]
    if K > 10:
        raise ValueError(f"the sync-free solver enumerates 2^K - 1 supports; K = {K} is too many (use "
                         "min_norm_weights)")
    G = grads.detach().to(torch.float64)
    if live is not None:
        G = G * live.to(G)[:, None]
    M = G @ G.T
    scale = M.diagonal().max()
    M = M / torch.where(scale > 0, scale, torch.ones_like(scale))
    masks = _supports(K, M.device)
    gamma, solved = _kkt_weights(M, masks)
    objective = torch.einsum("sk,kl,sl->s", gamma, M, gamma)
    feasible = solved & (gamma >= -feasibility_tol).all(dim=1) & ((gamma.sum(dim=1) - 1).abs() <= 1e-6)
    if live is not None:  # a support with a dead objective in it is not a candidate
        feasible = feasible & ((masks * (~live).to(masks)).sum(dim=1) == 0)
    best = torch.argmin(torch.where(feasible, objective, torch.full_like(objective, float("inf"))))
    out = gamma.index_select(0, best.reshape(1))[0].clamp_min(0.0)  # indexing by a 0-d tensor would read it
    out = torch.where(scale > 0, out / out.sum(), torch.full_like(out, 1.0 / K))  # all-zero gradients: uniform
    if live is not None:
        out = torch.where(live.any(), out, torch.zeros_like(out))
    return out.to(grads.dtype)


def normalizers(grads: torch.Tensor, losses: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-objective divisors (K,): ``none`` 1; ``l2`` |g_k|; ``loss`` L_k; ``loss+l2`` L_k |g_k|."""
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown gradient normalisation {mode!r}; choose from {', '.join(NORMALIZATIONS)}")
    eps = 1e-12
    norms = grads.detach().norm(dim=1).clamp_min(eps)
    loss = losses.detach().abs().to(norms).clamp_min(eps)
    return {"none": torch.ones_like(norms), "l2": norms, "loss": loss, "loss+l2": loss * norms}[mode]


@dataclass(frozen=True)
class Weighting:
    """How the K objective gradients are combined: ``mgda``, ``equal`` or ``fixed:w1,...,wK``.

    ``update`` (MGDA only) says which vectors gamma multiplies: ``paper`` the raw gradients, ``normalized`` the
    normalised ones that gamma was solved on.
    """

    spec: str = "mgda"
    normalization: str = "l2"
    max_iter: int = 1000
    update: str = "normalized"

    def __post_init__(self) -> None:
        kind = self.spec.split(":", 1)[0]
        if kind not in ("mgda", "equal", "fixed"):
            raise ValueError(f"unknown weighting {self.spec!r}; use mgda, equal or fixed:w1,...,wK")
        if kind == "fixed":
            self.fixed_weights()
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"unknown gradient normalisation {self.normalization!r}; choose from "
                             f"{', '.join(NORMALIZATIONS)}")
        if self.update not in MGDA_UPDATES:
            raise ValueError(f"unknown MGDA update {self.update!r}; choose from {', '.join(MGDA_UPDATES)}")

    def fixed_weights(self) -> list[float]:
        try:
            values = [float(w) for w in self.spec.split(":", 1)[1].split(",")]
        except (IndexError, ValueError) as exc:
            raise ValueError(f"fixed weighting needs numbers, e.g. fixed:1,1,1,0.5,0.5 (got {self.spec!r})") from exc
        if any(w < 0 for w in values) or sum(values) <= 0:
            raise ValueError(f"fixed weights must be non-negative with a positive sum, got {values}")
        return values

    def weights(self, grads: torch.Tensor, losses: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor,
                                                                                                  torch.Tensor]:
        """(gamma, effective): gamma on the simplex, and the per-objective multipliers of the raw gradients.

        For MGDA, gamma is the min-norm point of the *normalised* gradients g_k / n_k. The ``normalized`` update is
        sum_k gamma_k g_k / n_k, a common descent direction for every objective (effective = gamma / n); the
        ``paper`` update is sum_k gamma_k g_k (effective = gamma), eq. (10) as the authors' code runs it.
        An objective whose normaliser is ~0 (``degenerate``) gets gamma = 0 instead of a 1e12 multiplier.
        """
        grads, losses = grads.detach().cpu(), losses.detach().cpu()  # K x |alpha|: small; solved on the CPU
        K = grads.shape[0]
        if self.spec.split(":", 1)[0] != "mgda":  # equal or fixed: no solve, the same constants either way
            return self.weights_on_device(grads, losses, names)[:2]
        n = normalizers(grads, losses, self.normalization).to(grads.dtype)
        live = ~self.degenerate(grads, losses)
        gamma = torch.zeros(K, dtype=grads.dtype)
        if bool(live.any()):
            gamma[live] = min_norm_weights(grads[live] / n[live, None], max_iter=self.max_iter)
        return gamma, (gamma if self.update == "paper" else gamma / n)

    def weights_on_device(self, grads: torch.Tensor, losses: torch.Tensor, names: Sequence[str]
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(gamma, effective, degenerate) as ``weights`` and ``degenerate`` give them, computed where ``grads`` lie
        with no host read (the sync-free step, issue 26): MGDA by ``min_norm_weights_sync_free``, which agrees with
        the Frank-Wolfe reference to its precision."""
        grads, losses = grads.detach(), losses.detach()
        K = grads.shape[0]
        kind = self.spec.split(":", 1)[0]
        if kind != "mgda":
            if kind == "equal":
                gamma = torch.full((K,), 1.0 / K, dtype=grads.dtype, device=grads.device)
            else:
                values = self.fixed_weights()
                if len(values) != K:
                    raise ValueError(f"fixed weighting has {len(values)} weights for {K} objectives "
                                     f"({', '.join(names)})")
                gamma = _constant(tuple(values), grads.device, grads.dtype) / sum(values)
            return gamma, gamma, torch.zeros(K, dtype=torch.bool, device=grads.device)
        bad = self._degenerate(grads, losses)
        n = normalizers(grads, losses, self.normalization).to(grads.dtype)
        gamma = min_norm_weights_sync_free(grads / n[:, None], live=~bad)
        return gamma, (gamma if self.update == "paper" else gamma / n), bad

    def _degenerate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        bad = grads.norm(dim=1) <= DEGENERATE
        if "loss" in self.normalization:
            bad = bad | (losses.abs().to(bad.device) <= DEGENERATE)
        return bad

    def degenerate(self, grads: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """(K,) bool: objectives whose MGDA normaliser is ~0 (a flat gradient, or a zero loss under ``loss``).

        Dividing by such a normaliser would scale noise by up to 1e12 and hand it the whole step; the objective
        sits out this step's MGDA instead (gamma 0) and the step record lists it."""
        grads, losses = grads.detach().cpu(), losses.detach().cpu()
        if self.spec.split(":", 1)[0] != "mgda":
            return torch.zeros(grads.shape[0], dtype=torch.bool)
        return self._degenerate(grads, losses)


@functools.cache  # never evicted: a captured CUDA graph reads it by address
def _constant(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A small constant tensor on ``device``, made once (not a host-to-device copy per step, nor inside a capture)."""
    return torch.tensor(values, dtype=torch.float64).to(device=device, dtype=dtype)
