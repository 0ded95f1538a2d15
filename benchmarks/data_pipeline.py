"""Training data per second: the in-memory path (whole-batch augmentation) against the DataLoader path
(transforms.v2 per image, 0..N worker processes), with and without the model's training step. Prints a table.

    python benchmarks/data_pipeline.py                      # digits 16px (embedded default) and CIFAR-10 10k 32px
    python benchmarks/data_pipeline.py --workers 0,2 --epochs 1

Augmentation is crop (pad), flip and cutout, as `e2rnas train`. The model rows train the embedded-default network
(8 cells, C=16) for the given number of batches.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from e2rnas.data import augment, batches, load_dataset
from e2rnas.train.loader import ImageSetDataset, train_loader, train_transform

CIFAR = Path("/work/shared/data/cifar10_train_10k.npz")


def data_only(data, *, loader: str, workers: int, batch: int, pad: int, cutout: int) -> float:
    """Images per second of augmented batches, no model."""
    fill = tuple(0.5 for _ in range(3))
    t0, n = time.perf_counter(), 0
    if loader == "memory":
        gen = torch.Generator().manual_seed(0)
        for x, _ in batches(data, batch, shuffle=True, generator=gen, drop_last=True):
            augment(x, generator=gen, pad=pad, flip=True, cutout=cutout, cutout_fill=fill)
            n += len(x)
    else:
        ds = ImageSetDataset(data, train_transform(pad=pad, flip=True, cutout=cutout, fill=fill))
        for x, _ in train_loader(ds, batch_size=batch, seed=0, epoch=0, workers=workers):
            n += len(x)
    return n / (time.perf_counter() - t0)


def with_model(data, *, loader: str, workers: int, batch: int, steps: int) -> float:
    """Images per second of training steps (embedded-default network) fed by the path."""
    from e2rnas.space.genotypes import GENOTYPES
    from e2rnas.space.network import Network

    torch.manual_seed(0)
    model = Network(GENOTYPES["DARTS_V2"], 16, 8, int(data.num_classes), input_size=data.image_size).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    fill = (0.5, 0.5, 0.5)
    if loader == "memory":
        gen = torch.Generator().manual_seed(0)
        source = ((augment(x, generator=gen, pad=2, flip=True, cutout=4, cutout_fill=fill), y)
                  for x, y in batches(data, batch, shuffle=True, generator=gen, drop_last=True))
    else:
        ds = ImageSetDataset(data, train_transform(pad=2, flip=True, cutout=4, fill=fill))
        source = iter(train_loader(ds, batch_size=batch, seed=0, epoch=0, workers=workers))
    t0, n = time.perf_counter(), 0
    for step, (x, y) in enumerate(source):
        if step >= steps:
            break
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="training steps in the model rows")
    args = ap.parse_args()
    sets = [("digits 16px", load_dataset("digits", split="train"), 2, 4)]
    if CIFAR.is_file():
        sets.append(("CIFAR-10 10k 32px", load_dataset(f"npz:{CIFAR}", split="all"), 4, 16))
    load = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").is_file() else "?"
    print(f"# {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, load average {load}")
    print("| data | path | workers | augmented img/s | training img/s (embedded net) |")
    print("|---|---|---|---|---|")
    for name, data, pad, cutout in sets:
        paths = [("memory", 0)] + [("dataloader", int(w)) for w in args.workers.split(",")]
        for loader, workers in paths:
            aug = data_only(data, loader=loader, workers=workers, batch=args.batch, pad=pad, cutout=cutout)
            train = with_model(data, loader=loader, workers=workers, batch=args.batch, steps=args.steps) \
                if name.startswith("digits") else float("nan")
            print(f"| {name} | {loader} | {workers if loader != 'memory' else '-'} | {aug:.0f} | "
                  f"{train:.0f} |", flush=True)


if __name__ == "__main__":
    main()
