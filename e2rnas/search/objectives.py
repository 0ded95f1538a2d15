"""The upper-level objectives, one small object each, in a registry: the paper's five and ``latency``.

Data objectives (``val``, ``ood``, ``adv``) see the network through ``ctx.forward`` (the supernet at the
unrolled weights); architecture objectives (``params``, ``flops``, ``latency``) see only the cost estimate of alpha,
through a *cost form* (``COST_FORMS``): ``target``, the paper's two-sided |x - B| / B (eqs. 5, 6), or ``band``,
zero inside the feasible band [lower, B] and the relative distance to it outside, so that a satisfied bound has a
zero gradient and sits out MGDA (docs/cost-forms.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may read: a forward function, the batches, and the cost estimate with its bounds."""

    forward: Forward | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    x_adv: torch.Tensor | None = None
    x_ood: torch.Tensor | None = None
    params_m: torch.Tensor | None = None  # N(alpha), M params of the deploy network
    macs_m: torch.Tensor | None = None  # F(alpha), M MACs of the deploy network
    params_bound_m: float | None = None  # L
    macs_bound_m: float | None = None  # F
    latency_ms: torch.Tensor | None = None  # Lat(alpha), ms of the deploy network from the latency table
    latency_bound_ms: float | None = None  # T
    params_lower_m: float | None = None  # the band's lower edge for params (params_floor x L), ``band`` form only


def ood_kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    """Mean over samples of KL(U || softmax(logits)) = -log K - mean_k log p_k (eq. 3)."""
    log_p = F.log_softmax(logits, dim=1)
    return (-math.log(logits.shape[1]) - log_p.mean(dim=1)).mean()


class Objective:
    name: str = ""
    uses_weights: bool = True  # depends on the network weights (gets the second-order term)

    def __call__(self, ctx: ObjectiveContext) -> torch.Tensor:
        raise NotImplementedError


class ValLoss(Objective):
    """Cross-entropy on the architecture (validation) batch."""

    name = "val"

    def __call__(self, ctx: ObjectiveContext) -> torch.Tensor:
        return F.cross_entropy(ctx.forward(ctx.x_val), ctx.y_val)


class OodLoss(Objective):
    """KL(U || softmax) on an OoD batch: pushes OoD predictions towards uniform (eq. 3)."""

    name = "ood"

    def __call__(self, ctx: ObjectiveContext) -> torch.Tensor:
        return ood_kl_uniform(ctx.forward(ctx.x_ood))


class AdvLoss(Objective):
    """Cross-entropy on the FGSM-perturbed validation batch (eq. 4); the perturbation is made beforehand."""

    name = "adv"

    def __call__(self, ctx: ObjectiveContext) -> torch.Tensor:
        return F.cross_entropy(ctx.forward(ctx.x_adv), ctx.y_val)


def target_form(value: torch.Tensor, bound: float, lower: float | None = None) -> torch.Tensor:
    """|x - B|: the paper's two-sided target (eqs. 5, 6); ``lower`` is ignored."""
    return (value - bound).abs()


def band_form(value: torch.Tensor, bound: float, lower: float | None = None) -> torch.Tensor:
    """max(0, x - B) + max(0, lower - x): zero (with a zero gradient) inside [lower, B]."""
    out = torch.relu(value - bound)
    if lower is not None:
        out = out + torch.relu(lower - value)
    return out


#: how a cost objective turns (estimate, bound) into a loss; ``target`` is the paper's, ``band`` the default
COST_FORMS: dict[str, Callable[..., torch.Tensor]] = {"target": target_form, "band": band_form}
#: ``relative``: divided by the bound (unit-free, the default); ``paper``: in the deploy network's units, M params,
#: M MACs (and ms), as eqs. (5) and (6) are written. With l2-normalised MGDA gamma is the same either way; the
#: ``paper`` update (eq. 10, raw gradients) is not (docs/cost-forms.md).
COST_UNITS = ("relative", "paper")


class CostObjective(Objective):
    """A cost estimate of alpha against its bound, in one of ``COST_FORMS`` and ``COST_UNITS``."""

    uses_weights = False

    def __init__(self, form: str = "target", units: str = "relative"):
        if form not in COST_FORMS:
            raise ValueError(f"unknown cost form {form!r}; choose from {', '.join(COST_FORMS)}")
        if units not in COST_UNITS:
            raise ValueError(f"unknown cost units {units!r}; choose from {', '.join(COST_UNITS)}")
        self.form, self.units = form, units

    def value_bound(self, ctx: ObjectiveContext) -> tuple[torch.Tensor, float, float | None]:
        raise NotImplementedError

    def __call__(self, ctx: ObjectiveContext) -> torch.Tensor:
        value, bound, lower = self.value_bound(ctx)
        out = COST_FORMS[self.form](value, bound, lower)
        return out / bound if self.units == "relative" else out


class ParamsLoss(CostObjective):
    """N(alpha) against L (eq. 5), in M params of the deploy network."""

    name = "params"

    def value_bound(self, ctx: ObjectiveContext) -> tuple[torch.Tensor, float, float | None]:
        return ctx.params_m, ctx.params_bound_m, ctx.params_lower_m


class FlopsLoss(CostObjective):
    """F(alpha) against F (eq. 6), on multiply-adds (MACs) of the deploy network."""

    name = "flops"

    def value_bound(self, ctx: ObjectiveContext) -> tuple[torch.Tensor, float, float | None]:
        return ctx.macs_m, ctx.macs_bound_m, None


class LatencyLoss(CostObjective):
    """Lat(alpha) against T: the softmax-expected latency from a table measured on the target (``e2rnas lut``)."""

    name = "latency"

    def value_bound(self, ctx: ObjectiveContext) -> tuple[torch.Tensor, float, float | None]:
        return ctx.latency_ms, ctx.latency_bound_ms, None


OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (ValLoss, OodLoss, AdvLoss, ParamsLoss, FlopsLoss, LatencyLoss)}


def make_objectives(names: tuple[str, ...], *, cost_form: str = "target",
                    cost_units: str = "relative") -> list[Objective]:
    """The objectives named, in order; the cost objectives in ``cost_form`` and ``cost_units``."""
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise ValueError(f"unknown objective(s) {unknown or names}; choose from {', '.join(OBJECTIVES)}")
    return [OBJECTIVES[n](cost_form, cost_units) if issubclass(OBJECTIVES[n], CostObjective) else OBJECTIVES[n]()
            for n in names]
