"""Parity of an exported artifact with the torch model, on real images, at batch 1 and at a larger batch.

Kept apart from the exporters (as optimum's ``validate_model_outputs``): any ``Predictor`` (ONNX Runtime,
TensorRT) is compared with reference logits computed once by torch in float32 on the CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from e2rnas.data import ImageSet, load_dataset
from e2rnas.errors import E2RNASError
from e2rnas.predict import Predictor

BATCH1_SAMPLES = 8  # images run one at a time: enough to catch batch-1 specialisation, cheap on a CPU


@dataclass(frozen=True)
class Parity:
    """How an artifact's logits compare with a reference on the same images."""

    max_abs_diff: float
    top1_agreement: float  # over all images, at the larger batch
    samples: int
    per_batch: dict[str, float] = field(default_factory=dict)  # "batch1" / "batch16" -> max |diff|
    reference_max_abs: float = 0.0  # scale of the reference logits, to read max_abs_diff against
    accuracy_reference: float | None = None  # against the labels, when they match the model's classes
    accuracy_candidate: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check(parity: Parity, *, atol: float | None, min_top1: float, rtol: float | None = None) -> str | None:
    """None when the parity is within tolerance, else the reason in one line. ``rtol`` bounds max |diff| by
    ``rtol * max |reference logit|`` (fp16: relative to the logits' scale); ``atol``, when given, wins."""
    if atol is not None and not parity.max_abs_diff <= atol:  # `not <=` also catches NaN
        return f"max |diff| {parity.max_abs_diff:.3g} > atol {atol:g}"
    if atol is None and rtol is not None:
        bound = rtol * parity.reference_max_abs
        if not parity.max_abs_diff <= bound:
            return (f"max |diff| {parity.max_abs_diff:.3g} > rtol {rtol:g} x max |torch logit| "
                    f"{parity.reference_max_abs:.3g} = {bound:.3g}")
    if parity.top1_agreement < min_top1:
        return f"top-1 agreement {parity.top1_agreement:.3f} < {min_top1:g}"
    return None


@torch.no_grad()
def reference_logits(model: torch.nn.Module, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """float32 CPU logits of an eval-mode copy of ``model`` (the ground truth every artifact is held to)."""
    model = model.eval()
    device = next(model.parameters()).device
    outs = [model(torch.from_numpy(x[i:i + batch_size]).to(device)).float().cpu().numpy()
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)


def run_batched(predictor: Predictor, x: np.ndarray, batch_size: int, *, static: bool = False) -> np.ndarray:
    """Logits in batches of ``batch_size``; with a static batch the last batch is padded and then cut."""
    outs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        n = len(chunk)
        if static and n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        outs.append(np.asarray(predictor(np.ascontiguousarray(chunk)), dtype=np.float32)[:n])
    return np.concatenate(outs)


def compare(predictor: Predictor, x: np.ndarray, reference: np.ndarray, *, check_batch: int = 16,
            static_batch: int | None = None, labels: np.ndarray | None = None) -> Parity:
    """Max |diff| and top-1 agreement at batch 1 (first images) and at ``check_batch`` (all images).

    A static-batch artifact runs only at its own batch size, so that is the one batch checked.
    """
    per_batch: dict[str, float] = {}
    if static_batch:
        out = run_batched(predictor, x, static_batch, static=True)
        per_batch[f"batch{static_batch}"] = _max_diff(out, reference)
    else:
        k = min(BATCH1_SAMPLES, len(x))
        out1 = run_batched(predictor, x[:k], 1)
        per_batch["batch1"] = _max_diff(out1, reference[:k])
        out = run_batched(predictor, x, check_batch)
        per_batch[f"batch{check_batch}"] = _max_diff(out, reference)
    agreement = float((out.argmax(1) == reference.argmax(1)).mean()) if len(x) else 1.0
    acc_ref = acc_out = None
    if labels is not None and reference.shape[1] > int(labels.max(initial=0)):
        acc_ref = float((reference.argmax(1) == labels).mean())
        acc_out = float((out.argmax(1) == labels).mean())
    return Parity(max_abs_diff=max(per_batch.values()), top1_agreement=agreement, samples=len(x),
                  per_batch=per_batch, reference_max_abs=float(np.abs(reference).max()) if reference.size else 0.0,
                  accuracy_reference=acc_ref, accuracy_candidate=acc_out)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise E2RNASError(f"artifact returned logits of shape {a.shape}, torch {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def images_for(spec: str, *, split: str, image_size: int, samples: int | None,
               data_dir: str | None = None) -> ImageSet:
    """A class-mixed sample of a data set at the model's resolution (``digits`` works offline)."""
    data = load_dataset(spec, split=split, data_dir=data_dir, image_size=image_size)
    if len(data) == 0:
        raise E2RNASError(f"{spec} ({split}) has no images")
    return data.head(samples)


def as_numpy(data: ImageSet) -> tuple[np.ndarray, np.ndarray]:
    x, y = data.tensors()
    return np.ascontiguousarray(x.numpy(), dtype=np.float32), y.numpy()
