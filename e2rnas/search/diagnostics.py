"""What steered the architecture: per-step MGDA diagnostics and the run's steering summary (docs/cost-forms.md).

Per bi-level step (``step_diagnostics``): |g_k| of every objective's alpha-gradient, the pairwise cosines of those
gradients, the norm of the MGDA direction sum_k w_k g_k and of the applied alpha-gradient (with the second-order
term). Per run (``steering``): each objective's mean gamma and the share of steps in which it *steered*, i.e. had
gamma above ``STEER_GAMMA``; ``steering_line`` says it in one line for the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

#: an objective steered a step when MGDA gave it at least this weight (1/10 of the simplex)
STEER_GAMMA = 0.1


def step_diagnostics(grads: torch.Tensor, effective: torch.Tensor, applied: torch.Tensor,
                     names: Sequence[str]) -> dict[str, Any]:
    """Diagnostics of one step from the (K, P) alpha-gradients, the K multipliers of the raw gradients and the
    applied (P,) alpha-gradient. Cosines with a zero gradient are 0."""
    G = grads.detach().double().cpu()
    norms = G.norm(dim=1)
    unit = G / norms.clamp_min(1e-300)[:, None]
    cos = unit @ unit.T
    direction = (effective.detach().double().cpu()[:, None] * G).sum(0)
    return {
        "grad_norms": {n: float(v) for n, v in zip(names, norms, strict=True)},
        "cosines": {f"{names[i]}-{names[j]}": float(cos[i, j] if norms[i] > 0 and norms[j] > 0 else 0.0)
                    for i in range(len(names)) for j in range(i + 1, len(names))},
        "direction_norm": float(direction.norm()),
        "applied_norm": float(applied.detach().double().norm()),
    }


def steering(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per objective over the bi-level step records: mean gamma, steps with gamma > STEER_GAMMA (count and share),
    and the share of steps it sat out MGDA (a satisfied band or a flat gradient)."""
    steps = [r for r in records if r.get("type") == "step" and r.get("gammas")]
    out: dict[str, dict[str, float]] = {}
    for name in (steps[0]["gammas"] if steps else {}):
        gammas = [float(r["gammas"][name]) for r in steps]
        steered = sum(g > STEER_GAMMA for g in gammas)
        dropped = sum(name in r.get("dropped_from_mgda", ()) for r in steps)
        out[name] = {"mean_gamma": sum(gammas) / len(gammas), "steered_steps": steered, "steps": len(gammas),
                     "steered_share": steered / len(gammas), "sat_out_share": dropped / len(gammas)}
    return out


def steering_line(table: dict[str, dict[str, float]]) -> str:
    """One line: which objectives steered the search, most first, and which never did."""
    if not table:
        return "no bi-level step ran (weight warm-up only), so no objective steered the architecture"
    order = sorted(table, key=lambda n: -table[n]["steered_share"])
    led = [f"{n} ({100 * table[n]['steered_share']:.0f} % of steps, mean gamma {table[n]['mean_gamma']:.2f})"
           for n in order if table[n]["steered_steps"]]
    never = [n for n in order if not table[n]["steered_steps"]]
    steps = next(iter(table.values()))["steps"]
    text = f"steered (gamma > {STEER_GAMMA}) over {steps} steps: " + (", ".join(led) if led else "none")
    if never:
        text += f"; never: {', '.join(never)}"
    return text
