"""Budget parsing and check lines without a run: the fast checks that mutation testing selects (docs/testing.md)."""

from __future__ import annotations

import json

import pytest

from e2rnas.deploy_targets.budget import (
    Budget,
    BudgetError,
    CheckLine,
    latency_lines,
    parse_budget,
    read_eval_json,
)
from e2rnas.errors import E2RNASError


@pytest.mark.parametrize("key", ["max_params_m", "max_macs_m", "max_latency_ms"])
def test_a_measurement_exactly_at_a_max_limit_passes_and_just_over_fails(key):
    at = CheckLine(key, "x", limit=0.5, measured=0.5, source="s")
    assert at.is_max and at.margin == 0.0 and at.passed
    over = CheckLine(key, "x", limit=0.5, measured=0.5000001, source="s")
    assert over.margin == pytest.approx(-1e-7) and not over.passed
    under = CheckLine(key, "x", limit=0.5, measured=0.25, source="s")
    assert under.margin == 0.25 and under.passed


@pytest.mark.parametrize("key", ["min_accuracy", "min_pgd_accuracy", "min_aupr"])
def test_a_measurement_exactly_at_a_min_limit_passes_and_just_under_fails(key):
    at = CheckLine(key, "x", limit=0.8, measured=0.8, source="s")
    assert not at.is_max and at.margin == 0.0 and at.passed
    under = CheckLine(key, "x", limit=0.8, measured=0.7999, source="s")
    assert under.margin == pytest.approx(-1e-4) and not under.passed
    over = CheckLine(key, "x", limit=0.5, measured=0.75, source="s")
    assert over.margin == 0.25 and over.passed


def test_an_unmeasured_line_fails_and_reports_no_margin():
    line = CheckLine("max_latency_ms", "latency", limit=3.0, measured=None, source="not measured")
    assert line.margin is None and not line.passed
    d = line.as_dict()
    assert d["margin"] is None and d["margin_pct"] is None and d["passed"] is False and d["op"] == "<="


def test_check_line_record():
    d = CheckLine("max_params_m", "params (M)", limit=2.0, measured=1.5, source="cost model", bound=1.8,
                  estimate=1.6, exact=1.5).as_dict()
    assert d == {"key": "max_params_m", "what": "params (M)", "limit": 2.0, "measured": 1.5, "source": "cost model",
                 "bound": 1.8, "estimate": 1.6, "exact": 1.5, "decides": True, "op": "<=", "margin": 0.5,
                 "margin_pct": 25.0, "passed": True}
    d = CheckLine("min_aupr", "AUPR", limit=0.5, measured=0.4, source="eval").as_dict()
    assert d["op"] == ">=" and d["margin"] == pytest.approx(-0.1) and d["margin_pct"] == pytest.approx(-20.0)
    assert d["passed"] is False
    assert CheckLine("max_macs_m", "MACs", limit=0.0, measured=0.0, source="s").as_dict()["margin_pct"] is None


def test_limits_and_needs_eval():
    b = Budget(max_params_m=0.0, max_latency_ms=2.0, latency_batch=4, latency_percentile=90, artifact="onnx")
    assert b.limits == {"max_params_m": 0.0, "max_latency_ms": 2.0}  # a zero limit is a limit
    assert not b.needs_eval
    for key in ("min_accuracy", "min_pgd_accuracy", "min_aupr"):
        assert Budget(**{key: 0.5}).needs_eval and Budget(**{key: 0.5}).limits == {key: 0.5}


def test_boundary_values_parse():
    b = parse_budget({"max_params_m": 0, "min_accuracy": 1, "min_aupr": 0.0, "latency_batch": 1,
                      "latency_percentile": 99, "max_latency_ms": 1, "artifact": "torch", "max_macs_m": None},
                     where="b.yaml")
    assert b == Budget(max_params_m=0, min_accuracy=1, min_aupr=0.0, latency_batch=1, latency_percentile=99,
                       max_latency_ms=1, artifact="torch")
    assert parse_budget({"max_macs_m": 12}, where="b").max_macs_m == 12
    assert parse_budget({"min_pgd_accuracy": 0.3}, where="b").min_pgd_accuracy == 0.3


@pytest.mark.parametrize("data, message", [
    ([1], "b.yaml: a budget is a mapping such as 'max_params_m: 0.5', got list"),
    ({"max_params": 1, "zeta": 2}, "b.yaml: unknown key(s) max_params, zeta; valid: max_params_m, max_macs_m, "
                                   "max_latency_ms, latency_batch, latency_percentile, min_accuracy, "
                                   "min_pgd_accuracy, min_aupr, artifact"),
    ({"max_latency_ms": "3"}, "b.yaml: max_latency_ms must be a number, got '3'"),
    ({"min_aupr": False}, "b.yaml: min_aupr must be a number, got False"),
    ({"max_params_m": -0.5}, "b.yaml: max_params_m must be >= 0, got -0.5"),
    ({"max_latency_ms": float("inf")}, "b.yaml: max_latency_ms must be a finite number, got inf; leave the key out "
                                       "for no limit"),
    ({"min_aupr": float("nan")}, "b.yaml: min_aupr must be a finite number, got nan; leave the key out for no limit"),
    ({"max_params_m": float("-inf")}, "b.yaml: max_params_m must be a finite number, got -inf; leave the key out "
                                      "for no limit"),
    ({"min_pgd_accuracy": 45}, "b.yaml: min_pgd_accuracy is a fraction in [0, 1], got 45; write 0.45 for 45%"),
    ({"min_accuracy": 1.5}, "b.yaml: min_accuracy is a fraction in [0, 1], got 1.5; write 0.015 for 1.5%"),
    ({"max_latency_ms": 1, "latency_batch": 2.0}, "b.yaml: latency_batch must be a positive integer, got 2.0"),
    ({"max_latency_ms": 1, "latency_batch": True}, "b.yaml: latency_batch must be a positive integer, got True"),
    ({"max_latency_ms": 1, "latency_percentile": 0}, "b.yaml: latency_percentile must be a positive integer, got 0"),
    ({"max_latency_ms": 1, "latency_percentile": 75}, "b.yaml: latency_percentile must be one of 50, 90, 95, 99"),
    ({"max_latency_ms": 1, "artifact": 3}, "b.yaml: artifact must be a format name such as onnx or torch, got 3"),
    ({"latency_batch": 2}, "b.yaml: the budget sets no limit; add e.g. max_params_m or max_latency_ms"),
])
def test_malformed_budget_messages(data, message):
    with pytest.raises(BudgetError) as info:
        parse_budget(data, where="b.yaml")
    assert str(info.value) == message


def test_large_numbers_are_not_fractions_unless_the_key_is_one():
    assert parse_budget({"max_latency_ms": 250, "max_macs_m": 1e4}, where="b").max_latency_ms == 250


def test_read_eval_json(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"clean_acc": 0.9, "pgd_acc": 0.4, "ood": {"aupr_out": 0.7}}))
    assert read_eval_json(path) == {"accuracy": 0.9, "pgd_accuracy": 0.4, "aupr_out": 0.7}
    path.write_text(json.dumps({"clean_acc": 0.9, "ood": None}))
    assert read_eval_json(path) == {"accuracy": 0.9, "pgd_accuracy": None, "aupr_out": None}
    path.write_text("[1, 2]")
    with pytest.raises(E2RNASError, match=r"eval.json does not hold an evaluation result$"):
        read_eval_json(path)
    path.write_text("{oops")
    with pytest.raises(E2RNASError, match=r"eval.json is not valid JSON \(Expecting"):
        read_eval_json(path)


def test_load_budget_reads_a_file_and_names_it_in_errors(tmp_path):
    from e2rnas.deploy_targets.budget import default_budget_path, load_budget

    path = tmp_path / "budget.yaml"
    path.write_text("max_params_m: 0.5\nmax_latency_ms: 3\nlatency_batch: 4\n")
    assert load_budget(path) == Budget(max_params_m=0.5, max_latency_ms=3, latency_batch=4)
    assert load_budget(str(path)) == load_budget(path)
    path.write_text("max_params_m: [1\n")
    with pytest.raises(BudgetError, match=rf"^{path} is not valid YAML: "):
        load_budget(path)
    path.write_text("max_params_m: -1\n")
    with pytest.raises(BudgetError) as err:
        load_budget(path)
    assert str(err.value) == f"{path}: max_params_m must be >= 0, got -1"
    with pytest.raises(BudgetError) as err:
        load_budget(tmp_path / "none.yaml")
    assert str(err.value) == f"budget file not found: {tmp_path / 'none.yaml'}"
    shipped = default_budget_path()
    assert (shipped.parent.parent.name, shipped.parent.name, shipped.name) == ("e2rnas", "budgets", "default.yaml")
    assert load_budget(shipped).limits  # the shipped budget parses and sets limits


SEARCH_T = {"lut_key": {"target": "cpu", "batch": 1}, "latency_bound_ms": 0.37, "expected_latency_ms": 0.35,
            "table_latency_ms": 0.36}


def test_a_p90_budget_row_holds_no_p50_search_numbers_and_t_gets_its_own_row():
    """The issue's case: budget p90 5 ms, T 0.37 ms (a p50), measured p50 0.27 / p90 0.44 ms."""
    notes: list[str] = []
    rows = latency_lines(Budget(max_latency_ms=5.0, latency_percentile=90), latency={"p50_ms": 0.27, "p90_ms": 0.44},
                         search=SEARCH_T, target="cpu", source="onnx on cpu", notes=notes)
    budget_row, t_row = rows
    assert (budget_row.what, budget_row.measured, budget_row.limit) == ("latency p90 ms, batch 1", 0.44, 5.0)
    assert (budget_row.bound, budget_row.estimate, budget_row.exact) == (None, None, None) and budget_row.decides
    assert t_row.what.startswith("latency p50 ms, batch 1") and t_row.measured == 0.27 and t_row.limit == 0.37
    assert (t_row.bound, t_row.estimate, t_row.exact) == (0.37, 0.35, 0.36) and not t_row.decides and t_row.passed
    assert notes == []


def test_a_p50_over_t_is_flagged_though_the_budget_passes():
    notes: list[str] = []
    rows = latency_lines(Budget(max_latency_ms=5.0), latency={"p50_ms": 0.4, "p90_ms": 0.5}, search=SEARCH_T,
                         target="cpu", source="onnx on cpu", notes=notes)
    assert len(rows) == 1 and rows[0].passed and rows[0].bound == 0.37 and rows[0].measured == 0.4
    assert len(notes) == 1 and notes[0].startswith("measured p50 0.4 ms is over the search bound T = 0.37 ms (+8%)")
    # a p90 budget: the info row is over T and does not decide
    notes.clear()
    rows = latency_lines(Budget(max_latency_ms=5.0, latency_percentile=90), latency={"p50_ms": 0.4, "p90_ms": 0.5},
                         search=SEARCH_T, target="cpu", source="s", notes=notes)
    assert rows[0].passed and not rows[1].passed and not rows[1].decides and len(notes) == 1


def test_without_a_table_of_this_target_there_is_one_row():
    notes: list[str] = []
    rows = latency_lines(Budget(max_latency_ms=5.0, latency_percentile=90), latency={"p50_ms": 9.0, "p90_ms": 9.5},
                         search=SEARCH_T, target="cuda", source="s", notes=notes)
    assert len(rows) == 1 and not rows[0].passed and rows[0].bound is None
    assert "measured on cpu at batch 1" in notes[0]
