"""Did the search pay off? Random genotypes of the same budget, retrained and evaluated like the searched one.

``run_baseline(run_dir, n=N)`` reads a run directory of ``e2rnas run`` (its search summary and config, the train
stage's ``config.yaml`` and the eval stage's ``eval.json``), draws N genotypes uniformly among those that meet the
search's budget and cell caps (``e2rnas.search.random_genotypes``), retrains each with the searched network's own
train settings (same schedule, data and seed) under ``baseline/random-K/`` and evaluates it with the same protocol
and data. ``baseline/baseline.json`` holds every network's metrics and the searched network's rank among all N + 1
on accuracy, PGD accuracy and OoD AUPR (1 = best; ties share the better rank). A rerun continues: finished networks
are kept, a stopped retrain resumes from its checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from e2rnas._io import atomic_write_json
from e2rnas.errors import E2RNASError

#: metric key in eval.json's result -> label; higher is better for each
RANKED = {"clean_acc": "test accuracy", "pgd_acc": "PGD accuracy", "aupr_out": "OoD AUPR"}


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    cost = result.get("cost") or {}
    return {"clean_acc": result.get("clean_acc"), "pgd_acc": result.get("pgd_acc"),
            "aupr_out": (result.get("ood") or {}).get("aupr_out"),
            "params_m": cost["params"] / 1e6 if "params" in cost else None,
            "macs_m": cost["macs"] / 1e6 if "macs" in cost else None}


def rank(value: float | None, others: list[float | None]) -> int | None:
    """1 + how many of ``others`` are strictly better (higher): 1 is best of len(others) + 1."""
    if value is None:
        return None
    return 1 + sum(o is not None and o > value for o in others)


def rank_line(baseline: dict[str, Any]) -> str:
    """One line: where the searched network ranks among searched + random on each metric."""
    total = len(baseline["random"]) + 1
    parts = [f"{RANKED[k]} {r}/{total}" for k, r in baseline["ranks"].items() if r is not None]
    return (f"searched network's rank among itself and {total - 1} random networks of the same budget "
            f"(1 = best): " + ", ".join(parts))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise E2RNASError(f"the baseline needs {path} ({what}); run `e2rnas run` up to its eval stage first")
    return json.loads(path.read_text())


def _budget_costs(run: Path):
    """The search's exact additive costs with its bounds, and its normal-cell caps."""
    import yaml

    from e2rnas.search.derive import deploy_costs
    from e2rnas.space.cost import CostModel, DeployShape

    summary = _read_json(run / "search" / "summary.json", "the search summary")
    cfg = (yaml.safe_load((run / "search" / "config.yaml").read_text()) or {}).get("search", {})
    model = CostModel(DeployShape(**summary["deploy_shape"]))
    table = None
    if summary.get("lut"):
        from e2rnas.space.latency_table import LatencyTable

        table = LatencyTable.load(summary["lut"])
    costs = deploy_costs(model, params_bound_m=summary["params_bound_m"], params_floor=summary.get("params_floor"),
                         macs_bound_m=summary["flops_bound_m"], latency_table=table,
                         latency_bound_ms=summary.get("latency_bound_ms"))
    skips = cfg.get("pdarts_max_skips") if cfg.get("method") == "p-darts" else cfg.get("max_normal_skips")
    return model, costs, skips, cfg.get("max_normal_free_ops")


def _train_config(run: Path):
    import yaml

    from e2rnas.train.trainer import TrainConfig

    path = run / "train" / "config.yaml"
    if not path.is_file():
        raise E2RNASError(f"the baseline needs {path} (the searched network's train settings); run `e2rnas run` "
                          f"up to its train stage first")
    saved = yaml.safe_load(path.read_text()) or {}
    names = {f.name for f in fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def _eval_settings(evaluation: dict[str, Any]):
    from e2rnas.evaluation.evaluate import EvalProtocol

    names = {f.name for f in fields(EvalProtocol)}
    proto = {k: v for k, v in (evaluation.get("protocol") or {}).items() if k in names}
    data = evaluation.get("data") or {}
    return EvalProtocol(**proto), {"dataset": data.get("dataset"), "test_dataset": data.get("test_dataset"),
                                   "ood_dataset": data.get("ood_dataset") or "none"}


def run_baseline(run_dir: str | Path, *, n: int, seed: int = 0, progress: bool = False,
                 on_network: Any = None) -> dict[str, Any]:
    """Retrain and evaluate ``n`` random genotypes of the run's budget; write and return ``baseline.json``."""
    from e2rnas.evaluation.evaluate import evaluate_file
    from e2rnas.search.random_genotypes import sample_feasible
    from e2rnas.space.genotypes import Genotype
    from e2rnas.train.trainer import train

    run = Path(run_dir)
    if n < 1:
        raise E2RNASError(f"--baseline needs at least 1 random network, got {n}")
    model, costs, skips, free = _budget_costs(run)
    train_cfg = _train_config(run)
    searched_eval = _read_json(run / "eval" / "eval.json", "the searched network's evaluation")
    protocol, data = _eval_settings(searched_eval)
    draws = sample_feasible(costs, model.primitives, n=n, seed=seed, max_skips_normal=skips, max_free_normal=free)
    out = run / "baseline"
    networks = []
    for k, genotype in enumerate(draws.genotypes):
        folder = out / f"random-{k}"
        result_path = folder / "eval.json"
        if result_path.is_file() and Genotype.from_dict(json.loads(result_path.read_text())["genotype"]) == genotype:
            result = json.loads(result_path.read_text())
        else:
            if not (folder / "model.pt").is_file():
                train(train_cfg, genotype=genotype, out_dir=folder, resume=(folder / "checkpoint.pt").is_file(),
                      progress=progress)
            result = evaluate_file(folder / "model.pt", out_dir=folder, protocol=protocol, device=train_cfg.device,
                                   progress=progress, **data)
        networks.append({"name": f"random-{k}", "genotype": genotype.to_dict(), **_metrics(result),
                         "exact": {c.name: c.of(genotype, model.primitives) for c in costs}})
        if on_network:
            on_network(networks[-1])
    searched = {"name": "searched", **_metrics(searched_eval)}
    ranks = {key: rank(searched[key], [r[key] for r in networks]) for key in RANKED}
    baseline = {"n": n, "seed": seed, "sampler": "uniform over the genotypes meeting the search's bounds and caps "
                "(rejection from the uniform proposal)", "acceptance": draws.acceptance,
                "bounds": [c.describe_bound() for c in costs if c.upper is not None or c.lower is not None],
                "searched": searched, "random": networks, "ranks": ranks,
                "train": str(run / "train" / "config.yaml"), "protocol": protocol.as_dict()}
    baseline["line"] = rank_line(baseline)
    atomic_write_json(out / "baseline.json", baseline)
    return baseline
