"""The sync-free bi-level step (issue 26): the same step as the reference one, with nothing read on the host.

Equality: three ``step`` calls of each form from the same supernet in float64, every weight, alpha and record value
within 1e-10, over the step's variants (MGDA, equal, fixed weights; first and second order; both finite-difference
schemes; the latency objective; FGSM in the lower level; PC-DARTS; an objective that sits out MGDA). No host read:
the step runs on the meta device, where a tensor has no data, so any ``.item()``, ``float()`` or branch on a value
raises (the CPU reference step does raise there).
"""

from __future__ import annotations

import copy

import pytest
import torch
from _search_helpers import synthetic_table
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from e2rnas.search.bilevel import BilevelStep, DivergenceError, StepBatch
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import make_objectives
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.latency_table import LatencyTable
from e2rnas.space.supernet import SearchNetwork

PRIMS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")
SHAPE = DeployShape(layers=5, C=8, num_classes=3, input_size=16)


def _table() -> LatencyTable:
    return synthetic_table(SHAPE, PRIMS)


def _model(partial_channels: int = 1) -> SearchNetwork:
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3, num_classes=3, primitives=PRIMS, partial_channels=partial_channels).double()
    with torch.no_grad():
        for a in model.arch_parameters():
            a.normal_(0, 0.5)
    return model


def _batch(seed: int, device: str = "cpu", dtype=torch.float64) -> StepBatch:
    g = torch.Generator().manual_seed(seed)

    def images():
        return torch.rand(4, 3, 8, 8, generator=g, dtype=dtype).to(device)

    labels = torch.tensor([0, 1, 2, 0], device=device)
    return StepBatch(images(), labels, images(), labels.flip(0), images(), images())


def _step(model, names, *, sync_free, weighting="mgda", normalization="l2", latency=False, cost_form="target",
          params_bound_m=0.1, macs_bound_m=4.0, **kw) -> BilevelStep:
    cost = CostModel(SHAPE, PRIMS)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.05, momentum=0.9, weight_decay=3e-3)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-2)
    return BilevelStep(model, objectives=make_objectives(names, cost_form=cost_form),
                       weighting=Weighting(weighting, normalization), cost_model=cost, w_optimizer=w_opt,
                       a_optimizer=a_opt, eps=4 / 255, params_bound_m=params_bound_m, macs_bound_m=macs_bound_m,
                       latency_table=_table() if latency else None, latency_bound_ms=2.0 if latency else None,
                       sync_free=sync_free, **kw)


CASES = {
    "mgda-second-forward": dict(names=("val", "ood", "adv", "params", "flops")),
    "mgda-second-central": dict(names=("val", "ood", "adv", "params", "flops"), hvp="central"),
    "mgda-first-order": dict(names=("val", "ood", "adv", "params", "flops"), first_order=True),
    "mgda-latency-clean-fgsm": dict(names=("val", "adv", "ood", "latency"), latency=True, fgsm_start="clean"),
    "mgda-lower-adv": dict(names=("val", "ood", "adv"), ll_adv=True),
    "mgda-loss-normalised": dict(names=("val", "ood", "params"), normalization="loss+l2"),
    "equal": dict(names=("val", "ood", "adv", "params", "flops"), weighting="equal"),
    "fixed-alpha-clip": dict(names=("val", "ood", "params"), weighting="fixed:1,2,0.5", a_grad_clip=0.01),
    "pc-darts": dict(names=("val", "ood", "params", "flops"), partial=2),
    # band cost forms inside their budget: zero gradients, the objectives sit out MGDA
    "mgda-band-sits-out": dict(names=("val", "ood", "params", "flops"), cost_form="band", params_bound_m=10.0,
                               macs_bound_m=1e4),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sync_free_step_equals_the_reference_step_in_float64(case):
    spec = dict(CASES[case])
    names, partial = spec.pop("names"), spec.pop("partial", 1)
    models, records = {}, {}
    for sync_free in (False, True):
        model = _model(partial)
        step = _step(model, names, sync_free=sync_free, **spec)
        torch.manual_seed(3)
        records[sync_free] = [step.step(_batch(i), lr=0.05, generator=torch.Generator().manual_seed(7 + i))
                              for i in range(3)]
        models[sync_free] = model
    ref, got = models[False].state_dict(), models[True].state_dict()
    worst = max(float((ref[k].double() - got[k].double()).abs().max()) for k in ref if ref[k].is_floating_point())
    assert worst <= 1e-10, worst
    assert not torch.equal(models[True].alpha_normal, _model(partial).alpha_normal)  # the steps did move alphas
    for a, b in zip(records[False], records[True], strict=True):
        assert a.dropped == b.dropped
        for field in ("losses", "gammas", "effective"):
            for n in getattr(a, field):
                assert getattr(b, field)[n] == pytest.approx(getattr(a, field)[n], abs=1e-10, rel=1e-10), (field, n)
        assert b.diagnostics["applied_norm"] == pytest.approx(a.diagnostics["applied_norm"], rel=1e-10)
    if case == "mgda-band-sits-out":
        assert records[True][0].dropped == ["params", "flops"]


def test_the_sync_free_mgda_weighting_equals_frank_wolfe_with_dead_objectives():
    gen = torch.Generator().manual_seed(0)
    for trial in range(20):
        K = 2 + trial % 5
        G = torch.randn(K, 50, generator=gen, dtype=torch.float64)
        G[trial % K] = 0.0  # one objective with a flat gradient sits out
        if trial % 4 == 0:
            G[(trial + 1) % K] = 0.0
        losses = torch.rand(K, generator=gen, dtype=torch.float64) + 0.1
        names = [f"o{k}" for k in range(K)]
        for mode in ("l2", "none", "loss+l2"):
            w = Weighting("mgda", mode)
            gamma, eff = w.weights(G, losses, names)
            gamma_d, eff_d, bad = w.weights_on_device(G, losses, names)
            assert bad.tolist() == w.degenerate(G, losses).tolist()
            assert torch.allclose(gamma_d, gamma, atol=1e-10), (gamma_d, gamma)
            assert torch.allclose(eff_d, eff, atol=1e-10, rtol=1e-10)
    everything_flat = Weighting("mgda").weights_on_device(torch.zeros(3, 5), torch.ones(3), ["a", "b", "c"])
    assert everything_flat[0].tolist() == [0.0, 0.0, 0.0] and everything_flat[2].all()


def test_a_sync_free_step_that_diverges_says_so_after_its_update():
    model = _model()
    step = _step(model, ("val", "ood"), sync_free=True)
    batch = _batch(0)
    bad = StepBatch(batch.x_train * float("nan"), batch.y_train, batch.x_val, batch.y_val, batch.x_ood_lower,
                    batch.x_ood_upper)
    pending = step.pending_step(bad, lr=0.05)  # no check inside: the update ran
    with pytest.raises(DivergenceError, match="lower"):
        step.record(pending)


def test_the_mask_state_is_read_on_the_host_once_not_per_forward():
    """P-DARTS masks: the forward's mask reads use the host copy made when the masks were set or loaded."""
    model = _model()
    assert not model.pruned
    normal = torch.ones_like(model.mask_normal)
    normal[:, 1] = False
    model.set_masks(normal, torch.ones_like(model.mask_reduce))
    assert model.pruned
    restored = _model()
    restored.load_state_dict(copy.deepcopy(model.state_dict()))
    assert restored.pruned and torch.equal(restored._host_masks[0], normal)
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(restored(x), model(x))


class HostCopies(TorchDispatchMode):
    """Records every op that takes a CPU tensor (not a Python number) to the meta device, and every advanced
    indexing: ``x[list]`` turns the list into a CPU index tensor and copies it to the device (a host copy on a GPU),
    a conversion the meta device performs below this watch, so the indexing op itself is what is seen."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        leaves = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_cpu = any(t.device.type == "cpu" and t.dim() > 0 for t in leaves)
        to_meta = (func is torch.ops.aten._to_copy.default and str(kwargs.get("device")) == "meta") or any(
            t.device.type == "meta" for t in leaves)
        if (on_cpu and to_meta) or func is torch.ops.aten.index.Tensor:
            self.seen.append(str(func))
        return func(*args, **kwargs)


@pytest.mark.parametrize("case", ["mgda-second-central", "mgda-latency-clean-fgsm", "pc-darts", "fixed-alpha-clip"])
def test_the_sync_free_step_reads_nothing_on_the_host_and_once_warm_copies_nothing_to_it(case):
    """The whole step, weight and alpha updates included, on the meta device, where no value exists to be read (the
    reference step raises there). After that first step (the warm-up a CUDA graph needs anyway) a step makes no copy
    from CPU memory to the device either: on a GPU such a copy waits for it, inside a capture it is illegal."""
    spec = dict(CASES[case])
    names, partial = spec.pop("names"), spec.pop("partial", 1)
    step = _step(_model(partial).float().to("meta"), names, sync_free=True, **spec)
    pending = step.pending_step(_batch(0, "meta", torch.float32), lr=0.05, generator=None)
    assert pending.combined.device.type == "meta" and pending.gamma.shape == (len(names),)
    batch = _batch(1, "meta", torch.float32)
    with HostCopies() as watch:
        step.pending_step(batch, lr=0.05, generator=None)
    assert watch.seen == []
    if case == "mgda-second-central":
        reference = _step(_model(partial).float().to("meta"), names, sync_free=False, **spec)
        with pytest.raises((RuntimeError, NotImplementedError)):  # the reference step reads values on the host
            reference.pending_step(_batch(0, "meta", torch.float32), lr=0.05, generator=None)


def test_the_copy_watch_sees_a_cold_steps_copies():
    """The watch above proves something: a step whose cost tables are not on the device yet is seen copying."""
    spec = dict(CASES["mgda-first-order"])
    names = spec.pop("names")
    cold = _step(_model().float().to("meta"), names, sync_free=True, **spec)
    batch = _batch(1, "meta", torch.float32)
    with HostCopies() as watch:
        cold.pending_step(batch, lr=0.05, generator=None)
    assert watch.seen
