import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, minimize

from e2rnas.mgda import Weighting, min_norm_weights, normalizers


def _objective(G: torch.Tensor, w: torch.Tensor) -> float:
    return float((w.double() @ G.double()).square().sum())


def test_two_gradients_closed_form():
    torch.manual_seed(0)
    for _ in range(20):
        G = torch.randn(2, 7, dtype=torch.float64)
        w = min_norm_weights(G)
        u, v = G
        a = float(((v - u) @ v) / (u - v).square().sum())
        a = min(1.0, max(0.0, a))
        assert w.tolist() == pytest.approx([a, 1 - a], abs=1e-12)


@pytest.mark.parametrize("seed", range(25))
def test_random_instances_match_a_generic_qp_solver(seed):
    rng = np.random.default_rng(seed)
    K, P = int(rng.integers(3, 7)), int(rng.integers(2, 40))
    G = torch.from_numpy(rng.normal(size=(K, P)) * rng.uniform(0.1, 10, size=(K, 1)))
    w = min_norm_weights(G)
    assert float(w.min()) >= 0 and float(w.sum()) == pytest.approx(1.0, abs=1e-9)
    M = (G @ G.T).numpy()
    res = minimize(lambda x: x @ M @ x, np.full(K, 1 / K), jac=lambda x: 2 * M @ x, hess=lambda x: 2 * M,
                   method="trust-constr", bounds=Bounds(np.zeros(K), np.ones(K)),
                   constraints=[LinearConstraint(np.ones((1, K)), 1, 1)], options={"gtol": 1e-12, "xtol": 1e-14})
    x = res.x
    assert x.min() > -1e-8 and abs(x.sum() - 1) < 1e-8  # the reference point is feasible
    assert _objective(G, w) <= float(x @ M @ x) + 1e-6


def test_degenerate_cases():
    assert min_norm_weights(torch.randn(1, 5)).tolist() == [1.0]
    G = torch.randn(4, 6)
    G[2] = 0
    w = min_norm_weights(G)
    assert float(w[2]) == pytest.approx(1.0)  # the zero gradient is the min-norm point
    same = torch.ones(3, 4)
    w = min_norm_weights(same)
    assert float(w.sum()) == pytest.approx(1.0) and float(w.min()) >= 0
    assert min_norm_weights(torch.zeros(3, 4)).tolist() == pytest.approx([1 / 3] * 3)


def test_iteration_cap_is_respected():
    G = torch.randn(6, 50, dtype=torch.float64)
    w1 = min_norm_weights(G, max_iter=1)
    w_full = min_norm_weights(G)
    assert _objective(G, w_full) <= _objective(G, w1) + 1e-12


def test_weightings():
    G, losses = torch.randn(3, 5), torch.tensor([1.0, 2.0, 3.0])
    names = ["val", "ood", "adv"]
    gamma, eff = Weighting("equal").weights(G, losses, names)
    assert gamma.tolist() == pytest.approx([1 / 3] * 3) and torch.equal(gamma, eff)
    gamma, _ = Weighting("fixed:2,1,1").weights(G, losses, names)
    assert gamma.tolist() == pytest.approx([0.5, 0.25, 0.25])
    gamma, eff = Weighting("mgda", "l2").weights(G, losses, names)
    assert eff.tolist() == pytest.approx((gamma / G.norm(dim=1)).tolist())
    # the MGDA direction is a common descent direction for every objective
    d = (eff[:, None] * G).sum(0)
    assert bool(((G @ d) >= -1e-6).all())
    with pytest.raises(ValueError, match="fixed weighting has 2"):
        Weighting("fixed:1,1").weights(G, losses, names)
    with pytest.raises(ValueError):
        Weighting("pareto")
    assert normalizers(G, losses, "loss").tolist() == pytest.approx(losses.tolist())


def test_update_rules_differ_only_in_the_multipliers():
    """gamma comes from the normalised gradients either way; ``paper`` applies it to the raw ones (eq. 10)."""
    G = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.5, 0.2], [1.0, 1.0, 0.0]])
    losses, names = torch.ones(3), ["val", "ood", "adv"]
    g_paper, e_paper = Weighting("mgda", "l2", update="paper").weights(G, losses, names)
    g_norm, e_norm = Weighting("mgda", "l2", update="normalized").weights(G, losses, names)
    assert torch.allclose(g_paper, g_norm) and torch.equal(e_paper, g_paper)
    assert torch.allclose(e_norm, g_norm / G.norm(dim=1))
    with pytest.raises(ValueError, match="MGDA update"):
        Weighting("mgda", update="raw")


@pytest.mark.parametrize("normalization", ["l2", "loss", "loss+l2"])
def test_a_flat_objective_sits_out_instead_of_getting_a_huge_multiplier(normalization):
    G = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.5, -1.0, 1.0]])
    losses = torch.tensor([1.0, 0.3, 2.0])
    if normalization != "l2":  # a zero loss is as degenerate as a zero gradient when the loss normalises
        G[1] = torch.tensor([1e-3, 0.0, 0.0])
        losses[1] = 0.0
    w = Weighting("mgda", normalization)
    gamma, eff = w.weights(G, losses, ["val", "params", "flops"])
    assert w.degenerate(G, losses).tolist() == [False, True, False]
    assert float(gamma[1]) == 0.0 and float(eff[1]) == 0.0
    assert float(gamma.sum()) == pytest.approx(1.0) and float(eff.abs().max()) < 1e3
