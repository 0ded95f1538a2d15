"""Budget files and ``e2rnas check``: exit 0 when every line passes, 1 when one fails, 2 on bad input."""

from __future__ import annotations

import json

import pytest
from _cli_process import run_cli
from _deploy_helpers import FAST, SEARCH, make_tiny_run
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.deploy_targets.budget import (
    Budget,
    BudgetError,
    default_budget_path,
    find_run,
    load_budget,
    parse_budget,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("pipe"), pipeline=True, search_in_meta=False)


def _budget(tmp_path, text: str):
    path = tmp_path / "budget.yaml"
    path.write_text(text)
    return path


def test_parse_budget_values_and_defaults() -> None:
    b = parse_budget({"max_params_m": 0.3, "max_latency_ms": 5, "latency_percentile": 95, "min_aupr": 0.8},
                     where="x")
    assert b == Budget(max_params_m=0.3, max_latency_ms=5, latency_percentile=95, min_aupr=0.8)
    assert b.latency_batch == 1 and b.needs_eval and set(b.limits) == {"max_params_m", "max_latency_ms", "min_aupr"}


@pytest.mark.parametrize("data, match", [
    ({"max_params": 1}, "unknown key"),
    ({"max_params_m": "small"}, "must be a number"),
    ({"max_params_m": True}, "must be a number"),
    ({"min_accuracy": 85}, r"fraction in \[0, 1\].*0.85"),
    ({"max_latency_ms": 1, "latency_percentile": 75}, "one of 50, 90, 95, 99"),
    ({"max_latency_ms": 1, "latency_batch": 0}, "positive integer"),
    ({"max_macs_m": -1}, ">= 0"),
    ({"artifact": "onnx"}, "sets no limit"),
    (["max_params_m", 1], "mapping"),
])
def test_malformed_budgets(data, match: str) -> None:
    with pytest.raises(BudgetError, match=match) as info:
        parse_budget(data, where="b.yaml")
    assert "\n" not in str(info.value)


def test_shipped_default_budget_fits_the_embedded_default_network() -> None:
    from e2rnas.space.genotypes import GENOTYPES
    from e2rnas.space.network import Network, count_macs, count_params

    b = load_budget(default_budget_path())
    assert b.max_params_m and b.max_macs_m and b.max_latency_ms and b.min_accuracy
    small = Network(GENOTYPES["E2RNAS"], 16, 8, 5, input_size=16)  # the embedded-default deploy shape
    big = Network(GENOTYPES["PC_DARTS"], 16, 8, 5, input_size=16)
    assert count_params(small) / 1e6 <= b.max_params_m < count_params(big) / 1e6
    assert count_macs(small, input_size=16) / 1e6 <= b.max_macs_m < count_macs(big, input_size=16) / 1e6


def test_find_run_layouts(run, pipeline) -> None:
    r = find_run(run["model"])
    assert r.model == run["model"] and r.search == SEARCH and r.artifacts["onnx"] == run["onnx"]
    assert find_run(run["root"]).model == run["model"]
    p = find_run(pipeline["root"])  # RUN/search/summary.json, RUN/train/model.pt, RUN/export/model.onnx
    assert p.model == pipeline["model"] and p.search == SEARCH and p.search_from.endswith("summary.json")
    assert p.artifacts["onnx"] == pipeline["onnx"]


def test_find_run_reads_the_nested_search_record(tmp_path) -> None:
    made = make_tiny_run(tmp_path, nested_search=True)
    r = find_run(made["model"])
    assert r.search == SEARCH and r.search_from.endswith("(meta)")


def test_check_passes_with_exit_0(run, tmp_path) -> None:
    b = _budget(tmp_path, "max_params_m: 1.0\nmax_macs_m: 50\nmax_latency_ms: 5000\nlatency_percentile: 95\n"
                          "min_accuracy: 0.0\n")
    result = CliRunner().invoke(app, ["check", str(run["root"]), "--budget", str(b), "--target", "cpu",
                                      "--max-samples", "16", "--out", str(tmp_path), *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "check.json").read_text())
    assert data["passed"] and data["artifact"] == str(run["onnx"])  # ONNX is preferred for latency
    lines = {ln["key"]: ln for ln in data["lines"]}
    assert lines["max_params_m"]["bound"] == SEARCH["params_bound_m"]
    assert lines["max_params_m"]["exact"] == SEARCH["exact_params_m"]
    assert lines["max_macs_m"]["estimate"] == SEARCH["expected_macs_m"]
    assert 0 < lines["max_params_m"]["measured"] < 1 and lines["max_params_m"]["margin"] > 0
    assert lines["max_latency_ms"]["measured"] == data["latency"]["p95_ms"] > 0
    assert 0 <= lines["min_accuracy"]["measured"] <= 1 and "model.onnx" in lines["min_accuracy"]["source"]
    assert "search bound" in result.output and "pass" in result.output
    assert f"limit ({b.name})" in result.output and "never deciding" in result.output  # which limits decide


def test_check_fails_with_exit_1_and_reports_the_margin(pipeline, tmp_path) -> None:
    b = _budget(tmp_path, "max_params_m: 0.001\nmax_macs_m: 1000\nartifact: torch\n")
    result = CliRunner().invoke(app, ["check", str(pipeline["root"]), "--budget", str(b), "--json", *FAST])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    lines = {ln["key"]: ln for ln in data["lines"]}
    assert not lines["max_params_m"]["passed"] and lines["max_params_m"]["margin"] < 0
    assert lines["max_macs_m"]["passed"] and not data["passed"]
    assert (pipeline["root"] / "check.json").is_file()  # written into the run by default


def test_reuse_eval_reads_eval_json(run, tmp_path) -> None:
    (run["root"] / "eval.json").write_text(json.dumps({"clean_acc": 0.42, "pgd_acc": 0.1,
                                                       "ood": {"aupr_out": 0.77}}))
    try:
        b = _budget(tmp_path, "min_accuracy: 0.5\nmin_aupr: 0.7\n")
        result = CliRunner().invoke(app, ["check", str(run["model"]), "--budget", str(b), "--reuse-eval", "--json",
                                          "--out", str(tmp_path)])
    finally:
        (run["root"] / "eval.json").unlink()
    assert result.exit_code == 1, result.output
    lines = {ln["key"]: ln for ln in json.loads(result.stdout)["lines"]}
    assert lines["min_accuracy"]["measured"] == 0.42 and not lines["min_accuracy"]["passed"]
    assert lines["min_aupr"]["measured"] == 0.77 and lines["min_aupr"]["passed"]


@pytest.mark.parametrize("text, match", [
    ("max_params_m: [1\n", "not valid YAML"),
    ("max_params_m: 1\nmax_lat_ms: 3\n", "unknown key"),
    ("max_params_m: one\n", "must be a number"),
])
def test_malformed_budget_file_exits_2(run, tmp_path, text: str, match: str) -> None:
    b = _budget(tmp_path, text)
    proc = run_cli(["check", run["model"], "--budget", b])
    assert proc.returncode == 2, proc.stderr
    assert match in proc.stderr.replace("\n", " ") and proc.stderr.count("error:") == 1


def test_reuse_eval_finds_a_pipeline_runs_eval_stage(tmp_path) -> None:
    made = make_tiny_run(tmp_path / "run", pipeline=True)
    (made["root"] / "eval").mkdir()
    (made["root"] / "eval" / "eval.json").write_text(json.dumps({"clean_acc": 0.42, "pgd_acc": 0.1,
                                                                 "ood": {"aupr_out": 0.77}}))
    b = _budget(tmp_path, "min_accuracy: 0.5\n")
    result = CliRunner().invoke(app, ["check", str(made["root"]), "--budget", str(b), "--reuse-eval", "--json",
                                      "--out", str(tmp_path / "check")])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["eval_source"].endswith("eval/eval.json (reused)")
    assert data["lines"][0]["measured"] == 0.42


def test_check_picks_the_engine_built_for_this_gpu_and_batch(tmp_path):
    """Not the first engine alphabetically: the one whose recorded GPU/TensorRT match, tuned for the batch."""
    from e2rnas.deploy_targets.budget import pick_engine
    from e2rnas.deploy_targets.gpu_identity import GpuIdentity, engine_identity_problem

    def engine(name: str, identity: dict, profile: dict):
        path = tmp_path / name
        path.write_bytes(b"plan")
        path.with_suffix(".json").write_text(json.dumps({"identity": identity, "profile": profile}))
        return path

    b1, b8 = {"min": 1, "opt": 1, "max": 64}, {"min": 1, "opt": 8, "max": 64}
    a100 = engine("model.trt10.8.0.43.sm80.a100.fp16.engine", {"name": "NVIDIA A100-SXM4-40GB", "sm": "8.0",
                                                                 "tensorrt": "10.8.0.43"}, b1)
    h200_b8 = engine("model.trt10.8.0.43.sm90.h200.b8.fp16.engine", {"name": "NVIDIA H200", "sm": "9.0",
                                                                      "tensorrt": "10.8.0.43"}, b8)
    h200_b1 = engine("model.trt10.8.0.43.sm90.h200.fp16.engine", {"name": "NVIDIA H200", "sm": "9.0",
                                                                   "tensorrt": "10.8.0.43"}, b1)
    here = GpuIdentity(name="NVIDIA H200", sm="9.0", tensorrt="10.8.0.43")
    problem = lambda p: engine_identity_problem(p, here)  # noqa: E731
    assert pick_engine([a100, h200_b8, h200_b1], problem_of=problem, batch=1) == (h200_b1, None)
    path, note = pick_engine([a100, h200_b8], problem_of=problem, batch=1)
    assert path == h200_b8 and "optimised for batch 8, not latency_batch 1" in note
    with pytest.raises(Exception, match="none of the 1 engine"):
        pick_engine([a100], problem_of=problem, batch=1)
