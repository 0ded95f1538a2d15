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
    from e2rnas.genotypes import GENOTYPES
    from e2rnas.model_io import NetworkSpec, save_model

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
