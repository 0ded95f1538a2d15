"""The normal and reduction cells drawn as DARTS' figures draw them, with the genotype as text beside each.

Inputs c_{k-2} and c_{k-1} on the left, nodes 0-3 in order, the output c_{k} on the right; each edge and its label
in one colour per operation. graphviz ``dot`` lays the graph out when installed (rank order fixed by invisible
edges; called with a fixed argument list, the graph on stdin). Without it matplotlib draws the same layout: each
edge is bent (arc3) just enough to keep clear of the other nodes and of the edges already drawn, and each label
slides along its edge to the first spot that covers no node, no other label and as little of another edge as
possible.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KINDS = ("normal", "reduce")
DOT_TIMEOUT_S = 60
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")
RADS = (0.0, 0.18, -0.18, 0.32, -0.32, 0.46, -0.46, 0.6, -0.6)  # bends tried per edge, straightest first
SPOTS = (0.5, 0.4, 0.6, 0.32, 0.68, 0.25, 0.75, 0.2, 0.8)  # label positions tried along an edge

Node = int | str
Edge = tuple[Node, Node, str]


def node_label(i: Node) -> str:
    return {0: "c_{k-2}", 1: "c_{k-1}", "out": "c_{k}"}.get(i, str(i - 2) if isinstance(i, int) else str(i))


def cell_edges(genotype: dict[str, Any], kind: str) -> list[Edge]:
    """(source, destination, label) per edge: node 2 + k // 2 takes the k-th (op, input) pair; the concatenated
    nodes feed the output with an empty label."""
    edges: list[Edge] = [(src, 2 + k // 2, op) for k, (op, src) in enumerate(genotype[kind])]
    edges += [(node, "out", "") for node in genotype[f"{kind}_concat"]]
    return edges


def cell_text(genotype: dict[str, Any], kind: str) -> list[str]:
    """The cell as lines a person reads beside the drawing, in the drawing's names: ``node 0 = sep_conv_3x3(c_{k-2})
    + skip_connect(c_{k-1})``, then what the output concatenates."""
    edges = cell_edges(genotype, kind)
    nodes = sorted({d for _, d, op in edges if op})
    def name(n: Node) -> str:
        return node_label(n) if n in (0, 1) else f"node {node_label(n)}"

    lines = [f"{name(n)} = " + " + ".join(f"{op}({name(s)})" for s, d, op in edges if d == n and op) for n in nodes]
    return [*lines, "c_{k} = concat(nodes " + ", ".join(node_label(n) for n in genotype[f"{kind}_concat"]) + ")"]


def op_colors(genotype: dict[str, Any]) -> dict[str, str]:
    ops = sorted({op for kind in KINDS for op, _ in genotype[kind]})
    return {op: PALETTE[i % len(PALETTE)] for i, op in enumerate(ops)}


def _fill(node: Node) -> str:
    return "lightgreen" if node in (0, 1) else ("khaki" if node == "out" else "lightblue")


def to_dot(genotype: dict[str, Any]) -> str:
    """Left to right: the four inputs share the first rank (normal cell above reduce, c_{k-2} above c_{k-1}),
    nodes 0-3 take the next ranks in order (invisible edges), then the output and the genotype's text."""
    colors = op_colors(genotype)
    lines = ["digraph cells {", "  rankdir=LR; newrank=true; nodesep=0.3; ranksep=0.55;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica"]; edge [fontname="Helvetica", '
             "fontsize=9];"]
    for kind in reversed(KINDS):  # dot stacks the clusters bottom-up
        edges = cell_edges(genotype, kind)
        inner = sorted({d for _, d, op in edges if op})
        lines.append(f'  subgraph cluster_{kind} {{ label="{kind} cell"; fontname="Helvetica";')
        for n in [0, 1, *inner, "out"]:
            lines.append(f'    "{kind}_{n}" [label="{node_label(n)}", fillcolor={_fill(n)}];')
        text = "".join(line.replace('"', "'") + "\\l" for line in cell_text(genotype, kind))
        lines.append(f'    "{kind}_text" [shape=plaintext, style="", fontsize=9, label="{text}"];')
        chain = ["1", *map(str, inner), "out", "text"]
        lines += [f'    "{kind}_{a}" -> "{kind}_{b}" [style=invis];' for a, b in zip(chain, chain[1:], strict=False)]
        for src, dst, op in edges:
            style = (f'label="{op}", color="{colors[op]}", fontcolor="{colors[op]}"' if op
                     else "style=dotted, color=gray")
            lines.append(f'    "{kind}_{src}" -> "{kind}_{dst}" [{style}];')
        lines.append("  }")
    # one rank; with rankdir=LR a flat edge a -> b puts b above a: reduce's c_{k-1} at the bottom, normal's c_{k-2}
    # at the top
    inputs = [f'"{kind}_{n}"' for kind in reversed(KINDS) for n in (1, 0)]
    lines.append(f"  {{ rank=same; {'; '.join(inputs)}; }}")
    lines += [f"  {a} -> {b} [style=invis];" for a, b in zip(inputs, inputs[1:], strict=False)]
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


def layout(edges: list[Edge]) -> dict[Node, tuple[float, float]]:
    """DARTS' figure: inputs left (c_{k-2} above c_{k-1}), nodes 0-3 left to right on a falling diagonal, the
    output right; positions in [0, 1] x [0, 1]."""
    inner = sorted({d for _, d, op in edges if op and d != "out"})
    pos: dict[Node, tuple[float, float]] = {0: (0.0, 0.78), 1: (0.0, 0.22), "out": (1.0, 0.5)}
    for i, n in enumerate(inner):
        frac = i / max(1, len(inner) - 1)
        pos[n] = (0.2 + 0.6 * frac, 0.9 - 0.8 * frac)
    return pos


def arc(p0: Any, p2: Any, rad: float, n: int = 41) -> Any:
    """Points of matplotlib's ``arc3,rad=...`` connection from p0 to p2 (a quadratic Bezier; display units)."""
    import numpy as np

    p0, p2 = np.asarray(p0, float), np.asarray(p2, float)
    d = p2 - p0
    c = (p0 + p2) / 2 + rad * np.array([d[1], -d[0]])
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t ** 2 * p2


def _inside(points: Any, box: Any) -> Any:
    return (points[:, 0] > box.x0) & (points[:, 0] < box.x1) & (points[:, 1] > box.y0) & (points[:, 1] < box.y1)


def _overlap(a: Any, b: Any) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def choose_bend(p0: Any, p2: Any, obstacles: list[Any], ends: list[Any], drawn: list[Any]) -> tuple[float, Any]:
    """The straightest bend whose curve crosses no obstacle box and runs along no drawn edge (points within 6 px,
    outside the edge's own end boxes)."""
    import numpy as np

    best = None
    for rad in RADS:
        pts = arc(p0, p2, rad)
        hits = sum(int(_inside(pts, box).sum()) for box in obstacles)
        free = ~np.any([_inside(pts, box) for box in ends], axis=0)
        near = sum(int((np.min(np.linalg.norm(pts[free][:, None] - other[None], axis=2), axis=1) < 6).sum())
                   for other in drawn) if free.any() and drawn else 0
        score = 100 * hits + near + 2 * abs(rad)
        if best is None or score < best[0]:
            best = (score, rad, pts)
    return best[1], best[2]


def place_label(text: Any, pts: Any, placed: list[Any], curves: list[Any], ax: Any, renderer: Any) -> Any:
    """Centre ``text`` on the first point along its curve whose box overlaps no placed box and covers the fewest
    points of other curves; returns the box."""
    inv = ax.transData.inverted()
    best = None
    for t in SPOTS:
        text.set_position(inv.transform(pts[round(t * (len(pts) - 1))]))
        box = text.get_window_extent(renderer).expanded(1.08, 1.15)
        covered = sum(int(_inside(c, box).sum()) for c in curves)
        score = 1000 * sum(_overlap(box, p) for p in placed) + covered
        if best is None or score < best[0]:
            best = (score, t)
        if score == 0:
            break
    text.set_position(inv.transform(pts[round(best[1] * (len(pts) - 1))]))
    return text.get_window_extent(renderer).expanded(1.08, 1.15)


@dataclass
class Drawing:
    """What the fallback drew, in display units, for tests: (text, box) of nodes and labels, and per edge
    (cell, source, destination, curve points, boxes of the nodes the edge joins)."""

    boxes: list[tuple[str, Any]] = field(default_factory=list)
    nodes: dict[tuple[str, Node], Any] = field(default_factory=dict)
    edges: list[tuple[str, Node, Node, Any]] = field(default_factory=list)


def draw_with_matplotlib(genotype: dict[str, Any], path: Path) -> Drawing:
    """The drawing without graphviz: each cell on the left of its row, its genotype as text on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    colors = op_colors(genotype)
    fig = plt.figure(figsize=(14, 9))
    grid = fig.add_gridspec(2, 2, width_ratios=(3, 1.25), left=0.02, right=0.99, top=0.95, bottom=0.02,
                            hspace=0.12, wspace=0.03)
    drawing = Drawing()
    for row, kind in enumerate(KINDS):
        ax, side = fig.add_subplot(grid[row, 0]), fig.add_subplot(grid[row, 1])
        side.axis("off")
        side.text(0.0, 0.5, "\n".join(cell_text(genotype, kind)), va="center", ha="left", fontsize=8.5,
                  family="monospace", wrap=True)
        edges = cell_edges(genotype, kind)
        pos = layout(edges)
        ax.set(title=f"{kind} cell", xlim=(-0.07, 1.07), ylim=(-0.02, 1.02))
        ax.axis("off")
        texts = {n: ax.text(x, y, node_label(n), ha="center", va="center", fontsize=9, zorder=3,
                            bbox=dict(boxstyle="round", fc=_fill(n), ec="black")) for n, (x, y) in pos.items()}
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = {n: t.get_window_extent(renderer).expanded(1.15, 1.3) for n, t in texts.items()}
        drawn, labels = [], []
        for src, dst, op in sorted(edges, key=lambda e: e[2] == ""):  # op edges choose their bends first
            p0, p2 = ax.transData.transform(pos[src]), ax.transData.transform(pos[dst])
            others = [b for n, b in boxes.items() if n not in (src, dst)]
            rad, pts = choose_bend(p0, p2, others, [boxes[src], boxes[dst]], drawn)
            color = colors[op] if op else "gray"
            ax.add_patch(FancyArrowPatch(pos[src], pos[dst], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                         mutation_scale=11, color=color, lw=1.3 if op else 1.0,
                                         ls="-" if op else ":", shrinkA=12, shrinkB=12, zorder=1))
            drawn.append(pts)
            drawing.edges.append((kind, src, dst, pts))
            if op:
                labels.append((ax.text(0, 0, op, fontsize=7.5, ha="center", va="center", color=color, zorder=4,
                                       bbox=dict(boxstyle="square,pad=0.12", fc="white", ec="none", alpha=0.9)),
                               pts))
        placed = list(boxes.values())
        for text, pts in labels:
            placed.append(place_label(text, pts, placed, [c for c in drawn if c is not pts], ax, renderer))
        drawing.nodes |= {(kind, n): b for n, b in boxes.items()}
        drawing.boxes += [(t.get_text(), t) for t in texts.values()] + [(t.get_text(), t) for t, _ in labels]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    drawing.boxes = [(name, t.get_window_extent(renderer)) for name, t in drawing.boxes]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawing


def draw_cells(genotype: dict[str, Any], path: Path) -> str:
    """Write the PNG; returns how it was drawn: "dot" or "matplotlib"."""
    if draw_with_dot(genotype, path):
        return "dot"
    draw_with_matplotlib(genotype, path)
    return "matplotlib"
