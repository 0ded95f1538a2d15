"""The upper-level objectives (eqs. 3-6) against independent computations, and the one-step OoD update direction."""

import math

import pytest
import torch

from e2rnas.search.objectives import (
    OBJECTIVES,
    AdvLoss,
    FlopsLoss,
    LatencyLoss,
    ObjectiveContext,
    OodLoss,
    ParamsLoss,
    ValLoss,
    make_objectives,
    ood_kl_uniform,
)


def _kl_uniform_by_hand(logits: torch.Tensor) -> float:
    """mean_i sum_k (1/K) log((1/K) / p_ik), written out with explicit loops."""
    total = 0.0
    for row in logits.tolist():
        z = [math.exp(v - max(row)) for v in row]
        p = [v / sum(z) for v in z]
        total += sum((1 / len(row)) * math.log((1 / len(row)) / pk) for pk in p)
    return total / len(logits)


def test_ood_kl_uniform_is_kl_from_uniform():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, dtype=torch.float64) * 3
    assert float(ood_kl_uniform(logits)) == pytest.approx(_kl_uniform_by_hand(logits), rel=1e-12)
    assert float(ood_kl_uniform(torch.zeros(3, 7))) == pytest.approx(0.0, abs=1e-6)  # uniform: zero
    assert float(ood_kl_uniform(torch.tensor([[10.0, 0.0]]))) > 0.5
    # one row per sample: the mean over samples, not over classes (10 classes, 2 samples)
    two = torch.tensor([[4.0] + [0.0] * 9, [0.0] * 10])
    assert float(ood_kl_uniform(two)) == pytest.approx(_kl_uniform_by_hand(two), rel=1e-6)


def test_one_ood_step_moves_a_tiny_nets_ood_predictions_towards_uniform():
    """A gradient step on OodLoss must make the OoD predictions more uniform (higher entropy); a sign error fails."""
    torch.manual_seed(1)
    net = torch.nn.Linear(6, 4)
    with torch.no_grad():
        net.weight.mul_(3)
    x_ood = torch.randn(16, 6)

    def entropy() -> float:
        with torch.no_grad():
            p = torch.softmax(net(x_ood), dim=1)
        return float(-(p * p.log()).sum(dim=1).mean())

    loss = OodLoss()(ObjectiveContext(forward=net, x_ood=x_ood))
    before_ent, before_loss = entropy(), float(loss.detach())
    loss.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.05 * p.grad
    with torch.no_grad():
        after_loss = float(OodLoss()(ObjectiveContext(forward=net, x_ood=x_ood)))
    assert after_loss < before_loss
    assert entropy() > before_ent


def test_data_objectives_use_their_own_batch():
    torch.manual_seed(2)
    net = torch.nn.Linear(3, 4)
    x_val, x_adv, x_ood = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    ctx = ObjectiveContext(forward=net, x_val=x_val, y_val=y, x_adv=x_adv, x_ood=x_ood)
    logp_val, logp_adv = torch.log_softmax(net(x_val), 1), torch.log_softmax(net(x_adv), 1)
    assert float(ValLoss()(ctx)) == pytest.approx(float(-logp_val[range(5), y].mean()), rel=1e-6)
    assert float(AdvLoss()(ctx)) == pytest.approx(float(-logp_adv[range(5), y].mean()), rel=1e-6)
    assert float(OodLoss()(ctx)) == pytest.approx(_kl_uniform_by_hand(net(x_ood).detach().double()), rel=1e-5)


@pytest.mark.parametrize("cls, value_key, bound_key", [
    (ParamsLoss, "params_m", "params_bound_m"),
    (FlopsLoss, "macs_m", "macs_bound_m"),
    (LatencyLoss, "latency_ms", "latency_bound_ms"),
])
def test_cost_objectives_are_relative_distances_to_the_bound(cls, value_key, bound_key):
    for value, bound, expected in [(3.0, 2.0, 0.5), (1.0, 2.0, 0.5), (2.0, 2.0, 0.0), (0.5, 4.0, 0.875)]:
        v = torch.tensor(value, requires_grad=True)
        out = cls()(ObjectiveContext(**{value_key: v, bound_key: bound}))
        assert float(out) == pytest.approx(expected)
        out.backward()
        slope = 0.0 if value == bound else (1 / bound if value > bound else -1 / bound)
        assert float(v.grad) == pytest.approx(slope)
    assert cls.uses_weights is False


def test_registry_and_names():
    assert list(OBJECTIVES) == ["val", "ood", "adv", "params", "flops", "latency"]
    assert all(OBJECTIVES[name].name == name for name in OBJECTIVES)
    assert [o.uses_weights for o in make_objectives(("val", "ood", "adv"))] == [True, True, True]
    assert [type(o) for o in make_objectives(("flops", "val"))] == [FlopsLoss, ValLoss]
    with pytest.raises(ValueError, match=r"unknown objective\(s\) \['acc'\]; choose from val, ood, adv, params, flops"):
        make_objectives(("val", "acc"))
    with pytest.raises(ValueError, match=r"unknown objective\(s\) \(\)"):
        make_objectives(())
