"""The report's answers to "what steered the search?" and "did it pay off?": the steering plot and line from the
search's per-step diagnostics, and the searched network's ranks among the random baseline (``baseline.json``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from e2rnas.search.diagnostics import STEER_GAMMA, steering, steering_line


def mark_steps(ax: Any, epochs: list[Any], warm: int) -> None:
    """The step axis of a search plot: every step from 1 (1 = the search's first step, warm-up included), a shaded
    band over the ``warm`` warm-up steps (weights trained, alphas frozen: no objectives, no gamma) and a dotted line
    where each epoch begins."""
    ax.set_xlim(0.5, max(len(epochs), 1) + 0.5)
    if warm:
        ax.axvspan(0.5, warm + 0.5, color="0.88", zorder=0, gid="warm-up",
                   label=f"warm-up: weights only ({warm} steps)")
    for i in range(2, len(epochs) + 1):
        if epochs[i - 1] != epochs[i - 2]:
            ax.axvline(i - 0.5, color="gray", ls=":", lw=0.8, gid="epoch")


def warmup_steps(steps: list[dict[str, Any]]) -> int:
    """How many of the first steps are warm-up: those before the first with MGDA objectives."""
    return next((i for i, m in enumerate(steps) if m.get("objectives")), len(steps))


def plot_steering(metrics: list[dict[str, Any]], path: Path) -> bool:
    """|g_k| per objective, gamma per objective (stacked), the direction's norm and alpha's displacement, and the
    mean normalised entropy, at each bi-level step, on the search plot's step axis (``mark_steps``). False when no
    step has diagnostics (old runs, warm-up only)."""
    all_steps = [m for m in metrics if m.get("type") == "step"]
    indexed = [(i, m) for i, m in enumerate(all_steps, 1) if m.get("diagnostics")]
    if not indexed:
        return False
    x, steps = [i for i, _ in indexed], [m for _, m in indexed]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(steps[0]["gammas"])
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    for name in names:
        axes[0].plot(x, [max(s["diagnostics"]["grad_norms"][name], 1e-12) for s in steps], label=name)
    axes[0].set(title="|g_k| (alpha-gradient norm)", yscale="log")
    axes[1].stackplot(x, *[[s["gammas"][n] for s in steps] for n in names], labels=names)
    axes[1].axhline(STEER_GAMMA, color="black", lw=0.6, ls=":")
    axes[1].set(title="MGDA weights gamma (stacked)", ylim=(0, 1))
    axes[2].plot(x, [s["diagnostics"]["direction_norm"] for s in steps], label="|sum_k w_k g_k|")
    axes[2].plot(x, [s["diagnostics"]["alpha_displacement"] for s in steps], label="|alpha step|")
    axes[2].set(title="Direction and alpha displacement", yscale="log")
    axes[3].plot(x, [s["mean_normalized_entropy"] for s in steps])
    axes[3].set(title="Mean normalised entropy of softmax(alpha)", ylim=(0, 1.02))
    epochs, warm = [m.get("epoch") for m in all_steps], warmup_steps(all_steps)
    for ax in axes:
        mark_steps(ax, epochs, warm)
        ax.set_xlabel("step (from the search's first)")
    for ax in axes[:3]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def steering_summary_line(metrics: list[dict[str, Any]]) -> str | None:
    """The report's one line on which objectives steered (None for runs without MGDA records)."""
    table = steering(metrics)
    return steering_line(table) if table else None


def baseline_section(baseline: dict[str, Any] | None) -> list[str]:
    """Markdown: the rank line, then every network's metrics (searched first)."""
    if not baseline:
        return []
    from e2rnas.run.baseline import RANKED

    def pct(x: Any) -> str:
        return "-" if x is None else f"{100 * float(x):.2f}"

    header = ["network", *(f"{label} %" for label in RANKED.values()), "params (M)", "MACs (M)"]
    rows = [[r["name"], *(pct(r.get(k)) for k in RANKED), f"{r['params_m']:.4f}", f"{r['macs_m']:.2f}"]
            for r in (baseline["searched"], *baseline["random"])]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return ["## Does the search pay off? Random networks of the same budget", "",
            f"**{baseline['line']}.** Each random genotype was drawn uniformly among those meeting "
            f"{', '.join(baseline['bounds'])} and the search's cell caps (seed {baseline['seed']}), retrained with "
            f"the searched network's train settings and evaluated with the same protocol.", "", *table, ""]
