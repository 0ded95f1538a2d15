"""Image folders streamed from disk: the index, identical pixels to the in-memory load, workers, a streamed training
run that never decodes the folder into memory, and one-line errors for bad folders. Real files, written with PIL."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import e2rnas.data as data_mod
from e2rnas.data import DataError, batches, load_dataset, split_indices
from e2rnas.imagefolder import FolderDataset, FolderIndex, check_fits, index_folder
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.train.loader import image_dataset, train_loader, train_transform

CLASSES = ("cat", "ant", "bee")  # written unsorted: the index sorts them


def write_folder(root: Path, per_class: int = 6) -> Path:
    """3 classes x ``per_class`` images of different sizes and modes (RGB, L, RGBA; PNG and JPEG), one of them in a
    nested folder, and a non-image file that the index must skip."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        (root / name / "nested").mkdir(parents=True)
        for i in range(per_class):
            h, w = 9 + 3 * i + c, 12 + 2 * i
            if i % 3 == 0:
                img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
            elif i % 3 == 1:
                img = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
            else:
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
            where = root / name / ("nested" if i == per_class - 1 else "")
            img.save(where / (f"img{i}.JPG" if i == 2 else f"img{i}.png"))
        (root / name / "notes.txt").write_text("not an image")
    return root


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "folder")


def test_index_matches_torchvision_imagefolder(folder):
    from torchvision.datasets import ImageFolder

    index = index_folder(folder, image_size=16)
    reference = ImageFolder(str(folder))
    assert index.classes == tuple(sorted(CLASSES)) == tuple(reference.classes)
    assert len(index) == 18 and index.num_classes == 3 and index.image_size == 16
    assert np.bincount(index.labels).tolist() == [6, 6, 6]
    assert [(str(index.path(i)), int(index.labels[i])) for i in range(len(index))] == reference.samples
    assert index_folder(folder).image_size == 32  # the in-memory default size


def test_streamed_items_equal_the_in_memory_load(folder):
    memory = load_dataset(f"imagefolder:{folder}", split="all", image_size=16)
    stream = load_dataset(f"imagefolder:{folder}", split="all", image_size=16, stream=True)
    assert isinstance(stream, FolderIndex) and stream.name == memory.name
    assert torch.equal(stream.y, memory.y) and stream.num_classes == memory.num_classes
    ds = FolderDataset(stream)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.dtype == torch.float32 and tuple(x.shape) == (3, 16, 16)
        assert torch.equal(x, memory.x[i].float().div(255)) and int(y) == int(memory.y[i])
    gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for (xa, ya), (xb, yb) in zip(batches(stream, 4, shuffle=True, generator=gen_a),
                                  batches(memory, 4, shuffle=True, generator=gen_b), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the bounded sample holds every image of a small folder: the in-memory statistics, summed in float64
    for a, b in zip(stream.stats(), memory.stats(), strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_split_and_head_match_the_in_memory_set(folder):
    memory = load_dataset(f"imagefolder:{folder}", split="all", image_size=16)
    stream = load_dataset(f"imagefolder:{folder}", split="all", image_size=16, stream=True)
    train_idx, test_idx = split_indices(stream.labels, 0.2)
    for idx in (train_idx, test_idx):
        x, _ = next(batches(stream.subset(idx), 64, shuffle=False))
        assert torch.equal(x, memory.subset(idx).tensors()[0])
    x, y = next(batches(stream.head(7), 64, shuffle=False))
    assert torch.equal(x, memory.head(7).tensors()[0]) and torch.equal(y, memory.head(7).y)


def test_a_dataloader_with_two_workers_reads_the_stream(folder):
    stream = load_dataset(f"imagefolder:{folder}", split="all", image_size=16, stream=True, workers=2)
    memory = load_dataset(f"imagefolder:{folder}", split="all", image_size=16)
    seen = [x for x, _ in batches(stream, 5, shuffle=False)]  # decoded by 2 worker processes, in order
    assert torch.equal(torch.cat(seen), memory.tensors()[0])
    ds = image_dataset(stream, train_transform(pad=2, flip=True, cutout=4, fill=(0.5, 0.5, 0.5)))
    assert isinstance(ds, FolderDataset)
    loader = train_loader(ds, batch_size=4, seed=0, epoch=0, workers=2)
    got = list(loader)
    assert len(got) == 4 and all(tuple(x.shape) == (4, 3, 16, 16) for x, _ in got)
    assert all(0 <= float(x.min()) and float(x.max()) <= 1 for x, _ in got)
    assert set(torch.cat([y for _, y in got]).tolist()) <= {0, 1, 2}


def test_training_with_the_dataloader_streams_and_never_loads_the_folder(folder, tmp_path, monkeypatch):
    from e2rnas.evaluation.evaluate import eval_data, evaluate
    from e2rnas.model_io import load_model
    from e2rnas.predict import TorchPredictor
    from e2rnas.train.trainer import TrainConfig, _load_data, train

    def materialised(*args, **kwargs):
        raise AssertionError("the image folder was decoded into memory")

    monkeypatch.setattr(data_mod, "_imagefolder", materialised)
    cfg = TrainConfig(dataset=f"imagefolder:{folder}", image_size=16, layers=3, C=4, epochs=1, batch_size=4,
                      lr=0.05, cutout=4, crop_pad=2, auxiliary=False, val_fraction=0.2, loader="dataloader")
    loaded = _load_data(cfg)
    assert all(isinstance(part, FolderIndex) for part in (loaded.train, loaded.val, loaded.test))
    assert (len(loaded.train), len(loaded.val), len(loaded.test)) == (12, 3, 3)
    summary = train(cfg, genotype=GENOTYPES["DARTS_V2"], out_dir=tmp_path / "run", progress=False)
    assert summary["samples"] == {"train": 12, "val": 3, "test": 3, "ood": 0}
    model = load_model(tmp_path / "run" / "model.pt")
    assert model.spec.input_size == 16
    test = eval_data(model.meta["data"])  # evaluation streams the same 20% test part
    assert isinstance(test.test, FolderIndex) and len(test.test) == 3
    result = evaluate(TorchPredictor(model.model, "cpu"), test=test.test)  # attacks too: batch by batch
    assert result["clean_acc"] == pytest.approx(summary["test_acc"]) and result["pgd_acc"] is not None
    with pytest.raises(AssertionError, match="decoded into memory"):  # the memory path would have loaded it
        _load_data(TrainConfig(dataset=f"imagefolder:{folder}", image_size=16, batch_size=4, val_fraction=0.2))


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_is_a_one_line_error(folder, workers):
    bad = folder / "bee" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    stream = load_dataset(f"imagefolder:{folder}", split="all", image_size=16, stream=True, workers=workers)
    with pytest.raises(DataError) as exc:
        list(batches(stream, 4, shuffle=False))
    assert "broken.png: not a readable image" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        load_dataset(f"imagefolder:{folder}", split="all", image_size=16)
    assert "broken.png: not a readable image" in _one_line(exc)


@pytest.mark.parametrize("layout, message", [
    ("missing", "image folder not found"),
    ("empty", "no class sub-folders"),
    ("flat", "no class sub-folders"),  # images but no class folders
    ("empty-class", "class folder 'dog' has no images"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_folders_are_one_line_errors(tmp_path, layout, message, stream):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        Image.new("RGB", (8, 8)).save(root / "a.png")
    if layout == "empty-class":
        write_folder(root, per_class=2)
        (root / "dog").mkdir()
        (root / "dog" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=message) as exc:
        load_dataset(f"imagefolder:{root}", split="all", stream=stream)
    _one_line(exc)


def test_a_folder_too_large_for_memory_is_refused_not_swapped(folder, monkeypatch):
    index = index_folder(folder, image_size=64)
    check_fits(index, available=18 * 3 * 64 * 64 * 5)  # exactly enough
    with pytest.raises(DataError, match="--loader dataloader") as exc:
        check_fits(index, available=18 * 3 * 64 * 64 * 5 - 1)
    _one_line(exc)
    import e2rnas.imagefolder

    monkeypatch.setattr(e2rnas.imagefolder, "_available_memory", lambda: 1024)  # this machine, as if nearly full
    with pytest.raises(DataError, match="GiB in memory"):  # the in-memory path: search, train --loader memory
        load_dataset(f"imagefolder:{folder}", split="train", image_size=16)
    assert len(load_dataset(f"imagefolder:{folder}", image_size=16, stream=True)) == 18  # streaming needs no room
