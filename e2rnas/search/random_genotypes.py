"""Random genotypes that meet the budget: the baseline a search must beat (``e2rnas run --baseline``, the study).

Distribution: uniform over the genotypes of the DARTS space that meet every bound and cell cap the budget rule
enforces (params in [floor x L, L], MACs <= F, table latency <= T, skip / free-op caps of the normal cell), by
rejection from the uniform distribution over the whole space (per cell type and node, two distinct incoming edges
uniformly, one of the 7 non-``none`` ops uniformly per kept edge; inputs listed in ascending order, as the budget
rule writes them). Rejection from a uniform proposal is uniform on the accepted set, so an op is rarer than 1/7
only as far as the budget forces it. Costs are the exact additive costs of the deploy network (``deploy_costs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from e2rnas.errors import E2RNASError
from e2rnas.search.derive import _NODE_EDGES, KINDS, AdditiveCost, _violations
from e2rnas.space.genotypes import STEPS, Genotype
from e2rnas.space.ops import PARAMETER_FREE_OPS

_CHUNK = 4096


@dataclass(frozen=True)
class Draws:
    genotypes: list[Genotype]
    proposed: int  # proposals drawn to get them
    accepted: int  # proposals that met the budget (before removing repeats)

    @property
    def acceptance(self) -> float:
        return self.accepted / max(self.proposed, 1)


def _propose(rng: np.random.Generator, n: int, ops: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """n proposals: per kind, (edge index, op index) arrays of shape (n, 8) in genotype order."""
    out = {}
    for kind in KINDS:
        edges, chosen = [], []
        for node_edges in _NODE_EDGES:
            pick = np.sort(np.argsort(rng.random((n, len(node_edges))), axis=1)[:, :2], axis=1)
            edges.append(np.asarray(node_edges)[pick])
            chosen.append(ops[rng.integers(0, len(ops), size=(n, 2))])
        out[kind] = (np.concatenate(edges, axis=1), np.concatenate(chosen, axis=1))
    return out


def _genotype(props: dict[str, tuple[np.ndarray, np.ndarray]], row: int, primitives: Sequence[str]) -> Genotype:
    cells = {}
    for kind in KINDS:
        edges, ops = props[kind]
        gene = []
        for k in range(2 * STEPS):
            node_edges = _NODE_EDGES[k // 2]
            gene.append((primitives[int(ops[row, k])], node_edges.index(int(edges[row, k]))))
        cells[kind] = tuple(gene)
    concat = tuple(range(2, 2 + STEPS))
    return Genotype(cells["normal"], concat, cells["reduce"], concat)


def sample_feasible(costs: Sequence[AdditiveCost], primitives: Sequence[str], *, n: int, seed: int,
                    max_skips_normal: int | None = None, max_free_normal: int | None = None,
                    max_proposals: int = 2_000_000) -> Draws:
    """``n`` distinct genotypes drawn uniformly among those that meet ``costs``' bounds and the normal-cell caps.

    Raises ``E2RNASError`` when ``max_proposals`` proposals give fewer than ``n`` (a budget too narrow for
    rejection sampling: widen it or lower ``--params-floor``)."""
    if n < 1:
        raise E2RNASError(f"the number of random genotypes must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    ops = np.array([i for i, p in enumerate(primitives) if p != "none"])
    skip = primitives.index("skip_connect") if "skip_connect" in primitives else -1
    free = np.array([i for i, p in enumerate(primitives) if p in PARAMETER_FREE_OPS])
    tables = [(c, {k: np.asarray(c.tables[k], dtype=np.float64) for k in KINDS}) for c in costs]
    found: list[Genotype] = []
    seen: set[Genotype] = set()
    proposed = accepted = 0
    while len(found) < n and proposed < max_proposals:
        props = _propose(rng, _CHUNK, ops)
        proposed += _CHUNK
        ok = np.ones(_CHUNK, dtype=bool)
        for c, t in tables:  # vectorised pre-filter on the bounds; the exact check below decides
            total = c.fixed + sum(t[k][props[k][0], props[k][1]].sum(axis=1) for k in KINDS)
            slack = 1e-6 * max(1.0, abs(c.upper or 0.0), abs(c.lower or 0.0))
            if c.upper is not None:
                ok &= total <= c.upper + slack
            if c.lower is not None:
                ok &= total >= c.lower - slack
        normal_ops = props["normal"][1]
        if max_skips_normal is not None:
            ok &= (normal_ops == skip).sum(axis=1) <= max_skips_normal
        if max_free_normal is not None:
            ok &= np.isin(normal_ops, free).sum(axis=1) <= max_free_normal
        for row in np.flatnonzero(ok):
            genotype = _genotype(props, int(row), primitives)
            if _violations(genotype, costs, primitives):
                continue
            accepted += 1
            if genotype not in seen and len(found) < n:
                seen.add(genotype)
                found.append(genotype)
    if len(found) < n:
        bounds = ", ".join(c.describe_bound() for c in costs if c.upper is not None or c.lower is not None)
        raise E2RNASError(f"only {len(found)} of {n} random genotypes meet {bounds} after {proposed} proposals "
                          f"(acceptance {accepted / max(proposed, 1):.2e}); widen the budget or lower --params-floor")
    return Draws(found, proposed, accepted)
