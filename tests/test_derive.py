"""The budget-aware derivation (exact integer program) against brute force, the DARTS rule and the bounds."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from e2rnas.search.derive import (
    AdditiveCost,
    BudgetInfeasibleError,
    check_feasible,
    deploy_costs,
    derive_budget,
    derive_darts,
    log_strengths,
)
from e2rnas.search.guards import normalized_entropy, search_warnings
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.genotypes import GENOTYPES, Genotype
from e2rnas.space.ops import PRIMITIVES

SHAPE = DeployShape(layers=5, C=8, num_classes=5, input_size=16)
NODE_EDGES = [[0, 1], [2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12, 13]]


@pytest.fixture(scope="module")
def cost_model():
    return CostModel(SHAPE)


def _random_strengths(seed: int, allowed: dict[str, list[str]] | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for kind in ("normal", "reduce"):
        w = torch.softmax(torch.randn(14, len(PRIMITIVES), generator=g), -1)
        if allowed is not None:
            keep = torch.tensor([name in allowed[kind] for name in PRIMITIVES])
            w = w * keep  # weight 0: the op is not a candidate (as a pruned op)
        out[kind] = w
    return out


def _cell_options(logs: torch.Tensor, ops: list[str], params: torch.Tensor, macs: torch.Tensor):
    """Every cell (two distinct inputs per node, one op each) with its summed log strength, params and MACs."""
    idx = [PRIMITIVES.index(o) for o in ops]
    per_node = []
    for edges in NODE_EDGES:
        node = []
        for pair in itertools.combinations(range(len(edges)), 2):
            for choice in itertools.product(idx, repeat=2):
                es = [edges[j] for j in pair]
                node.append((sum(float(logs[e, o]) for e, o in zip(es, choice, strict=True)),
                             sum(float(params[e, o]) for e, o in zip(es, choice, strict=True)),
                             sum(float(macs[e, o]) for e, o in zip(es, choice, strict=True)),
                             tuple((PRIMITIVES[o], j) for j, o in zip(pair, choice, strict=True))))
        per_node.append(node)
    rows = []
    for combo in itertools.product(*per_node):
        rows.append((sum(c[0] for c in combo), sum(c[1] for c in combo), sum(c[2] for c in combo),
                     tuple(e for c in combo for e in c[3])))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_budget_rule_equals_brute_force_optimum_on_a_reduced_op_set(cost_model, seed):
    allowed = {"normal": ["skip_connect", "sep_conv_3x3"], "reduce": ["dil_conv_3x3"]}
    strengths = _random_strengths(seed, allowed)
    logs = {k: log_strengths(v) for k, v in strengths.items()}
    t = cost_model.tables
    opts = {k: _cell_options(logs[k], allowed[k], t[k][..., 0] / 1e6, t[k][..., 1] / 1e6) for k in logs}
    normal = np.array([r[:3] for r in opts["normal"]])
    reduce = np.array([r[:3] for r in opts["reduce"]])
    fixed = cost_model.fixed
    total_p = fixed.params_m + normal[:, None, 1] + reduce[None, :, 1]
    total_m = fixed.macs_m + normal[:, None, 2] + reduce[None, :, 2]
    strength = normal[:, None, 0] + reduce[None, :, 0]
    # bounds in the middle of the reachable range, so that both bind
    L = float(np.quantile(total_p, 0.4))
    F = float(np.quantile(total_m, 0.6))
    ok = (total_p <= L) & (total_p >= 0.8 * L) & (total_m <= F)
    assert ok.any() and not ok.all()
    best = np.where(ok, strength, -np.inf)
    i, j = np.unravel_index(np.argmax(best), best.shape)

    d = derive_budget(strengths, PRIMITIVES, deploy_costs(cost_model, params_bound_m=L, params_floor=0.8,
                                                          macs_bound_m=F))
    assert d.strength == pytest.approx(float(best[i, j]), abs=1e-9)
    exact = cost_model.genotype_cost(d.genotype)
    tol = 1 + 1e-9  # the brute force's bounds are float quantiles of float sums: met to the last bit
    assert 0.8 * L / tol <= exact.params_m <= L * tol and exact.macs_m <= F * tol
    assert d.costs["params"] == pytest.approx(exact.params_m, abs=1e-9)
    assert d.costs["macs"] == pytest.approx(exact.macs_m, abs=1e-9)
    # the unconstrained optimum is stronger, and is what the DARTS rule returns
    darts = derive_darts(strengths, PRIMITIVES, deploy_costs(cost_model))
    assert darts.strength >= d.strength
    assert darts.strength == pytest.approx(float(strength.max()), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_budget_rule_meets_every_bound_for_random_alphas(cost_model, seed):
    strengths = _random_strengths(seed)
    for L, F in ((0.06, 3.0), (0.08, 4.0), (0.12, 6.0)):
        d = derive_budget(strengths, PRIMITIVES, deploy_costs(cost_model, params_bound_m=L, params_floor=0.8,
                                                              macs_bound_m=F))
        exact = cost_model.genotype_cost(d.genotype)
        assert 0.8 * L <= exact.params_m <= L, (L, exact.params_m)
        assert exact.macs_m <= F


def test_without_binding_bounds_the_budget_rule_is_the_darts_rule(cost_model):
    for seed in range(3):
        strengths = _random_strengths(seed)
        d = derive_budget(strengths, PRIMITIVES, deploy_costs(cost_model, params_bound_m=10.0, params_floor=0.0,
                                                              macs_bound_m=1e4))
        assert d.genotype == derive_darts(strengths, PRIMITIVES, deploy_costs(cost_model)).genotype


def test_skip_limit_is_honoured(cost_model):
    strengths = _random_strengths(0)
    strengths["normal"][:, PRIMITIVES.index("skip_connect")] = 0.9  # skips dominate every edge
    d = derive_budget(strengths, PRIMITIVES, deploy_costs(cost_model), max_skips_normal=2)
    assert sum(op == "skip_connect" for op, _ in d.genotype.normal) == 2


def test_infeasible_bounds_name_the_reachable_range(cost_model):
    fixed = cost_model.fixed
    with pytest.raises(BudgetInfeasibleError, match="cheapest and dearest") as info:
        check_feasible(deploy_costs(cost_model, params_bound_m=fixed.params_m * 0.9, params_floor=0.8,
                                    macs_bound_m=100.0), PRIMITIVES)
    message = str(info.value)
    assert "\n" not in message and f"{fixed.params_m:.4g}" in message


def test_search_with_infeasible_bounds_exits_2_before_searching(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "e2rnas.cli.app", "search", "--params-bound", "0.01",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "cheapest and dearest" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 3
    assert not (out / "checkpoint.pt").exists()


# -- guards ---------------------------------------------------------------------------------------------------------
def _cell(ops: list[str]) -> tuple[tuple[str, int], ...]:
    inputs = [0, 1, 0, 1, 0, 1, 0, 1]
    return tuple(zip(ops, inputs, strict=True))


def test_guards_fire_on_an_all_skip_cell_and_stay_silent_on_darts_v2():
    concat = (2, 3, 4, 5)
    collapsed = Genotype(_cell(["skip_connect"] * 8), concat, _cell(["max_pool_3x3"] * 8), concat)
    warnings = search_warnings(collapsed)
    assert any("no parametric op" in w for w in warnings)
    assert any("8 skip_connect" in w for w in warnings)
    assert search_warnings(GENOTYPES["DARTS_V2"]) == []
    three_skips = Genotype(_cell(["skip_connect"] * 3 + ["sep_conv_3x3"] * 5), concat, collapsed.reduce, concat)
    assert [w for w in search_warnings(three_skips) if "skip_connect" in w]
    assert not [w for w in search_warnings(three_skips) if "no parametric op" in w]


def test_indecision_guard_measures_normalised_entropy():
    uniform = torch.full((14, 8), 1 / 8)
    assert normalized_entropy(uniform) == pytest.approx(1.0)
    peaked = torch.full((14, 8), 0.5 / 7)
    peaked[:, 3] = 0.5
    h = -(0.5 * np.log(0.5) + 7 * (0.5 / 7) * np.log(0.5 / 7)) / np.log(8)
    assert normalized_entropy(peaked) == pytest.approx(h)
    g = GENOTYPES["DARTS_V2"]
    assert any("indecision" in w for w in search_warnings(g, weights={"normal": uniform, "reduce": uniform}))
    assert not search_warnings(g, weights={"normal": peaked, "reduce": peaked})


def test_parameter_free_cap_rules_out_a_cell_of_pools(cost_model):
    strengths = _random_strengths(1)
    for op in ("max_pool_3x3", "avg_pool_3x3", "skip_connect"):
        strengths["normal"][:, PRIMITIVES.index(op)] = 0.9  # pools and skips dominate every edge
    free = {"max_pool_3x3", "avg_pool_3x3", "skip_connect"}
    uncapped = derive_budget(strengths, PRIMITIVES, deploy_costs(cost_model))
    assert all(op in free for op, _ in uncapped.genotype.normal)
    capped = derive_budget(strengths, PRIMITIVES, deploy_costs(cost_model), max_free_normal=2)
    assert sum(op in free for op, _ in capped.genotype.normal) == 2
    assert capped.strength < uncapped.strength
    assert any("parameter-free" in w for w in search_warnings(
        Genotype(_cell(["avg_pool_3x3"] * 6 + ["sep_conv_3x3"] * 2), (2, 3, 4, 5), uncapped.genotype.reduce,
                 (2, 3, 4, 5))))


# -- a synthetic additive cost whose optimum is known by hand -------------------------------------------------------
UNIT = {"none": 0.0, "max_pool_3x3": 0.5, "avg_pool_3x3": 0.5, "skip_connect": 0.0}  # every conv costs 1


def _unit_cost(**bounds) -> AdditiveCost:
    row = torch.tensor([UNIT.get(p, 1.0) for p in PRIMITIVES], dtype=torch.float64)
    return AdditiveCost("units", "u", 1.0, {k: row.repeat(14, 1) for k in ("normal", "reduce")}, **bounds)


def _skip_first() -> dict[str, torch.Tensor]:
    """skip_connect strongest everywhere, sep_conv_3x3 next, the rest weak: the unbounded optimum is all skips."""
    w = torch.full((14, len(PRIMITIVES)), 0.06)
    w[:, PRIMITIVES.index("skip_connect")] = 0.4
    w[:, PRIMITIVES.index("sep_conv_3x3")] = 0.3
    return {"normal": w.clone(), "reduce": w.clone()}


def test_bound_descriptions_and_records_are_exact():
    from e2rnas.search.derive import Derivation

    assert _unit_cost(upper=2.5).describe_bound() == "units <= 2.5 u"
    assert _unit_cost(lower=2.0).describe_bound() == "2 <= units u"
    assert _unit_cost(lower=2.0, upper=2.5).describe_bound() == "2 <= units <= 2.5 u"
    assert _unit_cost().describe_bound() == "units u"
    d = Derivation("budget", GENOTYPES["DARTS_V2"], -3.5, {"units": 9.0})
    assert d.as_dict() == {"rule": "budget", "genotype": GENOTYPES["DARTS_V2"].to_dict(), "strength": -3.5,
                           "units": 9.0}


def test_violations_measure_how_far_a_genotype_is_outside_its_bounds():
    from e2rnas.search.derive import _violations

    g = GENOTYPES["DARTS_V2"]  # 16 edges: cost = 1 + (number of conv ops) + 0.5 (number of pools)
    cost = _unit_cost().of(g, PRIMITIVES)
    convs = sum(op.startswith(("sep", "dil")) for op, _ in g.normal + g.reduce)
    pools = sum(op.endswith("pool_3x3") for op, _ in g.normal + g.reduce)
    assert cost == 1.0 + convs + 0.5 * pools
    assert _violations(g, [_unit_cost(upper=cost - 1)], PRIMITIVES) == {"units:upper": pytest.approx(1.0)}
    assert _violations(g, [_unit_cost(lower=cost + 2)], PRIMITIVES) == {"units:lower": pytest.approx(2.0)}
    assert _violations(g, [_unit_cost(lower=cost + 2, upper=cost - 1)], PRIMITIVES).keys() == \
        {"units:upper", "units:lower"}
    # exactly at a bound, or within the solver's relative tolerance of it, is inside
    for bound in (cost, cost * (1 - 5e-10)):
        assert _violations(g, [_unit_cost(upper=bound, lower=cost * (1 + 5e-10))], PRIMITIVES) == {}
    assert _violations(g, [_unit_cost(upper=cost * (1 - 1e-6))], PRIMITIVES) != {}


def test_cost_range_is_the_hand_computed_cheapest_and_dearest_under_each_cap():
    from e2rnas.search.derive import cost_range

    c = [_unit_cost()]
    assert cost_range(c, PRIMITIVES)["units"] == pytest.approx((1.0, 17.0))  # all skips .. all convs
    # at most 2 skips in the normal cell: the other 6 are pools (0.5 each)
    assert cost_range(c, PRIMITIVES, max_skips_normal=2)["units"] == pytest.approx((4.0, 17.0))
    # at most 2 parameter-free ops in the normal cell: the other 6 are convs
    assert cost_range(c, PRIMITIVES, max_free_normal=2)["units"] == pytest.approx((7.0, 17.0))
    assert cost_range(c, PRIMITIVES, max_skips_normal=1, max_free_normal=3)["units"] == pytest.approx((7.0, 17.0))


def test_budget_rule_pays_exactly_the_floor_with_the_strongest_ops():
    from e2rnas.search.derive import derive_budget, derive_darts

    darts = derive_darts(_skip_first(), PRIMITIVES, [_unit_cost()])
    assert darts.costs == {"units": 1.0} and all(op == "skip_connect" for op, _ in darts.genotype.normal)
    d = derive_budget(_skip_first(), PRIMITIVES, [_unit_cost(lower=9.0)])
    ops = [op for op, _ in d.genotype.normal + d.genotype.reduce]
    # 8 units at the least loss of strength: 8 sep_conv_3x3 (log 0.3) and 8 skips (log 0.4), no pools
    assert d.costs == {"units": 9.0} and ops.count("sep_conv_3x3") == 8 and ops.count("skip_connect") == 8
    assert d.strength == pytest.approx(8 * np.log(0.3) + 8 * np.log(0.4))
    assert d.as_dict()["rule"] == "budget"
    # an upper bound that leaves room for 3 convs, a cap of 2 skips in the normal cell, and both together
    capped = derive_budget(_skip_first(), PRIMITIVES, [_unit_cost(upper=4.0)], max_skips_normal=2)
    normal = [op for op, _ in capped.genotype.normal]
    assert normal.count("skip_connect") == 2 and capped.costs["units"] <= 4.0
    free = derive_budget(_skip_first(), PRIMITIVES, [_unit_cost()], max_free_normal=3)
    assert sum(op in ("skip_connect", "max_pool_3x3", "avg_pool_3x3") for op, _ in free.genotype.normal) == 3


def test_infeasible_bounds_message_names_caps_bounds_and_ranges():
    from e2rnas.search.derive import infeasible_error

    msg = str(infeasible_error([_unit_cost(upper=0.5)], PRIMITIVES))
    assert msg == ("no genotype meets units <= 0.5 u on this deploy network: the cheapest and dearest such genotypes "
                   "cost units 1-17 u; move the bounds into these ranges, lower --params-floor")
    msg = str(infeasible_error([_unit_cost(upper=0.5), _unit_cost()], PRIMITIVES, max_skips_normal=2,
                               max_free_normal=3))
    assert msg.startswith("no genotype with <= 2 skips and <= 3 pools/skips in the normal cell meets units <= 0.5 u "
                          "on this deploy network")
    # with 2 skips and 1 pool free in the normal cell, 5 convs remain: 1 + 0.5 + 5 = 6.5 at the cheapest
    assert "cost units 6.5-17 u; units 6.5-17 u; move" in msg and msg.endswith("or raise --max-normal-free-ops")
    with pytest.raises(BudgetInfeasibleError, match="units <= 0.5 u"):
        check_feasible([_unit_cost(upper=0.5)], PRIMITIVES)


def test_deploy_costs_are_the_cost_models_in_deploy_units_with_their_bounds(cost_model):
    from types import SimpleNamespace

    params, macs = deploy_costs(cost_model, params_bound_m=0.2, params_floor=0.8, macs_bound_m=9.0)
    assert (params.name, params.unit, params.upper, params.lower) == ("params", "M", 0.2, pytest.approx(0.16))
    assert (macs.name, macs.unit, macs.upper, macs.lower) == ("macs", "M MACs", 9.0, None)
    g = GENOTYPES["DARTS_V2"]
    exact = cost_model.genotype_cost(g)
    assert params.of(g, PRIMITIVES) == pytest.approx(exact.params_m, rel=1e-9)
    assert macs.of(g, PRIMITIVES) == pytest.approx(exact.macs_m, rel=1e-9)
    # no floor without a bound or with floor 0; a latency table adds a third cost in ms with its bound
    assert deploy_costs(cost_model, params_floor=0.8)[0].lower is None
    assert deploy_costs(cost_model, params_bound_m=0.2, params_floor=0.0)[0].lower is None
    row = torch.arange(len(PRIMITIVES), dtype=torch.float32).repeat(14, 1)
    table = SimpleNamespace(fixed_ms=0.25, tables={"normal": row, "reduce": 2 * row})
    lat = deploy_costs(cost_model, latency_table=table, latency_bound_ms=3.0)[2]
    assert (lat.name, lat.unit, lat.fixed, lat.upper, lat.lower) == ("latency", "ms", 0.25, 3.0, None)
    assert lat.tables["reduce"].dtype == torch.float64
    ops = [PRIMITIVES.index(op) for op, _ in g.normal] + [2 * PRIMITIVES.index(op) for op, _ in g.reduce]
    assert lat.of(g, PRIMITIVES) == pytest.approx(0.25 + sum(ops))


def test_cost_range_dearest_respects_the_caps_too():
    """When skips are the dearest op, the caps bound the dearest genotype as well."""
    row = torch.tensor([{"skip_connect": 2.0, "max_pool_3x3": 1.5, "avg_pool_3x3": 1.5}.get(p, 1.0)
                        for p in PRIMITIVES], dtype=torch.float64)
    c = [AdditiveCost("units", "u", 1.0, {k: row.repeat(14, 1) for k in ("normal", "reduce")})]
    from e2rnas.search.derive import cost_range

    assert cost_range(c, PRIMITIVES)["units"] == pytest.approx((17.0, 33.0))
    # normal: 2 skips + 6 pools (1.5) = 13; reduce: 8 skips = 16
    assert cost_range(c, PRIMITIVES, max_skips_normal=2)["units"] == pytest.approx((17.0, 30.0))
    # normal: 3 skips + 5 convs = 11; reduce 16
    assert cost_range(c, PRIMITIVES, max_free_normal=3)["units"] == pytest.approx((17.0, 28.0))


def test_cell_caps_bind_the_normal_cell_only():
    from e2rnas.search.derive import derive_budget

    for caps in (dict(max_skips_normal=2), dict(max_free_normal=2), dict(max_skips_normal=1, max_free_normal=3)):
        d = derive_budget(_skip_first(), PRIMITIVES, [_unit_cost()], **caps)
        normal = [op for op, _ in d.genotype.normal]
        reduce = [op for op, _ in d.genotype.reduce]
        assert reduce.count("skip_connect") == 8, caps  # the reduction cell keeps its strongest ops
        cap = min(v for v in caps.values())
        assert normal.count("skip_connect") == cap and normal.count("sep_conv_3x3") == 8 - cap, caps


def _conv_first() -> dict[str, torch.Tensor]:
    """sep_conv_3x3 strongest everywhere, skip_connect next: the unbounded optimum is all convs (17 units)."""
    w = torch.full((14, len(PRIMITIVES)), 0.06)
    w[:, PRIMITIVES.index("sep_conv_3x3")] = 0.4
    w[:, PRIMITIVES.index("skip_connect")] = 0.3
    return {"normal": w.clone(), "reduce": w.clone()}


@pytest.mark.parametrize("eps", [1e-8, 5e-8, 2e-7])
def test_a_bound_within_the_solvers_tolerance_of_a_genotype_is_still_met(eps):
    """HiGHS accepts a row up to ~1e-7 past its bound; costs here sit on a 0.5 grid, so a bound eps past a grid
    point must give the genotype of the next grid point, not an infeasibility error (the tightening escalates)."""
    below = derive_budget(_skip_first(), PRIMITIVES, [_unit_cost(lower=9.0 + eps)])
    assert below.costs["units"] >= 9.0 + eps
    assert below.genotype == derive_budget(_skip_first(), PRIMITIVES, [_unit_cost(lower=9.5)]).genotype
    above = derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=4.0 - eps)])
    assert above.costs["units"] <= 4.0 - eps
    assert above.genotype == derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=3.5)]).genotype
    assert derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=4.0)]).costs["units"] == 4.0


def test_an_unbounded_cost_before_a_bounded_one_leaves_its_bound_in_force():
    free = AdditiveCost("free", "u", 0.0, _unit_cost().tables)
    d = derive_budget(_conv_first(), PRIMITIVES, [free, _unit_cost(upper=4.0)])
    assert d.costs == {"free": 3.0, "units": 4.0}  # 3 convs and 13 skips, not 16 convs
    assert d.genotype == derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=4.0)]).genotype


def test_an_unfinished_integer_program_is_an_error_not_a_genotype(monkeypatch):
    """scipy's milp status 1 (iteration or time limit) must not hand over a half-solved genotype."""
    import scipy.optimize
    from scipy.optimize import OptimizeResult

    from e2rnas.errors import E2RNASError

    def stopped(**kwargs):
        return OptimizeResult(status=1, x=np.zeros(len(kwargs["c"])), message="Time limit reached. (HiGHS Status 13)")

    monkeypatch.setattr(scipy.optimize, "milp", lambda c, **kw: stopped(c=c, **kw))
    with pytest.raises(E2RNASError) as err:
        derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=4.0)])
    assert str(err.value) == ("the derivation's integer program did not finish (Time limit reached. (HiGHS Status "
                              "13)); please report this")
    assert not isinstance(err.value, BudgetInfeasibleError)
    # a limit hit before any feasible point is not an infeasibility either
    monkeypatch.setattr(scipy.optimize, "milp", lambda c, **kw: OptimizeResult(status=1, x=None, message="limit"))
    with pytest.raises(E2RNASError, match=r"did not finish \(limit\)") as err:
        derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=4.0)])
    assert not isinstance(err.value, BudgetInfeasibleError)
    # status 2 (infeasible) on the derivation itself; the error's cost ranges then come from real solves
    monkeypatch.undo()
    real, calls = scipy.optimize.milp, []

    def infeasible_first(c, **kw):
        calls.append(1)
        return OptimizeResult(status=2, x=None, message="infeasible") if len(calls) == 1 else real(c, **kw)

    monkeypatch.setattr(scipy.optimize, "milp", infeasible_first)
    with pytest.raises(BudgetInfeasibleError, match="cost units 1-17 u"):
        derive_budget(_conv_first(), PRIMITIVES, [_unit_cost(upper=4.0)])


def test_log_strengths_rule_out_zero_weights():
    logs = log_strengths(torch.tensor([[0.0, 0.5, 1e-320]], dtype=torch.float64))
    assert logs[0, 0] == -np.inf and logs[0, 1] == pytest.approx(np.log(0.5)) and np.isfinite(float(logs[0, 2]))


def test_darts_rule_record_and_its_skip_cap():
    d = derive_darts(_skip_first(), PRIMITIVES, [_unit_cost()], max_skips_normal=2)
    assert d.rule == "darts" and d.as_dict()["rule"] == "darts"
    assert [op for op, _ in d.genotype.normal].count("skip_connect") == 2


def test_infeasible_caps_are_named_from_the_solve_and_the_pre_search_check():
    two = [_unit_cost(upper=0.5), AdditiveCost("other", "v", 0.0, _unit_cost().tables, upper=0.25)]
    for call in (lambda: derive_budget(_skip_first(), PRIMITIVES, two, max_skips_normal=2, max_free_normal=3),
                 lambda: check_feasible(two, PRIMITIVES, max_skips_normal=2, max_free_normal=3)):
        with pytest.raises(BudgetInfeasibleError) as err:
            call()
        assert str(err.value).startswith("no genotype with <= 2 skips and <= 3 pools/skips in the normal cell meets "
                                         "units <= 0.5 u, other <= 0.25 v on this deploy network")
    # feasible without the caps, infeasible with either: the check passes them on
    nine = [_unit_cost(upper=3.0)]  # at most 2 convs: needs 14 parameter-free edges
    check_feasible(nine, PRIMITIVES)
    for caps in (dict(max_skips_normal=0), dict(max_free_normal=5)):
        with pytest.raises(BudgetInfeasibleError):
            check_feasible(nine, PRIMITIVES, **caps)


def test_violation_tolerance_is_relative_above_one_and_absolute_below():
    from e2rnas.search.derive import _violations

    g = GENOTYPES["DARTS_V2"]
    small = AdditiveCost("units", "u", 0.01, {k: v * 0.01 for k, v in _unit_cost().tables.items()})
    cost = small.of(g, PRIMITIVES)
    assert cost < 1
    over = AdditiveCost("units", "u", small.fixed, small.tables, upper=cost - 1.5e-9)
    assert set(_violations(g, [over], PRIMITIVES)) == {"units:upper"}  # 1.5e-9 past: more than 1e-9 absolute
    under = AdditiveCost("units", "u", small.fixed, small.tables, lower=cost + 1.5e-9)
    assert set(_violations(g, [under], PRIMITIVES)) == {"units:lower"}
