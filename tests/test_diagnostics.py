"""Per-step MGDA diagnostics against values computed by hand, and the steering summary."""

import math

import pytest
import torch

from e2rnas.search.diagnostics import STEER_GAMMA, steering, steering_line, step_diagnostics
from e2rnas.search.mgda import Weighting


def test_two_opposed_cost_gradients_by_hand():
    """params and latency pull in opposite directions: cosine -1, MGDA puts its weight on them, direction ~0."""
    val = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    params = torch.tensor([0.0, 3.0, 4.0, 0.0], dtype=torch.float64)  # |g| = 5
    latency = -0.5 * params  # |g| = 2.5, exactly opposed
    G = torch.stack([val, params, latency])
    gamma, eff = Weighting("mgda").weights(G, torch.ones(3, dtype=torch.float64), ["val", "params", "latency"])
    assert gamma.tolist() == pytest.approx([0.0, 0.5, 0.5])  # the min-norm point is 0 on the opposed pair
    applied = torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    d = step_diagnostics(G, eff, applied, ["val", "params", "latency"])
    assert d["grad_norms"] == pytest.approx({"val": 1.0, "params": 5.0, "latency": 2.5})
    assert d["cosines"] == pytest.approx({"val-params": 0.0, "val-latency": 0.0, "params-latency": -1.0})
    assert d["direction_norm"] == pytest.approx(0.0, abs=1e-12)
    assert d["applied_norm"] == pytest.approx(2.0)


def test_cosine_and_direction_norm_general_case():
    a = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64)
    b = torch.tensor([2.0, 0.0, 1.0], dtype=torch.float64)
    eff = torch.tensor([0.25, 2.0], dtype=torch.float64)
    d = step_diagnostics(torch.stack([a, b]), eff, torch.zeros(3), ["x", "y"])
    assert d["cosines"]["x-y"] == pytest.approx(4.0 / (3.0 * math.sqrt(5.0)))
    expected = torch.tensor([0.25 + 4.0, 0.5, 0.5 + 2.0])
    assert d["direction_norm"] == pytest.approx(float(expected.norm()))


def test_a_zero_gradient_has_cosine_zero():
    G = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    d = step_diagnostics(G, torch.tensor([1.0, 0.0]), torch.zeros(2), ["val", "params"])
    assert d["cosines"] == {"val-params": 0.0}
    assert d["grad_norms"]["params"] == 0.0


def test_steering_summary_and_line():
    records = [{"type": "step", "gammas": {"val": 0.05, "params": 0.95}, "dropped_from_mgda": []},
               {"type": "step", "gammas": {"val": 0.6, "params": 0.4}},
               {"type": "step", "gammas": {"val": 1.0, "params": 0.0}, "dropped_from_mgda": ["params"]},
               {"type": "step", "gammas": {}},  # a warm-up step: no MGDA
               {"type": "epoch", "gammas": {"val": 9}}]
    table = steering(records)
    assert table["val"] == pytest.approx({"mean_gamma": 1.65 / 3, "steered_steps": 2, "steps": 3,
                                          "steered_share": 2 / 3, "sat_out_share": 0.0})
    assert table["params"]["steered_steps"] == 2 and table["params"]["sat_out_share"] == pytest.approx(1 / 3)
    line = steering_line(table)
    assert line.startswith(f"steered (gamma > {STEER_GAMMA}) over 3 steps: val (67 % of steps, mean gamma 0.55)")
    assert "never" not in line
    table["params"]["steered_steps"] = 0
    assert steering_line(table).endswith("never: params")
    assert "no bi-level step ran" in steering_line(steering([]))


def test_low_ranked_ops_warning_names_the_worst_override():
    from e2rnas.search.derive import _edges
    from e2rnas.search.guards import low_ranked_ops, search_warnings
    from e2rnas.space.genotypes import GENOTYPES
    from e2rnas.space.ops import PRIMITIVES

    g = GENOTYPES["DARTS_V2"]
    ranked = {k: torch.full((14, 8), 0.05) for k in ("normal", "reduce")}
    for kind in ranked:  # every handed-over op first on its edge: nothing to warn about
        for e, op in _edges(getattr(g, kind)):
            ranked[kind][e, PRIMITIVES.index(op)] = 0.5
    assert low_ranked_ops(g, ranked) == []
    assert not [w for w in search_warnings(g, weights=ranked) if w.startswith("derivation")]
    # normal edge 0 keeps sep_conv_3x3 (DARTS_V2: node 2, input 0); make it the lightest of 7 there
    ranked["normal"][0] = torch.tensor([0.3, 0.2, 0.2, 0.2, 0.01, 0.2, 0.2, 0.2])  # sep_conv_3x3 is 4
    low = low_ranked_ops(g, ranked)
    assert low == [("normal", 0, "sep_conv_3x3", pytest.approx(0.01), pytest.approx(0.2))]
    line = [w for w in search_warnings(g, weights=ranked) if w.startswith("derivation")][0]
    assert "1 of 16 handed-over ops" in line and "sep_conv_3x3 on normal edge 0, weight 0.010" in line
    # the middle rank (3 of the 6 others heavier) counts as the bottom half; 2 heavier does not
    ranked["normal"][0] = torch.tensor([0.9, 0.3, 0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
    assert len(low_ranked_ops(g, ranked)) == 1
    ranked["normal"][0] = torch.tensor([0.9, 0.3, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert low_ranked_ops(g, ranked) == []
