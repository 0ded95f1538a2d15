"""The random-genotype sampler: every draw meets the budget exactly, the draws are distinct and reproducible, and
without a binding budget the op and edge choices are uniform (no hidden bias toward cheap ops)."""

from collections import Counter

import numpy as np
import pytest

from e2rnas.errors import E2RNASError
from e2rnas.search.derive import _violations, deploy_costs
from e2rnas.search.random_genotypes import sample_feasible
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.ops import PARAMETER_FREE_OPS

SHAPE = DeployShape(layers=5, C=8, num_classes=10, input_size=16)


@pytest.fixture(scope="module")
def model():
    return CostModel(SHAPE)


def test_every_draw_meets_the_budget_and_the_caps(model):
    costs = deploy_costs(model, params_bound_m=0.05, params_floor=0.8, macs_bound_m=4.0)
    draws = sample_feasible(costs, model.primitives, n=20, seed=3, max_free_normal=4, max_skips_normal=2)
    assert len(draws.genotypes) == len(set(draws.genotypes)) == 20
    assert 0 < draws.acceptance < 1
    for g in draws.genotypes:
        assert not _violations(g, costs, model.primitives)
        cost = model.genotype_cost(g)  # the cost model's own exact count, not the tables the sampler used
        assert 0.8 * 0.05 - 1e-9 <= cost.params_m <= 0.05 + 1e-9
        assert cost.macs_m <= 4.0 + 1e-9
        normal = [op for op, _ in g.normal]
        assert sum(op in PARAMETER_FREE_OPS for op in normal) <= 4 and normal.count("skip_connect") <= 2
    again = sample_feasible(costs, model.primitives, n=20, seed=3, max_free_normal=4, max_skips_normal=2)
    assert again.genotypes == draws.genotypes
    other = sample_feasible(costs, model.primitives, n=20, seed=4, max_free_normal=4, max_skips_normal=2)
    assert other.genotypes != draws.genotypes


def test_unconstrained_draws_are_uniform_over_ops_and_edges(model):
    """No bound: each of the 7 ops has probability 1/7 per kept edge; node 3 (inputs 0..4) keeps each input with
    probability 2/5. 400 genotypes x 16 edges: bounds at about 5 standard deviations."""
    costs = deploy_costs(model)
    draws = sample_feasible(costs, model.primitives, n=400, seed=0)
    assert draws.acceptance == 1.0
    ops = Counter(op for g in draws.genotypes for op, _ in (*g.normal, *g.reduce))
    n = 400 * 16
    assert set(ops) == {p for p in model.primitives if p != "none"}
    sd = np.sqrt(n * (1 / 7) * (6 / 7))
    assert all(abs(c - n / 7) < 5 * sd for c in ops.values()), ops
    last_node_inputs = Counter(i for g in draws.genotypes for _, i in g.normal[6:8])
    assert all(abs(last_node_inputs[i] - 400 * 2 / 5) < 5 * np.sqrt(400 * 0.4 * 0.6) for i in range(5))
    assert all(g.normal[k][1] < g.normal[k + 1][1] for g in draws.genotypes for k in (0, 2, 4, 6))


def test_a_budget_that_forces_cheap_ops_shows_in_the_frequencies_only_as_far_as_it_must(model):
    """A tight MACs bound: every op still appears, parametric ops less often than 1/7 each."""
    cheap = deploy_costs(model, macs_bound_m=2.0)
    draws = sample_feasible(cheap, model.primitives, n=60, seed=1)
    ops = Counter(op for g in draws.genotypes for op, _ in (*g.normal, *g.reduce))
    assert set(ops) == {p for p in model.primitives if p != "none"}
    assert ops["sep_conv_5x5"] < ops["max_pool_3x3"]


def test_an_unreachable_budget_fails_in_one_line(model):
    costs = deploy_costs(model, params_bound_m=1e-6)
    with pytest.raises(E2RNASError, match=r"only 0 of 2 random genotypes meet .* after 8192 proposals"):
        sample_feasible(costs, model.primitives, n=2, seed=0, max_proposals=8192)
    with pytest.raises(E2RNASError, match="must be >= 1"):
        sample_feasible(costs, model.primitives, n=0, seed=0)
