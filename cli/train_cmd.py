"""``e2rnas train``: retrain a genotype (built-in name, genotype.json or search run directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table

TestDataset = Annotated[str | None, typer.Option(
    "--test-dataset", help="Separate test set (e.g. npz:PATH); default: the data set's test split (npz: 20% carve).")]
OodWeight = Annotated[float | None, typer.Option("--ood-weight", help="Weight of the OoD loss KL(U || p).")]
Lr = Annotated[float | None, typer.Option("--lr", help="Initial SGD learning rate (cosine schedule).")]
MaxBatches = Annotated[int | None, typer.Option("--max-train-batches", help="Cap on batches per epoch (tests).")]
ValFraction = Annotated[float | None, typer.Option(
    "--val-fraction", help="Hold out this fraction for model selection (best validation epoch); 0 trains on all "
    "training images and keeps the last epoch (the paper preset).")]
Amp = Annotated[str | None, typer.Option(
    "--amp", help="Precision on CUDA: off (fp32, TF32 off), auto (TF32: fastest measured, docs/amp.md), tf32, "
    "bf16 (autocast) or fp16 (autocast + gradient scaler); recorded in config.yaml.")]

Loader = Annotated[str | None, typer.Option(
    "--loader", help="memory (whole-batch augmentation in-process; fastest on small images) or dataloader "
    "(torch DataLoader, transforms.v2 per image, --workers, pinned memory on CUDA; imagefolder: sets stream from "
    "disk).")]
Workers = Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes (--loader dataloader).")]


def _run_name(ref: str) -> str:
    path = Path(ref)
    if path.is_dir():
        return path.resolve().name
    return path.stem if path.suffix else ref


def train(
    genotype: Annotated[str, typer.Argument(help="Built-in genotype name, genotype.json or search run directory.")],
    preset: opt.Preset = "embedded-default", config: opt.ConfigFile = None, epochs: opt.Epochs = None,
    layers: opt.Layers = None, channels: opt.Channels = None, batch_size: opt.BatchSize = None, lr: Lr = None,
    dataset: opt.Dataset = None, test_dataset: TestDataset = None, ood_dataset: opt.OodDataset = None,
    ood_weight: OodWeight = None, image_size: opt.ImageSize = None, data_dir: opt.DataDir = None,
    download: opt.Download = None, seed: opt.Seed = None, device: opt.Device = None, out: opt.Out = None,
    resume: opt.Resume = False, max_train_batches: MaxBatches = None, val_fraction: ValFraction = None,
    amp: Amp = None, loader: Loader = None, workers: Workers = None, print_config: opt.PrintConfig = False,
    tracker: opt.Tracker = None, json: opt.Json = False,
) -> None:
    """Retrain a genotype from scratch; model selection on a validation split, test accuracy reported once."""
    from e2rnas.cli._config import build_config, print_resolved
    from e2rnas.space.genotypes import resolve_genotype
    from e2rnas.train.trainer import TrainConfig, search_meta
    from e2rnas.train.trainer import train as run_train

    g = resolve_genotype(genotype)
    out_dir = out or Path("runs") / f"train-{_run_name(genotype)}"
    # a resumed run continues with its own settings; a flag or file that says otherwise is an error
    run_config = out_dir / "config.yaml" if resume and (out_dir / "config.yaml").is_file() else None
    overrides = dict(epochs=epochs, layers=layers, C=channels, batch_size=batch_size, lr=lr, dataset=dataset,
                     test_dataset=test_dataset, ood_dataset=ood_dataset, ood_weight=ood_weight, image_size=image_size,
                     data_dir=str(data_dir) if data_dir else None, download=download, seed=seed,
                     device=opt.resolve_device(device) if device else None,
                     max_train_batches=max_train_batches, val_fraction=val_fraction, amp=amp, loader=loader,
                     workers=workers)
    cfg = build_config(TrainConfig, preset=preset, section="train", config_file=config, overrides=overrides,
                       run_config=run_config)
    opt.resolve_device(cfg.device)  # a device from the preset or --config must exist here too
    if print_config:
        print_resolved(cfg, section="train")
        return
    import dataclasses

    from e2rnas.run.tracking import log_record, open_tracker

    with open_tracker(tracker, run_dir=out_dir, config=dataclasses.asdict(cfg)) as track:
        summary = run_train(cfg, genotype=g, out_dir=out_dir, resume=resume, progress=not json,
                            search_meta=search_meta(genotype),
                            callback=lambda rec: log_record(track, rec, step=rec["epoch"], prefix="train/"))
    if json:
        print_json(summary)
        return
    s = summary["samples"]
    print_table(f"Trained {genotype}", ["setting", "value"], [
        ["network", f"{cfg.layers} cells, C={cfg.C}, aux head {'on' if cfg.auxiliary else 'off'}"],
        ["data", f"{cfg.dataset} ({s['train']} train / {s['val']} val); OoD loss: {cfg.ood_dataset or 'off'}"],
        ["epochs", f"{cfg.epochs}; selected: {summary['selection']}, epoch {summary['best_epoch']}"],
        ["best val acc (%)", "-" if summary["best_val_acc"] is None else f"{100 * summary['best_val_acc']:.2f}"],
        ["test acc (%)", f"{100 * summary['test_acc']:.2f} on {s['test']} images of {summary['test_dataset']}"],
        ["params (M, no aux)", f"{summary['params'] / 1e6:.4f}"],
        ["MACs (M)", f"{summary['macs'] / 1e6:.2f}"],
        ["wall time (s)", f"{summary['wall_s_this_run']:.1f}"],
    ])
    console.print(f"model: {summary['model']}  (evaluate with: e2rnas eval {summary['model']})", highlight=False)
