"""The DataLoader path of retraining: ``torchvision.transforms.v2`` per image, worker processes, pinned memory and a
seeded generator per epoch (``--loader dataloader``). It reads an in-memory ``ImageSet`` or, for ``imagefolder:``
sets, a ``FolderIndex`` whose images the workers decode from disk (``image_dataset``).

The in-memory path (``--loader memory``, the default) augments a whole batch at once with the same operations
(``e2rnas.data.augment``); on small images it is faster (benchmarks/scaling.py, ``loader`` section). Resume rule:
the DataLoader's order and augmentation come from a generator seeded by (seed, epoch) (workers draw their seeds
from it), so a run resumed at an epoch boundary replays bit for bit with the same ``--workers``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from e2rnas.data import ImageSet
from e2rnas.distributed import DistInfo
from e2rnas.imagefolder import FolderDataset, FolderIndex


class Cutout(torch.nn.Module):
    """DARTS' cutout on a float CHW image: a ``size`` x ``size`` square centred anywhere (clipped at the border),
    filled with ``fill`` (the per-channel mean, which the network's input normalisation maps to 0)."""

    def __init__(self, size: int, fill: tuple[float, ...]):
        super().__init__()
        self.size, self.fill = size, torch.tensor(fill, dtype=torch.float32).view(-1, 1, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.size <= 0:
            return img
        _, h, w = img.shape
        cy, cx = int(torch.randint(0, h, (1,))), int(torch.randint(0, w, (1,)))
        half = self.size // 2
        y0, y1, x0, x1 = max(cy - half, 0), min(cy - half + self.size, h), max(cx - half, 0), min(cx - half +
                                                                                                 self.size, w)
        out = img.clone()
        out[:, y0:y1, x0:x1] = self.fill.to(img)
        return out


def train_transform(*, pad: int, flip: bool, cutout: int, fill: tuple[float, ...]) -> Any:
    """uint8 CHW -> float [0, 1]: random crop with zero padding, horizontal flip, cutout (transforms.v2)."""
    from torchvision.transforms import v2

    steps: list[Any] = [v2.ToDtype(torch.float32, scale=True)]
    if pad:
        steps.append(_PadCrop(pad))
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    if cutout:
        steps.append(Cutout(cutout, fill))
    return v2.Compose(steps)


class _PadCrop(torch.nn.Module):
    """``v2.RandomCrop(size, padding=pad)`` at the image's own size (v2 needs the size up front; images vary)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import v2

        return v2.RandomCrop(size=tuple(img.shape[-2:]), padding=self.pad)(img)


class ImageSetDataset(Dataset):
    """An in-memory ``ImageSet`` served image by image through a transform (what the DataLoader path reads)."""

    def __init__(self, data: ImageSet, transform: Any):
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.data.x[i]), self.data.y[i]


def image_dataset(data: ImageSet | FolderIndex, transform: Any) -> Dataset:
    """The per-image Dataset of a training set: in memory, or decoded from disk (a streamed image folder)."""
    return FolderDataset(data, transform) if isinstance(data, FolderIndex) else ImageSetDataset(data, transform)


def train_loader(dataset: Dataset, *, batch_size: int, seed: int, epoch: int, workers: int = 0,
                 pin_memory: bool = False, info: DistInfo | None = None) -> DataLoader:
    """One epoch's loader: shuffled by a generator seeded by (seed, epoch); under torchrun a DistributedSampler
    gives each process its share and each process loads ``batch_size / world_size`` images a step."""
    info = info or DistInfo()
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    sampler = None
    if info.active:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed,
                                     drop_last=True)
        sampler.set_epoch(epoch)
    return DataLoader(dataset, batch_size=batch_size // info.world_size, shuffle=sampler is None, sampler=sampler,
                      generator=gen, num_workers=workers, pin_memory=pin_memory, drop_last=True,
                      persistent_workers=False)
