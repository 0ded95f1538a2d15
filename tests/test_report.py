"""The report from a hand-made run directory: provenance header, warnings, size column, search plot, cell graphs
without overlapping labels, markdown rendered by markdown-it-py."""

import itertools
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.run import cell_graph
from e2rnas.run.report import binomial_interval, build_report, report_warnings, search_figure
from e2rnas.space.genotypes import GENOTYPES

G = GENOTYPES["DARTS_V2"].to_dict()
PROV = {"date": "2025-01-02T03:04:05Z", "e2rnas": "0.1.0", "git_sha": "abc123def4567890", "git_dirty": False,
        "argv": ["e2rnas", "search", "--out", "r"], "command": "e2rnas search --out r", "cwd": "/somewhere",
        "python": "3.11.0", "torch": "2.5.0", "onnxruntime": "1.20.0",
        "environment": {"hostname": "box", "cpu": "Some CPU", "gpu": None}}


def _steps():
    out = []
    for epoch in range(2):
        for step in range(3):
            out.append({"type": "step", "epoch": epoch, "step": step, "objectives": {"val": 1.0 + step, "params": 0.5},
                        "gammas": {"val": 0.6, "params": 0.4}, "expected_params_m": 0.1 - 0.01 * step,
                        "expected_macs_m": 3.0, "expected_latency_ms": 1.5})
    return out


def _write_run(run: Path, *, accuracy: float, limit: float, test_images: int) -> None:
    (run / "search").mkdir(parents=True)
    summary = {"params_bound_m": 0.05, "flops_bound_m": 2.0, "latency_bound_ms": 1.0, "expected_params_m": 0.06,
               "expected_macs_m": 2.5, "expected_latency_ms": 1.2, "exact_params_m": 0.05, "exact_macs_m": 2.1,
               "genotype": G, "warnings": ["normal cell collapsed to skip_connect"], "provenance": PROV}
    (run / "search" / "summary.json").write_text(json.dumps(summary))
    (run / "search" / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in _steps()))
    (run / "eval").mkdir()
    (run / "eval" / "eval.json").write_text(json.dumps({"clean_acc": accuracy, "samples": {"test": test_images},
                                                        "cost": {"params": 50000, "macs": 2100000}}))
    (run / "export").mkdir()
    onnx = run / "export" / "model.onnx"
    onnx.write_bytes(b"x" * 1_500_000)
    (run / "bench").mkdir()
    rows = [{"artifact": str(onnx), "format": "onnx", "status": "ok", "size_mb": 1.5, "metrics": {},
             "latency": {"1": {"p50_ms": 1.0, "p95_ms": 1.1}, "64": {"skipped": "max batch 8"}}, "warnings": []},
            {"artifact": str(run / "export" / "model.int8.onnx"), "format": "onnx-int8", "status": "error",
             "error": "file is not ONNX", "metrics": {}, "latency": {}}]
    (run / "bench" / "bench.json").write_text(json.dumps({"target": {"name": "cpu"}, "rows": rows, "notes": [
        "model.int8.onnx measured slower than model.onnx on cpu at batch 1"]}))
    (run / "check").mkdir()
    check = {"target": {"name": "cpu"}, "passed": True, "data": {"test_images": test_images}, "notes": [],
             "lines": [{"key": "min_accuracy", "what": "accuracy", "limit": limit, "measured": accuracy, "op": ">=",
                        "margin": accuracy - limit, "passed": accuracy >= limit}]}
    (run / "check" / "check.json").write_text(json.dumps(check))
    (run / "pipeline.json").write_text(json.dumps({"stages": [
        {"stage": "search", "status": "skipped (complete)", "command": "e2rnas search"},
        {"stage": "export-int8", "status": "skipped (--skip)", "command": "e2rnas export <int8> | x"}]}))


def test_binomial_interval():
    lo, hi = binomial_interval(0.9, 1000)
    assert lo == pytest.approx(0.8798, abs=1e-3) and hi == pytest.approx(0.9179, abs=1e-3)  # Wilson
    lo2, hi2 = binomial_interval(0.9, 100)
    assert lo2 < lo and hi2 > hi


def test_report_header_warnings_size_and_html(tmp_path):
    run = tmp_path / "run"
    _write_run(run, accuracy=0.905, limit=0.9, test_images=200)  # 0.5% margin, interval about +-4%
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    md = (run / "report.md").read_text()
    header = md[:md.index("## Budget check")]
    for text in ("## Provenance", "2025-01-02T03:04:05Z", "abc123def4567890", "`e2rnas search --out r`", "box",
                 "torch 2.5.0", "recorded by the search stage"):
        assert text in header, text
    warnings = md[md.index("## Warnings"):md.index("## Search")]
    assert "search: normal cell collapsed to skip_connect" in warnings
    assert "inside the 95% binomial interval" in warnings and "200 test images" in warnings
    assert "measured slower than model.onnx" in warnings  # INT8 slower than fp32
    assert "model.int8.onnx not measured: file is not ONNX" in warnings
    assert "batch 64 skipped: max batch 8" in warnings
    assert "stage export-int8 skipped (--skip)" in warnings and "stage search" not in warnings
    assert "| size MB |" in md and "| 1.500 |" in md
    html = (run / "report.html").read_text()
    assert "<table>" in html and "<th>size MB</th>" in html and "<h2>Warnings</h2>" in html
    assert "<code>e2rnas export &lt;int8&gt; | x</code>" in html  # raw HTML escaped, | inside a cell kept
    assert html.count("data:image/png;base64,") >= 2 and 'src="report/' not in html


def test_a_wide_margin_gives_no_noise_warning(tmp_path):
    run = tmp_path / "run"
    _write_run(run, accuracy=0.95, limit=0.9, test_images=10000)
    assert not any("binomial" in w for w in report_warnings(
        json.loads((run / "search" / "summary.json").read_text()),
        json.loads((run / "check" / "check.json").read_text())))


def test_search_plot_draws_bounds_and_epoch_boundaries():
    summary = {"params_bound_m": 0.05, "flops_bound_m": 2.0, "latency_bound_ms": 1.0}
    fig = search_figure(_steps(), summary)
    gids = [(line.get_gid(), tuple(line.get_ydata()), tuple(line.get_xdata())) for ax in fig.axes
            for line in ax.get_lines() if line.get_gid()]
    bounds = {g: y[0] for g, y, _ in gids if g.startswith("bound-")}
    assert bounds == {"bound-L": 0.05, "bound-F": 2.0, "bound-T": 1.0}
    epochs = {x[0] for g, _, x in gids if g == "epoch"}
    assert epochs == {3.5}  # the second epoch starts at step 4
    no_t = search_figure([{k: v for k, v in s.items() if k != "expected_latency_ms"} for s in _steps()], summary)
    assert not any(line.get_gid() == "bound-T" for ax in no_t.axes for line in ax.get_lines())


@pytest.mark.parametrize("name", list(GENOTYPES))
@pytest.mark.parametrize("networkx", [True, False])
def test_cell_labels_do_not_overlap(name, networkx, tmp_path, monkeypatch):
    if not networkx:
        monkeypatch.setitem(sys.modules, "networkx", None)  # the fallback layout
    boxes = cell_graph.draw_with_matplotlib(GENOTYPES[name].to_dict(), tmp_path / "cells.png")
    assert len(boxes) == 2 * (7 + 8)  # 7 nodes and 8 op labels per cell
    overlapping = [(a[0], b[0]) for a, b in itertools.combinations(boxes, 2) if cell_graph._overlap(a[1], b[1])]
    assert not overlapping and (tmp_path / "cells.png").stat().st_size > 0


def test_cells_use_graphviz_dot_when_installed(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    png = b"\x89PNG\r\n\x1a\nfake"
    dot = bin_dir / "dot"
    dot.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/argv\ncat > {tmp_path}/graph.dot\n"
                   f"while [ $# -gt 0 ]; do if [ \"$1\" = -o ]; then printf '\\211PNG\\r\\n\\032\\nfake' > \"$2\"; fi; "
                   "shift; done\n")
    dot.chmod(dot.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    out = tmp_path / "cells.png"
    assert cell_graph.draw_cells(G, out) == "dot"
    assert out.read_bytes() == png
    assert (tmp_path / "argv").read_text().split() == ["-Tpng", "-Gdpi=110", "-o", str(out)]
    graph = (tmp_path / "graph.dot").read_text()
    assert "cluster_normal" in graph and "cluster_reduce" in graph
    assert graph.count('label="sep_conv_3x3"') == sum(op == "sep_conv_3x3" for op, _ in G["normal"] + G["reduce"])


def test_build_report_without_provenance_uses_its_own(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "eval.json").write_text(json.dumps({"clean_acc": 0.5}))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "of this report (no stage recorded its own)" in md and os.getcwd() in md
