"""OoD detection metrics from in-distribution scores (higher = more in-distribution, e.g. the max softmax).

Directions, stated once:
- ``aupr_out``: OoD is the positive class, ranked by ``-score`` (the paper's "OoD AUPR"; a constant detector gets
  the OoD fraction of the pool).
- ``aupr_in``: in-distribution is the positive class, ranked by ``score``.
- ``auroc``: the probability that a random in-distribution sample scores above a random OoD one (the same for
  either choice of positive class when the score is flipped with it).
- ``fpr95``: the fraction of OoD samples accepted as in-distribution at the threshold that accepts 95% of the
  in-distribution samples (in-distribution positive, as in Hendrycks & Gimpel and ODIN).
"""

from __future__ import annotations

import numpy as np


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray, *, tpr: float = 0.95) -> dict[str, float]:
    """AUPR-out, AUPR-in, AUROC and FPR at ``tpr`` (scikit-learn) for in-distribution scores."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in = np.asarray(in_scores, dtype=np.float64).reshape(-1)
    s_out = np.asarray(out_scores, dtype=np.float64).reshape(-1)
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError("OoD metrics need at least one in-distribution and one OoD score")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("OoD scores must be finite")
    scores = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(len(s_in)), np.zeros(len(s_out))])
    fpr, tpr_curve, _ = roc_curve(is_in, scores)
    return {
        "aupr_out": float(average_precision_score(1 - is_in, -scores)),
        "aupr_in": float(average_precision_score(is_in, scores)),
        "auroc": float(roc_auc_score(is_in, scores)),
        "fpr95": float(fpr[np.searchsorted(tpr_curve, tpr, side="left")]),
        "out_fraction": len(s_out) / len(scores),
    }


def max_softmax(logits: np.ndarray) -> np.ndarray:
    """The max softmax probability (MSP) of each row, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)
