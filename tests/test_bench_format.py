"""``e2rnas bench --format table|json|csv|md``, a warning per noisy row, sizes in MB = 10^6 bytes."""

from __future__ import annotations

import csv
import io
import json

import pytest
from _deploy_helpers import FAST, make_tiny_run
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.cli.bench_cmd import COLUMNS
from e2rnas.deploy_targets.bench import latency_warnings
from e2rnas.deploy_targets.runners import LatencyStats, summarize


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("run"))


def _bench(run, tmp_path, *extra):
    result = CliRunner().invoke(app, ["bench", str(run["model"]), str(run["onnx"]), "--target", "cpu", "--batch",
                                      "1,2", "--out", str(tmp_path), *FAST, *extra])
    assert result.exit_code == 0, result.output
    return result


def test_csv_md_and_json_formats(run, tmp_path):
    out = _bench(run, tmp_path, "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 4  # two artifacts x two batch sizes
    onnx = [r for r in rows if r["format"] == "onnx"]
    assert [r["batch"] for r in onnx] == ["1", "2"]
    assert float(onnx[0]["size_mb"]) == pytest.approx(run["onnx"].stat().st_size / 1e6, abs=1e-3)  # MB, not MiB
    assert all(float(r["p50_ms"]) > 0 and float(r["cv"]) >= 0 for r in rows)

    md = _bench(run, tmp_path, "--format", "md").stdout
    assert md.startswith("| artifact | format | status | MB |") and md.count("\n| model.onnx | onnx | ok |") == 2

    as_alias = json.loads(_bench(run, tmp_path, "--json").stdout)
    as_format = json.loads(_bench(run, tmp_path, "--format", "json").stdout)
    assert as_alias.keys() == as_format.keys() and len(as_format["rows"]) == 2
    assert as_format["rows"][0]["size_mb"] == pytest.approx(run["model"].stat().st_size / 1e6)


def test_unknown_format_is_an_error(run, tmp_path):
    result = CliRunner().invoke(app, ["bench", str(run["onnx"]), "--format", "xml", "--out", str(tmp_path)])
    text = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "'xml' is not one of 'table', 'json', 'csv', 'md'" in text


def test_a_warning_line_per_noisy_row(run, tmp_path, monkeypatch):
    monkeypatch.setattr(LatencyStats, "noise_warning", lambda self: f"batch {self.batch}: noisy timing (test)")
    table = _bench(run, tmp_path, "--batch", "1").stdout
    lines = [ln for ln in table.splitlines() if "noisy timing (test)" in ln]
    assert len(lines) == 2 and all(ln.startswith("warning ") for ln in lines)
    data = json.loads((tmp_path / "bench.json").read_text())
    assert all(r["warnings"] == ["batch 1: noisy timing (test)"] for r in data["rows"])
    md = _bench(run, tmp_path, "--batch", "1", "--format", "md").stdout
    assert md.count("- warning: ") == 2


def test_latency_warnings_from_recorded_stats():
    steady = summarize([1.0, 1.01, 0.99, 1.0, 1.0, 1.02], batch=1, timer="perf_counter_ns").as_dict()
    noisy = summarize([1.0, 1.0, 1.0, 1.0, 1.0, 5.0], batch=8, timer="perf_counter_ns").as_dict()
    assert latency_warnings({"1": steady}) == []
    warnings = latency_warnings({"1": steady, "8": noisy, "64": {"skipped": "max batch 8"}})
    assert len(warnings) == 1 and warnings[0].startswith("batch 8: noisy timing")
