"""How well a latency table predicts whole deployed networks: random genotypes, predicted vs measured batch-1 latency.

    .venv/bin/python benchmarks/lut_accuracy.py                        # embedded default shape, table measured here
    .venv/bin/python benchmarks/lut_accuracy.py --lut lut.json         # a table from `e2rnas lut`
    .venv/bin/python benchmarks/lut_accuracy.py --exporter torchscript # faster export of the 24 networks

Every genotype's network (``e2rnas.space.network.Network``, eval, seeded random weights) is exported to ONNX the way
``e2rnas export`` does (dynamo, opset 18, dynamic batch) and timed with ``OrtRunner`` under the table's threads,
round-robin (median over rounds of per-round medians, as the table is). Two predictions are compared:

- **corrected**: the table (ops timed inside a layout-preserving wrapper, call overhead removed, fixed part and
  in-network factor fitted on reference networks: ``deploy_targets/lut.py``);
- **naive**: each op exported alone and timed as is (call overhead and layout reorders included), fixed part =
  the measured all-max-pool network minus its ops (how ``CostModel.fixed`` is obtained for params and MACs).

Prints one row per genotype, then Kendall tau, Spearman rho and the median absolute % error of both.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from scipy import stats

from e2rnas.deploy_targets import lut
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.genotypes import STEPS, Genotype
from e2rnas.space.latency_table import LatencyTable, describe_shape
from e2rnas.space.network import Network
from e2rnas.space.ops import PRIMITIVES

OPS = [op for op in PRIMITIVES if op != "none"]
CONCAT = tuple(range(2, 2 + STEPS))


def random_genotypes(n: int, seed: int) -> dict[str, Genotype]:
    """Two distinct inputs per node (as derived genotypes have), uniform ops."""
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        cells = [tuple((rng.choice(OPS), j) for k in range(STEPS) for j in sorted(rng.sample(range(2 + k), 2)))
                 for _ in range(2)]
        out[f"g{i:02d}"] = Genotype(cells[0], CONCAT, cells[1], CONCAT)
    return out


def pooling_genotype() -> Genotype:
    edges = tuple(("max_pool_3x3", j) for _ in range(STEPS) for j in (0, 1))
    return Genotype(edges, CONCAT, edges, CONCAT)


def export_network(g: Genotype, shape: DeployShape, path: Path, exporter: str) -> Path:
    from e2rnas.export.onnx_export import export_onnx

    torch.manual_seed(0)
    net = Network(g, shape.C, shape.layers, shape.num_classes, variant=shape.variant, input_size=shape.input_size)
    export_onnx(net.eval(), path, input_size=shape.input_size, opset=18 if exporter == "dynamo" else 17,
                exporter=exporter)
    return path


def naive_sum(g: Genotype, cost: CostModel, alone: dict[tuple[str, int, int, int], float]) -> float:
    total = 0.0
    for slot in cost.slots:
        for op, inp in g.reduce if slot.reduction else g.normal:
            stride, size = slot.edge_geometry(inp)
            total += alone[(op, slot.C, stride, size)]
    return total


def summary(pred: list[float], meas: list[float]) -> dict[str, float]:
    err = [abs(p - m) / m * 100 for p, m in zip(pred, meas, strict=True)]
    return {"kendall_tau": float(stats.kendalltau(pred, meas)[0]),
            "spearman_rho": float(stats.spearmanr(pred, meas)[0]),
            "median_abs_pct_error": statistics.median(err), "max_abs_pct_error": max(err)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--genotypes", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lut", type=Path, help="a table from `e2rnas lut` (default: measure one now)")
    ap.add_argument("--threads", type=int, help="default: the table's threads (bench's default for cpu)")
    ap.add_argument("--runs", type=int, default=lut.DEFAULT_RUNS, help="timed calls per network per round")
    ap.add_argument("--rounds", type=int, default=lut.DEFAULT_ROUNDS)
    ap.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    ap.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)  # export only; ONNX Runtime gets its own threads

    shape = DeployShape(layers=args.layers, C=args.channels, num_classes=args.classes, input_size=args.image_size)
    t0 = time.perf_counter()
    if args.lut:
        table = LatencyTable.load(args.lut)
        table.check_matches(shape=shape, target="cpu", batch=1)
    else:
        table = lut.measure_latency_table(shape=shape, target="cpu", threads=args.threads)
    lut_s = time.perf_counter() - t0
    threads = args.threads or table.key["threads"]
    cost = CostModel(shape)
    genotypes = random_genotypes(args.genotypes, args.seed)

    with tempfile.TemporaryDirectory(prefix="e2rnas-lut-acc-") as tmp:
        graphs = {("net", n): export_network(g, shape, Path(tmp) / f"net-{n}.onnx", args.exporter)
                  for n, g in genotypes.items()}
        graphs[("net", "pool")] = export_network(pooling_genotype(), shape, Path(tmp) / "net-pool.onnx", args.exporter)
        for r in table.measurement.get("references", []):  # did the machine's load change since the table?
            graphs[("ref", r["name"])] = lut.export_network(Genotype.from_dict(r["genotype"]), shape=shape,
                                                            folder=Path(tmp))
        for C, stride, size in lut.op_geometries(shape):  # the naive model: each op alone, as is
            for op in OPS:
                graphs[(op, C, stride, size)] = lut.export_op(op, C=C, stride=stride, size=size, batch=1,
                                                              folder=Path(tmp), in_context=False)
        times = lut.time_round_robin(graphs, batch=1, threads=threads, runs=args.runs, warmup=lut.DEFAULT_WARMUP,
                                     rounds=args.rounds)
    alone = {k: ms for k, ms in times.items() if k[0] not in ("net", "ref")}
    then = {r["name"]: r["measured_ms"] for r in table.measurement.get("references", [])}
    drift = statistics.median(times[("ref", n)] / ms for n, ms in then.items()) - 1 if then else None
    naive_fixed = times[("net", "pool")] - naive_sum(pooling_genotype(), cost, alone)

    rows = []
    for n, g in genotypes.items():
        meas = times[("net", n)]
        rows.append({"genotype": n, "measured_ms": meas, "lut_ms": table.genotype_ms(g),
                     "naive_ms": naive_fixed + naive_sum(g, cost, alone), "genotype_json": g.to_dict()})
    measured = [r["measured_ms"] for r in rows]
    result = {"deploy_shape": vars(shape), "threads": threads, "exporter": args.exporter, "lut_seconds": lut_s,
              "lut_fit": table.measurement.get("fit"), "reference_drift": drift, "rows": rows,
              "corrected": summary([r["lut_ms"] for r in rows], measured),
              "naive": summary([r["naive_ms"] for r in rows], measured)}

    print(f"deploy shape {describe_shape(shape)}; ONNX Runtime CPU, {threads} threads, batch 1; {args.exporter} "
          f"export; table {'loaded' if args.lut else f'measured in {lut_s:.1f} s'} (fixed {table.fixed_ms:.4f} ms, "
          f"in-network factors {', '.join(f'{v:.2f}' for v in table.op_scale.values())})")
    print(f"{'genotype':9s} {'measured':>9s} {'LUT':>9s} {'err %':>7s} {'naive':>9s} {'err %':>7s}")
    for r in rows:
        m = r["measured_ms"]
        print(f"{r['genotype']:9s} {m:9.4f} {r['lut_ms']:9.4f} {100 * (r['lut_ms'] - m) / m:+7.1f} "
              f"{r['naive_ms']:9.4f} {100 * (r['naive_ms'] - m) / m:+7.1f}")
    if drift is not None:
        print(f"the table's reference networks, timed again now: {100 * drift:+.1f} % (median) against the table; "
              "a shift here is the machine's load changing, not the model")
    print(f"{'model':10s} {'tau':>6s} {'rho':>6s} {'med |err| %':>12s} {'max |err| %':>12s}")
    for name in ("corrected", "naive"):
        s = result[name]
        print(f"{name:10s} {s['kendall_tau']:6.3f} {s['spearman_rho']:6.3f} {s['median_abs_pct_error']:12.1f} "
              f"{s['max_abs_pct_error']:12.1f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["corrected"]["kendall_tau"] >= 0.8 and result["corrected"]["median_abs_pct_error"] <= 15
    print("targets (tau >= 0.8, median error <= 15 %):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
