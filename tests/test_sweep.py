"""``e2rnas sweep``: budget points, the Pareto front, the missing-Ray message, and a 2-trial sweep on a local Ray."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from e2rnas.errors import E2RNASError
from e2rnas.run.sweep import SweepPoint, pareto_mask, plot_pareto, sweep_points

#: the tests' tiny pipeline (tests/test_pipeline.py), without the latency table and the report
TINY = {
    "search": {"epochs": 1, "warmup_epochs": 0, "max_steps_per_epoch": 2, "layers": 3, "channels": 4,
               "batch_size": 16, "macs_bound": 15},
    "train": {"epochs": 1, "max_train_batches": 2, "layers": 3, "channels": 8},
    "eval": {"max_samples": 32},
    "export": {"exporter": "torchscript"},
    "bench": {"runs": 3, "warmup": 1, "batch": "1", "metrics": "latency", "threads": 1},
    "check": {"reuse_eval": True, "runs": 3, "warmup": 1, "threads": 1},
    "latency_bound": None,
    "skip": ["lut", "report"],
}


def test_points_set_one_bound_each():
    points = sweep_points(params=[0.1, 0.2], macs=[5], latency=[0.4])
    assert [p.label for p in points] == ["params-0.1", "params-0.2", "macs-5", "latency-0.4"]
    base = {"search": {"epochs": 1, "flops_bound": 9}, "latency_bound": "50%"}
    assert points[0].pipeline_values(base)["search"] == {"epochs": 1, "flops_bound": 9, "params_bound": 0.1}
    assert points[2].pipeline_values(base)["search"] == {"epochs": 1, "macs_bound": 5.0}
    assert points[3].pipeline_values(base)["latency_bound"] == "0.4"
    assert base == {"search": {"epochs": 1, "flops_bound": 9}, "latency_bound": "50%"}  # not mutated
    with pytest.raises(E2RNASError, match="nothing to sweep"):
        sweep_points()
    with pytest.raises(E2RNASError, match="twice"):
        sweep_points(params=[0.1, 0.1])
    with pytest.raises(E2RNASError, match="> 0"):
        SweepPoint("params", 0)


def test_pareto_front():
    rows = [{"c": 1, "g": 0.5}, {"c": 2, "g": 0.9}, {"c": 2, "g": 0.6}, {"c": 3, "g": 0.9}, {"c": None, "g": 1}]
    assert pareto_mask(rows, ["c"], ["g"]) == [True, True, False, False, False]
    # equal points do not dominate each other
    assert pareto_mask([{"c": 1, "g": 1}, {"c": 1, "g": 1}], ["c"], ["g"]) == [True, True]


def test_plot_with_missing_axes(tmp_path):
    rows = [{"label": "params-0.1", "kind": "params", "params_m": 0.1, "accuracy": 0.5},
            {"label": "macs-5", "kind": "macs", "params_m": 0.2, "accuracy": 0.7, "aupr": 0.6}]
    plot_pareto(rows, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_ray_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from e2rnas.cli.app import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    monkeypatch.setattr(sys, "argv", ["e2rnas", "sweep", "--params-bounds", "0.1", "--out", str(tmp_path / "s")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'e2rnas[sweep]'" in err


def _sweep_cli(argv: list[str]) -> subprocess.CompletedProcess:
    """The sweep as a user runs it: its own process. ``ray.init`` forks with a ``preexec_fn``, which is unsafe in a
    process that already runs many threads (this test session's torch, ONNX Runtime and SSH fixtures): it can
    deadlock there, never in a fresh CLI process."""
    return subprocess.run([sys.executable, "-m", "e2rnas.cli.app", *argv], capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_sweep_two_trials_then_resume(tmp_path):
    pytest.importorskip("ray.tune", reason="the sweep needs Ray Tune: pip install 'e2rnas[sweep]'")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "sweep"
    argv = ["sweep", "--params-bounds", "0.2,0.25", "--config", str(cfg), "--out", str(out), "--num-cpus", "2",
            "--json"]
    first = _sweep_cli(argv)
    assert first.returncode == 0, first.stdout + first.stderr
    record = json.loads((out / "sweep.json").read_text())
    assert [p["label"] for p in record["points"]] == ["params-0.2", "params-0.25"]
    for p in record["points"]:
        assert p["status"] == "ok" and p["accuracy"] is not None and p["params_m"] > 0 and p["latency_ms"] > 0
        assert set(p) >= {"macs_m", "pgd_accuracy", "aupr", "pareto", "non_dominated", "genotype"}
    assert any(p["non_dominated"] for p in record["points"])
    assert record["resources"] == {"cpu": 1.0, "gpu": 0.0}
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (out / "sweep.csv").is_file()
    assert (out / "tune").is_dir()

    # The second run restores Tune's experiment: no trial runs again (each pipeline.json would be rewritten).
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/**/*") if p.is_file()}
    assert any(p.name == "pipeline.json" for p in stamps)
    time.sleep(0.01)
    second = _sweep_cli(argv)
    assert second.returncode == 0, second.stdout + second.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("trials/*/**/*") if p.is_file()}
    again = json.loads((out / "sweep.json").read_text())
    assert [p["accuracy"] for p in again["points"]] == [p["accuracy"] for p in record["points"]]

    # Other points on the same --out: an error, not a silent mix of two sweeps.
    other = _sweep_cli(["sweep", "--params-bounds", "0.2", "--config", str(cfg), "--out", str(out)])
    assert other.returncode == 2 and "other points" in other.stderr
    assert other.stderr.strip().count("\n") == 0
