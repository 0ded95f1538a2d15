"""What steered a search: per objective, mean gamma, steps with gamma > 0.1, steps sat out, mean |g_k|; then the
cosines between objectives' alpha-gradients, the direction's norm and the final entropy, for one or more runs.

    python benchmarks/steering.py runs/default/search [more search dirs]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from statistics import mean

from e2rnas._io import read_jsonl
from e2rnas.search.diagnostics import STEER_GAMMA, steering, steering_line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="search run directories (with metrics.jsonl)")
    args = ap.parse_args(argv)
    for run in args.runs:
        records = read_jsonl(run / "metrics.jsonl")
        steps = [r for r in records if r.get("type") == "step" and r.get("diagnostics")]
        table = steering(records)
        print(f"\n## {run}\n")
        print(f"| objective | mean gamma | steps with gamma > {STEER_GAMMA} | steps sat out | mean abs g_k |")
        print("|---|---|---|---|---|")
        for name, row in table.items():
            norms = [s["diagnostics"]["grad_norms"][name] for s in steps]
            print(f"| {name} | {row['mean_gamma']:.3f} | {row['steered_steps']} of {row['steps']} | "
                  f"{round(row['sat_out_share'] * row['steps'])} | {mean(norms) if norms else float('nan'):.3g} |")
        if steps:
            pairs = steps[0]["diagnostics"]["cosines"]
            cos = {p: mean(s["diagnostics"]["cosines"][p] for s in steps) for p in pairs}
            top = sorted(cos.items(), key=lambda kv: kv[1])[:4]
            print("\nmost opposed pairs (mean cosine): " + ", ".join(f"{p} {c:+.2f}" for p, c in top))
            print(f"direction norm (mean): {mean(s['diagnostics']['direction_norm'] for s in steps):.3g}; alpha "
                  f"displacement per step (mean): {mean(s['diagnostics']['alpha_displacement'] for s in steps):.3g}; "
                  f"final mean normalised entropy {steps[-1]['mean_normalized_entropy']:.3f}")
        print(steering_line(table))


if __name__ == "__main__":
    main()
