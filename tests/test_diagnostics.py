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
