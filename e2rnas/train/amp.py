"""Training precision on CUDA: fp32, TF32, bf16 autocast, or fp16 autocast with a gradient scaler.

Measured on an H200 for one 20-cell C=36 batch-96 DARTS_V2 retrain step (``benchmarks/train_step.py``): fp32 with
TF32 off 0.166 s, TF32 0.125 s, bf16 autocast 0.187 s, fp16 + GradScaler 0.198 s. At this width the step is bound by
kernel launches, not arithmetic, so autocast's casts cost more than they save: ``auto`` picks TF32 on CUDA
(docs/amp.md). ``off`` is plain fp32 with TF32 disabled, so that fp32 means fp32 on every GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from e2rnas.errors import E2RNASError

AMP_MODES = ("off", "auto", "tf32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_amp(mode: str, device: torch.device) -> str:
    """``auto`` -> tf32 on CUDA, off elsewhere; a CUDA-only mode on another device, or bf16 on a GPU without it,
    is a one-line error."""
    if mode not in AMP_MODES:
        raise E2RNASError(f"--amp {mode!r}: choose {', '.join(AMP_MODES)}")
    if mode == "auto":
        return "tf32" if device.type == "cuda" else "off"
    if mode != "off" and device.type != "cuda":
        raise E2RNASError(f"--amp {mode} runs on CUDA only; this run is on {device.type}: use --amp off")
    if mode == "bf16" and not _native_bf16():
        raise E2RNASError(f"--amp bf16: {torch.cuda.get_device_name(device)} has no native bf16; use --amp fp16 "
                          "(with a gradient scaler) or --amp tf32")
    return mode


def _native_bf16() -> bool:
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no emulation switch
        return torch.cuda.is_bf16_supported()


@dataclass
class Precision:
    """The forward's autocast and the backward/step (scaled for fp16) of one resolved mode."""

    mode: str
    device: torch.device
    scaler: Any = None  # torch.amp.GradScaler for fp16

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = _DTYPES.get(self.mode)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      params: Iterable[torch.Tensor], max_norm: float) -> None:
        """backward, gradient clipping (on unscaled gradients), optimizer step; a scaler skips inf/NaN steps."""
        params = list(params)
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.scaler.step(optimizer)
        self.scaler.update()


    @contextmanager
    def tf32(self) -> Iterator[None]:
        """TF32 matmuls and convolutions on for every mode but ``off``, for the length of a run (then put back)."""
        if self.device.type != "cuda":
            yield
            return
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.mode != "off"
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def make_precision(mode: str, device: torch.device) -> Precision:
    """The precision of a resolved mode (:func:`resolve_amp`), with a GradScaler for fp16."""
    return Precision(mode, device, torch.amp.GradScaler("cuda") if mode == "fp16" else None)
