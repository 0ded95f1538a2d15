"""OoD metrics: exact values on hand-checked cases, chance levels, and the score direction."""

import numpy as np
import pytest

from e2rnas.evaluation.ood_metrics import max_softmax, ood_metrics


def test_separable_scores_are_perfect():
    rng = np.random.default_rng(0)
    m = ood_metrics(rng.uniform(0.6, 1.0, 300), rng.uniform(0.0, 0.4, 100))
    assert m["aupr_out"] == pytest.approx(1.0)
    assert m["aupr_in"] == pytest.approx(1.0)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["fpr95"] == pytest.approx(0.0)


def test_identical_distributions_give_chance_levels():
    rng = np.random.default_rng(1)
    m = ood_metrics(rng.uniform(size=6000), rng.uniform(size=2000))
    assert m["out_fraction"] == pytest.approx(0.25)
    assert m["aupr_out"] == pytest.approx(0.25, abs=0.03)  # the positive (OoD) rate
    assert m["aupr_in"] == pytest.approx(0.75, abs=0.03)
    assert m["auroc"] == pytest.approx(0.5, abs=0.03)
    assert m["fpr95"] == pytest.approx(0.95, abs=0.03)


def test_hand_computed_case_fixes_the_direction():
    # In-distribution scores (MSP) are high. Ranked by -score, OoD sits at ranks 1 and 3: AP = (1 + 2/3) / 2.
    m = ood_metrics(np.array([0.9, 0.8, 0.3]), np.array([0.4, 0.1]))
    assert m["aupr_out"] == pytest.approx(5 / 6)
    assert m["aupr_in"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    assert m["auroc"] == pytest.approx(5 / 6)
    assert m["fpr95"] == pytest.approx(0.5)  # accepting all 3 in-distribution samples also accepts 0.4


def test_flipped_scores_fail():
    """Passing anomaly scores (OoD high) instead of MSP must show up as a detector worse than chance."""
    rng = np.random.default_rng(2)
    msp_in, msp_out = rng.normal(1.0, 0.5, 1000), rng.normal(0.0, 0.5, 1000)
    right = ood_metrics(msp_in, msp_out)
    wrong = ood_metrics(-msp_in, -msp_out)
    assert right["auroc"] > 0.9 and right["aupr_out"] > 0.9 and right["fpr95"] < 0.5
    assert wrong["auroc"] < 0.1 and wrong["aupr_out"] < 0.5


def test_max_softmax_matches_torch_and_is_stable():
    import torch

    logits = np.random.default_rng(3).normal(size=(7, 5)) * 10
    expected = torch.softmax(torch.from_numpy(logits), dim=1).max(dim=1).values.numpy()
    np.testing.assert_allclose(max_softmax(logits), expected, rtol=1e-12)
    assert max_softmax(np.array([[1e4, 0.0, -1e4]]))[0] == pytest.approx(1.0)


def test_empty_or_nan_scores_are_rejected():
    with pytest.raises(ValueError):
        ood_metrics(np.array([]), np.array([0.1]))
    with pytest.raises(ValueError):
        ood_metrics(np.array([np.nan, 0.2]), np.array([0.1]))


def test_scores_of_any_shape_are_flattened_and_one_ood_score_is_enough():
    m = ood_metrics(np.array([[0.9, 0.8], [0.3, 0.7]]), np.array([[0.1]]))
    assert m["out_fraction"] == pytest.approx(1 / 5)
    assert m["auroc"] == pytest.approx(1.0) and m["aupr_out"] == pytest.approx(1.0)
    assert m["fpr95"] == pytest.approx(0.0)


def test_rejections_say_why():
    with pytest.raises(ValueError, match="^OoD metrics need at least one in-distribution and one OoD score$"):
        ood_metrics(np.array([0.5]), np.array([]))
    with pytest.raises(ValueError, match="^OoD scores must be finite$"):
        ood_metrics(np.array([0.5, np.inf]), np.array([0.1]))
    with pytest.raises(ValueError, match="^OoD scores must be finite$"):
        ood_metrics(np.array([0.5, 0.7]), np.array([np.nan]))


def test_max_softmax_is_float64_and_stable_per_row():
    p = max_softmax(np.array([[2.0, 0.0], [0.0, 0.0]], dtype=np.float32))
    assert p.dtype == np.float64
    np.testing.assert_allclose(p, [1 / (1 + np.exp(-2.0)), 0.5], rtol=1e-15)
    # rows far apart in scale: each row is shifted by its own max (a global shift underflows the second row to 0/0)
    np.testing.assert_allclose(max_softmax(np.array([[1000.0, 0.0], [-1000.0, -1000.0]])), [1.0, 0.5])
