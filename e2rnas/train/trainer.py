"""Retrain a genotype from scratch (the DARTS evaluation protocol), with an optional OoD loss.

Model selection uses a held-out validation split of the training data; the test set is read once, at the end,
to report the selected model. A run directory holds ``config.yaml``, ``genotype.json``, ``metrics.jsonl``,
``checkpoint.pt`` (every epoch, atomic, enough to resume bit-for-bit on the same device), ``model.pt`` (the best
validation epoch) and ``summary.json``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from e2rnas._io import append_jsonl, atomic_torch_save, atomic_write_json, atomic_write_text, read_jsonl, torch_load
from e2rnas._outdir import check_dir, owned_dir
from e2rnas._provenance import provenance
from e2rnas.data import (
    ImageSet,
    augment,
    batches,
    load_dataset,
    normalization_for,
    require_classes,
    require_nonempty,
    resize,
    split_indices,
    split_parts,
)
from e2rnas.distributed import DistInfo, RunLock, barrier, local_device, mean_all_reduce, shard
from e2rnas.distributed import init as init_distributed
from e2rnas.errors import E2RNASError
from e2rnas.imagefolder import FolderIndex, one_line_errors
from e2rnas.model_io import NetworkSpec, load_model, save_model
from e2rnas.space.genotypes import Genotype
from e2rnas.space.network import VARIANTS, Network, count_macs, count_params
from e2rnas.train.amp import AMP_MODES, Precision, make_precision, resolve_amp

log = logging.getLogger(__name__)

#: Data sets with no split of their own; they are split per class, 80% train / 20% test, with a fixed seed.
SPLITLESS = ("npz", "imagefolder")
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0
VAL_SPLIT_SEED = 1
CHECKPOINT_FORMAT = "e2rnas.checkpoint/1"
#: Config fields that may change when a run is resumed (they do not change the numbers).
_RESUMABLE_CHANGES = ("device",)


@dataclass(frozen=True)
class TrainConfig:
    """Retraining settings; the defaults are the DARTS protocol (20 cells, C=36, 600 epochs, batch 96, ...)."""

    dataset: str = "cifar10"
    ood_dataset: str | None = None  # None: no OoD loss
    ood_weight: float = 0.5
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None  # None: the data set's own size
    test_dataset: str | None = None  # None: the data set's test split (or a 20% carve of a split-less set)
    layers: int = 20
    C: int = 36
    epochs: int = 600
    batch_size: int = 96
    lr: float = 0.025
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int = 16
    crop_pad: int = 4
    flip: bool = True
    drop_path: float = 0.2  # final value; ramped linearly from 0 over the epochs
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    max_train_batches: int | None = None  # cap per epoch, for tests and benchmarks
    variant: str = "cifar"
    # off (fp32, TF32 off) | auto (tf32 on CUDA) | tf32 | bf16 | fp16; CUDA only but off (e2rnas.train.amp)
    amp: str = "off"
    # memory (whole-batch augmentation in-process) | dataloader (transforms.v2, workers; image folders stream from disk)
    loader: str = "memory"
    workers: int = 0  # DataLoader worker processes (--loader dataloader)

    def __post_init__(self) -> None:
        checks = [
            (self.layers >= 3, f"layers must be >= 3, got {self.layers}"),
            (self.C >= 2, f"C must be >= 2, got {self.C}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (BatchNorm), got {self.batch_size}"),
            (self.lr > 0 and self.lr_min >= 0, f"lr must be > 0 and lr_min >= 0, got {self.lr}, {self.lr_min}"),
            (0 <= self.drop_path < 1, f"drop_path must be in [0, 1), got {self.drop_path}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.ood_weight >= 0, f"ood_weight must be >= 0, got {self.ood_weight}"),
            (self.max_train_batches is None or self.max_train_batches >= 1, "max_train_batches must be >= 1"),
            (self.image_size is None or self.image_size >= 8, f"image_size must be >= 8, got {self.image_size}"),
            (self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}"),
            (self.loader in ("memory", "dataloader"), f"loader must be memory or dataloader, got {self.loader!r}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.amp in AMP_MODES, f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise E2RNASError(f"bad train setting: {message}")


def load_split(spec: str, split: str, *, data_dir: str | Path | None = None, download: bool = False,
               image_size: int | None = None, stream: bool = False, workers: int = 0) -> ImageSet | FolderIndex:
    """The ``train`` or ``test`` part of a data set (``stream``: an image folder as a ``FolderIndex``).

    ``npz:`` and ``imagefolder:`` sets have no split of their own: 20% of each class (seed 0) is the test part,
    so that training and evaluation never share an image unless a separate test set is named.
    """
    kw: dict[str, Any] = dict(data_dir=data_dir, download=download, image_size=image_size, stream=stream,
                              workers=workers)
    if spec.partition(":")[0] not in SPLITLESS:
        return load_dataset(spec, split=split, **kw)
    data = load_dataset(spec, split="all", **kw)
    train_idx, test_idx = split_indices(data.y.numpy(), TEST_FRACTION, TEST_SPLIT_SEED)
    return data.subset(train_idx if split == "train" else test_idx)


def load_train_set(dataset: str, test_dataset: str | None, *, data_dir: str | Path | None = None,
                   download: bool = False, image_size: int | None = None, stream: bool = False,
                   workers: int = 0) -> ImageSet | FolderIndex:
    """All of a split-less file when a separate test set is named, else the data set's train part."""
    kw: dict[str, Any] = dict(data_dir=data_dir, download=download, image_size=image_size, stream=stream,
                              workers=workers)
    if test_dataset and dataset.partition(":")[0] in SPLITLESS:
        return load_dataset(dataset, split="all", **kw)
    return load_split(dataset, "train", **kw)


def load_test_set(dataset: str, test_dataset: str | None, *, data_dir: str | Path | None = None,
                  download: bool = False, image_size: int | None = None, stream: bool = False,
                  workers: int = 0) -> ImageSet | FolderIndex:
    """A separate test file when one is named (all of it), else the data set's test part."""
    kw: dict[str, Any] = dict(data_dir=data_dir, download=download, image_size=image_size, stream=stream,
                              workers=workers)
    if test_dataset:
        return load_dataset(test_dataset, split="all" if test_dataset.partition(":")[0] in SPLITLESS else "test",
                            **kw)
    return load_split(dataset, "test", **kw)


@dataclass(frozen=True)
class _Data:
    train: ImageSet | FolderIndex
    val: ImageSet | FolderIndex | None
    test: ImageSet | FolderIndex
    ood: ImageSet | None  # in memory: the OoD loss draws random images every step
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _load_data(cfg: TrainConfig) -> _Data:
    """The run's data; with ``--loader dataloader`` image folders stream from disk (train, val and test parts)."""
    kw: dict[str, Any] = dict(data_dir=cfg.data_dir, download=cfg.download, image_size=cfg.image_size)
    stream = dict(stream=cfg.loader == "dataloader", workers=cfg.workers)
    full = load_train_set(cfg.dataset, cfg.test_dataset, **kw, **stream)
    train, val = full, None
    fix = f"use more images, a smaller --batch-size than {cfg.batch_size} or another --val-fraction"
    if cfg.val_fraction > 0:
        train, val = split_parts(full, cfg.val_fraction, seed=VAL_SPLIT_SEED, names=("training", "validation"),
                                 min_sizes=(cfg.batch_size, 1), what=f"training data {cfg.dataset}", fix=fix)
    else:
        require_classes(full, what=f"training data {cfg.dataset}")
        if len(full) < cfg.batch_size:
            raise E2RNASError(f"training data {cfg.dataset}: {len(full)} images do not fill one batch of "
                              f"{cfg.batch_size}; {fix}")
    test = load_test_set(cfg.dataset, cfg.test_dataset, **kw, **stream)
    require_nonempty(test, f"test part of {cfg.test_dataset or cfg.dataset}")
    if test.image_size != train.image_size:
        raise E2RNASError(f"test images are {test.image_size}px but training images {train.image_size}px; "
                          "pass --image-size to resize both")
    if int(test.y.max()) >= full.num_classes:
        raise E2RNASError(f"test set {test.name} has label {int(test.y.max())}, but {cfg.dataset} has "
                          f"{full.num_classes} classes")
    ood = load_split(cfg.ood_dataset, "train", **kw) if cfg.ood_dataset else None
    if ood is not None and ood.image_size != train.image_size:
        ood = resize(ood, train.image_size)  # OoD images are only inputs: match the network's resolution
    mean, std = normalization_for(cfg.dataset, train)
    return _Data(train, val, test, ood, tuple(mean), tuple(std))


def ood_uniform_loss(logits: torch.Tensor) -> torch.Tensor:
    """KL(U || softmax(logits)), averaged over the batch: pushes OoD inputs towards a flat prediction."""
    return -F.log_softmax(logits, dim=1).mean(dim=1).mean() - math.log(logits.shape[1])


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: ImageSet | FolderIndex, *, device: str | torch.device = "cpu",
             batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode (restores the training mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    for x, y in batches(data, batch_size, shuffle=False):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    state = {"generator": gen.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


class _Progress:
    """Rich progress on stderr (stdout stays clean for ``--json``); a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, epochs: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.3f} acc {task.fields[acc]:.3f} "
                                       "lr {task.fields[lr]:.4g}"),
                            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.task = self.bar.add_task("train", total=total, loss=float("nan"), acc=0.0, lr=0.0)
        self.epochs = epochs

    def __enter__(self) -> _Progress:
        if self.enabled:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)

    def step(self, epoch: int, loss: float, acc: float, lr: float) -> None:
        if self.enabled:
            self.bar.update(self.task, advance=1, description=f"epoch {epoch + 1}/{self.epochs}", loss=loss,
                            acc=acc, lr=lr)

    def epoch(self, rec: dict[str, Any]) -> None:
        if self.enabled:
            val = "-" if rec["val_acc"] is None else f"{rec['val_acc']:.4f}"
            self.bar.console.print(
                f"epoch {rec['epoch']}/{self.epochs} loss {rec['train_loss']:.4f} acc {rec['train_acc']:.4f} "
                f"val {val} lr {rec['lr']:.3g} dp {rec['drop_path']:.3f} {rec['time_s']:.1f}s"
                + (" best" if rec["best"] else ""),
                highlight=False)


def train(config: TrainConfig, *, genotype: Genotype, out_dir: Path, resume: bool = False, progress: bool = True,
          search_meta: dict[str, Any] | None = None,
          callback: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``genotype`` under ``config`` in ``out_dir``; return the summary (also written to summary.json).

    ``callback(record)`` runs after each epoch's checkpoint is on disk (an exception there stops the run with
    everything needed for ``resume=True``).
    """
    cfg = config
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    check_dir(out_dir, command="train")
    if resume and not ckpt_path.is_file():
        raise E2RNASError(f"nothing to resume: {ckpt_path} does not exist; run without --resume")
    if not resume and ckpt_path.is_file():
        raise E2RNASError(f"{out_dir} already holds a training run; pass --resume to continue it or choose "
                          "another --out")
    info = init_distributed(cfg.device)
    if info.active and cfg.batch_size % info.world_size:
        raise E2RNASError(f"batch_size {cfg.batch_size} must be a multiple of the {info.world_size} processes "
                          f"(each trains on an equal slice of every global batch)")
    try:
        device = torch.device(local_device(cfg.device, info))
    except RuntimeError as exc:
        raise E2RNASError(f"unknown device {cfg.device!r}: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise E2RNASError(f"device {cfg.device} asked for, but CUDA is not available; use --device cpu")
    cfg = replace(cfg, amp=resolve_amp(cfg.amp, device))  # config.yaml records the precision that ran
    prec = make_precision(cfg.amp, device)

    data = _load_data(cfg)
    spec = NetworkSpec(C=cfg.C, layers=cfg.layers, num_classes=data.train.num_classes,
                       input_size=data.train.image_size, auxiliary=cfg.auxiliary, variant=cfg.variant,
                       mean=data.mean, std=data.std)
    torch.manual_seed(cfg.seed)
    model = spec.build(genotype).to(device)
    forward = _data_parallel(model, info, device)
    with owned_dir(out_dir, command="train", enabled=info.main), RunLock(out_dir, enabled=info.main):
        return _train(cfg, genotype=genotype, out_dir=out_dir, resume=resume, progress=progress and info.main,
                      search_meta=search_meta, callback=callback if info.main else None, info=info, device=device,
                      prec=prec, data=data, spec=spec, model=model, forward=forward)


class _TrainForward(torch.nn.Module):
    """``forward`` = the network's ``forward_train`` (logits, auxiliary logits), so that DDP wraps what trains."""

    def __init__(self, net: Network):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Any:
        return self.net.forward_train(x)


def _data_parallel(model: Network, info: DistInfo, device: torch.device) -> Any:
    """DistributedDataParallel around the training forward (gradients all-reduced in backward), or None."""
    if not info.active:
        return None
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(_TrainForward(model), device_ids=[device.index] if device.type == "cuda" else None)


def _train(cfg: TrainConfig, *, genotype: Genotype, out_dir: Path, resume: bool, progress: bool,
           search_meta: dict[str, Any] | None, callback: Callable[[dict[str, Any]], None] | None, info: DistInfo,
           device: torch.device, prec: Any, data: _Data, spec: NetworkSpec, model: Network, forward: Any
           ) -> dict[str, Any]:
    ckpt_path = out_dir / "checkpoint.pt"
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs, eta_min=cfg.lr_min)
    gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch, best = 0, {"epoch": None, "val_acc": -1.0}
    if resume:
        start_epoch, best = _restore(ckpt_path, cfg, genotype, model, optimizer, scheduler, gen, device,
                                     scaler=prec.scaler, world_size=info.world_size)
        finished = _finished_summary(out_dir, start_epoch, cfg)
        if finished is not None:  # resuming a finished run changes nothing, its summary's provenance included
            return finished
        if info.main:
            kept = [r for r in read_jsonl(out_dir / "metrics.jsonl") if r.get("epoch", 0) <= start_epoch]  # from 1
            atomic_write_text(out_dir / "metrics.jsonl", "".join(_jsonl(r) for r in kept))
    elif info.main:
        import yaml

        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(_config_dict(cfg) | {"world_size": info.world_size},
                                                                  sort_keys=False))
        genotype.save(out_dir / "genotype.json")
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)

    data_meta = {"dataset": cfg.dataset, "ood_dataset": cfg.ood_dataset, "test_dataset": cfg.test_dataset,
                 "image_size": data.train.image_size, "num_classes": data.train.num_classes,
                 "data_dir": cfg.data_dir, "val_fraction": cfg.val_fraction,
                 "splits": {"train": len(data.train), "val": len(data.val) if data.val else 0,
                            "test": len(data.test)}}
    n_batches = len(data.train) // cfg.batch_size
    if cfg.max_train_batches:
        n_batches = min(n_batches, cfg.max_train_batches)
    prov = provenance(gpu=device.type == "cuda")  # in model.pt: which code and command trained it
    t_start = time.perf_counter()
    with _Progress(progress, (cfg.epochs - start_epoch) * n_batches, cfg.epochs) as bar, prec.tf32():
        for epoch in range(start_epoch, cfg.epochs):
            rec = _train_epoch(model, optimizer, data, cfg, gen, device, epoch, bar, prec=prec, info=info,
                               forward=forward)
            scheduler.step()
            rec["val_acc"] = accuracy(model, data.val, device=device) if data.val is not None else None
            log.info("train epoch %d/%d: loss %.4f, train acc %.3f, val acc %s, %.1f s", epoch + 1, cfg.epochs,
                     rec["train_loss"], rec["train_acc"], rec["val_acc"], rec["time_s"])
            score = rec["val_acc"] if rec["val_acc"] is not None else 0.0
            rec["best"] = data.val is None or score > best["val_acc"]
            if rec["best"]:  # no validation split: the last epoch is the selected one
                best = {"epoch": epoch, "val_acc": rec["val_acc"]}
                if info.main:
                    save_model(out_dir / "model.pt", model=model, genotype=genotype, spec=spec, data=data_meta,
                               search=search_meta, provenance=prov)
            if info.main:  # one writer; the others wait until the checkpoint is on disk
                append_jsonl(out_dir / "metrics.jsonl", rec)
                atomic_torch_save(ckpt_path, {
                    "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "config": _config_dict(cfg),
                    "genotype": genotype.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": _rng_state(gen, device), "best": best,
                    "world_size": info.world_size,
                    **({"scaler": prec.scaler.state_dict()} if prec.scaler is not None else {}),
                })
            barrier(info)
            bar.epoch(rec)
            if callback is not None:
                callback(rec)
    return _summarise(out_dir, cfg, genotype, data, best, time.perf_counter() - t_start, device, info=info)


def _jsonl(rec: dict[str, Any]) -> str:
    import json

    return json.dumps(rec) + "\n"


def _train_epoch(model: Network, optimizer: torch.optim.Optimizer, data: _Data, cfg: TrainConfig,
                 gen: torch.Generator, device: torch.device, epoch: int, bar: _Progress,
                 prec: Precision | None = None, info: DistInfo | None = None, forward: Any = None
                 ) -> dict[str, Any]:
    """One epoch. Under torchrun every process draws (and augments) the global batch and trains on its slice."""
    prec = prec or Precision("off", device)
    info = info or DistInfo()
    forward = forward or model.forward_train
    model.train()
    model.drop_path_prob = cfg.drop_path * epoch / cfg.epochs
    lr = optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    total_loss, correct, seen = 0.0, 0, 0
    aug = dict(generator=gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, cutout_fill=data.mean)
    for step, (x, y) in enumerate(_epoch_batches(data, cfg, gen, epoch, info, device)):
        if cfg.max_train_batches and step >= cfg.max_train_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        n = len(x)
        if data.ood is not None:
            idx = torch.randint(len(data.ood), (n * info.world_size,), generator=gen)
            x = torch.cat([x, shard(augment(data.ood.x[idx].float().div_(255), **aug), info).to(device)])
        with prec.autocast():
            logits, aux = forward(x)
            loss = F.cross_entropy(logits[:n], y)
            if aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(aux[:n], y)
            if data.ood is not None:
                loss = loss + cfg.ood_weight * ood_uniform_loss(logits[n:])
        if not torch.isfinite(loss):
            raise E2RNASError(f"the loss became {loss.item()} at epoch {epoch + 1}, batch {step + 1}; the last "
                              "good checkpoint is kept: lower --lr (or the OoD weight) and rerun")
        optimizer.zero_grad(set_to_none=True)
        prec.backward_step(loss, optimizer, model.parameters(), cfg.grad_clip)
        total_loss += loss.item() * n
        correct += int((logits[:n].argmax(1) == y).sum())
        seen += n
        bar.step(epoch, total_loss / seen, correct / seen, lr)
    if info.active:  # the epoch's numbers over every process's slice
        total_loss, correct, seen = (float(v) * info.world_size for v in mean_all_reduce(
            [torch.tensor([total_loss, float(correct), float(seen)], dtype=torch.float64)], info)[0])
    # epochs counted from 1, as the console and the summary's best_epoch
    return {"epoch": epoch + 1, "train_loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
            "lr": lr, "drop_path": model.drop_path_prob, "time_s": round(time.perf_counter() - t0, 3)}


def _epoch_batches(data: _Data, cfg: TrainConfig, gen: torch.Generator, epoch: int, info: DistInfo,
                   device: torch.device) -> Any:
    """This process's augmented training batches: whole-batch augmentation of the global batch, sliced
    (``memory``), or a DataLoader with per-image transforms.v2, workers and a DistributedSampler (``dataloader``)."""
    if cfg.loader == "dataloader":
        from e2rnas.train.loader import image_dataset, train_loader, train_transform

        dataset = image_dataset(data.train, train_transform(pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout,
                                                            fill=data.mean))
        yield from one_line_errors(train_loader(dataset, batch_size=cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                                workers=cfg.workers, pin_memory=device.type == "cuda", info=info))
        return
    aug = dict(generator=gen, pad=cfg.crop_pad, flip=cfg.flip, cutout=cfg.cutout, cutout_fill=data.mean)
    for step, (x, y) in enumerate(batches(data.train, cfg.batch_size, shuffle=True, generator=gen, drop_last=True)):
        if cfg.max_train_batches and step >= cfg.max_train_batches:
            return  # before augmenting: the generator's stream is the same as a loop that stops here
        yield shard(augment(x, **aug), info), shard(y, info)


def _restore(path: Path, cfg: TrainConfig, genotype: Genotype, model: Network, optimizer: torch.optim.Optimizer,
             scheduler: Any, gen: torch.Generator, device: torch.device,
             scaler: Any = None, world_size: int = 1) -> tuple[int, dict[str, Any]]:
    ckpt = torch_load(path, what="training checkpoint", error=E2RNASError, map_location=device,
                      fix=f"it is damaged (a full disk or a copy cut short?): restore it, or train again in a new "
                          f"--out (or delete {path.name} there)")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise E2RNASError(f"{path} is not an e2rnas training checkpoint")
    saved = {"amp": "off"} | dict(ckpt["config"])  # checkpoints from before the amp setting trained in fp32
    changed = sorted(k for k, v in _config_dict(cfg).items() if saved.get(k) != v and k not in _RESUMABLE_CHANGES)
    if changed:
        raise E2RNASError(f"cannot resume {path.parent} with changed settings ({', '.join(changed)}); "
                          "rerun with the run's config.yaml or start a new --out")
    if int(ckpt.get("world_size", 1)) != world_size:
        raise E2RNASError(f"cannot resume: {path} was written by {ckpt.get('world_size', 1)} process(es), this run "
                          f"has {world_size}; resume with the same --nproc-per-node")
    if Genotype.from_dict(ckpt["genotype"]) != genotype:
        raise E2RNASError(f"{path.parent} was trained with another genotype; pass its genotype.json")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    rng["generator"], rng["torch"] = rng["generator"].cpu(), rng["torch"].cpu()
    _set_rng_state(rng, gen, device)
    return int(ckpt["epoch"]), dict(ckpt["best"])


def _finished_summary(out_dir: Path, start_epoch: int, cfg: TrainConfig) -> dict[str, Any] | None:
    """A finished run's summary.json (every epoch done, model.pt written), else None."""
    import json

    path = out_dir / "summary.json"
    if start_epoch < cfg.epochs or not path.is_file() or not (out_dir / "model.pt").is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None  # a damaged summary is written again


def _summarise(out_dir: Path, cfg: TrainConfig, genotype: Genotype, data: _Data, best: dict[str, Any],
               wall_s: float, device: torch.device, info: DistInfo | None = None) -> dict[str, Any]:
    """Test accuracy of the selected (best-validation) model: the only place the test set is read."""
    if not (out_dir / "model.pt").is_file():
        raise E2RNASError(f"{out_dir} has no model.pt; the run stopped before its first epoch ended")
    loaded = load_model(out_dir / "model.pt", device=device)
    summary = {
        "run_dir": str(out_dir), "model": str(out_dir / "model.pt"), "genotype": genotype.to_dict(),
        "epochs": cfg.epochs, "best_epoch": None if best["epoch"] is None else best["epoch"] + 1,
        "best_val_acc": best["val_acc"], "test_acc": accuracy(loaded.model, data.test, device=device),
        "samples": {"train": len(data.train), "val": len(data.val) if data.val else 0, "test": len(data.test),
                    "ood": len(data.ood) if data.ood else 0},
        "dataset": cfg.dataset, "test_dataset": cfg.test_dataset or f"{cfg.dataset} (test part)",
        "ood_dataset": cfg.ood_dataset,
        "params": count_params(loaded.model), "macs": count_macs(loaded.model, input_size=loaded.spec.input_size),
        "wall_s_this_run": round(wall_s, 2), "selection": "best validation accuracy" if data.val is not None
        else "last epoch (val_fraction is 0)",
        "provenance": provenance(gpu=device.type == "cuda"), "world_size": (info or DistInfo()).world_size,
    }
    if (info or DistInfo()).main:
        atomic_write_json(out_dir / "summary.json", summary)
    barrier(info or DistInfo())
    return summary


def search_meta(ref: str | Path) -> dict[str, Any]:
    """Provenance of a genotype for ``model.pt``: the reference, and a search run's ``summary.json`` when it is one."""
    import json

    meta: dict[str, Any] = {"genotype_source": str(ref)}
    summary = Path(ref) / "summary.json"
    if summary.is_file():
        try:
            meta["summary"] = json.loads(summary.read_text())
        except ValueError:
            pass
    return meta

