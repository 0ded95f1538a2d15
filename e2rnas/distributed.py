"""Data parallelism on torch.distributed, as launched by torchrun, and one writer per run directory.

    torchrun --nproc-per-node 2 -m e2rnas.cli search ...            # one machine, 2 processes (gloo on CPU)
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29400 --nproc-per-node 8 \\
        -m e2rnas.cli search ...                                    # two machines (NCCL on GPUs)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; without them a run is one process.
Every rank draws the same global batch (same generator, same augmentation) and keeps its slice ``[rank::world]``,
so N processes see exactly the batches of a one-process run; gradients are averaged with ``all_reduce``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from e2rnas.errors import E2RNASError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def env_world() -> DistInfo:
    """What torchrun's environment says (no process group is made)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world_size=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(device: str) -> DistInfo:
    """Join torchrun's process group when launched by it (gloo for CPU, NCCL for CUDA); else one process.

    On CUDA each process takes the GPU of its LOCAL_RANK. Returns the rank, world size and local rank."""
    import torch.distributed as dist

    info = env_world()
    if not info.active:
        return info
    if not dist.is_available():
        raise E2RNASError("this torch build has no torch.distributed: run one process, or install a torch with it")
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    return info


def local_device(device: str, info: DistInfo) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun (one GPU per process); anything else unchanged."""
    dev = torch.device(device)
    if info.active and dev.type == "cuda" and dev.index is None:
        return f"cuda:{info.local_rank}"
    return device


def mean_all_reduce(tensors: list[torch.Tensor], info: DistInfo) -> list[torch.Tensor]:
    """The mean over ranks of each tensor (one flat all_reduce); the same tensors when one process."""
    if not info.active or not tensors:
        return tensors
    import torch.distributed as dist

    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world_size
    out, offset = [], 0
    for t in tensors:
        out.append(flat[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out


def check_agree(tensors: list[torch.Tensor], info: DistInfo, *, what: str) -> None:
    """Every rank holds the same values (a cheap checksum each): raise when they drifted apart."""
    if not info.active:
        return
    import torch.distributed as dist

    mine = torch.stack([t.detach().to(torch.float64).sum() for t in tensors] +
                       [t.detach().to(torch.float64).abs().sum() for t in tensors]).cpu()
    gathered = [torch.zeros_like(mine) for _ in range(info.world_size)]
    dist.all_gather(gathered, mine) if dist.get_backend() == "gloo" else _gather_cuda(gathered, mine)
    if any(not torch.equal(g, gathered[0]) for g in gathered[1:]):
        raise E2RNASError(f"data-parallel ranks disagree on the {what} (checksums {[g.tolist() for g in gathered]}): "
                          f"the processes no longer search the same network; rerun, and report this as a bug")


def _gather_cuda(gathered: list[torch.Tensor], mine: torch.Tensor) -> None:
    import torch.distributed as dist

    dev = torch.device("cuda", torch.cuda.current_device())
    parts = [g.to(dev) for g in gathered]
    dist.all_gather(parts, mine.to(dev))
    for g, p in zip(gathered, parts, strict=True):
        g.copy_(p.cpu())


def barrier(info: DistInfo) -> None:
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def shard(x: torch.Tensor | None, info: DistInfo) -> torch.Tensor | None:
    """This rank's slice of a global batch."""
    if x is None or not info.active:
        return x
    return x[info.rank::info.world_size]


class RunLock:
    """One writer per run directory: ``.e2rnas.lock`` holds the owner's host and pid while it runs.

    Two searches started on one --out without torchrun would interleave checkpoints and metrics: the second one
    stops with a one-line error. A lock left by a process that died (same host, pid gone) is taken over."""

    NAME = ".e2rnas.lock"

    def __init__(self, run_dir: Path, *, enabled: bool = True):
        self.path = Path(run_dir) / self.NAME
        self.enabled = enabled
        self.held = False

    def __enter__(self) -> RunLock:
        if not self.enabled:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                owner = self.path.read_text().strip() if self.path.is_file() else "?"
                raise E2RNASError(f"{self.path.parent} is in use by another e2rnas process ({owner}); wait for it, "
                                  f"or use another --out (for several processes on one run, launch with torchrun)"
                                  ) from None
            with os.fdopen(fd, "w") as fh:
                fh.write(me + "\n")
            self.held = True
            return self
        raise E2RNASError(f"cannot take the lock {self.path}")

    def _stale(self) -> bool:
        try:
            host, pid = self.path.read_text().split()
        except (OSError, ValueError):
            return True
        if host != socket.gethostname():
            return False  # another machine's process: cannot tell, so do not steal
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
