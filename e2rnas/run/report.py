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
from e2rnas.run.report_quality import baseline_section, mark_steps, plot_steering, steering_summary_line, warmup_steps

Z95 = 1.959964  # two-sided 95% normal quantile


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"


def _num(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    return f"{float(x):.{digits}g}" if isinstance(x, int | float) else str(x)


def _duration(seconds: Any) -> str:
    """``3289.4`` -> ``54 min 49 s``: wall times as a person reads them."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    minutes, sec = divmod(round(s), 60)
    return f"{minutes} min {sec} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min {sec} s"


def _as_text(value: Any) -> str:
    """A value as a person writes it ('digits, digits-ood', 'on'), never a Python repr."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return ", ".join(_as_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_as_text(v)}" for k, v in value.items()) or "none"
    return str(value)


def _data_text(evaluation: dict[str, Any]) -> str:
    """``{'test': 'digits', 'ood': 'svhn'}`` and ``{'test': 512, 'ood': 256}`` -> 'test digits (512 images), OoD
    svhn (256 images)'."""
    datasets, samples = evaluation.get("datasets") or {}, evaluation.get("samples") or {}
    parts = []
    for key, label in (("test", "test"), ("ood", "OoD")):
        if datasets.get(key) or samples.get(key):
            n = f" ({samples[key]} images)" if samples.get(key) else ""
            parts.append(f"{label} {datasets.get(key) or '-'}{n}")
    return ", ".join(parts) or "-"


def _shape_text(shape: Any) -> str:
    if not isinstance(shape, dict):
        return _as_text(shape)
    from e2rnas.space.cost import DeployShape
    from e2rnas.space.latency_table import describe_shape

    try:
        return describe_shape(DeployShape(**shape))
    except TypeError:  # a summary from another version: its keys as written
        return _as_text(shape)


def _numeric(cell: Any) -> bool:
    text = str(cell).strip().rstrip("%").strip()
    try:
        float(text)
    except ValueError:
        return text == "-"
    return True


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; columns of numbers are right-aligned, text columns left."""
    right = [bool(rows) and all(_numeric(r[i]) for r in rows) and not all(str(r[i]) == "-" for r in rows)
             for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if r else "---|" for r in right)]
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
    against the bounds L, F (and T) below. Steps are counted from the search's first (``mark_steps``: the warm-up
    shaded, epochs marked). None without bi-level steps."""
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
    ax1.set(title="Objective values", xlabel="step (from the search's first)", yscale="log")
    ax2.set(title="MGDA weights (gamma)", xlabel="step (from the search's first)", ylim=(0, 1))
    for ax, (key, what, bound_key, letter) in zip(cost_axes, costs, strict=True):
        pts = [(i, s[key]) for i, s in enumerate(all_steps, 1) if s.get(key) is not None and s[key] == s[key]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label="softmax estimate")
        if summary.get(bound_key) is not None:
            ax.axhline(summary[bound_key], color="tab:red", ls="--", gid=f"bound-{letter}",
                       label=f"{letter} = {_num(summary[bound_key])}")
        ax.set(title=f"{what} vs bound {letter}", xlabel="step (from the search's first)")
    epochs, warm = [m.get("epoch") for m in all_steps], warmup_steps(all_steps)
    for ax in (ax1, ax2, *cost_axes):
        mark_steps(ax, epochs, warm)
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


def latency_figure(bench: dict[str, Any]) -> Any:
    """p50 and p95 per artifact, one panel per batch size, on a log scale (torch eager can be 100x slower than
    ONNX Runtime, which a linear scale would flatten to nothing), each bar labelled with its value. None without
    latencies."""
    rows = [r for r in bench.get("rows", []) if r.get("latency")]
    batches = sorted({int(b) for r in rows for b, v in r["latency"].items() if (v or {}).get("p50_ms")})
    if not batches:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(batches), figsize=(5.5 * len(batches), 3.8), squeeze=False)
    for ax, b in zip(axes[0], batches, strict=True):
        names = [f"{r['format']}\n{Path(r['artifact']).name}" for r in rows]
        xs = range(len(rows))
        for shift, stat in ((-0.2, "p50_ms"), (0.2, "p95_ms")):
            values = [(r["latency"].get(str(b)) or {}).get(stat) for r in rows]
            bars = ax.bar([x + shift for x in xs], [v or float("nan") for v in values], width=0.4,
                          label=stat.split("_")[0])
            ax.bar_label(bars, labels=[(f"{v:.3g}" if v < 1000 else f"{v:.0f}") if v else "" for v in values],
                         fontsize=7, padding=2)  # 3248, not 3.25e+03
        ax.set_xticks(list(xs))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_yscale("log")
        ax.margins(y=0.25)
        ax.set(title=f"latency, batch {b} ({bench.get('target', {}).get('name', '?')})", ylabel="ms (log scale)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cells_text(genotype: dict[str, Any]) -> str:
    """The genotype in the drawing's names, as a block of text below the picture."""
    from e2rnas.run.cell_graph import KINDS, cell_text

    return "\n".join(["```", *[f"{kind} cell:\n  " + "\n  ".join(cell_text(genotype, kind)) for kind in KINDS],
                      "```", ""])


def plot_latency(bench: dict[str, Any], path: Path) -> bool:
    fig = latency_figure(bench)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return True


# -- tables --------------------------------------------------------------------------------------------------------
def budget_verdict(check: dict[str, Any], *, code: bool = False) -> str:
    """The pass/fail line, the same in the report's heading and after every `e2rnas run` (also one whose stages
    were all complete)."""
    target = check.get("target", {}).get("name", "?")
    lines = [ln for ln in check.get("lines", []) if ln.get("decides", True)]  # info rows (T) never decide
    failed = [ln.get("what", ln.get("key")) for ln in lines if ln.get("passed") is False]
    verdict = "all budget lines pass" if check.get("passed") else (
        f"the budget is NOT met ({len(failed)} of {len(lines)} lines fail: {'; '.join(map(str, failed))})"
        if failed else "the budget is NOT met")
    return f"Budget check on {f'`{target}`' if code else target}: {verdict}"


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
        p50 = (check.get("latency") or {}).get("p50_ms")  # T and the estimates are p50s: the same statistic here
        rows.append([f"measured on {check.get('target', {}).get('name', '?')}" + (" (latency p50)" if lat else ""),
                     _num(measured.get("max_params_m")), _num(measured.get("max_macs_m"))]
                    + ([_num(p50)] if lat else []))
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
    md = ["## Provenance", "", f"Provenance {note}.", "",
          *[f"- **{k}**: " + (f"`{v}`" if k == "command" else str(v)) for k, v in describe(head)], ""]
    last = (pipeline or {}).get("last_invocation") or {}
    if last and not last.get("ran") and last.get("command") != head.get("command"):
        md += [f"Last invoked on {last.get('date')} as `{last.get('command')}`: every stage was already complete, "
               "so nothing above changed; the report was rebuilt from the files.", ""]
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
    summary = _load(search_dir / "summary.json")
    evaluation = _load(run / "eval" / "eval.json")
    bench = _load(run / "bench" / "bench.json")
    check = _load(run / "check" / "check.json")
    pipeline = _load(run / "pipeline.json")
    train_summary = _load(run / "train" / "summary.json")
    if not any((summary, evaluation, bench, check)):
        raise E2RNASError(f"{run} is not a run made by `e2rnas run` (no search/, eval/, bench/ or check/ results to "
                          "report on); give a run directory")
    fig_dir.mkdir(exist_ok=True)  # only once there is something to report: a wrong folder is left as it was
    genotype = (summary or {}).get("genotype") or (train_summary or {}).get("genotype")
    model_path = Path((train_summary or {}).get("model") or run / "train" / "model.pt")
    plots: list[tuple[str, ...]] = []  # (title, file[, text shown below it])
    search_metrics = read_jsonl(search_dir / "metrics.jsonl")
    if plot_search(search_metrics, fig_dir / "search.png", summary):
        plots.append(("Objectives, MGDA weights and costs against the bounds over the search", "report/search.png"))
    if plot_steering(search_metrics, fig_dir / "steering.png"):
        plots.append(("What steered the search: gradient norms, MGDA weights, step size and entropy",
                      "report/steering.png"))
    if plot_alphas(read_jsonl(search_dir / "alphas.jsonl"), fig_dir / "alphas.png"):
        plots.append(("Architecture weights (softmax of alpha) per cell type", "report/alphas.png"))
    if genotype and (drawn := plot_cells(genotype, fig_dir / "cells.png")):
        plots.append((f"The searched cells (drawn by {drawn})", "report/cells.png", cells_text(genotype)))
    if bench and plot_latency(bench, fig_dir / "latency.png"):
        plots.append(("Latency per format and batch size", "report/latency.png"))

    md: list[str] = [f"# E2RNAS run report: `{run.name}`", "", *provenance_section(pipeline, summary, train_summary)]
    if check:
        md += [f"## {budget_verdict(check, code=True)}", "",
               _md_table(*check_table(check)), "",
               f"Pass/fail: each measured value against the limit of `{check.get('budget_file', 'the budget file')}`."
               " The search bounds (L, F, T) are shown for comparison and never decide; T was built from p50 "
               "latencies, so it is compared with the measured p50.", ""]
    md += ["## Accuracy, size, robustness and latency", "", _md_table(*main_table(evaluation, bench, model_path)), ""]
    if evaluation:
        proto = evaluation.get("protocol", {})
        md += [f"PGD: L-inf eps {_num(proto.get('eps'))}, {proto.get('steps')} steps, pixel space [0, 1]; OoD AUPR "
               f"with OoD as the positive class (score -MSP); data: {_data_text(evaluation)}. Params exclude the "
               "auxiliary head; MACs counted with FlopCounterMode (FLOPs = 2 x MACs). Accuracy of exported artifacts "
               "is re-measured on the artifact; their PGD examples are transferred from the torch model.", ""]
    warnings = report_warnings(summary, check, bench, evaluation=evaluation, pipeline=pipeline)
    if warnings:
        md += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    if summary:
        md += ["## Search", "", _md_table(*search_table(summary, check)), "",
               f"Deploy network: {_shape_text(summary.get('deploy_shape'))}; objectives "
               f"{_as_text(summary.get('objectives'))}, weighting {summary.get('weighting')}, method "
               f"{summary.get('method')}; genotype rule handed on: "
               f"**{summary.get('derive', 'darts')}** (derivation gap {_num(summary.get('derivation_gap'))} in "
               f"summed log strength; docs/derivation.md).", ""]
        if summary.get("genotype_text"):
            md += [f"Handed-over genotype: {summary['genotype_text']}; final mean normalised entropy of softmax(alpha) "
                   f"{_num(summary.get('final_entropy'), 3)} (1 = uniform).", ""]
        if line := steering_summary_line(search_metrics):
            md += [f"What steered the architecture: {line} (docs/cost-forms.md).", ""]
    md += baseline_section(_load(run / "baseline" / "baseline.json"))
    for title, rel, *text in plots:
        md += [f"### {title}", "", f"![{title}]({rel})", "", *text]
    if pipeline:
        md += ["## Commands", "", _md_table(["stage", "status", "time", "command"], [
            [s["stage"], s.get("status", ""), _duration(s.get("seconds")), f"`{s['command']}`"]
            for s in pipeline.get("stages", [])]), ""]
    env = (bench or check or {}).get("environment")
    if env:
        md += ["## Environment", "", "```", json.dumps(env, indent=1), "```", ""]
    text = "\n".join(md)
    atomic_write_text(run / "report.md", text)
    atomic_write_text(run / "report.html", _html(text, run))
    return {"md": run / "report.md", "html": run / "report.html"}


def _code_words(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
    """Inline code with each space-separated word unbreakable: a command wraps between its words, never inside a
    flag (``--out``) or a path (a browser would break after any hyphen)."""
    from markdown_it.common.utils import escapeHtml

    words = tokens[idx].content.split(" ")
    if len(words) == 1:
        return f"<code>{escapeHtml(tokens[idx].content)}</code>"
    return "<code>" + " ".join(f'<span class="w">{escapeHtml(w)}</span>' for w in words) + "</code>"


def _html(markdown: str, run: Path) -> str:
    """``markdown`` rendered by markdown-it-py (CommonMark and tables, raw HTML escaped), PNGs inlined so that the
    page is self-contained."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.add_render_rule("code_inline", _code_words)
    tokens = md.parse(markdown)
    for token in tokens:
        for child in token.children or []:
            src = child.attrGet("src") if child.type == "image" else None
            if src and not str(src).startswith("data:") and (run / str(src)).is_file():
                data = base64.b64encode((run / str(src)).read_bytes()).decode()
                child.attrSet("src", f"data:image/png;base64,{data}")
    body = md.renderer.render(tokens, md.options, {})
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}img{max-width:100%}"
             "code .w{white-space:nowrap}pre{background:#f6f6f6;padding:6px}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>E2RNAS report</title><style>{style}</style>" \
           f"</head><body>{body}</body></html>\n"
