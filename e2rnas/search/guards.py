"""Warnings when a search has collapsed or not decided anything; each says what to change.

- *No parametric op in the normal cell*: the network is its fixed part (stem, 1x1 pre-processing, classifier).
- *Pool/skip collapse*: at most 2 of the normal cell's 8 ops are parametric.
- *Skip collapse*: >= 3 ``skip_connect`` in the normal cell (DARTS' known failure mode).
- *Overridden ranking*: a handed-over op sits in the bottom half of its edge (at least half of the edge's other
  candidate ops have a larger softmax weight): the budget rule kept it for its cost, not for what the search learned.
- *Reduce cell without parametric op* (information, not a warning): DARTS' and the paper's published reduce cells are
  max pools and skips too; the reduce cell then only downsamples and the capacity sits in the normal cell.
- *Indecision*: softmax(alpha) still close to uniform. Measure: the mean over all edges of both cell types of the
  normalised entropy H(p) / log(n) of the op weights (over the ops not pruned); > 0.95 means the derived genotype was
  picked from noise-level differences (uniform is 1.0; one op at 0.5 and seven at 1/14 gives 0.80).
"""

from __future__ import annotations

import math

import torch

from e2rnas.space.genotypes import Genotype
from e2rnas.space.ops import PARAMETER_FREE_OPS

INDECISION_ENTROPY = 0.95
MAX_NORMAL_SKIPS = 2
MIN_NORMAL_PARAMETRIC = 3  # fewer parametric ops than this in the normal cell (but some): mostly pools and skips


def normalized_entropy(weights: torch.Tensor) -> float:
    """Mean over rows of H(p) / log(#ops with p > 0); rows are softmax weights (edges x ops)."""
    values = []
    for row in weights.detach().double().cpu():
        p = row[row > 0]
        if len(p) < 2:
            continue
        p = p / p.sum()
        values.append(float(-(p * p.log()).sum()) / math.log(len(p)))
    return sum(values) / len(values) if values else 0.0


def low_ranked_ops(genotype: Genotype, weights: dict[str, torch.Tensor]) -> list[tuple[str, int, str, float, float]]:
    """(cell, edge, op, its weight, the edge's largest weight) for each handed-over op in the bottom half of its
    edge: at least half of the edge's other candidates (non-``none``, not pruned) are strictly heavier."""
    from e2rnas.search.derive import _edges
    from e2rnas.space.ops import PRIMITIVES

    out = []
    for kind in ("normal", "reduce"):
        for edge, op in _edges(getattr(genotype, kind)):
            row = weights[kind][edge].detach().double().cpu()
            live = [i for i, name in enumerate(PRIMITIVES) if name != "none" and row[i] > 0]
            w = float(row[PRIMITIVES.index(op)])
            heavier = sum(float(row[i]) > w for i in live if PRIMITIVES[i] != op)
            if heavier * 2 >= len(live) - 1 > 0:
                out.append((kind, edge, op, w, max(float(row[i]) for i in live)))
    return out


def search_warnings(genotype: Genotype, *, weights: dict[str, torch.Tensor] | None = None) -> list[str]:
    """The warnings for a handed-over genotype (and the alphas' softmax weights it came from, when known)."""
    out = []
    normal_ops = [op for op, _ in genotype.normal]
    if all(op in PARAMETER_FREE_OPS for op in normal_ops):
        out.append("collapse: the normal cell has no parametric op (only pooling and skips), so the network is its "
                   "fixed part; raise L (--params-bound), derive under the budget (--derive budget, "
                   "--params-floor 0.8) or search longer")
    free = sum(op in PARAMETER_FREE_OPS for op in normal_ops)
    if 0 < len(normal_ops) - free <= MIN_NORMAL_PARAMETRIC - 1:
        out.append(f"collapse: the normal cell has {free} of {len(normal_ops)} parameter-free ops (pools and skips); "
                   f"cap them in the derivation (--max-normal-free-ops 2), raise L, or search longer")
    skips = normal_ops.count("skip_connect")
    if skips > MAX_NORMAL_SKIPS:
        out.append(f"collapse: the normal cell has {skips} skip_connect edges (DARTS' skip collapse); use "
                   f"--derive budget with a params floor, or --method p-darts (at most 2 skips)")
    if weights is not None and (low := low_ranked_ops(genotype, weights)):
        kind, edge, op, w, best = min(low, key=lambda t: t[3] / t[4])
        out.append(f"derivation: {len(low)} of {2 * len(genotype.normal)} handed-over ops sit in the bottom half of "
                   f"their edge's softmax weights (worst: {op} on {kind} edge {edge}, weight {w:.3f} against the "
                   f"edge's best {best:.3f}): the budget, not the search, chose them; widen the bounds "
                   f"(--params-bound, --macs-bound, --latency-bound) or search longer")
    if weights is not None:
        h = normalized_entropy(torch.cat([weights["normal"], weights["reduce"]]))
        if h > INDECISION_ENTROPY:
            out.append(f"indecision: softmax(alpha) is still close to uniform (mean normalised entropy {h:.3f} > "
                       f"{INDECISION_ENTROPY}), so the genotype was picked from noise; search more steps "
                       f"(--epochs, --max-steps-per-epoch) or raise the architecture learning rate (--arch-lr)")
    return out


def search_notes(genotype: Genotype) -> list[str]:
    """Information about a handed-over genotype that is not a fault (the collapse guard applied to the reduce cell)."""
    reduce_ops = [op for op, _ in genotype.reduce]
    if reduce_ops and all(op in PARAMETER_FREE_OPS for op in reduce_ops):
        return ["the reduce cell has no parametric op (only pooling and skips), as in DARTS' and the paper's published "
                "reduce cells: it downsamples and adds no capacity; the normal cell carries the network"]
    return []
