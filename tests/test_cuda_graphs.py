"""``--cuda-graphs``: what blocks a capture (said in one line), the eager fall-back, and on a GPU the captured step
against the eager one (``gpu`` marker: skipped without CUDA, run by ``benchmarks/gpu_check.sh``)."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.errors import E2RNASError
from e2rnas.search.bilevel import BilevelStep, StepBatch
from e2rnas.search.graphs import GraphedStep, capture_blockers
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import make_objectives
from e2rnas.search.runner import SearchConfig
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.supernet import SearchNetwork

NAMES = ("val", "ood", "adv", "params", "flops")
SHAPE = DeployShape(layers=5, C=8, num_classes=3, input_size=16)


def _step(device: str, *, sync_free: bool = True, capturable: bool | None = None, seed: int = 0) -> BilevelStep:
    """The step of a supernet (3 cells C=4 on the CPU, 5 cells C=8 on a GPU); Adam capturable on CUDA (it refuses
    CPU parameters when capturable)."""
    torch.manual_seed(seed)
    small = device == "cpu"
    model = SearchNetwork(C=4 if small else 8, layers=3 if small else 5, num_classes=3).to(device)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-2,
                             capturable=device == "cuda" if capturable is None else capturable)
    return BilevelStep(model, objectives=make_objectives(NAMES), weighting=Weighting("mgda"),
                       cost_model=CostModel(SHAPE), w_optimizer=w_opt, a_optimizer=a_opt, eps=2 / 255,
                       params_bound_m=0.1, macs_bound_m=4.0, sync_free=sync_free)


def _batches(n: int, device: str) -> list[StepBatch]:
    g = torch.Generator().manual_seed(1)
    out = []
    size = 8 if device == "cpu" else 16
    for _ in range(n):
        x = [torch.rand(16, 3, size, size, generator=g) for _ in range(4)]
        y = [torch.randint(0, 3, (16,), generator=g) for _ in range(2)]
        out.append(StepBatch(*(t.to(device) for t in (x[0], y[0], x[1], y[1], x[2], x[3]))))
    return out


def test_what_blocks_a_capture_is_said():
    step = _step("cpu", capturable=False)
    step.model.cells[0].edges[0].skip_dropout = 0.3
    reasons = capture_blockers(step, device=torch.device("cpu"), distributed=True)
    assert len(reasons) == 4
    assert any("not CUDA" in r for r in reasons) and any("distributed" in r for r in reasons)
    assert any("skip dropout" in r for r in reasons) and any("capturable" in r for r in reasons)
    assert capture_blockers(_step("cpu", capturable=True), device=torch.device("cuda"), distributed=False) == []


def test_a_step_that_is_not_captured_is_the_plain_step():
    batches = _batches(2, "cpu")
    plain, graphed = _step("cpu"), GraphedStep(_step("cpu"), generator=None, enabled=False)
    for b in batches:
        torch.manual_seed(5)
        ref = plain.step(b, lr=0.025)
        torch.manual_seed(5)
        got = graphed.step(b, lr=0.025)
        assert got.gammas == ref.gammas
    assert torch.equal(plain.model.alpha_normal, graphed.inner.model.alpha_normal)
    assert graphed.captures == graphed.replays == 0


def test_only_a_sync_free_step_is_captured():
    with pytest.raises(ValueError, match="sync-free"):
        GraphedStep(_step("cpu", sync_free=False), generator=None, enabled=True)


def test_a_bad_cuda_graphs_value_is_one_line():
    with pytest.raises(ValueError, match="unknown cuda_graphs 'always'; choose from auto, on, off"):
        SearchConfig(cuda_graphs="always")
    res = CliRunner().invoke(app, ["search", "--cuda-graphs", "always", "--print-config"])
    assert res.exit_code != 0 and isinstance(res.exception, E2RNASError)
    assert "unknown cuda_graphs 'always'" in str(res.exception) and "\n" not in str(res.exception)


@pytest.mark.gpu
def test_the_captured_step_equals_the_eager_step_on_a_gpu():
    """One eager warm-up step, then three captured replays (at two learning rates: a recapture) against four eager
    sync-free steps from the same state and random streams: alphas within 1e-5 in fp32."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    batches = _batches(4, "cuda")
    lrs = (0.025, 0.025, 0.025, 0.02)
    eager = _step("cuda")
    gen_e = torch.Generator(device="cuda").manual_seed(3)
    records_e = [eager.step(b, lr=lr, generator=gen_e) for b, lr in zip(batches, lrs, strict=True)]
    inner = _step("cuda")
    graphed = GraphedStep(inner, generator=torch.Generator(device="cuda").manual_seed(3), enabled=True,
                          warmup_steps=1)
    records_g = [graphed.step(b, lr=lr) for b, lr in zip(batches, lrs, strict=True)]
    assert graphed.enabled, "the capture fell back to eager"
    assert graphed.captures == 2 and graphed.replays == 3
    for a, b in zip(eager.alphas, inner.alphas, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())
    for re, rg in zip(records_e, records_g, strict=True):
        for n in NAMES:
            assert rg.gammas[n] == pytest.approx(re.gammas[n], abs=1e-4)
    assert not torch.equal(inner.alphas[0], _step("cuda").alphas[0])  # the replays moved the alphas


@pytest.mark.gpu
def test_a_warm_sync_free_step_never_waits_for_the_gpu():
    """torch's sync debug mode turns any host synchronisation into an error: none in a warm sync-free step."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    step, gen = _step("cuda"), torch.Generator(device="cuda").manual_seed(3)
    first, second = _batches(2, "cuda")
    step.step(first, lr=0.025, generator=gen)  # warm: device constants and optimiser state made
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = step.pending_step(second, lr=0.025, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert step.record(pending).gammas
