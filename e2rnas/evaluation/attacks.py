"""FGSM and PGD in pixel space [0, 1] (L-inf), on any callable that maps pixels to logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Logits = Callable[[torch.Tensor], torch.Tensor]


def _input_grad(model: Logits, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def pgd(model: Logits, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int, step_size: float,
        random_start: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """L-inf PGD (Madry et al.); ``steps=1`` with a random start is Wong et al.'s fast FGSM.

    The result is detached: it is made with the current weights and never differentiated through.
    """
    x = x.detach()
    if eps <= 0 or steps <= 0:
        return x.clone()
    delta = _uniform_start(x, eps, generator) if random_start else torch.zeros_like(x)
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y)
        x_adv = x_adv.detach() + step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def fgsm(model: Logits, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float | None = None,
         random_start: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fast FGSM: random start U(-eps, eps), one step of ``step_size`` (default 1.25 eps), clipped to eps, [0, 1]."""
    return pgd(model, x, y, eps=eps, steps=1, step_size=1.25 * eps if step_size is None else step_size,
               random_start=random_start, generator=generator)


def fgsm_from_gradient(x: torch.Tensor, grad: torch.Tensor, *, eps: float, step_size: float,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """The authors' search-time FGSM: a uniform start in the eps-ball, one ``step_size`` step along the sign of
    ``grad`` (the loss gradient at the clean input ``x``), clipped to the ball and to [0, 1].

    Fast FGSM (:func:`fgsm`) takes the gradient at the random start instead; this variant reuses a gradient the
    caller already has (the validation objective's own backward), one forward/backward pass fewer."""
    x = x.detach()
    delta = (_uniform_start(x, eps, generator) + step_size * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def fgsm_clean(model: Logits, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """:func:`fgsm_from_gradient` with the loss gradient at the clean input taken here (one forward/backward)."""
    return fgsm_from_gradient(x, _input_grad(model, x, y), eps=eps, step_size=step_size, generator=generator)


def _uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    """U(-eps, eps) noise shaped as ``x``, from ``generator`` (drawn on its device, then moved to ``x``'s) or torch's
    global stream. A generator on ``x``'s GPU draws there: a CPU draw copied to the GPU waits for it (issue 26)."""
    if generator is None:
        return (torch.rand_like(x) * 2 - 1) * eps
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
    return (noise.to(x.device) * 2 - 1) * eps
