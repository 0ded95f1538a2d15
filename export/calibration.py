"""Calibration batches sized by the network, not by a constant.

A static-batch network (``--static-batch N``) accepts exactly N images per call, both in ONNX Runtime's
calibration sessions and in TensorRT 10's calibrator (which reads N images from the buffer it is handed:
``get_batch_size`` is ignored since 10.0). So the batch comes from the ONNX input shape; a dynamic batch uses
the caller's preferred size. The last, short batch is filled by wrapping around to the first images (real
images, each counted at most once more), so no image is dropped and a set smaller than N still calibrates.
This module imports numpy and, lazily, onnx only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def onnx_input(path: str | Path) -> tuple[str, list[int | None]]:
    """Name and dims of the first graph input; a symbolic or unknown dim is None (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in inp.type.tensor_type.shape.dim]
    return inp.name, dims


def static_batch_of(path: str | Path) -> int | None:
    """The fixed batch of an ONNX file's input, or None when the batch axis is dynamic."""
    dims = onnx_input(path)[1]
    return dims[0] if dims else None


def calibration_batch(network_batch: int | None, preferred: int, images: int) -> int:
    """The network's fixed batch, else ``preferred`` capped at the number of images (at least 1)."""
    if network_batch:
        return int(network_batch)
    return max(1, min(int(preferred), int(images)))


def calibration_batches(images: np.ndarray, batch: int) -> tuple[list[np.ndarray], int]:
    """``images`` cut into float32 batches of exactly ``batch``; returns (batches, images repeated to fill)."""
    n = len(images)
    if n == 0 or batch < 1:
        raise ValueError("calibration needs at least one image and a batch >= 1")
    count = -(-n // batch)
    padded = count * batch - n
    order = np.arange(count * batch) % n  # the tail wraps around to the first images
    data = np.ascontiguousarray(images[order], dtype=np.float32)
    return [data[i * batch:(i + 1) * batch] for i in range(count)], int(padded)
