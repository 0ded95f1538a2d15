"""`e2rnas run --baseline N`: random networks of the same budget retrained and evaluated like the searched one, and
the report's rank line against the numbers in their eval.json files; the steering line and plot of the report."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.errors import E2RNASError
from e2rnas.run.baseline import rank, run_baseline
from e2rnas.run.pipeline import PipelineConfig
from e2rnas.space.genotypes import Genotype

REDUCED = {
    "search": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 2, "layers": 3, "channels": 4,
               "batch_size": 16},
    "train": {"epochs": 1, "max_train_batches": 2, "layers": 3, "channels": 8},
    "eval": {"max_samples": 48},
    "skip": ["lut", "export", "bench", "check"],
}


def test_rank_counts_strictly_better_networks():
    assert rank(0.5, [0.4, 0.6, 0.7]) == 3
    assert rank(0.5, [0.5, 0.5]) == 1  # ties share the better rank
    assert rank(0.9, [None, 0.1]) == 1
    assert rank(None, [0.1]) is None


def test_baseline_setting_is_checked():
    with pytest.raises(ValueError, match="baseline is a number of random networks"):
        PipelineConfig(baseline=-1)
    with pytest.raises(ValueError, match="baseline is a number of random networks"):
        PipelineConfig(baseline=True)


@pytest.mark.slow
def test_run_with_baseline_ranks_the_searched_network(tmp_path):
    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text(yaml.safe_dump(REDUCED))
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir), "--baseline", "2"])
    assert result.exit_code == 0, result.output
    base = json.loads((run_dir / "baseline" / "baseline.json").read_text())
    summary = json.loads((run_dir / "search" / "summary.json").read_text())
    searched = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert base["searched"]["clean_acc"] == searched["clean_acc"]
    assert len(base["random"]) == 2
    train_cfg = yaml.safe_load((run_dir / "train" / "config.yaml").read_text())
    for k, net in enumerate(base["random"]):
        folder = run_dir / "baseline" / f"random-{k}"
        evaluation = json.loads((folder / "eval.json").read_text())
        assert net["clean_acc"] == evaluation["clean_acc"] and net["pgd_acc"] == evaluation["pgd_acc"]
        assert evaluation["samples"] == searched["samples"] and evaluation["protocol"] == searched["protocol"]
        assert Genotype.from_dict(evaluation["genotype"]) == Genotype.from_dict(net["genotype"])
        # the same budget as the search: params in [floor x L, L], MACs <= F, exactly
        L, F = summary["params_bound_m"], summary["flops_bound_m"]
        assert summary["params_floor"] * L - 1e-9 <= net["exact"]["params"] <= L + 1e-9
        assert net["exact"]["macs"] <= F + 1e-9
        assert net["params_m"] == pytest.approx(evaluation["cost"]["params"] / 1e6)
        # the same schedule and seed as the searched network's retrain
        own = yaml.safe_load((folder / "config.yaml").read_text())
        assert {k: own[k] for k in ("epochs", "seed", "lr", "layers", "C", "max_train_batches")} == \
            {k: train_cfg[k] for k in ("epochs", "seed", "lr", "layers", "C", "max_train_batches")}
    for key, label in (("clean_acc", "test accuracy"), ("pgd_acc", "PGD accuracy")):
        expected = 1 + sum(json.loads((run_dir / "baseline" / f"random-{k}" / "eval.json").read_text())[key]
                           > searched[key] for k in range(2))
        assert base["ranks"][key] == expected
        assert f"{label} {expected}/3" in base["line"]
    report = (run_dir / "report.md").read_text()
    assert base["line"] in report
    assert "What steered the architecture: steered (gamma > 0.1) over 2 steps" in report
    assert (run_dir / "report" / "steering.png").is_file()
    assert f"Handed-over genotype: {summary['genotype_text']}" in report
    assert 0 < summary["final_entropy"] <= 1
    assert summary["genotype_text"] == Genotype.from_dict(summary["genotype"]).describe()
    stages = [s["stage"] for s in json.loads((run_dir / "pipeline.json").read_text())["stages"]]
    assert stages[-2:] == ["baseline", "report"]

    # the command on its own reuses the finished networks and gives the same ranks
    again = CliRunner().invoke(app, ["baseline", str(run_dir), "--n", "2", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["ranks"] == base["ranks"]
    table = CliRunner().invoke(app, ["baseline", str(run_dir), "--n", "2"])
    assert table.exit_code == 0 and "random-1" in table.output, table.output
    with pytest.raises(E2RNASError, match="at least 1 random network"):
        run_baseline(run_dir, n=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(E2RNASError, match=r"the baseline needs .*summary.json \(the search summary\); run "):
        run_baseline(tmp_path / "empty", n=1)
