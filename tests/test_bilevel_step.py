"""The whole bi-level step (``BilevelStep.gradients``, ``step``, ``weight_step``) against a hand-written float64 step.

Fast (a 3-cell C=4 supernet on 8x8 images): these are the tests that the mutation run of ``e2rnas/search/bilevel.py``
selects (docs/testing.md). The hand-written step below is eqs. (7)-(10) with DARTS' finite-difference second-order
term, the FGSM example made at the unrolled weights, and fixed objective weights (so that nothing of the library
is trusted but the network's forward); ``tests/test_paper_step.py`` checks the same step against the exact
(double-backward) second derivative.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _search_helpers import synthetic_table
from torch.func import functional_call

from e2rnas.search.bilevel import BilevelStep, DivergenceError, StepBatch
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import Objective, make_objectives
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.latency_table import LatencyTable

LR, MOMENTUM, WD, EPS, HVP_EPS = 0.05, 0.9, 3e-3, 4 / 255, 0.01
L_BOUND, F_BOUND, T_BOUND = 0.1, 4.0, 2.0
SHAPE = DeployShape(layers=5, C=8, num_classes=3, input_size=16)
#: four of the eight ops (a conv, a pool, the skip, none): every kind of edge, at a third of the time
PRIMS = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3")


@pytest.fixture(scope="module")
def cost_model() -> CostModel:
    return CostModel(SHAPE, PRIMS)


def _table() -> LatencyTable:
    return synthetic_table(SHAPE, PRIMS)


def _model(seed: int = 0, partial_channels: int = 1):
    from e2rnas.space.supernet import SearchNetwork

    torch.manual_seed(seed)
    model = SearchNetwork(C=4, layers=3, num_classes=3, primitives=PRIMS, partial_channels=partial_channels).double()
    with torch.no_grad():  # alphas away from uniform: every objective has a real alpha-gradient
        for a in model.arch_parameters():
            a.normal_(0, 0.5)
    return model


def _batch() -> StepBatch:
    g = torch.Generator().manual_seed(1)

    def images():
        return torch.rand(4, 3, 8, 8, generator=g, dtype=torch.float64)

    return StepBatch(images(), torch.tensor([0, 1, 2, 0]), images(), torch.tensor([1, 2, 0, 1]), images(), images())


def _bilevel(model, names, *, weighting="fixed:1,2,3,0.5,0.25", cost_model=None, latency_table=None, a_opt=None,
             latency_bound: float | None = T_BOUND, **kwargs) -> BilevelStep:
    objectives = [o if isinstance(o, Objective) else make_objectives((o,))[0] for o in names]
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    a_opt = a_opt or torch.optim.Adam(model.arch_parameters(), lr=3e-4)
    if isinstance(weighting, str):
        weighting = Weighting(weighting)
    return BilevelStep(model, objectives=objectives, weighting=weighting, cost_model=cost_model,
                       w_optimizer=w_opt, a_optimizer=a_opt, eps=EPS, hvp_eps=HVP_EPS, params_bound_m=L_BOUND,
                       macs_bound_m=F_BOUND, latency_table=latency_table,
                       latency_bound_ms=latency_bound if latency_table is not None else None, **kwargs)


def _kl_uniform(logits: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(logits, dim=1)
    K = logits.shape[1]
    return (-(1 / K) * torch.log(K * p)).sum(dim=1).mean()  # sum_k u_k log(u_k / p_k), u = 1/K


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _fgsm(f, x, y, gen: torch.Generator, step: float = 1.25) -> torch.Tensor:
    """Fast FGSM by hand: x0 = clamp(x + U(-eps, eps)), one step of 1.25 eps along the sign, projected, clamped."""
    x0 = (x + (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * EPS).clamp(0, 1).requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(f(x0), y), x0)
    return torch.min(torch.max(x0.detach() + step * EPS * gx.sign(), x - EPS), x + EPS).clamp(0, 1)


def _fgsm_clean(f, x, y, gen: torch.Generator, step: float = 1.25) -> torch.Tensor:
    """The authors' FGSM by hand: U(-eps, eps) plus 1.25 eps along the sign of the gradient at the clean input."""
    xc = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(f(xc), y), xc)
    delta = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * EPS
    return (x + (delta + step * EPS * gx.sign()).clamp(-EPS, EPS)).clamp(0, 1)


def _by_hand(model, batch, names, weights, *, first_order=False, hvp="forward", ll_adv=False, ll_ood=True,
             ll_ood_weight=1.0, cost_model=None, table=None, fgsm_seed=7, rng_state=None, fgsm_start="random",
             fgsm_step=1.25):
    """(weight gradient, alpha update direction, losses) of one E2RNAS step, from the equations."""
    pnames = list(model.named_weight_parameters())
    theta = [p.detach().clone().requires_grad_(True) for p in model.weight_parameters()]
    alphas = model.arch_parameters()
    gen = torch.Generator().manual_seed(fgsm_seed)

    def f(params):
        return lambda x: functional_call(model, dict(zip(pnames, params, strict=True)), (x,))

    x_train_adv = _fgsm(f(theta), batch.x_train, batch.y_train, gen, fgsm_step) if ll_adv else None

    def lower(params):
        if rng_state is not None:
            torch.set_rng_state(rng_state)
        loss = F.cross_entropy(f(params)(batch.x_train), batch.y_train)
        if ll_ood and batch.x_ood_lower is not None:
            loss = loss + ll_ood_weight * _kl_uniform(f(params)(batch.x_ood_lower))
        if x_train_adv is not None:
            loss = loss + F.cross_entropy(f(params)(x_train_adv), batch.y_train)
        return loss

    low = lower(theta)
    grads = torch.autograd.grad(low, theta + alphas, allow_unused=True, materialize_grads=True)
    g, alpha_grad_t = list(grads[:len(theta)]), _flat(grads[len(theta):])
    at = theta if first_order else [(t - LR * (gt + WD * t)).detach().requires_grad_(True)
                                    for t, gt in zip(theta, g, strict=True)]
    make = _fgsm_clean if fgsm_start == "clean" else _fgsm
    x_adv = make(f(at), batch.x_val, batch.y_val, gen, fgsm_step) if "adv" in names else None
    losses, rows, theta_rows = {}, [], []
    for name in names:
        if name in ("params", "flops"):
            n, m = cost_model.expected_cost(*model.cost_inputs())
            loss = (n - L_BOUND).abs() / L_BOUND if name == "params" else (m - F_BOUND).abs() / F_BOUND
        elif name == "latency":
            loss = (table.expected_ms(*model.cost_inputs()) - T_BOUND).abs() / T_BOUND
        else:
            x, y = {"val": (batch.x_val, batch.y_val), "ood": (batch.x_ood_upper, None),
                    "adv": (x_adv, batch.y_val)}[name]
            out = f(at)(x)
            loss = _kl_uniform(out) if name == "ood" else F.cross_entropy(out, y)
        wrt = alphas + ([] if name in ("params", "flops", "latency") else at)
        d = torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)
        losses[name] = float(loss.detach())
        rows.append(_flat(d[:len(alphas)]))
        theta_rows.append(d[len(alphas):] or None)
    combined = sum(w * r for w, r in zip(weights, rows, strict=True))
    if not first_order:
        v = None
        for w, tr in zip(weights, theta_rows, strict=True):
            if tr is not None:
                v = [w * t for t in tr] if v is None else [a + w * t for a, t in zip(v, tr, strict=True)]
        if v is not None:
            r = HVP_EPS / torch.sqrt(sum((t * t).sum() for t in v))

            def alpha_grad(sign):
                moved = [(t.detach() + sign * r * d).requires_grad_(True) for t, d in zip(theta, v, strict=True)]
                return _flat(torch.autograd.grad(lower(moved), alphas, allow_unused=True, materialize_grads=True))

            plus = alpha_grad(1.0)
            implicit = (plus - alpha_grad(-1.0)) / (2 * r) if hvp == "central" else (plus - alpha_grad_t) / r
            combined = combined - LR * implicit
    return [t.detach() for t in g], combined.detach(), losses, float(low.detach())


def _fixed(spec: str) -> list[float]:
    w = [float(x) for x in spec.split(":")[1].split(",")]
    return [x / sum(w) for x in w]


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-8) -> None:
    assert float((a - b).norm() / b.norm()) < rel, float((a - b).norm() / b.norm())


ALL = ("val", "ood", "adv", "params", "flops")


@pytest.mark.parametrize("hvp", ["forward", "central"])
def test_second_order_step_is_the_hand_written_step(hvp, cost_model):
    model, batch = _model(), _batch()
    spec = "fixed:1,2,3,0.5,0.25"
    step = _bilevel(model, ALL, weighting=spec, cost_model=cost_model, hvp=hvp)
    g, combined, res = step.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))
    g_hand, combined_hand, losses, lower = _by_hand(model, batch, ALL, _fixed(spec), hvp=hvp, cost_model=cost_model)
    for a, b in zip(g, g_hand, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    _close(combined, combined_hand)
    assert res.lower_loss == pytest.approx(lower, rel=1e-12)
    assert res.losses == pytest.approx(losses, rel=1e-10)
    assert list(res.gammas.values()) == pytest.approx(_fixed(spec), rel=1e-6)
    assert res.effective == pytest.approx(res.gammas)
    n, m = (t.detach() for t in cost_model.expected_cost(*model.cost_inputs()))
    assert (res.params_m, res.macs_m) == pytest.approx((float(n), float(m)), rel=1e-12)
    assert res.latency_ms is None and res.dropped == []
    # nothing moved: gradients() only computes
    assert all(p.grad is None for p in step.weights + step.alphas)


def test_the_two_schemes_are_different_searches(cost_model):
    model, batch = _model(), _batch()
    out = {}
    for hvp in ("forward", "central"):
        step = _bilevel(model, ("val", "ood"), weighting="fixed:1,1", hvp=hvp)
        out[hvp] = step.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))[1]
    first = _bilevel(model, ("val", "ood"), weighting="fixed:1,1", first_order=True).gradients(batch, lr=LR)[1]
    assert float((out["forward"] - out["central"]).norm()) > 1e-6 * float(first.norm())
    assert float((out["forward"] - first).norm()) > 1e-6 * float(first.norm())


def test_first_order_with_an_adversarial_lower_level():
    """First order: objectives at theta_t, no Hessian term; AT in the lower level adds CE on FGSM(x_train)."""
    model, batch = _model(), _batch()
    spec = "fixed:2,1"
    step = _bilevel(model, ("val", "adv"), weighting=spec, first_order=True, ll_adv=True, ll_ood=False)
    g, combined, res = step.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))
    g_hand, combined_hand, losses, lower = _by_hand(model, batch, ("val", "adv"), _fixed(spec), first_order=True,
                                                    ll_adv=True, ll_ood=False)
    for a, b in zip(g, g_hand, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    _close(combined, combined_hand, 1e-10)
    assert res.lower_loss == pytest.approx(lower, rel=1e-12)
    assert res.losses == pytest.approx(losses, rel=1e-10)


def test_lower_level_ood_weight_reaches_the_second_order_term():
    model, batch = _model(), _batch()
    step = _bilevel(model, ("val",), weighting="fixed:1", ll_ood_weight=0.25)
    _, combined, res = step.gradients(batch, lr=LR)
    _, combined_hand, _, lower = _by_hand(model, batch, ("val",), [1.0], ll_ood_weight=0.25)
    _close(combined, combined_hand)
    assert res.lower_loss == pytest.approx(lower, rel=1e-12)


def test_mgda_normalized_update_steps_along_gamma_over_the_gradient_norms(cost_model):
    """``normalized``: effective_k = gamma_k / |g_k|, and the step (and its second-order direction) use it."""
    model, batch = _model(), _batch()
    step = _bilevel(model, ALL, weighting=Weighting("mgda", "l2", update="normalized"), cost_model=cost_model,
                    first_order=True)
    _, combined, res = step.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))
    gamma = [res.gammas[n] for n in ALL]
    assert sum(gamma) == pytest.approx(1.0) and min(gamma) >= 0
    _, g_paper, _, _ = _by_hand(model, batch, ALL, [1.0] * 5, first_order=True, cost_model=cost_model)
    rows = [_by_hand(model, batch, ALL, [1.0 if i == k else 0.0 for i in range(5)], first_order=True,
                     cost_model=cost_model)[1] for k in range(5)]
    norms = [float(r.norm()) for r in rows]
    expected = [w / n for w, n in zip(gamma, norms, strict=True)]
    assert [res.effective[n] for n in ALL] == pytest.approx(expected, rel=1e-8)
    _close(combined, sum(w / n * r for w, n, r in zip(gamma, norms, rows, strict=True)), 1e-9)
    # and the second-order direction is weighted by the same multipliers
    step2 = _bilevel(model, ALL, weighting=Weighting("mgda", "l2", update="normalized"), cost_model=cost_model)
    _, combined2, res2 = step2.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))
    eff = [res2.effective[n] for n in ALL]
    _close(combined2, _by_hand(model, batch, ALL, eff, cost_model=cost_model)[1], 1e-7)


def test_latency_objective_uses_the_tables_expected_latency():
    model, batch, table = _model(), _batch(), _table()
    step = _bilevel(model, ("val", "latency"), weighting="fixed:1,3", latency_table=table)
    _, combined, res = step.gradients(batch, lr=LR)
    assert res.latency_ms == pytest.approx(float(table.expected_ms(*model.cost_inputs()).detach()), rel=1e-12)
    assert res.params_m != res.params_m  # nan: no cost model
    _, combined_hand, losses, _ = _by_hand(model, batch, ("val", "latency"), _fixed("fixed:1,3"), table=table)
    _close(combined, combined_hand)
    assert res.losses == pytest.approx(losses, rel=1e-10)


class _Flat(Objective):
    """An objective that does not depend on alpha at all (its alpha-gradient is exactly zero)."""

    name = "flat"
    uses_weights = False

    def __call__(self, ctx):
        return ctx.params_m * 0 + 1.0


def test_an_objective_with_a_zero_alpha_gradient_sits_out_mgda(cost_model):
    model, batch = _model(), _batch()
    step = _bilevel(model, ("val", _Flat()), weighting=Weighting("mgda", "l2", update="paper"), cost_model=cost_model)
    _, combined, res = step.gradients(batch, lr=LR)
    assert res.dropped == ["flat"]
    assert res.gammas == pytest.approx({"val": 1.0, "flat": 0.0})
    _close(combined, _by_hand(model, batch, ("val",), [1.0])[1])


def test_step_applies_the_clipped_sgd_weight_step_and_the_alpha_step(cost_model):
    """step(): SGD (momentum, wd) on the lower-level gradient clipped to grad_clip; the optimiser of the alphas on
    the combined direction clipped to a_grad_clip; every .grad cleared afterwards."""
    model, batch = _model(), _batch()
    a_opt = torch.optim.SGD(model.arch_parameters(), lr=0.5)
    step = _bilevel(model, ("val", "ood", "params"), weighting="fixed:1,1,1", cost_model=cost_model, a_opt=a_opt,
                    grad_clip=0.05, a_grad_clip=1e-3)
    theta0 = [p.detach().clone() for p in step.weights]
    alpha0 = [a.detach().clone() for a in step.alphas]
    g, combined, _ = _bilevel(_model(), ("val", "ood", "params"), weighting="fixed:1,1,1",
                              cost_model=cost_model).gradients(batch, lr=LR)
    step.step(batch, lr=LR)
    g_norm = float(torch.sqrt(sum((t * t).sum() for t in g)))
    assert g_norm > 0.05  # the clip binds
    coef = 0.05 / (g_norm + 1e-6)
    for p, p0, gp in zip(step.weights, theta0, g, strict=True):
        d = coef * gp + WD * p0  # first step: the momentum buffer is the gradient itself
        torch.testing.assert_close(p.detach(), p0 - LR * d, rtol=1e-10, atol=1e-13)
    a_norm = float(combined.norm())
    assert a_norm > 1e-3
    flat0 = _flat(alpha0)
    _close(_flat([a.detach() for a in step.alphas]), flat0 - 0.5 * combined * (1e-3 / (a_norm + 1e-6)), 1e-10)
    assert all(p.grad is None for p in step.weights + step.alphas)


def test_step_without_an_alpha_clip_takes_the_whole_direction(cost_model):
    model, batch = _model(), _batch()
    a_opt = torch.optim.SGD(model.arch_parameters(), lr=0.5)
    step = _bilevel(model, ("val",), weighting="fixed:1", a_opt=a_opt, grad_clip=1e6)
    alpha0 = _flat([a.detach().clone() for a in step.alphas])
    theta0 = [p.detach().clone() for p in step.weights]
    g, combined, _ = _bilevel(_model(), ("val",), weighting="fixed:1").gradients(batch, lr=LR)
    step.step(batch, lr=LR)
    _close(_flat([a.detach() for a in step.alphas]), alpha0 - 0.5 * combined, 1e-10)
    for p, p0, gp in zip(step.weights, theta0, g, strict=True):
        torch.testing.assert_close(p.detach(), p0 - LR * (gp + WD * p0), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("ll_adv", [False, True])
def test_weight_step_moves_the_weights_alone(ll_adv):
    model, batch = _model(), _batch()
    step = _bilevel(model, ("val",), weighting="fixed:1", grad_clip=0.05, ll_adv=ll_adv, fgsm_step=1.0)
    theta0 = [p.detach().clone() for p in step.weights]
    alpha0 = [a.detach().clone() for a in step.alphas]
    g, _, _, lower = _by_hand(model, batch, ("val",), [1.0], ll_adv=ll_adv, first_order=True, fgsm_step=1.0)
    res = step.weight_step(batch, generator=torch.Generator().manual_seed(7))
    assert res.lower_loss == pytest.approx(lower, rel=1e-12)
    assert res.losses == {} and res.gammas == {}
    coef = min(1.0, 0.05 / (float(torch.sqrt(sum((t * t).sum() for t in g))) + 1e-6))
    assert coef < 1
    for p, p0, gp in zip(step.weights, theta0, g, strict=True):
        torch.testing.assert_close(p.detach(), p0 - LR * (coef * gp + WD * p0), rtol=1e-10, atol=1e-13)
    for a, a0 in zip(step.alphas, alpha0, strict=True):
        assert torch.equal(a.detach(), a0)
    assert all(p.grad is None for p in step.weights)


def test_stochastic_ops_draw_the_same_masks_in_every_pass():
    """P-DARTS' skip dropout: the finite-difference passes replay the lower-level pass's random stream."""
    model, batch = _model(), _batch()
    model.set_skip_dropout(0.5)
    step = _bilevel(model, ("val",), weighting="fixed:1", hvp="central")
    torch.manual_seed(11)
    state = torch.get_rng_state()
    _, combined, _ = step.gradients(batch, lr=LR)
    after = torch.get_rng_state()
    _, combined_hand, _, _ = _by_hand(model, batch, ("val",), [1.0], hvp="central", rng_state=state)
    _close(combined, combined_hand)
    # the replays ran on a copy: the global stream is where the step's own passes left it
    torch.set_rng_state(state)
    torch.rand(1)
    assert not torch.equal(after, state)


def test_every_data_dependent_tensor_goes_through_the_reduction(cost_model):
    """Data parallelism hooks in through ``reduce``: lower loss+gradients, objective gradients+losses, the
    second-order direction and every finite-difference pass (forward: 4 calls, central: 5)."""
    for hvp, calls in (("forward", 4), ("central", 5)):
        seen = []

        def reduce(ts, seen=seen):
            seen.append([tuple(t.shape) for t in ts])
            return [t * 1.0 for t in ts]

        model, batch = _model(), _batch()
        step = _bilevel(model, ("val", "params"), weighting="fixed:1,1", cost_model=cost_model, hvp=hvp,
                        reduce=reduce)
        step.gradients(batch, lr=LR)
        n_w, n_a = len(step.weights), len(step.alphas)
        assert len(seen) == calls
        assert len(seen[0]) == n_w + (n_a if hvp == "forward" else 0) + 1 and seen[0][-1] == ()
        n_alpha = sum(a.numel() for a in step.alphas)
        assert seen[1] == [(2, n_alpha), (2,)]
        assert seen[2] == [tuple(p.shape) for p in step.weights]
        assert all(len(s) == n_a + 1 for s in seen[3:])


def test_a_nan_loss_stops_the_step_and_names_it():
    model, batch = _model(), _batch()
    step = _bilevel(model, ("val", "ood"), weighting="fixed:1,1", first_order=True)
    bad = StepBatch(batch.x_train, batch.y_train, batch.x_val * float("nan"), batch.y_val, batch.x_ood_lower,
                    batch.x_ood_upper)
    with pytest.raises(DivergenceError, match=r"objective\(s\) val became NaN/Inf.*--resume"):
        step.gradients(bad, lr=LR)
    bad = StepBatch(batch.x_train * float("inf"), batch.y_train, batch.x_val, batch.y_val)
    with pytest.raises(DivergenceError, match=r"lower became NaN/Inf"):
        step.gradients(bad, lr=LR)
    with pytest.raises(DivergenceError, match=r"lower became"):
        step.weight_step(bad)
    assert all(bool(torch.isfinite(p).all()) for p in step.weights)


def test_constructor_refuses_what_it_cannot_compute(cost_model):
    model = _model()
    with pytest.raises(ValueError, match="unknown Hessian-vector scheme 'backward'; choose from central, forward"):
        _bilevel(model, ("val",), hvp="backward")
    for name in ("params", "flops"):
        with pytest.raises(ValueError, match="need a cost model"):
            _bilevel(model, ("val", name))
    with pytest.raises(ValueError, match="latency objective needs a latency table and a bound"):
        _bilevel(model, ("val", "latency"))
    with pytest.raises(ValueError, match="latency objective needs a latency table and a bound"):
        _bilevel(model, ("val", "latency"), latency_table=_table(), latency_bound=None)
    step = _bilevel(model, ("val", "latency"), latency_table=_table())
    assert step.latency_bound_ms == T_BOUND
    step = _bilevel(model, ("val", "params", "flops"), cost_model=cost_model)
    assert step.weight_names == list(model.named_weight_parameters())


@pytest.mark.parametrize("hvp, expected", [
    ("central", ["bf16"] * 4 + ["fp32"] * 4),  # lower (train, OoD), objectives (val, ood); 2 fp32 passes x 2 terms
    ("forward", ["bf16"] * 4 + ["fp32"] * 4),  # g(theta + r v) and g(theta) again, both in fp32
])
def test_mixed_precision_leaves_the_finite_differences_in_fp32(hvp, expected):
    """search --amp bf16: the lower level, FGSM and the objectives under autocast, the second-order term's passes
    in fp32 (r v is far below bf16's resolution). Checked on the CPU's bf16 autocast: the classifier's output
    dtype of every forward, in order."""
    model, batch = _model(), _batch()
    model = model.float()
    batch = StepBatch(*(t.float() if t.is_floating_point() else t for t in (
        batch.x_train, batch.y_train, batch.x_val, batch.y_val, batch.x_ood_lower, batch.x_ood_upper)))
    seen = []
    names = {torch.bfloat16: "bf16", torch.float32: "fp32"}
    model.classifier.register_forward_hook(lambda m, i, out: seen.append(names[out.dtype]))
    step = _bilevel(model, ("val", "ood"), weighting="fixed:1,1", hvp=hvp,
                    autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    _, combined, res = step.gradients(batch, lr=LR)
    assert seen == expected
    assert combined.dtype == torch.float32 and bool(torch.isfinite(combined).all())
    seen.clear()
    full = _bilevel(model, ("val", "ood"), weighting="fixed:1,1", hvp=hvp)
    _, reference, _ = full.gradients(batch, lr=LR)
    assert seen == ["fp32"] * (8 if hvp == "central" else 6)  # without autocast: g(theta) comes from the step
    # bf16 moves the direction (docs/amp.md: first order cos 0.99; second order 0.73 with these fp32 passes,
    # 0.23 when they too ran in bf16), it does not scramble it
    cos = float(torch.nn.functional.cosine_similarity(combined, reference, dim=0))
    assert cos > 0.5, cos
    first = [_bilevel(model, ("val", "ood"), weighting="fixed:1,1", first_order=True, autocast=ac).gradients(
        batch, lr=LR)[1] for ac in (None, lambda: torch.autocast("cpu", dtype=torch.bfloat16))]
    assert float(torch.nn.functional.cosine_similarity(first[0], first[1], dim=0)) > 0.95


@pytest.mark.parametrize("objectives", [ALL, ("adv", "val", "params", "flops")])
def test_clean_start_fgsm_is_the_authors_and_saves_a_pass(objectives, cost_model):
    """--fgsm-start clean: the gradient at the clean validation input, from the val objective's own backward when
    val comes first (one forward fewer), else from a pass of its own; the same example either way."""
    model, batch = _model(), _batch()
    spec = "fixed:" + ",".join(["1", "2", "3", "0.5", "0.25"][:len(objectives)])
    forwards = []
    model.classifier.register_forward_hook(lambda m, i, out: forwards.append(1))
    counts = {}
    for start in ("random", "clean"):
        forwards.clear()
        step = _bilevel(model, objectives, weighting=spec, cost_model=cost_model, hvp="central", fgsm_start=start)
        _, combined, res = step.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))
        counts[start] = len(forwards)
        _, combined_hand, losses, _ = _by_hand(model, batch, objectives, _fixed(spec), hvp="central",
                                               cost_model=cost_model, fgsm_start=start)
        _close(combined, combined_hand)
        assert res.losses == pytest.approx(losses, rel=1e-10)
    saved = 1 if objectives[0] == "val" else 0
    assert counts["clean"] == counts["random"] - saved
    with pytest.raises(ValueError, match="unknown FGSM start 'middle'; choose from random, clean"):
        _bilevel(model, objectives, cost_model=cost_model, fgsm_start="middle")


def _pruned_pc_model():
    """PC-DARTS (half the channels per edge, edge betas) with P-DARTS-pruned ops: unused weights, 4 arch tensors."""
    model = _model(partial_channels=2)
    with torch.no_grad():
        for b in (model.beta_normal, model.beta_reduce):
            b.normal_(0, 0.5)
    normal = torch.ones(14, len(PRIMS), dtype=torch.bool)
    normal[::2, PRIMS.index("sep_conv_3x3")] = False  # every other edge loses its conv: its weights go unused
    reduce = torch.ones(14, len(PRIMS), dtype=torch.bool)
    reduce[1::3, PRIMS.index("max_pool_3x3")] = False
    model.set_masks(normal, reduce)
    return model


ORDER = ("params", "val", "ood", "adv", "flops")  # an architecture-only objective first


@pytest.mark.parametrize("hvp", ["central", "forward"])
def test_step_on_a_pruned_partial_channel_supernet_with_an_adversarial_lower_level(hvp, cost_model):
    """PC-DARTS betas (the cost estimate's keep weights), pruned ops (unused weights), AT in the lower level through
    the finite-difference passes, a non-default FGSM step, an architecture objective listed first; then step()
    applies the update to all four architecture tensors."""
    spec = "fixed:0.5,1,2,3,0.25"
    model, batch = _pruned_pc_model(), _batch()
    assert len(model.arch_parameters()) == 4
    step = _bilevel(model, ORDER, weighting=spec, cost_model=cost_model, hvp=hvp, ll_adv=True, fgsm_step=1.0)
    g, combined, res = step.gradients(batch, lr=LR, generator=torch.Generator().manual_seed(7))
    g_hand, combined_hand, losses, lower = _by_hand(model, batch, ORDER, _fixed(spec), hvp=hvp, ll_adv=True,
                                                    cost_model=cost_model, fgsm_step=1.0)
    for a, b in zip(g, g_hand, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    _close(combined, combined_hand)
    assert res.lower_loss == pytest.approx(lower, rel=1e-12) and res.losses == pytest.approx(losses, rel=1e-10)
    n, m = (t.detach() for t in cost_model.expected_cost(*model.cost_inputs()))
    assert (res.params_m, res.macs_m) == pytest.approx((float(n), float(m)), rel=1e-12)
    # step(): the same update (same FGSM draws from the generator), sliced back into the four tensors
    model2 = _pruned_pc_model()
    a_opt = torch.optim.SGD(model2.arch_parameters(), lr=0.5)
    stepper = _bilevel(model2, ORDER, weighting=spec, cost_model=cost_model, hvp=hvp, ll_adv=True, fgsm_step=1.0,
                       a_opt=a_opt, grad_clip=1e6)
    before = _flat([a.detach().clone() for a in model2.arch_parameters()])
    stepper.step(batch, lr=LR, generator=torch.Generator().manual_seed(7))
    _close(_flat([a.detach() for a in model2.arch_parameters()]), before - 0.5 * combined_hand)


def test_defaults_are_the_papers_and_errors_are_exact(cost_model):
    model = _model()
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=LR)
    a_opt = torch.optim.Adam(model.arch_parameters())
    step = BilevelStep(model, objectives=make_objectives(("val",)), weighting=Weighting(), cost_model=None,
                       w_optimizer=w_opt, a_optimizer=a_opt)
    assert (step.eps, step.fgsm_step, step.grad_clip, step.hvp_eps, step.hvp) == (2 / 255, 1.25, 5.0, 0.01, "forward")
    assert (step.first_order, step.ll_ood, step.ll_adv, step.ll_ood_weight, step.a_grad_clip) == (
        False, True, False, 1.0, None)
    assert step.fgsm_start == "random"
    with pytest.raises(ValueError, match=r"^the params/flops objectives need a cost model$"):
        _bilevel(model, ("val", "params"))
    with pytest.raises(ValueError, match=r"^the latency objective needs a latency table and a bound$"):
        _bilevel(model, ("val", "latency"))
    with pytest.raises(ValueError, match=r"^fixed weighting has 1 weights for 2 objectives \(val, ood\)$"):
        _bilevel(model, ("val", "ood"), weighting="fixed:1").gradients(_batch(), lr=LR)


def test_a_zero_second_order_direction_has_a_zero_product():
    model, batch = _model(), _batch()
    step = _bilevel(model, ("val",), weighting="fixed:1", hvp="central")
    zero = [torch.zeros_like(p) for p in step.weights]
    out = step._hvp(zero, batch, None, [], (torch.get_rng_state(), None))
    assert [tuple(h.shape) for h in out] == [tuple(a.shape) for a in step.alphas]
    assert all(bool((h == 0).all()) for h in out)


def test_weight_step_record_and_two_diverged_objectives():
    model, batch = _model(), _batch()
    step = _bilevel(model, ("val", "ood"), weighting="fixed:1,1", first_order=True)
    res = step.weight_step(batch)
    assert res.effective == {} and res.dropped == [] and res.latency_ms is None
    assert res.params_m != res.params_m and res.macs_m != res.macs_m  # nan: a weight step estimates no cost
    bad = StepBatch(batch.x_train, batch.y_train, batch.x_val * float("nan"), batch.y_val, batch.x_ood_lower,
                    batch.x_ood_upper * float("nan"))
    with pytest.raises(DivergenceError, match=r"^objective\(s\) val, ood became NaN/Inf; the last good checkpoint"):
        step.gradients(bad, lr=LR)
