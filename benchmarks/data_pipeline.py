"""Training data per second: the in-memory path (whole-batch augmentation) against the DataLoader path
(transforms.v2 per image, 0..N worker processes), with and without the model's training step. Prints a table.

    python benchmarks/data_pipeline.py                      # digits 16px (embedded default) and CIFAR-10 10k 32px
    python benchmarks/data_pipeline.py --workers 0,2 --folder-images 0

Augmentation is crop (pad), flip and cutout, as `e2rnas train`. The model rows train the embedded-default network
(8 cells, C=16) for the given number of batches.

A second table compares an image folder (``--folder-images`` 32x32 PNGs written to a temporary folder: CIFAR-10
images when ../shared/data has them, else noise) loaded into memory with the same folder streamed from disk
(``e2rnas.imagefolder``): images/s of two augmented epochs (the in-memory first epoch includes decoding the folder)
and peak RSS (VmHWM) of the process and of its largest worker (forked: it counts the pages it shares), each row
in a fresh process.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from e2rnas.data import augment, batches, load_dataset
from e2rnas.train.loader import ImageSetDataset, image_dataset, train_loader, train_transform

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


def write_folder(root: Path, n: int) -> None:
    """``n`` 32x32 PNGs in 10 class folders: CIFAR-10 images when available (real photos decode like photos)."""
    from PIL import Image

    if CIFAR.is_file():
        with np.load(CIFAR) as d:
            x, y = d["x"][:n], d["y"][:n]
    else:
        x = np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        y = np.arange(n) % 10
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        (root / f"c{int(label)}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{int(label)}" / f"{i:05d}.png")


def _peak_rss_mib(pid: int | str = "self") -> float:
    """VmHWM: the peak resident set of one process (reset at exec, unlike getrusage's ru_maxrss); 0 if gone."""
    try:
        line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0.0
    return int(line.split()[1]) / 1024


def _worker_peak_mib() -> float:
    """The largest VmHWM among this process's children (the DataLoader workers), read while they run."""
    pids = [c for t in Path("/proc/self/task").iterdir() for c in (t / "children").read_text().split()]
    return max((_peak_rss_mib(pid) for pid in pids), default=0.0)


def _folder_epochs(path: str, loader: str, workers: int, batch: int, out: mp.Queue) -> None:
    """In a fresh process: two epochs of augmented batches (img/s each), then peak RSS of itself and its workers."""
    mp.set_start_method("fork", force=True)  # workers fork, as under `e2rnas train` (a spawned process would spawn)
    torch.set_num_threads(1)
    spec, fill, rates, worker_peak = f"imagefolder:{path}", (0.5, 0.5, 0.5), [], 0.0
    transform = train_transform(pad=4, flip=True, cutout=16, fill=fill)  # imports outside the timing, in both rows
    import PIL.Image  # noqa: F401
    t0 = time.perf_counter()
    if loader == "memory":
        data, gen = load_dataset(spec, split="all", image_size=32), torch.Generator().manual_seed(0)
        for _ in range(2):
            n = 0
            for x, _ in batches(data, batch, shuffle=True, generator=gen, drop_last=True):
                n += len(augment(x, generator=gen, pad=4, flip=True, cutout=16, cutout_fill=fill))
            rates.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
    else:
        ds = image_dataset(load_dataset(spec, split="all", image_size=32, stream=True), transform)
        for epoch in range(2):
            n = 0
            for x, _ in train_loader(ds, batch_size=batch, seed=0, epoch=epoch, workers=workers):
                n += len(x)
                worker_peak = max(worker_peak, _worker_peak_mib())
            rates.append(n / (time.perf_counter() - t0))
            t0 = time.perf_counter()
    out.put((*rates, _peak_rss_mib(), worker_peak))


def folder_table(n: int, workers: list[int], batch: int) -> None:
    ctx = mp.get_context("spawn")
    print(f"\n| image folder ({n} PNGs 32px, {n * 3 * 32 * 32 / 2**20:.1f} MiB as uint8) | path | workers | "
          "epoch 1 img/s | epoch 2 img/s | peak RSS MiB | largest worker RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), n)
        for loader, w in [("memory", 0)] + [("stream", w) for w in workers]:
            queue = ctx.Queue()
            proc = ctx.Process(target=_folder_epochs, args=(tmp, loader, w, batch, queue))
            proc.start()
            first, second, rss, child = queue.get()
            proc.join()
            print(f"| {n} x 32px | {loader} | {w if loader == 'stream' else '-'} | {first:.0f} | {second:.0f} | "
                  f"{rss:.0f} | {f'{child:.0f}' if child else '-'} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="training steps in the model rows")
    ap.add_argument("--folder-images", type=int, default=2000, help="images in the image-folder table (0: skip)")
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
    if args.folder_images:
        folder_table(args.folder_images, [int(w) for w in args.workers.split(",")], args.batch)


if __name__ == "__main__":
    main()
