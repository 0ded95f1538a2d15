"""The bi-level step captured in a CUDA graph (``--cuda-graphs``, issue 26): one launch per step, not thousands.

At the paper's search width the step is bound by kernel launches, not arithmetic (``docs/bilevel-step.md``). The
sync-free step (``BilevelStep(sync_free=True)``) reads nothing on the host between its first forward and its alpha
update, so the whole of it (both levels' passes, MGDA, the SGD and Adam updates) can be recorded once and replayed:

- the first ``warmup_steps`` steps run eagerly on the capture stream (cuBLAS/cuDNN handles, optimiser state and
  the momentum buffers are made there, as PyTorch's "whole-network capture" asks);
- then one step is captured on static input buffers and replayed; a new capture is made when the weights' learning
  rate changes (once per epoch under the cosine schedule: SGD and the unroll take it as a Python number) or when
  a batch's shapes differ;
- the FGSM random starts draw from the attack generator on the device, registered with the graph
  (``CUDAGraph.register_generator_state``), so every replay draws new numbers;
- each step's record is read on the host once, after its replay.

What cannot be captured falls back to the eager step with one line saying why (``capture_blockers``); a capture
that fails falls back the same way. Sources: PyTorch's CUDA semantics, "CUDA Graphs" (whole-network capture,
``torch.cuda.graph``, warm-up on a side stream); NVIDIA's "PyTorch CUDA Graph Integration" quick checklist
(docs.nvidia.com/dl-cuda-graph/torch-cuda-graph/quick-checklist.html); ``docs/cuda-graphs.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from e2rnas.search.bilevel import BilevelStep, StepBatch, StepResult

CUDA_GRAPHS = ("auto", "on", "off")
WARMUP_STEPS = 3


def capture_blockers(step: BilevelStep, *, device: torch.device, distributed: bool) -> list[str]:
    """Why this step cannot be captured on ``device`` (empty: it can)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"the search runs on {device.type}, not CUDA")
    if distributed:
        reasons.append("a distributed search all-reduces inside the step (not captured)")
    if step._autocast is not nullcontext:
        reasons.append("--amp bf16: autocast's weight-cast cache is not capture-safe")
    if any(getattr(m, "skip_dropout", 0.0) > 0 for m in step.model.modules()):
        reasons.append("P-DARTS skip dropout: the second-order passes replay its random stream, and a random "
                       "state cannot be set inside a capture")
    if not all(g.get("capturable", False) for g in step.a_optimizer.param_groups):
        reasons.append("the architecture optimiser is not capturable (Adam(capturable=True) keeps its step count "
                       "on the device)")
    return reasons


class GraphedStep:
    """``BilevelStep.step`` with the step captured in a CUDA graph once warm; eager where capture is off."""

    def __init__(self, step: BilevelStep, *, generator: torch.Generator | None, enabled: bool,
                 warmup_steps: int = WARMUP_STEPS, on_fallback: Callable[[str], None] | None = None):
        self.inner = step
        self.generator = generator
        self.enabled = enabled
        self.warmup_steps = warmup_steps
        self.on_fallback = on_fallback or (lambda line: None)
        self.captures = 0  # graphs recorded so far (one per learning rate, so about one per epoch)
        self.replays = 0
        self._eager_steps = 0
        self._graph = None
        self._key: tuple | None = None
        self._static_in: StepBatch | None = None
        self._static_out = None
        if enabled:
            if not step.sync_free:
                raise ValueError("a captured step must be sync-free (BilevelStep(sync_free=True))")
            step.replay_rng = False  # nothing random in the passes: capture_blockers refused skip dropout
            self._stream = torch.cuda.Stream(device=step.alphas[0].device)

    def step(self, batch: StepBatch, *, lr: float) -> StepResult:
        if not self.enabled:
            return self.inner.step(batch, lr=lr, generator=self.generator)
        if self._eager_steps < self.warmup_steps:
            self._eager_steps += 1
            return self.inner.record(self._on_stream(lambda: self.inner.pending_step(
                batch, lr=lr, generator=self.generator)))
        # what a capture bakes in as numbers: the unroll's lr and both optimisers' (SGD's alpha=-lr, Adam's lr)
        lrs = tuple(float(g["lr"]) for opt in (self.inner.w_optimizer, self.inner.a_optimizer)
                    for g in opt.param_groups)
        key = (float(lr), lrs, *[None if t is None else (tuple(t.shape), t.dtype) for t in _tensors(batch)])
        if key != self._key and not self._capture(batch, lr, key):
            return self.inner.step(batch, lr=lr, generator=self.generator)  # capture failed: eager from now on
        for dst, src in zip(_tensors(self._static_in), _tensors(batch), strict=True):
            if dst is not None:
                dst.copy_(src, non_blocking=True)
        self._graph.replay()
        self.replays += 1
        return self.inner.record(self._static_out)

    def _on_stream(self, fn):
        stream = self._stream
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        with torch.cuda.stream(stream):
            out = fn()
        torch.cuda.current_stream(stream.device).wait_stream(stream)
        return out

    def _capture(self, batch: StepBatch, lr: float, key: tuple) -> bool:
        self._graph = self._static_out = None  # the previous graph's memory pool goes back first
        self._static_in = StepBatch(*[None if t is None else t.detach().clone() for t in _tensors(batch)])
        graph = torch.cuda.CUDAGraph()
        if self.generator is not None and self.generator.device.type == "cuda":
            graph.register_generator_state(self.generator)
        device = self._stream.device
        previous = torch.cuda.current_stream(device)
        try:
            with torch.cuda.graph(graph, stream=self._stream):
                out = self.inner.pending_step(self._static_in, lr=lr, generator=self.generator)
        except Exception as exc:  # noqa: BLE001 - any capture failure: say why, run eagerly
            # torch.cuda.graph's exit calls capture_end before leaving the stream context, so a capture that failed
            # leaves the capture stream current; and capture_end's own error hides the cause in __context__
            torch.cuda.set_stream(previous)
            self.enabled, self._graph, self._static_in = False, None, None
            torch.cuda.synchronize(device)
            cause = exc.__context__ if exc.__context__ is not None else exc
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            self.on_fallback(f"CUDA graphs off: capturing the search step failed ({type(cause).__name__}: {first}); "
                             f"the step runs eagerly")
            return False
        self._graph, self._static_out, self._key = graph, out, key
        self.captures += 1
        return True


def _tensors(batch: StepBatch) -> list[torch.Tensor | None]:
    return [batch.x_train, batch.y_train, batch.x_val, batch.y_val, batch.x_ood_lower, batch.x_ood_upper]
