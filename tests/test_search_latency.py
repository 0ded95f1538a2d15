"""The latency bound T in the search: the objective steers the alphas, the derivation honours T, tables are keyed."""

import json

import pytest
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.errors import E2RNASError
from e2rnas.search.runner import SearchConfig, run_search
from e2rnas.space.genotypes import Genotype
from e2rnas.space.latency_table import LatencyTable

TINY = dict(dataset="digits", ood_dataset="digits-ood", layers=3, C=4, epochs=2, batch_size=16,
            max_steps_per_epoch=2, deploy_layers=5, deploy_C=8, deploy_num_classes=5, deploy_input_size=16,
            params_bound=0.05, flops_bound=2.0, val_batches=1)


@pytest.fixture(scope="module")
def lut(tiny_lut):
    """The session's tiny-shape table (tests/_lut.py); read-only."""
    path, result = tiny_lut
    assert result.exit_code == 0, result.output
    return path


def test_latency_objective_steers_the_alphas(lut, tmp_path):
    """Same seed, objectives val + latency, DARTS rule (the alphas alone): a low T ends faster than a high T."""
    table = LatencyTable.load(lut)
    base = TINY | dict(epochs=3, max_steps_per_epoch=3, objectives=("val", "latency"), a_lr=0.05, derive="darts",
                       lut=str(lut))
    low = run_search(SearchConfig(**base | dict(latency_bound_fraction=0.0)), out_dir=tmp_path / "low")
    high = run_search(SearchConfig(**base | dict(latency_bound_fraction=1.0)), out_dir=tmp_path / "high")
    assert low["latency_bound_ms"] < high["latency_bound_ms"]
    assert low["expected_latency_ms"] < high["expected_latency_ms"]
    assert low["table_latency_ms"] < high["table_latency_ms"]
    assert low["table_latency_ms"] == pytest.approx(
        table.genotype_ms(Genotype.from_dict(low["genotype"])))


def test_budget_rule_honours_T_and_records_it(lut, tmp_path):
    cfg = SearchConfig(**TINY | dict(lut=str(lut), latency_bound_fraction=0.3, params_floor=0.0))
    summary = run_search(cfg, out_dir=tmp_path / "run")
    assert "latency" in summary["objectives"]
    assert summary["table_latency_ms"] <= summary["latency_bound_ms"] * (1 + 1e-9)
    assert summary["derivations"]["budget"]["latency"] == pytest.approx(summary["table_latency_ms"])
    assert summary["lut_key"]["target"] == "cpu"
    steps = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("expected_latency_ms" in s for s in steps if s["type"] == "step")


def test_a_table_for_another_deploy_shape_is_refused(lut, tmp_path):
    cfg = SearchConfig(**TINY | dict(deploy_C=16, lut=str(lut), latency_bound=1.0))
    with pytest.raises(E2RNASError, match="deploy"):
        run_search(cfg, out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_latency_bound_needs_a_table_and_parses_percentages(tmp_path):
    with pytest.raises(ValueError, match="latency table"):
        SearchConfig(**TINY | dict(latency_bound=1.0))
    result = CliRunner().invoke(app, ["search", "--latency-bound", "fast", "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "percentage" in str(result.exception) + result.output
