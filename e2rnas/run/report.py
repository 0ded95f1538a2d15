"""``report.md`` and a self-contained ``report.html`` for a pipeline run directory, rebuilt from its files.

Sections: provenance (date, version, git SHA, command, machine), the budget check, a paper-style table (size in
MB = 10^6 bytes, accuracy, params, MACs, PGD accuracy, OoD AUPR, latency per target and format), warnings (search
collapse, margins within the measurement's noise, INT8 slower than fp32, anything skipped), plots (objectives, gamma
weights and costs against L, F, T over the search, alpha heat maps, the two cells as graphs, latency per format and
batch size) and the exact commands and versions that produced it.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from e2rnas._io import atomic_write_text, read_jsonl
from e2rnas._provenance import describe, provenance
from e2rnas.errors import E2RNASError
from e2rnas.run.report_quality import baseline_section, plot_steering, steering_summary_line

Z95 = 1.959964  # two-sided 95% normal quantile


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{float(x):.{digits}g}" if isinstance(x, int | float) else str(x)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def search_figure(metrics: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> Any:
    """Objectives and gamma weights over the search (top); the softmax estimate of params, MACs (and latency)
    against the bounds L, F (and T) below; dotted vertical lines where an epoch begins. None without steps."""
    all_steps = [m for m in metrics if m.get("type") == "step"]
    steps = [(i, m) for i, m in enumerate(all_steps, 1) if m.get("objectives")]  # warm-up steps have none
    if not steps:
        return None
    summary = summary or {}
    plt = _plt()
    costs = [("expected_params_m", "params (M)", "params_bound_m", "L"), ("expected_macs_m", "MACs (M)",
                                                                         "flops_bound_m", "F")]
    if any("expected_latency_ms" in s for s in all_steps):
        costs.append(("expected_latency_ms", "latency (ms)", "latency_bound_ms", "T"))
    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, 6)
    ax1, ax2 = fig.add_subplot(grid[0, :3]), fig.add_subplot(grid[0, 3:])
    width = 6 // len(costs)
    cost_axes = [fig.add_subplot(grid[1, i * width:(i + 1) * width]) for i in range(len(costs))]
    x = [i for i, _ in steps]
    for name in steps[0][1]["objectives"]:
        ax1.plot(x, [s["objectives"][name] for _, s in steps], label=name)
        ax2.plot(x, [s["gammas"][name] for _, s in steps], label=name)
    ax1.set(title="Objective values", xlabel="step", yscale="log")
    ax2.set(title="MGDA weights (gamma)", xlabel="step", ylim=(0, 1))
    for ax, (key, what, bound_key, letter) in zip(cost_axes, costs, strict=True):
        pts = [(i, s[key]) for i, s in enumerate(all_steps, 1) if s.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="softmax estimate")
        if summary.get(bound_key) is not None:
            ax.axhline(summary[bound_key], color="tab:red", ls="--", gid=f"bound-{letter}",
                       label=f"{letter} = {_num(summary[bound_key])}")
        ax.set(title=f"{what} vs bound {letter}", xlabel="step")
    epochs = [m.get("epoch") for m in all_steps]
    starts = [i for i in range(2, len(epochs) + 1) if epochs[i - 1] != epochs[i - 2]]
    for ax in (ax1, ax2, *cost_axes):
        for i in starts:
            ax.axvline(i - 0.5, color="gray", ls=":", lw=0.8, gid="epoch")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_search(metrics: list[dict[str, Any]], path: Path, summary: dict[str, Any] | None = None) -> bool:
    fig = search_figure(metrics, summary)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True


def plot_alphas(alphas: list[dict[str, Any]], path: Path) -> bool:
    if not alphas:
        return False
    import torch

    from e2rnas.space.ops import PRIMITIVES

    last = alphas[-1]
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, kind in zip(axes, ("alpha_normal", "alpha_reduce"), strict=True):
        w = torch.softmax(torch.tensor(last[kind]), dim=-1).numpy()
        im = ax.imshow(w, cmap="viridis", aspect="auto")
        ax.set(title=f"softmax({kind}) after epoch {last['epoch']}", ylabel="edge", xticks=range(len(PRIMITIVES)))
        ax.set_xticklabels(PRIMITIVES, rotation=45, ha="right", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_cells(genotype: dict[str, Any], path: Path) -> str:
    """The normal and reduction cells as graphs (graphviz, else networkx's layout, else fixed columns); returns
    which drew them."""
    from e2rnas.run.cell_graph import draw_cells

    return draw_cells(genotype, path)


def plot_latency(bench: dict[str, Any], path: Path) -> bool:
    rows = [r for r in bench.get("rows", []) if r.get("latency")]
    if not rows:
        return False
    plt = _plt()
    batches = sorted({int(b) for r in rows for b in r["latency"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 3.4), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        names = [f"{r['format']}\n{Path(r['artifact']).name}" for r in rows]
        p50 = [r["latency"].get(str(b), {}).get("p50_ms", 0) for r in rows]
        p95 = [r["latency"].get(str(b), {}).get("p95_ms", 0) for r in rows]
        xs = range(len(rows))
        ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
        ax.bar([x + 0.2 for x in xs], p95, width=0.4, label="p95")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, fontsize=7)
        ax.set(title=f"latency, batch {b} ({bench.get('target', {}).get('name', '?')})", ylabel="ms")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- tables --------------------------------------------------------------------------------------------------------
def check_table(check: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    header = ["budget line", "limit", "search bound", "softmax estimate", "exact (genotype)", "measured", "margin",
              "result"]
    rows = [[ln.get("what", ln.get("key")), f"{ln.get('op', '')} {_num(ln.get('limit'))}", _num(ln.get("bound")),
             _num(ln.get("estimate")), _num(ln.get("exact")), _num(ln.get("measured")), _num(ln.get("margin")),
             _verdict(ln)] for ln in check.get("lines", [])]
    return header, rows


def _verdict(line: dict[str, Any]) -> str:
    if line.get("decides", True):
        return "pass" if line.get("passed") else "FAIL"
    return "info (within T)" if line.get("passed") else "info (over T)"



def search_table(summary: dict[str, Any], check: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """L, F (and T) against the softmax estimate, each derivation rule's exact cost and what was measured."""
    lat = "latency_bound_ms" in summary
    header = ["", "params (M)", "MACs (M)"] + (["latency (ms)"] if lat else [])
    rows = [["bound (L, F" + (", T)" if lat else ")"), _num(summary["params_bound_m"]),
             _num(summary["flops_bound_m"])] + ([_num(summary["latency_bound_ms"])] if lat else []),
            ["softmax estimate at the final alphas", _num(summary["expected_params_m"]),
             _num(summary["expected_macs_m"])] + ([_num(summary.get("expected_latency_ms"))] if lat else [])]
    handed = summary.get("derive", "darts")
    for rule, d in (summary.get("derivations") or {}).items():
        name = f"exact, {rule} rule" + (" (handed on)" if rule == handed else "")
        rows.append([name, _num(d.get("params")), _num(d.get("macs"))] + ([_num(d.get("latency"))] if lat else []))
    if not summary.get("derivations"):
        rows.append(["exact cost of the genotype (deploy network)", _num(summary["exact_params_m"]),
                     _num(summary["exact_macs_m"])] + (["-"] if lat else []))
    measured = {ln.get("key"): ln.get("measured") for ln in (check or {}).get("lines", [])}
    if check:
        rows.append([f"measured on {check.get('target', {}).get('name', '?')}", _num(measured.get("max_params_m")),
                     _num(measured.get("max_macs_m"))] + ([_num(measured.get("max_latency_ms"))] if lat else []))
    return header, rows


def binomial_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` measured on ``n`` images (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def margin_warnings(check: dict[str, Any] | None, evaluation: dict[str, Any] | None = None) -> list[str]:
    """Budget lines whose pass/fail another test sample could flip: an accuracy limit inside the 95% binomial
    interval of the measured accuracy, or a latency limit within one standard deviation of the per-call times."""
    if not check:
        return []
    n = (check.get("data") or {}).get("test_images") or ((evaluation or {}).get("samples") or {}).get("test")
    out = []
    for ln in check.get("lines", []):
        value, limit = ln.get("measured"), ln.get("limit")
        if value is None or limit is None:
            continue
        if ln.get("key") in ("min_accuracy", "min_pgd_accuracy") and n:
            lo, hi = binomial_interval(float(value), int(n))
            if lo <= float(limit) <= hi:
                out.append(f"{ln.get('what', ln['key'])} {_pct(value)}% vs limit {_pct(limit)}%: the margin is inside "
                           f"the 95% binomial interval [{_pct(lo)}, {_pct(hi)}]% of {n} test images, so another "
                           "test sample could flip the result (evaluate on more images)")
        elif ln.get("key") == "max_latency_ms":
            std = (check.get("latency") or {}).get("std_ms")
            if std and abs(float(limit) - float(value)) < float(std):
                out.append(f"{ln.get('what', ln['key'])} {_num(value)} ms vs limit {_num(limit)} ms: the margin is "
                           f"smaller than the timings' standard deviation ({_num(std)} ms)")
    return out


def skipped_warnings(bench: dict[str, Any] | None, pipeline: dict[str, Any] | None) -> list[str]:
    """Artifacts that failed or batch sizes skipped in the bench, and pipeline stages skipped or failed for another
    reason than being complete."""
    out = []
    for r in (bench or {}).get("rows", []):
        name = Path(r.get("artifact", "?")).name
        if r.get("status") not in (None, "ok"):
            out.append(f"bench: {name} not measured: {r.get('error')}")
        out += [f"bench: {name}: {w}" for w in r.get("warnings") or [] if w]
        out += [f"bench: {name} batch {b} skipped: {s['skipped']}" for b, s in (r.get("latency") or {}).items()
                if isinstance(s, dict) and s.get("skipped")]
    for s in (pipeline or {}).get("stages", []):
        status = str(s.get("status", ""))
        if status.startswith("failed") or (status.startswith("skipped") and "complete" not in status
                                           and "up to date" not in status):
            out.append(f"pipeline: stage {s.get('stage')} {status}")
    return out


def report_warnings(summary: dict[str, Any] | None, check: dict[str, Any] | None,
                    bench: dict[str, Any] | None = None, *, evaluation: dict[str, Any] | None = None,
                    pipeline: dict[str, Any] | None = None) -> list[str]:
    """The search's collapse/indecision warnings, the bench's notes (INT8 refused or slower than fp32), the
    check's, budget margins within the measurement's noise, and whatever was skipped."""
    out = [f"search: {w}" for w in (summary or {}).get("warnings", [])]
    out += [f"bench: {n}" for n in (bench or {}).get("notes", []) if n]
    out += [f"check: {n}" for n in (check or {}).get("notes", []) if n]
    out += [f"check: {w}" for w in (check or {}).get("warnings", []) if w]
    out += [f"check: {w}" for w in margin_warnings(check, evaluation)]
    out += skipped_warnings(bench, pipeline)
    return list(dict.fromkeys(out))


def _size_mb(path: Any) -> str:
    """File size in MB (10^6 bytes), the one size unit of bench, check and the report."""
    try:
        return f"{Path(path).stat().st_size / 1e6:.3f}"
    except (OSError, TypeError):
        return "-"


def main_table(evaluation: dict[str, Any] | None, bench: dict[str, Any] | None,
               model_path: Path | None = None) -> tuple[list[str], list[list[Any]]]:
    """Paper-style rows: the torch model from eval.json, then every benchmarked artifact (size in MB = 10^6 B)."""
    header = ["model / artifact", "target", "size MB", "test acc %", "params (M)", "MACs (M)", "PGD acc %",
              "OoD AUPR %", "p50 ms (b=1)", "p95 ms (b=1)", "throughput img/s (largest batch)"]
    rows = []
    cost = (evaluation or {}).get("cost", {})
    params_m = cost["params"] / 1e6 if "params" in cost else None
    macs_m = cost["macs"] / 1e6 if "macs" in cost else None
    if evaluation:
        rows.append(["model.pt (e2rnas eval)", "-", _size_mb(model_path), _pct(evaluation.get("clean_acc")),
                     _num(params_m), _num(macs_m),
                     _pct(evaluation.get("pgd_acc")), _pct((evaluation.get("ood") or {}).get("aupr_out")),
                     "-", "-", "-"])
    for r in (bench or {}).get("rows", []):
        m, lat = r.get("metrics") or {}, r.get("latency") or {}
        b1 = lat.get("1", {})
        big = lat[max(lat, key=int)] if lat else {}
        size = f"{r['size_mb']:.3f}" if r.get("size_mb") is not None else _size_mb(r.get("artifact"))
        rows.append([f"{r['format']} ({Path(r['artifact']).name})", bench.get("target", {}).get("name", "-"), size,
                     _pct(m.get("accuracy")), _num(params_m), _num(macs_m), _pct(m.get("pgd_accuracy")),
                     _pct(m.get("aupr_out")),
                     _num(b1.get("p50_ms")), _num(b1.get("p95_ms")), _num(big.get("throughput"))])
    return header, rows


def provenance_section(pipeline: dict[str, Any] | None, summary: dict[str, Any] | None,
                       train_summary: dict[str, Any] | None) -> list[str]:
    """Date, version, git SHA, command and machine of the run (the first stage that recorded them), and one line
    per stage that did, so that a search and a retrain made by different code or commands show it."""
    recorded = [(name, rec["provenance"]) for name, rec in (("run", pipeline), ("search", summary),
                                                            ("train", train_summary)) if rec and rec.get("provenance")]
    if recorded:
        source, head = recorded[0]
        note = f"recorded by the {source}" + (" stage" if source != "run" else "")
    else:
        source, head, note = "report", provenance(gpu=False), "of this report (no stage recorded its own)"
    md = ["## Provenance", "", f"Provenance {note}.", "", _md_table(["", ""], [[k, f"`{v}`" if k == "command" else v]
                                                                             for k, v in describe(head)]), ""]
    if len(recorded) > 1:
        md += [_md_table(["stage", "date (UTC)", "e2rnas", "git SHA", "command"], [
            [name, p.get("date"), p.get("e2rnas"), (p.get("git_sha") or "-")[:12], f"`{p.get('command')}`"]
            for name, p in recorded]), ""]
    return md


def build_report(run_dir: str | Path) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the PNG plots (under ``report/``) from the run's files."""
    run = Path(run_dir)
    if not run.is_dir():
        raise E2RNASError(f"run directory not found: {run}")
    search_dir, fig_dir = run / "search", run / "report"
    fig_dir.mkdir(exist_ok=True)
    summary = _load(search_dir / "summary.json")
    evaluation = _load(run / "eval" / "eval.json")
    bench = _load(run / "bench" / "bench.json")
    check = _load(run / "check" / "check.json")
    pipeline = _load(run / "pipeline.json")
    train_summary = _load(run / "train" / "summary.json")
    if not any((summary, evaluation, bench, check)):
        raise E2RNASError(f"{run} holds no search/, eval/, bench/ or check/ results to report on (run `e2rnas run`)")
    genotype = (summary or {}).get("genotype") or (train_summary or {}).get("genotype")
    model_path = Path((train_summary or {}).get("model") or run / "train" / "model.pt")
    plots: list[tuple[str, str]] = []
    search_metrics = read_jsonl(search_dir / "metrics.jsonl")
    if plot_search(search_metrics, fig_dir / "search.png", summary):
        plots.append(("Objectives, MGDA weights and costs against the bounds over the search", "report/search.png"))
    if plot_steering(search_metrics, fig_dir / "steering.png"):
        plots.append(("What steered the search: gradient norms, MGDA weights, step size and entropy",
                      "report/steering.png"))
    if plot_alphas(read_jsonl(search_dir / "alphas.jsonl"), fig_dir / "alphas.png"):
        plots.append(("Architecture weights (softmax of alpha) per cell type", "report/alphas.png"))
    if genotype and (drawn := plot_cells(genotype, fig_dir / "cells.png")):
        plots.append((f"The searched cells (drawn by {drawn})", "report/cells.png"))
    if bench and plot_latency(bench, fig_dir / "latency.png"):
        plots.append(("Latency per format and batch size", "report/latency.png"))

    md: list[str] = [f"# E2RNAS run report: `{run.name}`", "", *provenance_section(pipeline, summary, train_summary)]
    if check:
        verdict = "all budget lines pass" if check.get("passed") else "the budget is NOT met"
        md += [f"## Budget check on `{check.get('target', {}).get('name', '?')}`: {verdict}", "",
               _md_table(*check_table(check)), "",
               f"Pass/fail: each measured value against the limit of `{check.get('budget_file', 'the budget file')}`."
               " The search bounds (L, F, T) are shown for comparison and never decide; T was built from p50 "
               "latencies, so it is compared with the measured p50.", ""]
    md += ["## Accuracy, size, robustness and latency", "", _md_table(*main_table(evaluation, bench, model_path)), ""]
    if evaluation:
        proto = evaluation.get("protocol", {})
        md += [f"PGD: L-inf eps {_num(proto.get('eps'))}, {proto.get('steps')} steps, pixel space [0, 1]; OoD AUPR "
               f"with OoD as the positive class (score -MSP); data {evaluation.get('datasets', {})}, samples "
               f"{evaluation.get('samples', {})}. Params exclude the auxiliary head; MACs counted with "
               f"FlopCounterMode (FLOPs = 2 x MACs). Accuracy of exported artifacts is re-measured on the artifact; "
               f"their PGD examples are transferred from the torch model.", ""]
    warnings = report_warnings(summary, check, bench, evaluation=evaluation, pipeline=pipeline)
    if warnings:
        md += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    if summary:
        md += ["## Search", "", _md_table(*search_table(summary, check)), "",
               f"Deploy network: {summary.get('deploy_shape')}; objectives {summary.get('objectives')}, "
               f"weighting {summary.get('weighting')}, method {summary.get('method')}; genotype rule handed on: "
               f"**{summary.get('derive', 'darts')}** (derivation gap {_num(summary.get('derivation_gap'))} in "
               f"summed log strength; docs/derivation.md).", ""]
        if summary.get("genotype_text"):
            md += [f"Handed-over genotype: {summary['genotype_text']}; final mean normalised entropy of softmax(alpha) "
                   f"{_num(summary.get('final_entropy'), 3)} (1 = uniform).", ""]
        if line := steering_summary_line(search_metrics):
            md += [f"What steered the architecture: {line} (docs/cost-forms.md).", ""]
    md += baseline_section(_load(run / "baseline" / "baseline.json"))
    for title, rel in plots:
        md += [f"### {title}", "", f"![{title}]({rel})", ""]
    if pipeline:
        md += ["## Commands", "", _md_table(["stage", "status", "seconds", "command"], [
            [s["stage"], s.get("status", ""), _num(s.get("seconds"), 3), f"`{s['command']}`"]
            for s in pipeline.get("stages", [])]), ""]
    env = (bench or check or {}).get("environment")
    if env:
        md += ["## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    text = "\n".join(md)
    atomic_write_text(run / "report.md", text)
    atomic_write_text(run / "report.html", _html(text, run))
    return {"md": run / "report.md", "html": run / "report.html"}


def _html(markdown: str, run: Path) -> str:
    """``markdown`` rendered by markdown-it-py (CommonMark and tables, raw HTML escaped), PNGs inlined so that the
    page is self-contained."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            src = child.attrGet("src") if child.type == "image" else None
            if src and not str(src).startswith("data:") and (run / str(src)).is_file():
                data = base64.b64encode((run / str(src)).read_bytes()).decode()
                child.attrSet("src", f"data:image/png;base64,{data}")
    body = md.renderer.render(tokens, md.options, {})
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>E2RNAS report</title><style>{style}</style>" \
           f"</head><body>{body}</body></html>\n"
