"""Named image data sets, held in memory as uint8 NCHW arrays, with deterministic splits and batch loaders.

Specs: ``digits`` (embedded default, offline), ``digits-ood``, ``cifar10``, ``cifar100``, ``svhn`` (torchvision,
from ``data_dir``; ``download`` only when asked), ``npz:PATH`` (arrays ``x`` uint8 NHWC, ``y``), and
``imagefolder:PATH`` (class sub-folders, as torchvision's ImageFolder; resized into memory, or streamed from disk
with ``stream=True``: ``e2rnas.imagefolder``, docs/data-splits.md).

The embedded default: scikit-learn's 1,797 8x8 handwritten digits, resized to 16x16 and copied to 3 channels.
Digits 0-4 are in-distribution, digits 5-9 are the OoD set (disjoint labels). In-distribution images are split
per class 75% train / 25% test with a fixed seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
import torch
import torch.nn.functional as F

from e2rnas.errors import E2RNASError

if TYPE_CHECKING:
    from e2rnas.imagefolder import FolderIndex

DIGITS_IN = (0, 1, 2, 3, 4)
DIGITS_OOD = (5, 6, 7, 8, 9)
DIGITS_SIZE = 16
_SPLIT_SEED = 0
_TORCHVISION = {"cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN"}
KNOWN_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


class DataError(E2RNASError):
    """A data set could not be found or is malformed."""


@dataclass(frozen=True)
class ImageSet:
    """Images as uint8 [N, 3, H, W] and int64 labels [N]."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4 or self.x.shape[1] != 3:
            raise DataError(f"{self.name}: images must be uint8 [N, 3, H, W], got {self.x.dtype} {tuple(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def image_size(self) -> int:
        return int(self.x.shape[-1])

    def subset(self, indices: np.ndarray | torch.Tensor, name: str | None = None) -> ImageSet:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageSet(self.x[idx], self.y[idx], self.num_classes, name or self.name)

    def head(self, n: int | None) -> ImageSet:
        """The first ``n`` images of a seeded shuffle (all when ``n`` is None): a class-mixed sample."""
        if n is None or n >= len(self):
            return self
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(_SPLIT_SEED))[:n]
        return self.subset(perm)

    def stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        x = self.x.float().div_(255)
        return tuple(x.mean(dim=(0, 2, 3)).tolist()), tuple(x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x.float().div(255), self.y


def split_indices(labels: np.ndarray, fraction: float, seed: int = _SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """A per-class (stratified) split: ``fraction`` of each class goes to the second part."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(len(idx) * fraction))
        second.append(idx[:k])
        first.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def split_parts(full: ImageSet | FolderIndex, fraction: float, *, seed: int, names: tuple[str, str],
                min_sizes: tuple[int, int], what: str, fix: str) -> tuple[Any, Any]:
    """A stratified split of a training set into two parts that a classifier can learn and select on.

    Refuses, before the first step, a set of fewer than two classes and a part smaller than its minimum (an empty
    part would make an endless loader spin, a one-image batch breaks BatchNorm); ``fix`` says what to change."""
    require_classes(full, what=what)
    first_idx, second_idx = split_indices(full.y.numpy(), fraction, seed)
    for name, idx, need in zip(names, (first_idx, second_idx), min_sizes, strict=True):
        if len(idx) < need:
            raise DataError(f"{what}: {len(full)} images leave {len(idx)} for the {name} part (at least {need} "
                            f"needed); {fix}")
    return full.subset(first_idx), full.subset(second_idx)


def require_classes(data: ImageSet | FolderIndex, *, what: str) -> None:
    """A classifier needs two classes: one class is learnt by a constant and scores accuracy 1.0."""
    present = int(torch.unique(data.y).numel())
    if data.num_classes < 2 or present < 2:
        raise DataError(f"{what}: {data.name} has {present} class(es) with images; a classifier needs at least 2 "
                        f"(labels 0..K-1)")


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    """Integer class labels; a float label with a fraction (or NaN), a bool or text is refused, never truncated."""
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind in "iu":
        return y.astype(np.int64)
    if y.dtype.kind == "f" and len(y) and np.isfinite(y).all() and (y == np.round(y)).all():
        return y.astype(np.int64)  # 3.0 is class 3
    bad = y[~np.isfinite(y) | (y != np.round(y))][:1] if y.dtype.kind == "f" else y[:1]
    raise DataError(f"{name}: labels must be integers 0..K-1, got {y.dtype} values such as "
                    f"{bad[0] if len(bad) else '?'!r}; store y as integer class numbers")


def _from_nhwc(x: np.ndarray, y: np.ndarray, name: str, num_classes: int | None = None) -> ImageSet:
    if x.ndim == 3:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(f"{name}: x must be uint8 [N, H, W, 3] (NHWC), got shape {x.shape}")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.dtype != np.uint8:
        raise DataError(f"{name}: x must be uint8 pixels 0-255, got {x.dtype}")
    y = _labels(y, name)
    if len(y) == 0:
        raise DataError(f"{name}: the data set is empty")
    if y.min() < 0:
        raise DataError(f"{name}: labels must be >= 0, found {y.min()}")
    n_cls = int(y.max()) + 1 if num_classes is None else num_classes
    if y.max() >= n_cls:
        raise DataError(f"{name}: label {y.max()} is out of range for {n_cls} classes")
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), torch.from_numpy(y), n_cls, name)


def _check_classes(data: ImageSet) -> ImageSet:
    counts = torch.bincount(data.y, minlength=data.num_classes)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        raise DataError(f"{data.name}: classes {empty} have no images; relabel to 0..K-1 without gaps")
    return data


def _digits(classes: tuple[int, ...], split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.isin(d.target, classes)
    imgs = torch.from_numpy(d.images[keep]).float().div(16.0).unsqueeze(1)
    imgs = F.interpolate(imgs, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).repeat(1, 3, 1, 1)
    y = np.searchsorted(np.array(classes), d.target[keep])
    name = "digits" if classes == DIGITS_IN else "digits-ood"
    full = ImageSet(x, torch.from_numpy(y).long(), len(classes), name)
    train_idx, test_idx = split_indices(y, 0.25)
    if split == "all":
        return full
    return full.subset(train_idx if split == "train" else test_idx)


def _torchvision(key: str, split: str, data_dir: Path | None, download: bool) -> ImageSet:
    import torchvision

    if data_dir is None:
        raise DataError(f"{key} needs --data-dir PATH (add --download to fetch it there)")
    root = Path(data_dir).expanduser()
    if not root.is_dir() and not download:
        raise DataError(f"data directory not found: {root}; create it or pass --download")
    cls = getattr(torchvision.datasets, _TORCHVISION[key])
    try:
        if key == "svhn":
            ds = cls(str(root), split="train" if split == "train" else "test", download=download)
            x, y = ds.data.transpose(0, 2, 3, 1), ds.labels
        else:
            ds = cls(str(root), train=split == "train", download=download)
            x, y = ds.data, np.asarray(ds.targets)
    except RuntimeError as exc:
        raise DataError(f"{key} not found under {root} ({exc}); pass --download to fetch it") from exc
    return _from_nhwc(np.asarray(x), np.asarray(y), key, num_classes={"cifar10": 10, "cifar100": 100, "svhn": 10}[key])


def _npz(path: Path, split: str) -> ImageSet:
    if not path.is_file():
        raise DataError(f"npz file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise DataError(f"{path}: needs arrays 'x' (uint8 NHWC) and 'y' (labels), found {list(d.keys())}")
            data = _check_classes(_from_nhwc(d["x"], d["y"], f"npz:{path.name}"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    return data


def _imagefolder(path: Path, image_size: int | None) -> ImageSet:
    """Decode a whole folder into memory, refused when it does not fit (``e2rnas.imagefolder.check_fits``)."""
    from e2rnas.imagefolder import check_fits, decode, index_folder

    index = index_folder(path, image_size=image_size)
    check_fits(index)
    x = torch.empty((len(index), 3, index.image_size, index.image_size), dtype=torch.uint8)
    for i in range(len(index)):
        x[i] = decode(index.path(i), index.image_size)
    return ImageSet(x, index.y, index.num_classes, index.name)


@overload
def load_dataset(spec: str, *, split: str = ..., data_dir: str | Path | None = ..., download: bool = ...,
                 image_size: int | None = ..., stream: Literal[False] = ..., workers: int = ...) -> ImageSet: ...


@overload
def load_dataset(spec: str, *, split: str = ..., data_dir: str | Path | None = ..., download: bool = ...,
                 image_size: int | None = ..., stream: bool, workers: int = ...) -> ImageSet | FolderIndex: ...


def load_dataset(spec: str, *, split: str = "train", data_dir: str | Path | None = None, download: bool = False,
                 image_size: int | None = None, stream: bool = False, workers: int = 0) -> ImageSet | FolderIndex:
    """Load one split (``train``, ``test`` or ``all``) of a named data set; resize when ``image_size`` is set.

    ``stream=True`` returns an ``imagefolder:`` set as a ``FolderIndex`` (decoded batch by batch, by ``workers``
    DataLoader processes); every other set loads into memory as usual."""
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r}; use train, test or all")
    key, _, arg = spec.partition(":")
    if stream and key == "imagefolder" and arg:
        from e2rnas.imagefolder import index_folder

        return replace(index_folder(Path(arg).expanduser(), image_size=image_size), workers=workers)
    if key == "digits" and not arg:
        data = _digits(DIGITS_IN, split)
    elif key == "digits-ood" and not arg:
        data = _digits(DIGITS_OOD, split)
    elif key in _TORCHVISION and not arg:
        data = _torchvision(key, split, Path(data_dir) if data_dir else None, download)
    elif key == "npz" and arg:
        data = _npz(Path(arg).expanduser(), split)
    elif key == "imagefolder" and arg:
        data = _imagefolder(Path(arg).expanduser(), image_size)
    else:
        raise DataError(
            f"unknown data set {spec!r}; use digits, digits-ood, cifar10, cifar100, svhn, npz:PATH or imagefolder:PATH"
        )
    if image_size is not None and data.image_size != image_size:
        data = resize(data, image_size)
    return data


def resize(data: ImageSet, size: int) -> ImageSet:
    x = F.interpolate(data.x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return ImageSet(x.round().clamp(0, 255).to(torch.uint8), data.y, data.num_classes, data.name)


def normalization_for(spec: str, train: ImageSet | FolderIndex) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std: published values for the torchvision sets, else measured on the training split
    (a streamed folder: on a bounded sample, ``FolderIndex.stats``)."""
    return KNOWN_STATS[spec] if spec in KNOWN_STATS else train.stats()


def augment(x: torch.Tensor, *, generator: torch.Generator, pad: int = 4, flip: bool = True,
            cutout: int = 0, cutout_fill: tuple[float, ...] | None = None) -> torch.Tensor:
    """Random crop with zero padding, horizontal flip and cutout on a float batch in [0, 1].

    The crop pads with black pixels (DARTS pads the PIL image); the cutout hole is filled with ``cutout_fill``,
    the per-channel mean that the network's input normalisation maps to 0: DARTS cuts out after normalising,
    so its holes are zeros there, not black pixels (``None``: black)."""
    n, _, h, w = x.shape
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
        x = _crop(padded, dy, dx, h, w)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        x = torch.where(mask.view(n, 1, 1, 1), x.flip(3), x)
    if cutout > 0:
        cy = torch.randint(0, h, (n,), generator=generator)
        cx = torch.randint(0, w, (n,), generator=generator)
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        half = cutout // 2  # the DARTS cutout: a cutout x cutout square centred anywhere, clipped at the border
        y0, x0 = (cy - half).view(n, 1, 1), (cx - half).view(n, 1, 1)
        hole = (ys >= y0) & (ys < y0 + cutout) & (xs >= x0) & (xs < x0 + cutout)
        fill = torch.zeros(3) if cutout_fill is None else torch.tensor(cutout_fill)
        x = torch.where(hole.unsqueeze(1), fill.to(x).view(1, -1, 1, 1), x)
    return x


def _crop(padded: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, h: int, w: int) -> torch.Tensor:
    crops = [padded[i, :, int(a):int(a) + h, int(b):int(b) + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    return torch.stack(crops)


def batches(data: ImageSet | FolderIndex, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches in [0, 1]; the order comes from ``generator`` so that a resumed run sees the same batches.
    A streamed folder decodes each batch from disk, in the same order."""
    if not isinstance(data, ImageSet):
        yield from data.batches(batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last)
        return
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield data.x[idx].float().div_(255), data.y[idx]


def require_nonempty(data: ImageSet | FolderIndex, what: str) -> None:
    """An endless loader over no images would spin forever without a batch: refuse it."""
    if len(data) == 0:
        raise DataError(f"{what}: {data.name} has no images in this part; use more images or another split")


def cycle(data: ImageSet, batch_size: int, *, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled image batches (labels dropped): the OoD stream that runs beside the in-distribution one."""
    require_nonempty(data, "cycle")
    while True:
        for x, _ in batches(data, batch_size, shuffle=True, generator=generator, drop_last=len(data) >= batch_size):
            yield x
