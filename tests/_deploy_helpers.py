"""A tiny real network (5 cells, C=4, 16x16, 5 classes) saved as model.pt and exported to ONNX, for deploy tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

SEARCH = {"params_bound_m": 0.05, "flops_bound_m": 2.0, "expected_params_m": 0.04, "expected_macs_m": 1.5,
          "exact_params_m": 0.045, "exact_macs_m": 1.6,
          "deploy_shape": {"layers": 5, "C": 4, "num_classes": 5, "input_size": 16}}

FAST = ["--runs", "5", "--warmup", "1", "--threads", "1"]  # bench options for tests: seconds, not minutes


def export_onnx(model: torch.nn.Module, path: Path, *, static_batch: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.rand(static_batch or 1, 3, 16, 16)
    axes = None if static_batch else {"images": {0: "batch"}, "logits": {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), dynamo=False, input_names=["images"], output_names=["logits"],
                          dynamic_axes=axes)
    return path


def make_tiny_run(root: Path, *, pipeline: bool = False, search_in_meta: bool = True,
                  nested_search: bool = False) -> dict[str, Path]:
    """``root/model.pt`` + ``root/export/model.onnx`` (train run), or RUN/search, RUN/train, RUN/export.

    The search record goes into model.pt's meta (flat, or nested as training writes it: genotype_source +
    summary), or only into RUN/search/summary.json."""
    from e2rnas.model_io import NetworkSpec, save_model
    from e2rnas.space.genotypes import GENOTYPES

    torch.manual_seed(0)
    spec = NetworkSpec(C=4, layers=5, num_classes=5, input_size=16)
    genotype = GENOTYPES["DARTS_V2"]
    model = spec.build(genotype).eval()
    train_dir = root / "train" if pipeline else root
    train_dir.mkdir(parents=True, exist_ok=True)
    save_model(train_dir / "model.pt", model=model, genotype=genotype, spec=spec,
               data={"dataset": "digits", "ood_dataset": "digits-ood", "image_size": 16, "num_classes": 5},
               search=({"genotype_source": str(root / "search"), "summary": SEARCH} if nested_search else SEARCH)
               if search_in_meta else None)
    if pipeline and not search_in_meta:
        import json

        (root / "search").mkdir(exist_ok=True)
        (root / "search" / "summary.json").write_text(json.dumps(SEARCH))
    onnx = export_onnx(model, root / "export" / "model.onnx")
    return {"root": root, "model": train_dir / "model.pt", "onnx": onnx, "module": model}


def train_digits_model(path: Path, *, epochs: int = 3, search: dict | None = None) -> Path:
    """A real model.pt: a 3-cell C=4 DARTS_V2 network trained on digits (about 2 s, ~90 % accuracy), so that int8
    agreement and parity gates mean something."""
    from e2rnas.data import batches, load_dataset, normalization_for
    from e2rnas.model_io import NetworkSpec, save_model
    from e2rnas.space.genotypes import GENOTYPES

    train = load_dataset("digits", split="train")
    mean, std = normalization_for("digits", train)
    spec = NetworkSpec(C=4, layers=3, num_classes=5, input_size=16, mean=mean, std=std)
    torch.manual_seed(0)
    net = spec.build(GENOTYPES["DARTS_V2"])
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        net.train()
        for x, y in batches(train, 32, shuffle=True, generator=gen):
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model(path, model=net.eval(), genotype=GENOTYPES["DARTS_V2"], spec=spec,
               data={"dataset": "digits", "num_classes": 5}, search=search)
    return path
