"""Does the search pay off? Searched networks against random networks of the same budget, on real CIFAR-10.

    python benchmarks/quality.py --data ../shared/data --out runs/quality --seeds 0,1

Every entry is one genotype of the DARTS space on one deploy network (``--scale``) under one budget (L, F and T from
a CPU latency table of that network): E2RNAS with the tool's default (band cost form, MGDA), E2RNAS in the paper's
form (two-sided targets in M params and M MACs, eq. 10's raw-gradient step), DARTS (validation loss only) and E2RNAS
with equal weights, each searched once per seed and derived by the budget rule; ``--random`` genotypes drawn
uniformly among those meeting the same budget and caps (``e2rnas.search.random_genotypes``); the published genotypes
the tool ships, where they fit. Every genotype is retrained with the same schedule and seed on the 10k CIFAR-10
training subset and evaluated the same way on the 10k test set (clean accuracy, OoD AUPR against MNIST with OoD
positive, PGD accuracy on a seeded class-mixed sample, exact params/MACs, ONNX Runtime latency at batch 1). The test
set selects nothing: the retrain reports its last epoch. Results go to ``OUT/quality.json``, ``OUT/quality.md`` and
``OUT/pareto.png``; a rerun skips what is on disk (and resumes a search or retrain that was stopped).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

#: searched methods: SearchConfig overrides on top of the scale's common search settings
METHODS: dict[str, dict[str, Any]] = {
    "e2rnas": {},  # the tool's default: band cost form, MGDA on l2-normalised gradients, normalized update
    "e2rnas-paper": {"cost_form": "target", "cost_units": "paper", "mgda_update": "paper"},
    "darts": {"objectives": ("val",), "ll_ood": False},
    "equal": {"weighting": "equal"},
    # the default with a supernet trained ~6x longer before and while alphas move (3 warm-up epochs, 210 bi-level
    # steps instead of 1 and 40): does the search pay off once the supernet has learnt something?
    "e2rnas-long": {"epochs": 10, "warmup_epochs": 3, "max_steps_per_epoch": 30},
}
#: methods that search nothing new: another derivation of a searched method's final alphas, with extra caps (the
#: same alphas under P-DARTS' rule of at most 2 skips in the normal cell: does a skip cap rescue a collapsed search?)
REDERIVED: dict[str, tuple[str, dict[str, int]]] = {
    "e2rnas-long-skip2": ("e2rnas-long", {"max_skips_normal": 2}),
}


@dataclass(frozen=True)
class Scale:
    """One study size: the deploy network, the search supernet and step caps, the retrain schedule."""

    deploy_layers: int = 5
    deploy_C: int = 12
    image_size: int = 16
    search_layers: int = 5
    search_C: int = 8
    search_batch: int = 64
    search_epochs: int = 5
    warmup_epochs: int = 1
    steps_per_epoch: int | None = 10
    a_lr: float = 0.05
    train_epochs: int = 4
    train_batch: int = 64
    train_lr: float = 0.05
    cutout: int = 8
    crop_pad: int = 2
    drop_path: float = 0.1
    pgd_samples: int = 500
    ood_samples: int = 2000
    params_at: float = 0.5  # L at this fraction of the feasible params range
    macs_at: float = 0.6  # F at this fraction of the feasible MACs range
    latency_at: float = 0.6  # T at this fraction of the table's range
    params_floor: float = 0.8
    max_normal_free_ops: int = 4


SCALES = {
    "cpu": Scale(),  # one seed about 90 min on 2 cores
    "gpu": Scale(deploy_layers=8, deploy_C=16, image_size=32, search_layers=8, search_C=16, search_epochs=25,
                 warmup_epochs=10, steps_per_epoch=None, a_lr=6e-3, train_epochs=50, train_batch=96, train_lr=0.025,
                 cutout=16, crop_pad=4, drop_path=0.2, pgd_samples=10000, ood_samples=2000),  # not yet run
}


def _write_json(path: Path, data: Any) -> None:
    from e2rnas._io import atomic_write_json

    atomic_write_json(path, data)


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def budget(scale: Scale, lut_path: Path, num_classes: int = 10) -> dict[str, Any]:
    """L, F and T placed inside the feasible ranges of the deploy network (so that random draws exist)."""
    from e2rnas.search.derive import cost_range, deploy_costs
    from e2rnas.space.cost import CostModel, DeployShape
    from e2rnas.space.latency_table import LatencyTable

    shape = DeployShape(layers=scale.deploy_layers, C=scale.deploy_C, num_classes=num_classes,
                        input_size=scale.image_size)
    model, table = CostModel(shape), LatencyTable.load(lut_path)
    ranges = cost_range(deploy_costs(model, latency_table=table), model.primitives,
                        max_free_normal=scale.max_normal_free_ops)
    at = {"params": scale.params_at, "macs": scale.macs_at, "latency": scale.latency_at}
    bound = {k: lo + at[k] * (hi - lo) for k, (lo, hi) in ranges.items()}
    return {"shape": asdict(shape), "ranges": ranges, "L": round(bound["params"], 4), "F": round(bound["macs"], 2),
            "T": round(bound["latency"], 4), "params_floor": scale.params_floor,
            "max_normal_free_ops": scale.max_normal_free_ops}


def search_config(scale: Scale, b: dict[str, Any], data: Path, lut: Path, method: str, seed: int, device: str):
    from e2rnas.search.runner import SearchConfig

    common = dict(
        dataset=f"npz:{data / 'cifar10_train_10k.npz'}", ood_dataset=f"npz:{data / 'mnist_test_32x32x3.npz'}",
        image_size=scale.image_size, layers=scale.search_layers, C=scale.search_C, batch_size=scale.search_batch,
        epochs=scale.search_epochs, warmup_epochs=scale.warmup_epochs, max_steps_per_epoch=scale.steps_per_epoch,
        a_lr=scale.a_lr, first_order=True, deploy_layers=scale.deploy_layers, deploy_C=scale.deploy_C,
        deploy_num_classes=10, deploy_input_size=scale.image_size, params_bound=b["L"], flops_bound=b["F"],
        params_floor=scale.params_floor, latency_bound=b["T"], lut=str(lut), derive="budget",
        max_normal_free_ops=scale.max_normal_free_ops, seed=seed, device=device)
    return SearchConfig(**(common | METHODS[method]))


def rederive(base_dir: Path, out_dir: Path, *, costs, primitives, b: dict[str, Any], caps: dict[str, int]
             ) -> dict[str, Any]:
    """The budget rule on a finished search's final alphas with extra ``caps``; a summary like the search's."""
    import torch

    from e2rnas.search.derive import derive_budget
    from e2rnas.search.guards import search_warnings

    base = _read(base_dir / "summary.json")
    final = json.loads((base_dir / "alphas.jsonl").read_text().splitlines()[-1])
    weights = {kind: torch.softmax(torch.tensor(final[f"alpha_{kind}"], dtype=torch.float64), dim=-1)
               for kind in ("normal", "reduce")}
    derived = derive_budget(weights, primitives, costs, max_free_normal=b["max_normal_free_ops"], **caps)
    summary = base | {"genotype": derived.genotype.to_dict(), "genotype_text": derived.genotype.describe(),
                      "derived_from": str(base_dir), "extra_caps": caps, "derivation_gap": base["derivation_gap"],
                      "warnings": search_warnings(derived.genotype, weights=weights)}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "summary.json", summary)
    return summary


def train_config(scale: Scale, data: Path, device: str):
    from e2rnas.train.trainer import TrainConfig

    return TrainConfig(dataset=f"npz:{data / 'cifar10_train_10k.npz'}",
                       test_dataset=f"npz:{data / 'cifar10_test.npz'}", ood_dataset=None, image_size=scale.image_size,
                       layers=scale.deploy_layers, C=scale.deploy_C, epochs=scale.train_epochs,
                       batch_size=scale.train_batch, lr=scale.train_lr, cutout=scale.cutout, crop_pad=scale.crop_pad,
                       flip=True, drop_path=scale.drop_path, auxiliary=True, auxiliary_weight=0.4, val_fraction=0.0,
                       seed=0, device=device)


def evaluate_entry(model_pt: Path, scale: Scale, data: Path, device: str, lut_table, work: Path) -> dict[str, Any]:
    """Clean accuracy on every test image, AUPR (OoD positive) against MNIST's held-out part, PGD accuracy on a
    seeded class-mixed sample, exact cost, table latency and ONNX Runtime latency (batch 1, p50 of 300 calls)."""
    from e2rnas.evaluation.evaluate import evaluate, protocol_from
    from e2rnas.model_io import load_model
    from e2rnas.predict import TorchPredictor
    from e2rnas.space.network import count_macs, count_params
    from e2rnas.train.trainer import load_split

    loaded = load_model(model_pt, device=device)
    size = scale.image_size
    test = load_split(f"npz:{data / 'cifar10_test.npz'}", "train", image_size=size)  # the whole test file
    ood = load_split(f"npz:{data / 'mnist_test_32x32x3.npz'}", "test", image_size=size).head(scale.ood_samples)
    pred = TorchPredictor(loaded.model, device)
    clean = evaluate(pred, test=test, ood=ood, protocol=protocol_from("paper", ood_max_samples=scale.ood_samples),
                     metrics=("accuracy", "ood"))
    robust = evaluate(pred, test=test, protocol=protocol_from("paper", max_samples=scale.pgd_samples),
                      metrics=("robustness",))
    return {"accuracy": clean["clean_acc"], "aupr_out": clean["ood"]["aupr_out"], "pgd_acc": robust["pgd_acc"],
            "params_m": count_params(loaded.model, exclude_aux=True) / 1e6,
            "macs_m": count_macs(loaded.model, input_size=size) / 1e6,
            "table_latency_ms": float(lut_table.genotype_ms(loaded.genotype)),
            "ort_p50_ms": ort_latency(model_pt, size, work),
            "samples": {"test": len(test), "pgd": robust["samples"]["test"], "ood": len(ood)}}


def ort_latency(model_pt: Path, size: int, work: Path) -> float:
    """ONNX Runtime p50 latency (ms) at batch 1, 2 threads, 300 calls after 20 warm-ups (TorchScript export)."""
    from e2rnas.deploy_targets.runners import OrtRunner
    from e2rnas.export.onnx_export import export_onnx
    from e2rnas.model_io import load_model

    onnx_path = work / "model.onnx"
    export_onnx(load_model(model_pt).model.cpu().eval(), onnx_path, input_size=size, exporter="torchscript",
                opset=17)
    try:
        with OrtRunner(onnx_path, threads=2) as runner:
            return runner.measure(1, warmup=20, runs=300).p50_ms
    finally:
        onnx_path.unlink()


def retrain_and_eval(name: str, genotype, *, scale: Scale, data: Path, out: Path, device: str, lut_table,
                     log) -> dict[str, Any]:
    from e2rnas.train.trainer import train

    folder = out / "entries" / name
    done = _read(folder / "result.json")
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ckpt = folder / "train" / "checkpoint.pt"
    summary_ok = (folder / "train" / "model.pt").is_file() and (folder / "train" / "summary.json").is_file()
    if not summary_ok:
        train(train_config(scale, data, device), genotype=genotype, out_dir=folder / "train", resume=ckpt.is_file(),
              progress=False)
    t_train = time.time() - t0
    metrics = evaluate_entry(folder / "train" / "model.pt", scale, data, device, lut_table, folder)
    result = {"name": name, "genotype": genotype.to_dict(), **metrics, "train_s": round(t_train, 1),
              "eval_s": round(time.time() - t0 - t_train, 1)}
    _write_json(folder / "result.json", result)
    log(f"{name}: acc {result['accuracy']:.4f} pgd {result['pgd_acc']:.4f} aupr {result['aupr_out']:.4f} "
        f"{result['params_m']:.4f} M {result['macs_m']:.2f} M MACs {result['ort_p50_ms']:.3f} ms "
        f"(train {t_train:.0f} s)")
    return result


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % Student-t interval (half-width nan for one value)."""
    from scipy.stats import t

    m = statistics.fmean(values)
    if len(values) < 2:
        return m, math.nan, math.nan
    half = t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return m, m - half, m + half


def rank_among(value: float, others: list[float]) -> int:
    """1 + how many of ``others`` are strictly better (higher) than ``value``: 1 is best of len(others) + 1."""
    return 1 + sum(o > value for o in others)


METRIC_COLUMNS = (("accuracy", "test acc %", 100), ("pgd_acc", "PGD acc %", 100), ("aupr_out", "OoD AUPR %", 100),
                  ("params_m", "params M", 1), ("macs_m", "MACs M", 1), ("ort_p50_ms", "ORT p50 ms", 1))
RANKED = ("accuracy", "pgd_acc", "aupr_out")


def tables(results: dict[str, Any]) -> str:
    entries, random_ = results["entries"], [e for e in results["entries"] if e["group"] == "random"]
    lines = ["| entry | group | " + " | ".join(c[1] for c in METRIC_COLUMNS) + " | "
             + " | ".join(f"rank {r} among random" for r in RANKED) + " |",
             "|" + "---|" * (2 + len(METRIC_COLUMNS) + len(RANKED))]
    for e in entries:
        ranks = [f"{rank_among(e[r], [x[r] for x in random_ if x is not e])}/{len(random_) + (e['group'] != 'random')}"
                 for r in RANKED]
        lines.append(f"| {e['name']} | {e['group']} | " + " | ".join(
            f"{e[k] * s:.2f}" if s == 100 else f"{e[k]:.4g}" for k, _, s in METRIC_COLUMNS) + " | "
            + " | ".join(ranks) + " |")
    lines += ["", "| group | n | " + " | ".join(f"{c[1]} mean [95 % t-interval]" for c in METRIC_COLUMNS[:3]) + " |",
              "|---|---|---|---|---|"]
    for group in dict.fromkeys(e["group"] for e in entries):
        rows = [e for e in entries if e["group"] == group]
        cells = []
        for key, _, _scale in METRIC_COLUMNS[:3]:
            m, lo, hi = t_interval([e[key] for e in rows])
            cells.append(f"{100 * m:.2f}" + ("" if math.isnan(lo) else f" [{100 * lo:.2f}, {100 * hi:.2f}]"))
        lines.append(f"| {group} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pareto_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = {"random": "tab:gray", "published": "black", "e2rnas": "tab:red", "e2rnas-paper": "tab:orange",
               "darts": "tab:blue", "equal": "tab:green"}
    for ax, (metric, label) in zip(axes, (("accuracy", "test accuracy"), ("pgd_acc", "PGD accuracy"),
                                          ("aupr_out", "OoD AUPR (MNIST)")), strict=True):
        for group in dict.fromkeys(e["group"] for e in results["entries"]):
            rows = [e for e in results["entries"] if e["group"] == group]
            ax.scatter([e["macs_m"] for e in rows], [e[metric] for e in rows], label=group,
                       color=colours.get(group, "tab:purple"), marker="x" if group == "random" else "o")
        ax.axvline(results["budget"]["F"], color="tab:red", ls="--", lw=0.8)
        ax.set(xlabel="MACs (M) of the deploy network", ylabel=label, title=f"{label} vs MACs")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    import torch

    import e2rnas.deploy_targets.runners  # noqa: F401  (everything imported now: edits to the source tree
    import e2rnas.evaluation.evaluate  # noqa: F401  while a long study runs do not reach it half-way)
    import e2rnas.export.onnx_export  # noqa: F401
    import e2rnas.train.trainer  # noqa: F401
    from e2rnas._io import atomic_write_text
    from e2rnas.deploy_targets.lut import measure_latency_table
    from e2rnas.search.derive import _violations, deploy_costs
    from e2rnas.search.random_genotypes import sample_feasible
    from e2rnas.search.runner import run_search
    from e2rnas.space.cost import CostModel, DeployShape
    from e2rnas.space.genotypes import GENOTYPES, Genotype
    from e2rnas.space.latency_table import LatencyTable

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with the CIFAR-10/MNIST .npz")
    ap.add_argument("--out", type=Path, default=Path("runs/quality"))
    ap.add_argument("--seeds", default="0,1", help="search seeds (comma list)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"searched methods (comma list; also {', '.join(REDERIVED)}: a re-derivation of another's "
                         "search, which must be on disk or earlier in the list)")
    ap.add_argument("--random", type=int, default=8, help="random genotypes that meet the budget")
    ap.add_argument("--random-seed", type=int, default=1234)
    ap.add_argument("--scale", choices=tuple(SCALES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-epochs", type=int, help="override the scale's retrain epochs")
    ap.add_argument("--steps-per-epoch", type=int, help="override the scale's search steps per epoch")
    ap.add_argument("--no-published", action="store_true", help="leave the shipped genotypes out")
    ap.add_argument("--part", choices=("all", "searched", "random"), default="all",
                    help="run only this part of the entries (two processes of one thread each share 2 cores better "
                         "than one of two; the last to finish writes the whole table)")
    ap.add_argument("--threads", type=int, help="torch threads of this process (default: torch's)")
    ap.add_argument("--remeasure-latency", action="store_true",
                    help="time every finished entry's ONNX file again, one after another (run it on an idle machine: "
                         "latencies timed while other entries train are not comparable)")
    args = ap.parse_args(argv)
    scale = SCALES[args.scale]
    if args.train_epochs:
        scale = replace(scale, train_epochs=args.train_epochs)
    if args.steps_per_epoch:
        scale = replace(scale, steps_per_epoch=args.steps_per_epoch)
    for f in ("cifar10_train_10k.npz", "cifar10_test.npz", "mnist_test_32x32x3.npz"):
        if not (args.data / f).is_file():
            raise SystemExit(f"error: {args.data / f} not found; pass --data with the shared CIFAR-10/MNIST .npz files")
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.txt"

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        with log_path.open("a") as fh:
            fh.write(line + "\n")

    t_start = time.time()
    shape = DeployShape(layers=scale.deploy_layers, C=scale.deploy_C, num_classes=10, input_size=scale.image_size)
    lut_path = out / "lut.json"
    if not lut_path.is_file():
        log("measuring the CPU latency table of the deploy network")
        measure_latency_table(shape=shape, target="cpu").save(lut_path)
    table = LatencyTable.load(lut_path)
    b = _read(out / "budget.json") or budget(scale, lut_path)
    _write_json(out / "budget.json", b)
    log(f"budget: L {b['L']} M params (floor {b['params_floor']}), F {b['F']} M MACs, T {b['T']} ms; "
        f"at most {b['max_normal_free_ops']} pools/skips in the normal cell")
    model = CostModel(shape)
    costs = deploy_costs(model, params_bound_m=b["L"], params_floor=b["params_floor"], macs_bound_m=b["F"],
                         latency_table=table, latency_bound_ms=b["T"])

    entries: list[dict[str, Any]] = []
    draws = sample_feasible(costs, model.primitives, n=args.random, seed=args.random_seed,
                            max_free_normal=b["max_normal_free_ops"])
    log(f"random: {args.random} genotypes, acceptance {draws.acceptance:.2e} of {draws.proposed} uniform proposals")
    seeds, methods = args.seeds.split(","), args.methods.split(",")
    # first seed, the random networks, then the other seeds: a study stopped early is still a comparison
    work = [(f"{m}-s{seeds[0]}", m, "search", int(seeds[0])) for m in methods]
    work += [(f"random-{i}", "random", g, None) for i, g in enumerate(draws.genotypes)]
    work += [(f"{m}-s{s}", m, "search", int(s)) for s in seeds[1:] for m in methods]
    if not args.no_published:
        for name, g in GENOTYPES.items():
            if not _violations(g, costs, model.primitives):
                work.append((f"published-{name}", "published", g, None))
    log(f"{len(work)} entries: " + ", ".join(w[0] for w in work))
    mine = [w for w in work if args.part == "all" or (w[2] == "search") == (args.part == "searched")]
    if args.remeasure_latency:
        mine = []
        for name, *_ in work:
            path = out / "entries" / name / "result.json"
            if (result := _read(path)) is not None:
                result["ort_p50_ms"] = ort_latency(out / "entries" / name / "train" / "model.pt", scale.image_size,
                                                   path.parent)
                result["latency_timed"] = "alone, after the study (--remeasure-latency)"
                _write_json(path, result)
                log(f"{name}: ORT p50 {result['ort_p50_ms']:.3f} ms")
    for name, group, what, seed in mine:
        if what == "search":
            folder = out / "search" / name
            summary = _read(folder / "summary.json")
            if summary is None and group in REDERIVED:
                base, caps = REDERIVED[group]
                summary = rederive(out / "search" / f"{base}-s{seed}", folder, costs=costs, primitives=model.primitives,
                                   b=b, caps=caps)
                log(f"re-derived {name} from {base}-s{seed} with {caps}: {summary['genotype_text']}")
                same = _read(out / "entries" / f"{base}-s{seed}" / "result.json")
                if same is not None and same["genotype"] == summary["genotype"] and not (
                        out / "entries" / name / "result.json").is_file():
                    # the caps changed nothing: the same genotype, the same retrain (same seed), not run twice
                    _write_json(out / "entries" / name / "result.json",
                                same | {"name": name, "same_genotype_as": f"{base}-s{seed}"})
                    log(f"{name}: the same genotype as {base}-s{seed}; its result is reused")
            if summary is None:
                t0 = time.time()
                cfg = search_config(scale, b, args.data.resolve(), lut_path.resolve(), group, seed, args.device)
                summary = run_search(cfg, out_dir=folder, resume=(folder / "checkpoint.pt").is_file())
                log(f"search {name}: {time.time() - t0:.0f} s, warnings {summary['warnings']}")
            genotype = Genotype.from_dict(summary["genotype"])
        else:
            genotype = what
        retrain_and_eval(name, genotype, scale=scale, data=args.data.resolve(), out=out, device=args.device,
                         lut_table=table, log=log)
    entries, pending = [], []
    for name, group, what, seed in work:  # every entry on disk, whichever process made it
        result = _read(out / "entries" / name / "result.json")
        if result is None:
            pending.append(name)
            continue
        extra: dict[str, Any] = {}
        if what == "search":
            summary = _read(out / "search" / name / "summary.json")
            extra = {"search_seed": seed, "derivation_gap": summary["derivation_gap"],
                     "search_dir": str(out / "search" / name), "search_val_accuracy": summary["val_accuracy"],
                     "search_warnings": summary["warnings"]}
        entries.append(result | {"group": group} | extra)
    results = {"budget": b, "scale": asdict(scale), "random_acceptance": draws.acceptance, "entries": entries,
               "pending": pending, "seconds_this_process": round(time.time() - t_start, 1),
               "command": "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    _write_json(out / "quality.json", results)
    if pending:
        log(f"not yet on disk (another process, or a later run): {', '.join(pending)}")
    text = tables(results)
    atomic_write_text(out / "quality.md", text + "\n")
    pareto_plot(results, out / "pareto.png")
    print(text)
    log(f"done in {time.time() - t_start:.0f} s: {out / 'quality.md'}, {out / 'pareto.png'}")


if __name__ == "__main__":
    main()
