"""The normal and reduction cells as a picture whose labels do not overlap.

graphviz ``dot`` lays out edge labels itself and is used when installed (called with a fixed argument list, the
graph on stdin). Without it, the nodes are placed by networkx when importable (else in one column per node) and
matplotlib draws them, each operation's label moved along its edge until it overlaps no node and no other label.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

KINDS = ("normal", "reduce")
DOT_TIMEOUT_S = 60


def node_label(i: int | str) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}"}.get(i, str(i - 2) if isinstance(i, int) else str(i))


def cell_edges(genotype: dict[str, Any], kind: str) -> list[tuple[int | str, int | str, str]]:
    """(source, destination, label) per edge: node 2 + k // 2 takes the k-th (op, input) pair; the concatenated
    nodes feed the output with an empty label."""
    edges: list[tuple[int | str, int | str, str]] = [(src, 2 + k // 2, op)
                                                     for k, (op, src) in enumerate(genotype[kind])]
    edges += [(node, "out", "") for node in genotype[f"{kind}_concat"]]
    return edges


def to_dot(genotype: dict[str, Any]) -> str:
    lines = ["digraph cells {", "  rankdir=LR; newrank=true;", '  node [shape=box, style="rounded,filled", '
             'fontname="Helvetica"]; edge [fontname="Helvetica", fontsize=9, fontcolor=darkred];']
    for kind in KINDS:
        edges = cell_edges(genotype, kind)
        nodes = dict.fromkeys([n for e in edges for n in e[:2]])
        lines.append(f'  subgraph cluster_{kind} {{ label="{kind} cell";')
        for n in nodes:
            color = "lightgreen" if n in (0, 1) else ("khaki" if n == "out" else "lightblue")
            lines.append(f'    "{kind}_{n}" [label="{node_label(n)}", fillcolor={color}];')
        for src, dst, op in edges:
            style = f'label="{op}"' if op else "style=dotted, color=gray"
            lines.append(f'    "{kind}_{src}" -> "{kind}_{dst}" [{style}];')
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw_with_dot(genotype: dict[str, Any], path: Path) -> bool:
    exe = shutil.which("dot")
    if exe is None:
        return False
    try:
        subprocess.run([exe, "-Tpng", "-Gdpi=110", "-o", str(path)], input=to_dot(genotype), text=True,
                       capture_output=True, timeout=DOT_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return path.is_file() and path.stat().st_size > 0


def _depths(edges: list[tuple[int | str, int | str, str]]) -> dict[int | str, int]:
    depth: dict[int | str, int] = {0: 0, 1: 0}
    for src, dst, _ in edges:  # edges come in node order, sources before their destinations
        if dst != "out":
            depth[dst] = max(depth.get(dst, 0), depth.get(src, 0) + 1)
    depth["out"] = max(depth.values()) + 1
    return depth


def layout(edges: list[tuple[int | str, int | str, str]]) -> dict[int | str, tuple[float, float]]:
    """Node positions in [0, 1] x [0, 1]: networkx's layered layout by depth when installed, else one column
    per node in order."""
    nodes = list(dict.fromkeys([0, 1] + [n for e in edges for n in e[:2]]))
    try:
        import networkx as nx
    except ImportError:
        inner = [n for n in nodes if n not in (0, 1, "out")]
        pos = {0: (0.0, 0.75), 1: (0.0, 0.25), "out": (1.0, 0.5)}
        pos |= {n: ((i + 1) / (len(inner) + 1), 0.9 - 0.8 * i / max(1, len(inner) - 1)) for i, n in enumerate(inner)}
        return pos
    depth = _depths(edges)
    g = nx.DiGraph()
    for n in nodes:
        g.add_node(n, layer=depth[n])
    g.add_edges_from((s, d) for s, d, _ in edges)
    pos = nx.multipartite_layout(g, subset_key="layer")
    xs, ys = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    return {n: ((p[0] - min(xs)) / span_x, 0.1 + 0.8 * (p[1] - min(ys)) / span_y) for n, p in pos.items()}


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def place_labels(texts: list[tuple[Any, tuple[float, float], tuple[float, float]]], fixed: list[Any],
                 renderer: Any) -> None:
    """Move each label along its edge (and a little across it) to the first spot that overlaps nothing placed."""
    placed = [t.get_window_extent(renderer).expanded(1.05, 1.1) for t in fixed]
    spots = [(t, d) for d in (0.0, 0.05, -0.05, 0.1, -0.1) for t in (0.5, 0.35, 0.65, 0.25, 0.75, 0.15, 0.85)]
    for text, (x0, y0), (x1, y1) in texts:
        best, best_area = None, None
        for t, d in spots:
            text.set_position((x0 + t * (x1 - x0), y0 + t * (y1 - y0) + d))
            box = text.get_window_extent(renderer).expanded(1.05, 1.1)
            area = sum(_overlap(box, p) for p in placed)
            if best_area is None or area < best_area:
                best, best_area = (t, d), area
            if area == 0:
                break
        t, d = best
        text.set_position((x0 + t * (x1 - x0), y0 + t * (y1 - y0) + d))
        placed.append(text.get_window_extent(renderer).expanded(1.05, 1.1))


def draw_with_matplotlib(genotype: dict[str, Any], path: Path) -> list[tuple[str, Any]]:
    """The fallback drawing; returns (text, display box) of every node and label, for the overlap test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(12, 9))
    fig.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.02, hspace=0.12)  # fixed before labels are placed
    all_texts = []
    for ax, kind in zip(axes, KINDS, strict=True):
        edges = cell_edges(genotype, kind)
        pos = layout(edges)
        ax.set(title=f"{kind} cell", xlim=(-0.08, 1.08), ylim=(-0.05, 1.05))
        ax.axis("off")
        nodes = []
        for node, (x, y) in pos.items():
            color = "lightgreen" if node in (0, 1) else ("khaki" if node == "out" else "lightblue")
            nodes.append(ax.text(x, y, node_label(node), ha="center", va="center", fontsize=9, zorder=3,
                                 bbox=dict(boxstyle="round", fc=color, ec="black")))
        labels = []
        for src, dst, op in edges:
            ax.annotate("", xy=pos[dst], xytext=pos[src], arrowprops=dict(
                arrowstyle="->", color="gray" if not op else "tab:blue", ls=":" if not op else "-",
                shrinkA=11, shrinkB=11))  # arrows end at the boxes' edges, arrowheads visible
            if op:
                labels.append((ax.text(0, 0, op, fontsize=7, ha="center", va="center", color="darkred", zorder=4,
                                       bbox=dict(boxstyle="square,pad=0.1", fc="white", ec="none", alpha=0.85)),
                               pos[src], pos[dst]))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        place_labels(labels, nodes, renderer)
        all_texts += nodes + [t for t, _, _ in labels]
    fig.canvas.draw()
    boxes = [(text.get_text(), text.get_window_extent(fig.canvas.get_renderer())) for text in all_texts]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return boxes


def draw_cells(genotype: dict[str, Any], path: Path) -> str:
    """Write the PNG; returns how it was drawn: "dot", "networkx" or "matplotlib"."""
    if draw_with_dot(genotype, path):
        return "dot"
    draw_with_matplotlib(genotype, path)
    try:
        import networkx  # noqa: F401
    except ImportError:
        return "matplotlib"
    return "networkx"
