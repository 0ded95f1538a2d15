"""Derive the genotype from the architecture weights: the DARTS rule, or the budget rule (an exact optimum).

The budget rule picks, per cell type, two incoming edges per node and one non-``none`` op per kept edge so that the
summed architecture strength (log of the op's softmax weight, times the PC-DARTS edge weight where present) is
largest, subject to the exact deploy cost: params in [floor x L, L], MACs <= F and table latency <= T. Every cost
is additive over the kept (edge, op) pairs of the two cell types (``CostModel.tables``, ``LatencyTable.tables``),
so the problem is a 0/1 integer program with 2 x 14 x 7 binaries, solved exactly by HiGHS (``scipy.optimize.milp``,
relative gap 0). The result is checked against the exact cost model afterwards. With no binding bound the budget
rule returns the DARTS rule's genotype (the per-node top-2 edges by strongest op maximise the summed log weight).
See ``docs/derivation.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from e2rnas.errors import E2RNASError
from e2rnas.space.genotypes import EDGES_PER_NODE, STEPS, Genotype
from e2rnas.space.ops import PARAMETER_FREE_OPS

DERIVE_RULES = ("budget", "darts")
KINDS = ("normal", "reduce")
_TOL = 1e-9  # relative: float sums of integer costs; a bound met to this precision is met
_TIGHTEN_ROUNDS = 8
_NODE_EDGES = [list(range(sum(2 + k for k in range(i)), sum(2 + k for k in range(i + 1)))) for i in range(STEPS)]


class BudgetInfeasibleError(E2RNASError):
    """No genotype of the search space meets the bounds on the deploy network."""


@dataclass(frozen=True)
class AdditiveCost:
    """A cost that is a fixed part plus one entry per kept (edge, op) of each cell type, with optional bounds.

    ``tables[kind]`` is ``[14, n_ops]`` (summed over all cells of that type), in the same unit as ``fixed``.
    """

    name: str
    unit: str
    fixed: float
    tables: dict[str, torch.Tensor]
    upper: float | None = None
    lower: float | None = None

    def of(self, genotype: Genotype, primitives: Sequence[str]) -> float:
        total = self.fixed
        for kind in KINDS:
            for e, op in _edges(getattr(genotype, kind)):
                total += float(self.tables[kind][e, primitives.index(op)])
        return total

    def describe_bound(self) -> str:
        lo = f"{self.lower:.4g} <= " if self.lower is not None else ""
        hi = f" <= {self.upper:.4g}" if self.upper is not None else ""
        return f"{lo}{self.name}{hi} {self.unit}"


@dataclass(frozen=True)
class Derivation:
    rule: str
    genotype: Genotype
    strength: float  # summed log strength of the 16 kept (edge, op) pairs
    costs: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "genotype": self.genotype.to_dict(), "strength": self.strength, **self.costs}


def _edges(cell: Sequence[tuple[str, int]]) -> list[tuple[int, str]]:
    """(edge index in DARTS order, op) of a cell's 8 kept (op, input) pairs."""
    return [(_NODE_EDGES[k // EDGES_PER_NODE][inp], op) for k, (op, inp) in enumerate(cell)]


def log_strengths(strengths: torch.Tensor) -> torch.Tensor:
    """log of the op weights (``-inf`` where an op is pruned or has weight 0)."""
    s = strengths.detach().double().cpu()
    return torch.where(s > 0, s.clamp_min(1e-300).log(), torch.full_like(s, -math.inf))


def genotype_strength(genotype: Genotype, logs: dict[str, torch.Tensor], primitives: Sequence[str]) -> float:
    return float(sum(logs[kind][e, primitives.index(op)]
                     for kind in KINDS for e, op in _edges(getattr(genotype, kind))))


def _allowed(primitives: Sequence[str], logs: dict[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """The (kind, edge, op) triples a genotype may use: non-``none`` ops that are not pruned."""
    return [(kind, e, o) for kind in KINDS for e in range(logs[kind].shape[0]) for o, name in enumerate(primitives)
            if name != "none" and math.isfinite(float(logs[kind][e, o]))]


def _solve(objective: np.ndarray, triples: list[tuple[str, int, int]], costs: Sequence[AdditiveCost],
           primitives: Sequence[str], max_skips_normal: int | None,
           tighten: dict[str, float] | None = None, max_free_normal: int | None = None) -> np.ndarray | None:
    """Minimise ``objective @ x`` over 0/1 x (one per triple) under the cell structure and the cost bounds."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    n = len(triples)
    rows, lo, hi = [], [], []
    for kind in KINDS:
        for node_edges in _NODE_EDGES:
            rows.append([1.0 if t[0] == kind and t[1] in node_edges else 0.0 for t in triples])
            lo.append(EDGES_PER_NODE)
            hi.append(EDGES_PER_NODE)
        for e in range(sum(len(x) for x in _NODE_EDGES)):
            rows.append([1.0 if t[0] == kind and t[1] == e else 0.0 for t in triples])
            lo.append(0.0)
            hi.append(1.0)
    if max_skips_normal is not None and "skip_connect" in primitives:
        skip = primitives.index("skip_connect")
        rows.append([1.0 if t[0] == "normal" and t[2] == skip else 0.0 for t in triples])
        lo.append(0.0)
        hi.append(float(max_skips_normal))
    if max_free_normal is not None:
        free = [k for k, name in enumerate(primitives) if name in PARAMETER_FREE_OPS]
        rows.append([1.0 if t[0] == "normal" and t[2] in free else 0.0 for t in triples])
        lo.append(0.0)
        hi.append(float(max_free_normal))
    tighten = tighten or {}
    for c in costs:
        if c.upper is None and c.lower is None:
            continue
        rows.append([float(c.tables[k][e, o]) for k, e, o in triples])
        lo.append(-np.inf if c.lower is None else c.lower - c.fixed + tighten.get(c.name + ":lower", 0.0))
        hi.append(np.inf if c.upper is None else c.upper - c.fixed - tighten.get(c.name + ":upper", 0.0))
    res = milp(c=objective, constraints=LinearConstraint(np.array(rows), np.array(lo), np.array(hi)),
               integrality=np.ones(n), bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0, "time_limit": 120.0})
    if res.status == 2:  # infeasible
        return None
    if res.status != 0 or res.x is None:  # a limit hit, with or without a feasible point: not an optimum
        raise E2RNASError(f"the derivation's integer program did not finish ({res.message}); please report this")
    return np.round(res.x).astype(int)


def _to_genotype(x: np.ndarray, triples: list[tuple[str, int, int]], primitives: Sequence[str]) -> Genotype:
    chosen = {(k, e): primitives[o] for (k, e, o), v in zip(triples, x, strict=True) if v}
    cells = {}
    for kind in KINDS:
        gene = []
        for node_edges in _NODE_EDGES:
            for j, e in enumerate(node_edges):
                if (kind, e) in chosen:
                    gene.append((chosen[(kind, e)], j))
        cells[kind] = tuple(gene)
    concat = tuple(range(2, 2 + STEPS))
    return Genotype(cells["normal"], concat, cells["reduce"], concat)


def _violations(genotype: Genotype, costs: Sequence[AdditiveCost], primitives: Sequence[str]) -> dict[str, float]:
    out = {}
    for c in costs:
        v = c.of(genotype, primitives)
        if c.upper is not None and v > c.upper + _TOL * max(1.0, abs(c.upper)):
            out[c.name + ":upper"] = v - c.upper
        if c.lower is not None and v < c.lower - _TOL * max(1.0, abs(c.lower)):
            out[c.name + ":lower"] = c.lower - v
    return out


def cost_range(costs: Sequence[AdditiveCost], primitives: Sequence[str], *, max_skips_normal: int | None = None,
               max_free_normal: int | None = None) -> dict[str, tuple[float, float]]:
    """(cheapest, dearest) of each cost over every genotype of the space that meets the cell caps (bounds
    ignored)."""
    logs = {k: torch.zeros(len(_edges_all()), len(primitives), dtype=torch.float64) for k in KINDS}
    triples = _allowed(primitives, logs)
    free = [AdditiveCost(c.name, c.unit, c.fixed, c.tables) for c in costs]
    out = {}
    for c in free:
        vec = np.array([float(c.tables[k][e, o]) for k, e, o in triples])
        lo = _solve(vec, triples, free, primitives, max_skips_normal, None, max_free_normal)
        hi = _solve(-vec, triples, free, primitives, max_skips_normal, None, max_free_normal)
        out[c.name] = (c.fixed + float(vec @ lo), c.fixed + float(vec @ hi))
    return out


def _edges_all() -> list[int]:
    return [e for node in _NODE_EDGES for e in node]


def derive_budget(strengths: dict[str, torch.Tensor], primitives: Sequence[str], costs: Sequence[AdditiveCost], *,
                  max_skips_normal: int | None = None, max_free_normal: int | None = None) -> Derivation:
    """The genotype of largest summed log strength whose costs meet every bound (exact integer program).

    ``max_skips_normal`` caps the normal cell's skips (P-DARTS' rule); ``max_free_normal`` caps its parameter-free
    ops (skips and pools), the generalisation that also rules out a cell of pools."""
    logs = {k: log_strengths(strengths[k]) for k in KINDS}
    triples = _allowed(primitives, logs)
    objective = -np.array([float(logs[k][e, o]) for k, e, o in triples])
    tighten: dict[str, float] = {}
    # HiGHS accepts a row within its feasibility tolerance (about 1e-7) of a bound, which the exact check below may
    # reject: tighten the violated bound and solve again, by twice the violation, then ten times more each round
    # (a tightening inside the tolerance changes nothing), so that the first tightening past it is at most 10x it
    for round_ in range(_TIGHTEN_ROUNDS):
        x = _solve(objective, triples, costs, primitives, max_skips_normal, tighten, max_free_normal)
        if x is None:
            raise infeasible_error(costs, primitives, max_skips_normal=max_skips_normal,
                                   max_free_normal=max_free_normal)
        genotype = _to_genotype(x, triples, primitives)
        bad = _violations(genotype, costs, primitives)
        if not bad:
            return Derivation("budget", genotype, genotype_strength(genotype, logs, primitives),
                              {c.name: c.of(genotype, primitives) for c in costs})
        for key, amount in bad.items():
            tighten[key] = tighten.get(key, 0.0) + (2 * amount + 1e-9) * 10 ** round_
    raise infeasible_error(costs, primitives, max_skips_normal=max_skips_normal, max_free_normal=max_free_normal)


def infeasible_error(costs: Sequence[AdditiveCost], primitives: Sequence[str], *, max_skips_normal: int | None = None,
                     max_free_normal: int | None = None) -> BudgetInfeasibleError:
    ranges = cost_range(costs, primitives, max_skips_normal=max_skips_normal, max_free_normal=max_free_normal)
    bounds = ", ".join(c.describe_bound() for c in costs if c.upper is not None or c.lower is not None)
    caps = ([f"<= {max_skips_normal} skips"] if max_skips_normal is not None else []) + (
        [f"<= {max_free_normal} pools/skips"] if max_free_normal is not None else [])
    where = f" with {' and '.join(caps)} in the normal cell" if caps else ""
    spans = "; ".join(f"{c.name} {ranges[c.name][0]:.4g}-{ranges[c.name][1]:.4g} {c.unit}" for c in costs)
    return BudgetInfeasibleError(
        f"no genotype{where} meets {bounds} on this deploy network: the cheapest and dearest such genotypes cost "
        f"{spans}; move the bounds into these ranges, lower --params-floor"
        + (" or raise --max-normal-free-ops" if max_free_normal is not None else ""))


def check_feasible(costs: Sequence[AdditiveCost], primitives: Sequence[str], *,
                   max_skips_normal: int | None = None, max_free_normal: int | None = None) -> None:
    """Raise ``BudgetInfeasibleError`` before a search starts when no genotype can meet the bounds."""
    uniform = {k: torch.full((len(_edges_all()), len(primitives)), 1.0 / len(primitives)) for k in KINDS}
    derive_budget(uniform, primitives, costs, max_skips_normal=max_skips_normal, max_free_normal=max_free_normal)


def derive_darts(strengths: dict[str, torch.Tensor], primitives: Sequence[str], costs: Sequence[AdditiveCost], *,
                 max_skips_normal: int | None = None) -> Derivation:
    """The DARTS rule (per node the two edges whose strongest non-none op is strongest), with its costs."""
    from e2rnas.space.supernet import derive_genotype

    genotype = derive_genotype(strengths["normal"], strengths["reduce"], tuple(primitives),
                               max_skips_normal=max_skips_normal)
    logs = {k: log_strengths(strengths[k]) for k in KINDS}
    return Derivation("darts", genotype, genotype_strength(genotype, logs, primitives),
                      {c.name: c.of(genotype, primitives) for c in costs})


def deploy_costs(cost_model, *, params_bound_m: float | None = None, params_floor: float | None = None,
                 macs_bound_m: float | None = None, latency_table=None,
                 latency_bound_ms: float | None = None) -> list[AdditiveCost]:
    """The additive costs of the deploy network with their bounds: params (M), MACs (M) and, given a table,
    latency (ms). ``params_floor`` is a fraction of L (L is a target, as in the paper's |N - L|)."""
    t = cost_model.tables
    fixed = cost_model.fixed
    costs = [
        AdditiveCost("params", "M", fixed.params_m, {k: t[k][..., 0] / 1e6 for k in KINDS}, upper=params_bound_m,
                     lower=None if params_bound_m is None or not params_floor else params_floor * params_bound_m),
        AdditiveCost("macs", "M MACs", fixed.macs_m, {k: t[k][..., 1] / 1e6 for k in KINDS}, upper=macs_bound_m),
    ]
    if latency_table is not None:
        costs.append(AdditiveCost("latency", "ms", float(latency_table.fixed_ms),
                                  {k: latency_table.tables[k].double() for k in KINDS}, upper=latency_bound_ms))
    return costs
