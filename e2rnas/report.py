"""``report.md`` and a self-contained ``report.html`` for a pipeline run directory, rebuilt from its files.

Sections: the budget check, a paper-style table (accuracy, params, MACs, PGD accuracy, OoD AUPR, latency per
target and format), plots (objectives and gamma weights over the search, alpha heat maps, the two cells as graphs,
latency per format and batch size) and the exact commands and versions that produced it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from e2rnas._io import atomic_write_text, read_jsonl
from e2rnas.errors import E2RNASError


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
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_search(metrics: list[dict[str, Any]], path: Path) -> bool:
    all_steps = [m for m in metrics if m.get("type") == "step"]
    steps = [(i, m) for i, m in enumerate(all_steps, 1) if m.get("objectives")]  # warm-up steps have none
    if not steps:
        return False
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.6))
    x = [i for i, _ in steps]
    for name in steps[0][1]["objectives"]:
        ax1.plot(x, [s["objectives"][name] for _, s in steps], label=name)
        ax2.plot(x, [s["gammas"][name] for _, s in steps], label=name)
    ax1.set(title="Objective values", xlabel="step", yscale="log")
    ax2.set(title="MGDA weights (gamma)", xlabel="step", ylim=(0, 1))
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_alphas(alphas: list[dict[str, Any]], path: Path) -> bool:
    if not alphas:
        return False
    import torch

    from e2rnas.ops import PRIMITIVES

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


def plot_cells(genotype: dict[str, Any], path: Path) -> bool:
    """The normal and reduction cells as graphs: inputs c_{k-2}, c_{k-1}, nodes 0-3, output c_k."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, kind in zip(axes, ("normal", "reduce"), strict=True):
        pos = {0: (0.0, 0.75), 1: (0.0, 0.25), 2: (1.0, 0.85), 3: (2.0, 0.6), 4: (3.0, 0.4), 5: (4.0, 0.15),
               "out": (5.0, 0.5)}
        labels = {0: "c_{k-2}", 1: "c_{k-1}", 2: "0", 3: "1", 4: "2", 5: "3", "out": "c_{k}"}
        for k, (op, src) in enumerate(genotype[kind]):
            dst = 2 + k // 2
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops=dict(arrowstyle="->", color="tab:blue", connectionstyle="arc3,rad=0.12"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.03, op, fontsize=7, ha="center", color="darkred")
        for node in genotype[f"{kind}_concat"]:
            (x0, y0), (x1, y1) = pos[node], pos["out"]
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops=dict(arrowstyle="->", color="gray", ls=":"))
        for node, (x, y) in pos.items():
            color = "lightgreen" if node in (0, 1) else ("khaki" if node == "out" else "lightblue")
            ax.text(x, y, labels[node], ha="center", va="center", fontsize=9,
                    bbox=dict(boxstyle="round", fc=color, ec="black"))
        ax.set(title=f"{kind} cell", xlim=(-0.5, 5.5), ylim=(0, 1))
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


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
             "pass" if ln.get("passed") else "FAIL"] for ln in check.get("lines", [])]
    return header, rows


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


def report_warnings(summary: dict[str, Any] | None, check: dict[str, Any] | None,
                    bench: dict[str, Any] | None = None) -> list[str]:
    """The search's collapse/indecision warnings, the bench's notes (INT8 refused or slower) and the check's."""
    out = [f"search: {w}" for w in (summary or {}).get("warnings", [])]
    out += [f"bench: {n}" for n in (bench or {}).get("notes", []) if n]
    out += [f"check: {n}" for n in (check or {}).get("notes", []) if n]
    out += [f"check: {w}" for w in (check or {}).get("warnings", []) if w]
    return out


def main_table(evaluation: dict[str, Any] | None, bench: dict[str, Any] | None) -> tuple[list[str], list[list[Any]]]:
    """Paper-style rows: the torch model from eval.json, then every benchmarked artifact."""
    header = ["model / artifact", "target", "test acc %", "params (M)", "MACs (M)", "PGD acc %", "OoD AUPR %",
              "p50 ms (b=1)", "p95 ms (b=1)", "throughput img/s (largest batch)"]
    rows = []
    cost = (evaluation or {}).get("cost", {})
    params_m = cost["params"] / 1e6 if "params" in cost else None
    macs_m = cost["macs"] / 1e6 if "macs" in cost else None
    if evaluation:
        rows.append(["model.pt (e2rnas eval)", "-", _pct(evaluation.get("clean_acc")), _num(params_m), _num(macs_m),
                     _pct(evaluation.get("pgd_acc")), _pct((evaluation.get("ood") or {}).get("aupr_out")),
                     "-", "-", "-"])
    for r in (bench or {}).get("rows", []):
        m, lat = r.get("metrics") or {}, r.get("latency") or {}
        b1 = lat.get("1", {})
        big = lat[max(lat, key=int)] if lat else {}
        rows.append([f"{r['format']} ({Path(r['artifact']).name})", bench.get("target", {}).get("name", "-"),
                     _pct(m.get("accuracy")), _num(params_m), _num(macs_m), _pct(m.get("pgd_accuracy")),
                     _pct(m.get("aupr_out")),
                     _num(b1.get("p50_ms")), _num(b1.get("p95_ms")), _num(big.get("throughput"))])
    return header, rows


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
    plots: list[tuple[str, str]] = []
    if plot_search(read_jsonl(search_dir / "metrics.jsonl"), fig_dir / "search.png"):
        plots.append(("Objectives and MGDA weights over the search", "report/search.png"))
    if plot_alphas(read_jsonl(search_dir / "alphas.jsonl"), fig_dir / "alphas.png"):
        plots.append(("Architecture weights (softmax of alpha) per cell type", "report/alphas.png"))
    if genotype and plot_cells(genotype, fig_dir / "cells.png"):
        plots.append(("The searched cells", "report/cells.png"))
    if bench and plot_latency(bench, fig_dir / "latency.png"):
        plots.append(("Latency per format and batch size", "report/latency.png"))

    md: list[str] = [f"# E2RNAS run report: `{run.name}`", ""]
    if check:
        verdict = "all budget lines pass" if check.get("passed") else "the budget is NOT met"
        md += [f"## Budget check on `{check.get('target', {}).get('name', '?')}`: {verdict}", "",
               _md_table(*check_table(check)), ""]
    md += ["## Accuracy, size, robustness and latency", "", _md_table(*main_table(evaluation, bench)), ""]
    if evaluation:
        proto = evaluation.get("protocol", {})
        md += [f"PGD: L-inf eps {_num(proto.get('eps'))}, {proto.get('steps')} steps, pixel space [0, 1]; OoD AUPR "
               f"with OoD as the positive class (score -MSP); data {evaluation.get('datasets', {})}, samples "
               f"{evaluation.get('samples', {})}. Params exclude the auxiliary head; MACs counted with "
               f"FlopCounterMode (FLOPs = 2 x MACs). Accuracy of exported artifacts is re-measured on the artifact; "
               f"their PGD examples are transferred from the torch model.", ""]
    warnings = report_warnings(summary, check, bench)
    if warnings:
        md += ["## Warnings", "", *[f"- {w}" for w in warnings], ""]
    if summary:
        md += ["## Search", "", _md_table(*search_table(summary, check)), "",
               f"Deploy network: {summary.get('deploy_shape')}; objectives {summary.get('objectives')}, "
               f"weighting {summary.get('weighting')}, method {summary.get('method')}; genotype rule handed on: "
               f"**{summary.get('derive', 'darts')}** (derivation gap {_num(summary.get('derivation_gap'))} in "
               f"summed log strength; docs/derivation.md).", ""]
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
    """A small Markdown-to-HTML pass for what ``build_report`` writes, with the PNGs inlined (self-contained)."""
    out, in_code, in_table = [], False, False
    for line in markdown.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            if not in_table:
                out.append("<table>")
                in_table = True
                out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cells) + "</tr>")
                continue
            out.append("<tr>" + "".join(f"<td>{html.escape(c).replace('`', '')}</td>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            rel = line[line.index("](") + 2:-1]
            data = base64.b64encode((run / rel).read_bytes()).decode()
            out.append(f'<img alt="{html.escape(rel)}" src="data:image/png;base64,{data}">')
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line[level:].strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>E2RNAS report</title><style>{style}</style>" \
           f"</head><body>{''.join(out)}</body></html>\n"
