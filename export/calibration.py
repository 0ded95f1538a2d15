"""Calibration batches sized by the network, not by a constant.

A static-batch network (``--static-batch N``) accepts exactly N images per call, both in ONNX Runtime's
calibration sessions and in TensorRT 10's calibrator (which reads N images from the buffer it is handed:
``get_batch_size`` is ignored since 10.0). So the batch comes from the ONNX input shape; a dynamic batch uses
the caller's preferred size. The last, short batch is filled by wrapping around to the first images (real
images, each counted at most once more), so no image is dropped and a set smaller than N still calibrates.

"""

from __future__ import annotations

import numpy as np

from e2rnas.export.graph_facts import onnx_input, static_batch_of

__all__ = ["calibration_batch", "calibration_batches", "onnx_input", "static_batch_of"]


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
