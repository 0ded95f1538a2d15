"""The report from a hand-made run directory: provenance header, warnings, size column, search plot, cell graphs
without overlapping labels, markdown rendered by markdown-it-py."""

import itertools
import json
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.run import cell_graph
from e2rnas.run.report import binomial_interval, build_report, latency_figure, report_warnings, search_figure
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
        {"stage": "search", "status": "skipped (complete)", "command": "e2rnas search", "seconds": 3289.4},
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
    assert "|  |  |" not in header and "| |" not in header  # no table with an empty header row
    assert "| search | skipped (complete) | 54 min 49 s | `e2rnas search` |" in md  # not 3.29e+03
    warnings = md[md.index("## Warnings"):md.index("## Search")]
    assert "search: normal cell collapsed to skip_connect" in warnings
    assert "inside the 95% binomial interval" in warnings and "200 test images" in warnings
    assert "measured slower than model.onnx" in warnings  # INT8 slower than fp32
    assert "model.int8.onnx not measured: file is not ONNX" in warnings
    assert "batch 64 skipped: max batch 8" in warnings
    assert "stage export-int8 skipped (--skip)" in warnings and "stage search" not in warnings
    assert "| size MB |" in md and "| 1.500 |" in md
    html = (run / "report.html").read_text()
    assert "<table>" in html and '<th style="text-align:right">size MB</th>' in html and "<h2>Warnings</h2>" in html
    provenance = html[html.index("<h2>Provenance</h2>"):html.index("<h2>Budget")]
    assert "<th></th>" not in provenance and "<li><strong>command</strong>" in provenance
    # a command is left-aligned and wraps only between words: each word unbreakable (browsers break after '-');
    # raw HTML escaped, | inside a cell kept
    assert ('<td><code><span class="w">e2rnas</span> <span class="w">export</span> <span class="w">&lt;int8&gt;'
            '</span> <span class="w">|</span> <span class="w">x</span></code></td>') in html
    assert "code .w{white-space:nowrap}" in html and "text-align:left" in html
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
    assert not any(p.get_gid() == "warm-up" for ax in fig.axes for p in ax.patches)  # no warm-up here
    no_t = search_figure([{k: v for k, v in s.items() if k != "expected_latency_ms"} for s in _steps()], summary)
    assert not any(line.get_gid() == "bound-T" for ax in no_t.axes for line in ax.get_lines())


def test_search_plot_starts_at_step_one_and_shades_the_warm_up():
    """Three warm-up steps (no objectives, NaN cost estimates) then three bi-level steps: every axis starts at
    step 1, the warm-up is a shaded band up to step 3, and the data start at step 4."""
    warm = [{"type": "step", "epoch": 0, "step": i, "expected_params_m": float("nan")} for i in range(1, 4)]
    bilevel = [dict(s, epoch=1) for s in _steps()[:3]]
    fig = search_figure(warm + bilevel, {"params_bound_m": 0.05, "flops_bound_m": 2.0})
    for ax in fig.axes:
        assert ax.get_xlim() == (0.5, 6.5), ax.get_title()
        bands = [p for p in ax.patches if p.get_gid() == "warm-up"]
        assert len(bands) == 1 and bands[0].get_x() == 0.5 and bands[0].get_width() == 3
        assert "warm-up: weights only (3 steps)" in [t.get_text() for t in ax.get_legend().get_texts()]
        data = [line for line in ax.get_lines() if not line.get_gid()]
        assert data and min(min(line.get_xdata()) for line in data) == 4, ax.get_title()


def test_latency_plot_keeps_fast_runtimes_visible():
    """torch at 28 ms beside ONNX Runtime at 0.3 ms: a log axis, and every bar labelled with its value."""
    bench = {"target": {"name": "cpu"}, "rows": [
        {"artifact": "model.pt", "format": "torch", "latency": {"1": {"p50_ms": 28.0, "p95_ms": 3248.4}}},
        {"artifact": "model.onnx", "format": "onnx", "latency": {"1": {"p50_ms": 0.31, "p95_ms": 0.44}}}]}
    fig = latency_figure(bench)
    (ax,) = fig.axes
    assert ax.get_yscale() == "log"
    labels = {t.get_text() for t in ax.texts}
    assert {"28", "3248", "0.31", "0.44"} <= labels  # never 3.25e+03
    bottom, top = ax.get_ylim()
    assert bottom < 0.31 and top > 3248
    assert latency_figure({"rows": [{"artifact": "m", "format": "x", "latency": {"1": {"skipped": "n/a"}}}]}) is None


def _random_genotype(rng: random.Random) -> dict:
    ops = ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3",
           "skip_connect")

    def cell() -> list:
        return [[rng.choice(ops), i] for node in range(2, 6) for i in rng.sample(range(node), 2)]

    return {"normal": cell(), "normal_concat": [2, 3, 4, 5], "reduce": cell(), "reduce_concat": [2, 3, 4, 5]}


CELLS = {**{name: g.to_dict() for name, g in GENOTYPES.items()},
         **{f"random-{seed}": _random_genotype(random.Random(seed)) for seed in range(6)}}


@pytest.mark.parametrize("name", list(CELLS))
def test_cell_drawing_keeps_labels_apart_and_edges_off_other_nodes(name, tmp_path):
    """The drawing without graphviz: no two node or op labels overlap, and no edge runs through a node it does not
    join (the reduce cell's input edges used to pass through node 0)."""
    drawing = cell_graph.draw_with_matplotlib(CELLS[name], tmp_path / "cells.png")
    assert len(drawing.boxes) == 2 * (7 + 8)  # 7 nodes and 8 op labels per cell
    overlapping = [(a[0], b[0]) for a, b in itertools.combinations(drawing.boxes, 2)
                   if cell_graph._overlap(a[1], b[1])]
    assert not overlapping and (tmp_path / "cells.png").stat().st_size > 0
    through = [(kind, src, dst, node) for kind, src, dst, pts in drawing.edges
               for (k, node), box in drawing.nodes.items()
               if k == kind and node not in (src, dst) and cell_graph._inside(pts, box).any()]
    assert not through
    assert len(drawing.edges) == 2 * (8 + 4)


def test_cell_layout_and_text_follow_darts_figures():
    """Inputs left (c_{k-2} above c_{k-1}), nodes 0-3 left to right, output right; the genotype as text in the
    drawing's names."""
    pos = cell_graph.layout(cell_graph.cell_edges(G, "reduce"))
    assert pos[0][0] == pos[1][0] == 0.0 and pos[0][1] > pos[1][1] and pos["out"][0] == 1.0
    assert [pos[n][0] for n in (2, 3, 4, 5)] == sorted(pos[n][0] for n in (2, 3, 4, 5))
    assert 0.0 < pos[2][0] and pos[5][0] < 1.0
    text = cell_graph.cell_text(G, "normal")
    assert text[0] == "node 0 = sep_conv_3x3(c_{k-2}) + sep_conv_3x3(c_{k-1})"
    assert text[3] == "node 3 = skip_connect(c_{k-2}) + dil_conv_3x3(node 0)"
    assert text[-1] == "c_{k} = concat(nodes 0, 1, 2, 3)"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz dot not installed")
def test_real_dot_draws_the_cells(tmp_path):
    out = tmp_path / "cells.png"
    assert cell_graph.draw_with_dot(G, out) and out.read_bytes()[:4] == b"\x89PNG"


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
    # DARTS' order: the inputs in one rank, then nodes 0-3 chained in order, the output, the genotype's text
    assert '{ rank=same; "reduce_1"; "reduce_0"; "normal_1"; "normal_0"; }' in graph
    for kind in ("normal", "reduce"):
        chain = [f'"{kind}_{a}" -> "{kind}_{b}" [style=invis];' for a, b in
                 (("1", "2"), ("2", "3"), ("3", "4"), ("4", "5"), ("5", "out"), ("out", "text"))]
        assert all(line in graph for line in chain), kind
        assert "node 3 = skip_connect(c_{k-2}) + dil_conv_3x3(node 0)" in graph  # the genotype beside the cell


def test_report_writes_data_and_shapes_as_text_and_the_genotype_below_the_cells(tmp_path):
    run = tmp_path / "run"
    _write_run(run, accuracy=0.95, limit=0.9, test_images=512)
    evaluation = json.loads((run / "eval" / "eval.json").read_text())
    evaluation |= {"datasets": {"test": "digits", "ood": "digits-ood"}, "samples": {"test": 512, "ood": 256},
                   "protocol": {"eps": 0.03, "steps": 10}}
    (run / "eval" / "eval.json").write_text(json.dumps(evaluation))
    summary = json.loads((run / "search" / "summary.json").read_text())
    summary |= {"deploy_shape": {"layers": 8, "C": 16, "num_classes": 10, "input_size": 28, "variant": "cifar"},
                "objectives": ["val", "ood", "params"]}
    (run / "search" / "summary.json").write_text(json.dumps(summary))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "data: test digits (512 images), OoD digits-ood (256 images)." in md
    assert "objectives val, ood, params," in md
    assert "{'" not in md and "['" not in md  # no Python reprs anywhere
    cells = md[md.index("![The searched cells"):]
    assert "normal cell:\n  node 0 = sep_conv_3x3(c_{k-2}) + sep_conv_3x3(c_{k-1})" in cells
    assert "reduce cell:\n  node 0 = max_pool_3x3(c_{k-2}) + max_pool_3x3(c_{k-1})" in cells


def test_report_on_a_folder_without_results_creates_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.json").write_text(json.dumps({"stages": []}))  # a run that failed before any result
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code != 0 and "is not a run made by `e2rnas run`" in str(result.exception)
    assert sorted(p.name for p in run.iterdir()) == ["pipeline.json"]  # no empty report/ folder


def test_build_report_without_provenance_uses_its_own(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "eval.json").write_text(json.dumps({"clean_acc": 0.5}))
    build_report(run)
    md = (run / "report.md").read_text()
    assert "of this report (no stage recorded its own)" in md and os.getcwd() in md


def _complete_run(run: Path, *, passed: bool) -> dict:
    """A hand-made run whose every stage (but lut, left out) has its outputs: `e2rnas run` skips them all."""
    _write_run(run, accuracy=0.95, limit=0.9, test_images=512)
    check = json.loads((run / "check" / "check.json").read_text())
    check["passed"] = check["lines"][0]["passed"] = passed
    (run / "check" / "check.json").write_text(json.dumps(check))
    (run / "search" / "genotype.json").write_text(json.dumps(G))
    (run / "train").mkdir()
    (run / "train" / "model.pt").write_bytes(b"x")
    (run / "train" / "summary.json").write_text(json.dumps({"genotype": G}))
    (run / "export" / "export.json").write_text("{}")
    (run / "export" / "model.int8.onnx").write_bytes(b"x")
    first = dict(PROV, argv=["e2rnas", "run", "--out", "first"], command="e2rnas run --out first")
    record = {"provenance": first, "stages": [
        {"stage": "search", "status": "ok", "seconds": 3289.4, "command": "e2rnas search --preset p --out s"},
        {"stage": "check", "status": "ok (exit 1)", "seconds": 12.0, "command": "e2rnas check run --target cpu"}]}
    (run / "pipeline.json").write_text(json.dumps(record))
    return first


@pytest.mark.parametrize("passed", [True, False])
def test_a_rerun_that_skips_every_stage_keeps_the_commands_and_the_verdict(passed, tmp_path, monkeypatch):
    """Issue 27.10: the report's top command stays the one that made the results, each stage keeps its own
    command and time, the pass/fail line is printed again, and --json gives run_dir absolute."""
    monkeypatch.chdir(tmp_path)
    first = _complete_run(tmp_path / "run", passed=passed)
    result = CliRunner().invoke(app, ["run", "--out", "run", "--skip", "lut"])
    assert result.exit_code == (0 if passed else 1), result.output
    verdict = "Budget check on cpu: " + ("all budget lines pass" if passed else
                                         "the budget is NOT met (1 of 1 lines fail: accuracy)")
    assert verdict in result.output
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert all(s["status"].startswith("skipped") for s in record["stages"] if s["stage"] != "report")
    assert record["provenance"]["command"] == first["command"] and record["last_invocation"]["ran"] == []
    md = (tmp_path / "run" / "report.md").read_text()
    header = md[:md.index("## Budget check")]
    assert "- **command**: `e2rnas run --out first`" in header
    assert "every stage was already complete" in header and "`e2rnas run --out run --skip lut`" not in header[
        :header.index("Last invoked")]
    assert f"## {verdict.replace('on cpu', 'on `cpu`')}" in md
    assert "| search | skipped (complete) | 54 min 49 s | `e2rnas search --preset p --out s` |" in md

    as_json = CliRunner().invoke(app, ["run", "--out", "run", "--skip", "lut", "--json"])
    assert json.loads(as_json.stdout)["run_dir"] == str((tmp_path / "run").resolve())


def test_the_verdict_counts_only_the_lines_that_decide():
    from e2rnas.run.report import budget_verdict

    check = {"target": {"name": "cpu"}, "passed": False, "lines": [
        {"key": "max_latency_ms", "what": "latency p90 ms, batch 1", "passed": False, "decides": True},
        {"key": "search_latency_bound_ms", "what": "latency p50 ms, batch 1 (the search's statistic)",
         "passed": False, "decides": False},
        {"key": "max_params_m", "what": "params (M)", "passed": True}]}
    assert budget_verdict(check) == ("Budget check on cpu: the budget is NOT met (1 of 2 lines fail: latency p90 ms, "
                                     "batch 1)")
    check["lines"][2]["passed"] = False  # names hold commas: failed lines are joined with '; '
    assert budget_verdict(check).endswith("(2 of 2 lines fail: latency p90 ms, batch 1; params (M))")
    check["lines"][2]["passed"] = True
    check["lines"][0]["passed"], check["passed"] = True, True
    assert budget_verdict(check) == "Budget check on cpu: all budget lines pass"


def test_the_search_table_compares_t_with_the_measured_p50_not_the_budgets_percentile():
    from e2rnas.run.report import search_table

    summary = {"params_bound_m": 0.2, "flops_bound_m": 9.0, "latency_bound_ms": 1.13, "expected_params_m": 0.19,
               "expected_macs_m": 8.5, "expected_latency_ms": 0.89, "exact_params_m": 0.2, "exact_macs_m": 8.9}
    check = {"target": {"name": "cpu"}, "latency": {"p50_ms": 1.46, "p90_ms": 5.55},
             "lines": [{"key": "max_params_m", "measured": 0.2}, {"key": "max_macs_m", "measured": 8.93},
                       {"key": "max_latency_ms", "measured": 5.55}]}
    header, rows = search_table(summary, check)
    assert header[-1] == "latency (ms)"
    assert rows[-1][0] == "measured on cpu (latency p50)" and rows[-1][-1] == "1.46"
