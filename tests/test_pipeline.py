"""`e2rnas run` on a reduced configuration: every artifact, a report that matches the JSON, skip and resume."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from e2rnas.cli._config import build_config
from e2rnas.cli.app import app
from e2rnas.run.pipeline import PipelineConfig, flags, plan
from e2rnas.search.runner import SearchConfig, run_search

REDUCED = {
    "search": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 2, "layers": 3, "channels": 4,
               "batch_size": 16},
    "train": {"epochs": 1, "max_train_batches": 2, "layers": 3, "channels": 8},
    "eval": {"max_samples": 32},
    "export": {"exporter": "torchscript"},
    "bench": {"runs": 3, "warmup": 1, "batch": "1", "max_samples": 32},
    "check": {"max_samples": 32, "runs": 3, "warmup": 1},
}
ARTIFACTS = ["lut/lut.json", "search/genotype.json", "search/summary.json", "train/model.pt", "eval/eval.json",
             "export/model.onnx", "export/model.int8.onnx", "bench/bench.json", "check/check.json", "report.md",
             "report.html", "report/search.png", "report/alphas.png", "report/cells.png", "report/latency.png",
             "pipeline.json"]


def test_flags_spelling():
    assert flags({"batch_size": 3, "first_order": True, "ll_ood": False, "x": None, "b": [1, 8]}) == [
        "--batch-size", "3", "--first-order", "--no-ll-ood", "--b", "1,8"]
    with pytest.raises(ValueError, match="unknown stage"):
        PipelineConfig(skip=("deploy",))


@pytest.mark.slow
def test_run_produces_every_artifact_skips_and_resumes(tmp_path):
    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text(yaml.safe_dump(REDUCED))
    run_dir = tmp_path / "run"

    # The latency table, as the lut stage writes it (the pipeline then skips that stage as complete).
    table = run_dir / "lut" / "lut.json"
    made = CliRunner().invoke(app, ["lut", "--target", "cpu", "--runs", "3", "--rounds", "1", "--warmup", "1",
                                    "--out", str(table)])
    assert made.exit_code == 0, made.output
    # An interrupted search: a checkpoint but no summary; the pipeline must resume it.
    search_cfg = build_config(SearchConfig, preset="embedded-default", section="search", overrides={
        "epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 2, "layers": 3, "C": 4, "batch_size": 16,
        "lut": str(table), "latency_bound_fraction": 0.5})

    def stop(rec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(search_cfg, out_dir=run_dir / "search", on_step=stop)
    assert (run_dir / "search" / "checkpoint.pt").is_file()

    result = CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir)])
    assert result.exit_code in (0, 1), result.output  # 1: the reduced model misses the shipped budget
    for rel in ARTIFACTS:
        assert (run_dir / rel).is_file(), rel
    record = json.loads((run_dir / "pipeline.json").read_text())
    stages = {s["stage"]: s for s in record["stages"]}
    assert stages["lut"]["status"].startswith("skipped")
    assert stages["search"]["command"].endswith("--resume") and "--latency-bound 50%" in stages["search"]["command"]

    # The report's tables are the JSON files' numbers.
    report = (run_dir / "report.md").read_text()
    check = json.loads((run_dir / "check" / "check.json").read_text())
    for line in check["lines"]:
        assert f"{float(line['measured']):.4g}" in report
    evaluation = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert f"{100 * evaluation['clean_acc']:.2f}" in report
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()

    # A second run skips every completed stage; with --json stdout is one JSON document.
    import subprocess
    import sys

    before = {rel: (run_dir / rel).stat().st_mtime_ns for rel in ARTIFACTS[:8]}
    proc = subprocess.run([sys.executable, "-m", "e2rnas.cli.app", "run", "--config", str(cfg_file), "--out",
                           str(run_dir), "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    assert json.loads(proc.stdout)["run_dir"] == str(run_dir) and "report" in proc.stderr
    record = json.loads((run_dir / "pipeline.json").read_text())
    assert all(s["status"].startswith("skipped") for s in record["stages"] if s["stage"] != "report")
    assert before == {rel: (run_dir / rel).stat().st_mtime_ns for rel in ARTIFACTS[:8]}

    # Losing the later stages' outputs: only those stages run again.
    for rel in ("bench/bench.json", "check/check.json"):
        (run_dir / rel).unlink()
    CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir)])
    record = json.loads((run_dir / "pipeline.json").read_text())
    ran = [s["stage"] for s in record["stages"] if not s["status"].startswith("skipped")]
    assert ran == ["bench", "check", "report"]
    assert Path(run_dir / "bench" / "bench.json").is_file()


def test_plan_without_search_when_a_genotype_is_given(tmp_path):
    stages = [s.name for s in plan(PipelineConfig(genotype="DARTS_V2"), tmp_path)]
    assert stages[0] == "train" and "search" not in stages


def test_report_rejects_an_empty_directory(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code != 0


@pytest.mark.slow
def test_changed_settings_rerun_the_stage_and_those_after_it(tmp_path):
    """A rerun with other settings never reuses stale results, and the exit code follows the current check."""
    cfg = dict(REDUCED, lut={"runs": 2, "rounds": 1, "warmup": 1}, skip=["bench"])
    cfg_file = tmp_path / "pipeline.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "run"
    first = CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir)])
    # exit 1 is the budget check's verdict, or (under CliRunner) an exception: the message says which
    assert first.exit_code in (0, 1) and isinstance(first.exception, (SystemExit, type(None))), (
        repr(first.exception), first.output[-2000:])
    passed = json.loads((run_dir / "check" / "check.json").read_text())["passed"]
    record = json.loads((run_dir / "pipeline.json").read_text())
    fps = {s["stage"]: s["fingerprint"] for s in record["stages"]}

    # the same settings: everything is skipped, and the exit code still reflects check.json
    again = CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir)])
    assert again.exit_code == (0 if passed else 1)

    # more training epochs: lut and search are kept, train and everything after it run again
    cfg["train"] = dict(cfg["train"], epochs=2)
    cfg_file.write_text(yaml.safe_dump(cfg))
    CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir)])
    record = json.loads((run_dir / "pipeline.json").read_text())
    ran = [s["stage"] for s in record["stages"] if not s["status"].startswith("skipped")]
    assert ran == ["train", "eval", "export", "export-int8", "check", "report"]
    assert {s["stage"]: s["fingerprint"] for s in record["stages"]}["search"] == fps["search"]
    assert (run_dir / "train.previous" / "model.pt").is_file()  # the old results are set aside, not lost

    # --from check: only check and report
    CliRunner().invoke(app, ["run", "--config", str(cfg_file), "--out", str(run_dir), "--from", "check"])
    record = json.loads((run_dir / "pipeline.json").read_text())
    assert [s["stage"] for s in record["stages"] if not s["status"].startswith("skipped")] == ["check", "report"]


def test_paper_pipeline_evaluates_ood_detection_on_svhn(tmp_path):
    evals = [s for s in plan(PipelineConfig(preset="paper"), tmp_path) if s.name == "eval"]
    assert evals and evals[0].argv[-2:] == ["--ood-dataset", "svhn"]
    mine = [s for s in plan(PipelineConfig(preset="paper", eval={"ood_dataset": "none"}), tmp_path)
            if s.name == "eval"]
    assert mine[0].argv[-2:] == ["--ood-dataset", "none"]  # the run's own flag wins
    default = [s for s in plan(PipelineConfig(), tmp_path) if s.name == "eval"]
    assert "--ood-dataset" not in default[0].argv


def test_the_pipeline_composes_library_functions_not_the_cli(tmp_path):
    """Importing and planning the pipeline loads neither the CLI nor typer; each stage has a library runner."""
    import subprocess
    import sys

    code = ("import sys; from e2rnas.run.pipeline import PipelineConfig, plan; "
            f"stages = plan(PipelineConfig(), {str(tmp_path)!r}); "
            "assert all(callable(s.run) for s in stages); "
            "print(sorted(m for m in sys.modules if m.startswith(('e2rnas.cli', 'typer', 'click'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_stage_option_the_library_does_not_know_is_one_line(tmp_path):
    from e2rnas.errors import E2RNASError
    from e2rnas.run.stages import StageContext, bench

    ctx = StageContext(run_dir=tmp_path, preset="embedded-default", target="cpu")
    with pytest.raises(E2RNASError, match=r"^bench: unknown option 'batches' in the run's bench settings"):
        bench(ctx, {"batches": "1,8"})
