"""The bi-level step's pieces against hand-written computations: the unrolled SGD step and the lower-level loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from e2rnas.search.bilevel import BilevelStep, StepBatch
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import make_objectives
from e2rnas.space.supernet import SearchNetwork

LR, MOMENTUM, WD = 0.05, 0.9, 3e-3


def _step(*, ll_ood: bool = True, ll_ood_weight: float = 1.0, momentum: float = MOMENTUM, wd: float = WD):
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3, num_classes=3).double()
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=LR, momentum=momentum, weight_decay=wd)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4)
    step = BilevelStep(model, objectives=make_objectives(("val", "ood")), weighting=Weighting("mgda"),
                       cost_model=None, w_optimizer=w_opt, a_optimizer=a_opt, ll_ood=ll_ood,
                       ll_ood_weight=ll_ood_weight)
    g = torch.Generator().manual_seed(1)

    def images():
        return torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)

    batch = StepBatch(images(), torch.tensor([0, 1, 2, 0]), images(), torch.tensor([1, 2, 0, 1]), images(), images())
    return model, step, w_opt, batch


def _kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    K = logits.shape[1]
    return ((1 / K) * (torch.log(torch.tensor(1 / K, dtype=logits.dtype)) - torch.log(p))).sum(dim=1).mean()


def _lower_by_hand(model, batch, weight: float) -> torch.Tensor:
    return F.cross_entropy(model(batch.x_train), batch.y_train) + weight * _kl_uniform(model(batch.x_ood_lower))


@pytest.mark.parametrize("ll_ood, weight", [(True, 1.0), (True, 0.5), (False, 1.0)])
def test_lower_level_loss_is_train_ce_plus_weighted_ood_kl(ll_ood, weight):
    model, step, _, batch = _step(ll_ood=ll_ood, ll_ood_weight=weight)
    weights = step.weights
    expected = _lower_by_hand(model, batch, weight if ll_ood else 0.0)
    expected_grads = torch.autograd.grad(expected, weights, allow_unused=True, materialize_grads=True)
    total, grads = step._lower_grads(model, batch, None, weights)
    assert float(total) == pytest.approx(float(expected.detach()), rel=1e-12)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    # without an OoD batch there is no OoD term whatever the flag says
    no_ood = StepBatch(batch.x_train, batch.y_train, batch.x_val, batch.y_val)
    total, _ = step._lower_grads(model, no_ood, None, weights)
    train_ce = F.cross_entropy(model(batch.x_train), batch.y_train).detach()
    assert float(total) == pytest.approx(float(train_ce), rel=1e-12)


def test_lower_level_adversarial_term_is_added():
    model, step, _, batch = _step(ll_ood=False)
    x_adv = batch.x_val
    total, _ = step._lower_grads(model, batch, x_adv, step.weights)
    expected = F.cross_entropy(model(batch.x_train), batch.y_train) + F.cross_entropy(model(x_adv), batch.y_train)
    assert float(total) == pytest.approx(float(expected.detach()), rel=1e-12)


@pytest.mark.parametrize("momentum, wd", [(MOMENTUM, WD), (0.0, WD), (MOMENTUM, 0.0)])
def test_unrolled_weights_are_one_sgd_step_with_momentum_and_weight_decay(momentum, wd):
    """theta' = theta - xi (g + wd theta + momentum buf), written out here by hand (PyTorch's SGD convention)."""
    model, step, w_opt, batch = _step(momentum=momentum, wd=wd)
    # one real optimiser step first, so that the momentum buffers exist
    w_opt.zero_grad()
    _lower_by_hand(model, batch, 1.0).backward()
    w_opt.step()
    bufs = [w_opt.state[p].get("momentum_buffer") for p in step.weights]
    assert (bufs[0] is not None) == (momentum > 0)
    g = [torch.randn_like(p) for p in step.weights]
    xi = 0.03
    out = step._unrolled(g, xi)
    for p, gp, buf, new in zip(step.weights, g, bufs, out, strict=True):
        expected = p.detach() - xi * (gp + wd * p.detach() + (momentum * buf if buf is not None else 0.0))
        torch.testing.assert_close(new, expected, rtol=0, atol=1e-15)
        assert new.requires_grad and new.grad_fn is None  # a fresh leaf
    # and the unroll agrees with what SGD itself does next, when handed the same gradient (lr = xi)
    for p, gp in zip(step.weights, g, strict=True):
        p.grad = gp.clone()
    for group in w_opt.param_groups:
        group["lr"] = xi
    w_opt.step()
    for p, new in zip(step.weights, out, strict=True):
        torch.testing.assert_close(p.detach(), new.detach(), rtol=0, atol=1e-14)


def test_unrolled_before_any_step_has_no_momentum_term():
    _, step, _, _ = _step()
    g = [torch.ones_like(p) for p in step.weights]
    out = step._unrolled(g, 0.1)
    for p, new in zip(step.weights, out, strict=True):
        torch.testing.assert_close(new, p.detach() - 0.1 * (1 + WD * p.detach()), rtol=0, atol=1e-15)
