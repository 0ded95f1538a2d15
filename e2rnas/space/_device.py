"""Constants on the step's device, made once (issue 26): off the CPU, building a tensor from host data in the step
(a table moved per call, a GPU tensor indexed by a Python list) is a copy that waits for the GPU, and inside a CUDA
graph capture it is illegal. The first (eager) step makes them; every later step, and a captured graph, reuses the
same tensors. Never evicted: a captured graph reads them by address."""

from __future__ import annotations

import torch

_CONSTANTS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_INDICES: dict[tuple, torch.Tensor] = {}


def constant_like(t: torch.Tensor, like: torch.Tensor, *, columns: tuple[int, ...] | None = None) -> torch.Tensor:
    """A constant CPU table ``t`` (only ``columns`` of its second axis, if given) in ``like``'s dtype and device.

    Made once per (table, columns, device, dtype) and kept (the columns are taken on the CPU). ``t`` must not
    change afterwards (the cost tables never do); the entry holds ``t``, so its id is not reused while it lives."""
    key = (id(t), columns, like.device, like.dtype)
    hit = _CONSTANTS.get(key)
    if hit is None or hit[0] is not t:
        hit = _CONSTANTS[key] = (t, (t if columns is None else t[:, list(columns)]).to(like))
    return hit[1]


def index_tensor(indices: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``indices`` as a long tensor on ``device``, made once: for ``index_select`` in place of ``x[list]``."""
    key = (indices, device)
    out = _INDICES.get(key)
    if out is None:
        out = _INDICES[key] = torch.tensor(indices, dtype=torch.long).to(device)
    return out
