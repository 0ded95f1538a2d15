"""Image folders (``PATH/<class>/<image>``) indexed without decoding, and streamed from disk batch by batch.

The index follows ``torchvision.datasets.ImageFolder``: classes are the sorted sub-folder names, images are found
recursively (sorted) with torchvision's extensions, labels are class positions. Paths are held as one numpy bytes
array, so DataLoader workers do not copy a million Python strings. Every image is decoded the same way, streamed or
in memory (PIL, RGB, bilinear resize to ``image_size`` x ``image_size``), so both paths see identical pixels.

Normalisation of a streamed folder is measured, not assumed: per-channel mean/std over the first ``STATS_SAMPLE``
images of the seeded shuffle that ``head`` uses (all images when there are fewer; then it is the in-memory rule).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from e2rnas.data import DataError

#: torchvision.datasets.folder.IMG_EXTENSIONS, without importing torchvision.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEFAULT_SIZE = 32
STATS_SAMPLE = 1024
_HEAD_SEED = 0  # as ImageSet.head: a streamed subset equals the in-memory one
#: Bytes per pixel channel an in-memory folder costs at its peak: the uint8 images, the split copies and the float32
#: copy that the normalisation statistics make.
IN_MEMORY_BYTES_PER_VALUE = 5


@dataclass(frozen=True)
class FolderIndex:
    """Relative image paths and labels of an image folder: what a streamed set holds instead of pixels.

    Behaves like ``ImageSet`` where training and evaluation read it (``len``, ``y``, ``subset``, ``head``,
    ``stats``, ``batches``); ``workers`` are the DataLoader processes that decode its batches."""

    root: Path
    files: np.ndarray  # bytes paths relative to root
    labels: np.ndarray  # int64
    classes: tuple[str, ...]
    image_size: int
    name: str
    workers: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def y(self) -> torch.Tensor:
        return torch.from_numpy(self.labels)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])

    def subset(self, indices: np.ndarray | torch.Tensor, name: str | None = None) -> FolderIndex:
        idx = np.asarray(indices, dtype=np.int64)
        return replace(self, files=self.files[idx], labels=self.labels[idx], name=name or self.name)

    def head(self, n: int | None) -> FolderIndex:
        """The first ``n`` images of a seeded shuffle (all when ``n`` is None), as ``ImageSet.head``."""
        if n is None or n >= len(self):
            return self
        return self.subset(torch.randperm(len(self), generator=torch.Generator().manual_seed(_HEAD_SEED))[:n])

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Float batches in [0, 1], in the order ``e2rnas.data.batches`` gives an in-memory set."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        chunks = [order[s:s + batch_size].tolist() for s in range(0, stop, batch_size)]
        loader = DataLoader(FolderDataset(self), batch_sampler=chunks, num_workers=self.workers)
        yield from one_line_errors(loader)

    def stats(self, sample: int = STATS_SAMPLE) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and (unbiased) std over a bounded sample, accumulated in float64 batch by batch."""
        total, total_sq, count = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 0
        for x, _ in self.head(sample).batches(256, shuffle=False):
            x = x.double()
            total += x.sum(dim=(0, 2, 3))
            total_sq += x.square().sum(dim=(0, 2, 3))
            count += x.numel() // 3
        mean = total / count
        var = (total_sq - count * mean.square()) / max(count - 1, 1)
        return tuple(mean.tolist()), tuple(var.clamp_min(0).sqrt().clamp_min(1e-3).tolist())


class FolderDataset(Dataset):
    """One decoded image per item: float CHW in [0, 1] (then ``transform``, if any) and its label."""

    def __init__(self, index: FolderIndex, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.index, self.transform = index, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = decode(self.index.path(i), self.index.image_size).float().div(255)
        return (self.transform(x) if self.transform is not None else x), torch.tensor(self.index.labels[i])


def index_folder(path: Path, *, image_size: int | None = None) -> FolderIndex:
    """Walk ``path`` (no image is opened); a missing, empty or class-less folder is a one-line ``DataError``."""
    if not path.is_dir():
        raise DataError(f"image folder not found: {path}")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir())
    if not classes:
        raise DataError(f"{path}: no class sub-folders (expected PATH/<class>/<image>)")
    files: list[bytes] = []
    labels: list[int] = []
    for c, cls_name in enumerate(classes):
        found = [os.fsencode(os.path.relpath(os.path.join(d, f), path))
                 for d, _, names in sorted(os.walk(path / cls_name, followlinks=True))
                 for f in sorted(names) if f.lower().endswith(IMG_EXTENSIONS)]
        if not found:
            raise DataError(f"{path}: class folder {cls_name!r} has no images ({', '.join(IMG_EXTENSIONS)}); "
                            "add images or remove the folder")
        files += found
        labels += [c] * len(found)
    return FolderIndex(path, np.array(files, dtype=np.bytes_), np.array(labels, dtype=np.int64), tuple(classes),
                       image_size or DEFAULT_SIZE, f"imagefolder:{path.name}")


def decode(path: Path, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: PIL decode, RGB, bilinear resize. An unreadable file is a one-line ``DataError``."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable image ({reason}); replace or remove it") from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def check_fits(index: FolderIndex, *, available: int | None = None) -> None:
    """Refuse to hold a folder in memory when it would need more than the available memory (it would swap)."""
    available = _available_memory() if available is None else available
    need = len(index) * 3 * index.image_size ** 2 * IN_MEMORY_BYTES_PER_VALUE
    if available is not None and need > available:
        raise DataError(f"{index.name}: {len(index)} images at {index.image_size}px need about {need / 2**30:.1f} "
                        f"GiB in memory, {available / 2**30:.1f} GiB are available; stream it (e2rnas train "
                        "--loader dataloader, e2rnas eval) or use a smaller folder or --image-size")


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown (no check)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def one_line_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """Re-raise a DataLoader worker's ``DataError`` with its own one-line message (torch prepends a traceback)."""
    try:
        yield from batches
    except DataError as exc:
        lines = str(exc).strip().splitlines()
        if len(lines) <= 1:
            raise
        prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        raise type(exc)(lines[-1].removeprefix(prefix)) from exc
