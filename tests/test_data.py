from pathlib import Path

import numpy as np
import pytest
import torch

from e2rnas.data import DataError, augment, batches, load_dataset, split_indices

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_digits_loads_offline_with_disjoint_ood():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    ood = load_dataset("digits-ood", split="all")
    assert train.num_classes == 5 and train.image_size == 16 and train.x.shape[1] == 3
    assert len(train) + len(test) + len(ood) == 1797
    assert set(train.y.tolist()) == set(range(5)) and set(test.y.tolist()) == set(range(5))
    assert len(test) / (len(train) + len(test)) == pytest.approx(0.25, abs=0.01)


def test_npz_round_trip_and_resize(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 3), dtype=np.uint8)
    y = np.arange(12) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset(f"npz:{tmp_path / 'd.npz'}", image_size=16)
    assert d.num_classes == 3 and tuple(d.x.shape) == (12, 3, 16, 16)
    raw = load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert torch.equal(raw.x, torch.from_numpy(x).permute(0, 3, 1, 2))


@pytest.mark.parametrize("arrays, message", [
    (dict(x=np.zeros((4, 8, 8, 3), np.float32), y=np.zeros(4)), "uint8"),
    (dict(x=np.zeros((4, 8, 8, 5), np.uint8), y=np.zeros(4)), "NHWC"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.zeros(5)), "labels"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, 0, 2, 2])), "no images"),
    (dict(x=np.zeros((4, 8, 8, 3), np.uint8), y=np.array([0, -1, 1, 1])), ">= 0"),
    (dict(images=np.zeros((4, 8, 8, 3), np.uint8)), "needs arrays"),
])
def test_bad_npz_rejected(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_missing_inputs_rejected(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", data_dir=tmp_path / "absent")
    with pytest.raises(DataError, match="unknown data set"):
        load_dataset("mnist")
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"imagefolder:{tmp_path / 'folder'}")


def test_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(4), 25)
    a, b = split_indices(y, 0.2)
    assert not set(a) & set(b) and len(a) + len(b) == 100
    assert np.bincount(y[b]).tolist() == [5, 5, 5, 5]


def test_batches_and_augment_are_seeded():
    d = load_dataset("digits", split="test")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, _ = next(batches(d, 8, shuffle=True, generator=g1))
    x2, _ = next(batches(d, 8, shuffle=True, generator=g2))
    assert torch.equal(augment(x1, generator=g1, cutout=4), augment(x2, generator=g2, cutout=4))
    assert 0 <= float(x1.min()) and float(x1.max()) <= 1


@pytest.mark.skipif(not (SHARED / "cifar10_test.npz").is_file(), reason="../shared/data is not present")
def test_shared_cifar_subset_loads():
    d = load_dataset(f"npz:{SHARED / 'cifar10_test.npz'}")
    assert len(d) == 10000 and d.num_classes == 10 and d.image_size == 32


def test_cutout_fills_with_the_mean_so_the_hole_is_zero_after_normalisation():
    """DARTS cuts out after normalising: the hole is 0 at the network's input, not a black square."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = augment(x, generator=torch.Generator().manual_seed(1), pad=0, flip=False, cutout=6, cutout_fill=mean)
    normed = (out - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    hole = out != x
    assert bool(hole.any())
    assert float(normed[hole].abs().max()) < 1e-6
    black = augment(x, generator=torch.Generator().manual_seed(1), pad=0, flip=False, cutout=6)
    assert float(black[hole].abs().max()) == 0.0  # without a fill the hole is black pixels (not zero there)
