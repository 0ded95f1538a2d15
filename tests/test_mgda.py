import re

import numpy as np
import pytest
import torch
from scipy.optimize import Bounds, LinearConstraint, minimize

from e2rnas.search.mgda import Weighting, min_norm_weights, normalizers


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


# --- checks written against the mutants that survived the suite above (docs/testing.md) ---------------------------

def _best_pair(G: torch.Tensor) -> list[float]:
    """The MGDA-UB start, by brute force: the best point on every edge of the simplex (closed form per pair)."""
    K, best, gamma = G.shape[0], float("inf"), None
    for i in range(K):
        for j in range(i + 1, K):
            u, v = G[i].double(), G[j].double()
            den = float((u - v).square().sum())
            a = 0.5 if den == 0 else min(1.0, max(0.0, float((v - u) @ v) / den))
            cost = float((a * u + (1 - a) * v).square().sum())
            if cost < best:
                best, gamma = cost, [0.0] * K
                gamma[i], gamma[j] = a, 1 - a
    return gamma


def test_two_gradients_clamp_to_a_vertex():
    # u = 0.1 e1, w = 0.3 e1: the min-norm point is u itself (a = 1), the unclamped formula says 1.5
    assert min_norm_weights(torch.tensor([[0.1, 0.0], [0.3, 0.0]])).tolist() == pytest.approx([1.0, 0.0])
    assert min_norm_weights(torch.tensor([[0.3, 0.0], [0.1, 0.0]])).tolist() == pytest.approx([0.0, 1.0])
    assert min_norm_weights(torch.tensor([[2.0, 1.0], [2.0, 1.0]])).tolist() == [0.5, 0.5]  # identical: midpoint


@pytest.mark.parametrize("shape", [(0, 3), (3,), (2, 2, 2)])
def test_bad_shapes_are_rejected_with_the_shape(shape):
    with pytest.raises(ValueError, match=rf"grads must be \(K, P\) with K >= 1, got {re.escape(str(shape))}"):
        min_norm_weights(torch.zeros(shape))


def test_zero_width_gradients_are_two_identical_points():
    assert min_norm_weights(torch.zeros(2, 0)).tolist() == [0.5, 0.5]


def test_result_keeps_the_input_dtype():
    for dtype in (torch.float32, torch.float64):
        for K in (1, 2, 3):
            assert min_norm_weights(torch.randn(K, 4, dtype=dtype)).dtype == dtype
        assert min_norm_weights(torch.zeros(3, 4, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize("scale", [1e-5, 1.0, 1e4])
def test_solution_does_not_depend_on_the_gradient_scale(scale):
    """The stopping rule is relative to the largest squared norm: tiny gradients are solved as well as big ones."""
    torch.manual_seed(3)
    G = torch.randn(5, 8, dtype=torch.float64)
    w_ref = min_norm_weights(G)
    w = min_norm_weights(G * scale)
    assert _objective(G, w) == pytest.approx(_objective(G, w_ref), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_zero_iterations_return_the_best_pair(seed):
    """max_iter=0 stops at the MGDA-UB start: the best edge point, computed here by brute force."""
    rng = np.random.default_rng(seed)
    G = torch.from_numpy(rng.normal(size=(int(rng.integers(3, 6)), 6)))
    assert min_norm_weights(G, max_iter=0).tolist() == pytest.approx(_best_pair(G), abs=1e-12)
    # and the iterations improve on it down to the optimum (an interior point here)
    assert _objective(G, min_norm_weights(G)) <= _objective(G, min_norm_weights(G, max_iter=0)) + 1e-15


def test_normalizers_each_mode():
    G = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, -0.5])  # float32 losses meet float64 gradients: the divisors follow the gradients
    assert normalizers(G, losses, "none").tolist() == [1.0, 1.0]
    assert normalizers(G, losses, "l2").tolist() == [5.0, 2.0]
    assert normalizers(G, losses, "loss").tolist() == [2.0, 0.5]
    assert normalizers(G, losses, "loss").dtype == torch.float64
    assert normalizers(G, losses, "loss+l2").tolist() == [10.0, 1.0]
    with pytest.raises(ValueError, match=r"unknown gradient normalisation 'l1'; choose from none, l2, loss, loss\+l2"):
        normalizers(G, losses, "l1")


def test_weighting_spec_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown weighting 'pareto'; use mgda, equal or fixed:w1,...,wK"):
        Weighting("pareto")
    with pytest.raises(ValueError, match=r"unknown gradient normalisation 'l1'; choose from none, l2, loss, loss\+l2"):
        Weighting("mgda", "l1")
    with pytest.raises(ValueError, match=r"unknown MGDA update 'raw'; choose from paper, normalized$"):
        Weighting("mgda", update="raw")
    # fixed weights are checked when the weighting is made, not at the first step
    needs_numbers = r"fixed weighting needs numbers, e.g. fixed:1,1,1,0.5,0.5 \(got 'fixed:a,b'\)"
    with pytest.raises(ValueError, match=needs_numbers):
        Weighting("fixed:a,b")
    with pytest.raises(ValueError, match="needs numbers"):
        Weighting("fixed:1:2")
    with pytest.raises(ValueError, match="needs numbers"):
        Weighting("fixed")
    for bad in ("fixed:-1,2", "fixed:0,0"):
        with pytest.raises(ValueError, match=r"fixed weights must be non-negative with a positive sum, got \["):
            Weighting(bad)


def test_fixed_weights_accept_zeros_and_small_sums():
    G, losses = torch.randn(3, 4), torch.ones(3)
    assert Weighting("fixed:0,1,1").weights(G, losses, "abc")[0].tolist() == [0.0, 0.5, 0.5]
    gamma, eff = Weighting("fixed:0.5,0.25,0.25").weights(G, losses, "abc")
    assert gamma.tolist() == [0.5, 0.25, 0.25] and eff.tolist() == [0.5, 0.25, 0.25]
    with pytest.raises(ValueError, match=r"fixed weighting has 2 weights for 3 objectives \(val, ood, adv\)"):
        Weighting("fixed:1,1").weights(G, losses, ["val", "ood", "adv"])


@pytest.mark.parametrize("normalization", ["none", "l2", "loss", "loss+l2"])
def test_mgda_gamma_is_the_min_norm_point_of_the_normalised_gradients(normalization):
    G = torch.tensor([[3.0, 0.0, 1.0], [0.0, 0.5, 0.2], [1.0, 1.0, 0.0]], dtype=torch.float64)
    losses = torch.tensor([2.0, 0.5, 4.0], dtype=torch.float64)
    n = normalizers(G, losses, normalization)
    gamma, eff = Weighting("mgda", normalization).weights(G, losses, "abc")
    assert gamma.dtype == torch.float64
    assert gamma.tolist() == pytest.approx(min_norm_weights(G / n[:, None]).tolist(), abs=1e-9)
    assert eff.tolist() == pytest.approx((gamma / n).tolist(), abs=1e-9)



def test_weighting_passes_its_iteration_cap_to_the_solver():
    G = torch.from_numpy(np.random.default_rng(4).normal(size=(4, 6)))  # an interior optimum
    losses = torch.ones(4, dtype=torch.float64)
    n = G.norm(dim=1)
    capped, _ = Weighting("mgda", "l2", max_iter=0).weights(G, losses, "abcd")
    full, _ = Weighting("mgda", "l2").weights(G, losses, "abcd")
    assert capped.tolist() == pytest.approx(_best_pair(G / n[:, None]), abs=1e-9)
    assert _objective(G / n[:, None], full) < _objective(G / n[:, None], capped) - 1e-6


def test_degenerate_thresholds_are_inclusive():
    G = torch.tensor([[1e-10, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)  # |g_0| exactly DEGENERATE
    losses = torch.tensor([1.0, 1e-10, 1.0], dtype=torch.float64)  # L_1 exactly DEGENERATE
    assert Weighting("mgda", "l2").degenerate(G, losses).tolist() == [True, False, False]
    assert Weighting("mgda", "loss").degenerate(G, losses).tolist() == [True, True, False]  # either one
    G[0, 0] = 2e-10
    assert Weighting("mgda", "loss+l2").degenerate(G, losses).tolist() == [False, True, False]


def test_an_mgda_spec_with_a_suffix_is_still_mgda():
    G, losses = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), torch.ones(3)
    assert Weighting("mgda:v2").degenerate(G, losses).tolist() == [True, False, False]


@pytest.mark.parametrize("spec", ["equal", "fixed:1,1,1"])
def test_only_mgda_has_degenerate_objectives(spec):
    G, losses = torch.zeros(3, 2), torch.zeros(3)
    flags = Weighting(spec, "loss").degenerate(G, losses)
    assert flags.dtype == torch.bool and flags.tolist() == [False, False, False]


@pytest.mark.parametrize("seed", range(40))
def test_sync_free_solver_matches_frank_wolfe(seed):
    """Random instances, K = 1..6, P above and below K (degenerate hulls included): the same min-norm point, and
    the same gamma where it is unique."""
    from e2rnas.search.mgda import min_norm_weights_sync_free

    gen = torch.Generator().manual_seed(seed)
    K = 1 + seed % 6
    P = (3, 20, 200)[seed % 3]
    grads = torch.randn(K, P, generator=gen, dtype=torch.float64) * torch.rand(K, 1, generator=gen,
                                                                                 dtype=torch.float64) * 10
    ref = min_norm_weights(grads, max_iter=100_000, tol=1e-15)
    got = min_norm_weights_sync_free(grads)
    assert got.shape == (K,) and got.dtype == grads.dtype and bool((got >= 0).all())
    assert float(got.sum()) == pytest.approx(1.0, abs=1e-12)
    scale = float((grads.norm(dim=1) ** 2).max())
    assert float((got @ grads).norm() ** 2) == pytest.approx(float((ref @ grads).norm() ** 2), abs=1e-9 * scale)
    if K <= P:  # affinely independent gradients: gamma is unique
        assert torch.allclose(got, ref, atol=1e-6), (got, ref)


def test_sync_free_solver_needs_no_values_on_the_host():
    """On the meta device a tensor has no data, so any .item(), float() or data-dependent branch would raise:
    the solver runs there, which is what lets it sit inside a CUDA graph."""
    from e2rnas.search.mgda import min_norm_weights_sync_free

    out = min_norm_weights_sync_free(torch.empty(5, 64, device="meta"))
    assert out.device.type == "meta" and out.shape == (5,)
    with pytest.raises(Exception):  # noqa: B017 - the reference solver does read values on the host
        min_norm_weights(torch.empty(5, 64, device="meta"))


def test_sync_free_solver_degenerate_cases():
    from e2rnas.search.mgda import min_norm_weights_sync_free

    assert torch.equal(min_norm_weights_sync_free(torch.zeros(3, 4)), torch.full((3,), 1 / 3))
    same = torch.ones(4, 8)
    assert float(min_norm_weights_sync_free(same).sum()) == pytest.approx(1.0)
    opposed = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])  # 0 is in the hull: the min norm is 0
    got = min_norm_weights_sync_free(opposed)
    assert float((got @ opposed).norm()) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="too many"):
        min_norm_weights_sync_free(torch.randn(11, 3))
