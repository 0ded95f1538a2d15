import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.func import functional_call
from typer.testing import CliRunner

from e2rnas.search.bilevel import BilevelStep, DivergenceError, StepBatch
from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import OBJECTIVES, make_objectives, ood_kl_uniform
from e2rnas.search.runner import SearchConfig, run_search
from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.supernet import SearchNetwork

ALL = ("val", "ood", "adv", "params", "flops")


def _setup(objectives=ALL, first_order=False, dtype=torch.float32, weighting="mgda", wd=3e-4, momentum=0.9,
           ll_ood=True, hvp_eps=0.01, n=2):
    torch.manual_seed(0)
    model = SearchNetwork(C=4, layers=3, num_classes=5).to(dtype)
    cost = CostModel(DeployShape(layers=5, C=8, num_classes=5, input_size=16))
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=momentum, weight_decay=wd)
    a_opt = torch.optim.Adam(model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    step = BilevelStep(model, objectives=make_objectives(objectives), weighting=Weighting(weighting),
                       cost_model=cost, w_optimizer=w_opt, a_optimizer=a_opt, first_order=first_order,
                       ll_ood=ll_ood, params_bound_m=0.05, macs_bound_m=2.0, hvp_eps=hvp_eps)
    g = torch.Generator().manual_seed(1)
    batch = StepBatch(torch.rand(n, 3, 16, 16, generator=g, dtype=dtype), torch.arange(n) % 5,
                      torch.rand(n, 3, 16, 16, generator=g, dtype=dtype), (torch.arange(n) + 1) % 5,
                      torch.rand(n, 3, 16, 16, generator=g, dtype=dtype),
                      torch.rand(n, 3, 16, 16, generator=g, dtype=dtype))
    return model, step, batch


@pytest.mark.parametrize("first_order", [False, True])
def test_one_step_changes_alphas_and_weights(first_order):
    model, step, batch = _setup(first_order=first_order)
    alphas = [a.detach().clone() for a in model.arch_parameters()]
    weights = [w.detach().clone() for w in model.weight_parameters()]
    res = step.step(batch, lr=0.025, generator=torch.Generator().manual_seed(0))
    assert set(res.losses) == set(ALL) and sum(res.gammas.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(not torch.equal(a, b) for a, b in zip(alphas, model.arch_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(weights, model.weight_parameters(), strict=True))


def test_switched_off_objective_gets_no_weight():
    _, step, batch = _setup(objectives=("val", "params"))
    res = step.step(batch, lr=0.025)
    assert set(res.gammas) == {"val", "params"}
    assert "adv" not in res.losses and "ood" not in res.losses


def test_objectives_registry_contract():
    model, _, batch = _setup()
    from e2rnas.search.objectives import ObjectiveContext

    ctx = ObjectiveContext(forward=model, x_val=batch.x_val, y_val=batch.y_val, x_adv=batch.x_val,
                           x_ood=batch.x_ood_upper, params_m=torch.tensor(0.1), macs_m=torch.tensor(3.0),
                           params_bound_m=0.05, macs_bound_m=2.0, latency_ms=torch.tensor(0.3),
                           latency_bound_ms=0.2)
    for name, cls in OBJECTIVES.items():
        value = cls()(ctx)
        assert value.ndim == 0 and torch.isfinite(value) and cls.name == name
    from e2rnas.search.objectives import LatencyLoss

    assert float(LatencyLoss()(ctx)) == pytest.approx(0.5)  # |0.3 - 0.2| / 0.2
    # KL(U || softmax) is zero exactly for uniform predictions and per-sample (not divided by K)
    assert float(ood_kl_uniform(torch.zeros(3, 10))) == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    expected = sum(1 / 3 * (torch.log(torch.tensor(1 / 3)) - F.log_softmax(logits, 1)[0, k]) for k in range(3))
    assert float(ood_kl_uniform(logits)) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("central", [False, True], ids=["forward-hvp", "central-hvp"])
def test_second_order_gradient_matches_finite_differences_of_the_unrolled_objective(central):
    """d/d alpha of L_val(theta - xi grad_theta L_tr(theta, alpha), alpha), checked along random directions."""
    model, step, batch = _setup(objectives=("val",), dtype=torch.float64, weighting="equal", wd=0.0, momentum=0.0,
                                ll_ood=False, hvp_eps=1e-6, n=8)
    step.hvp = "central" if central else "forward"
    xi = 0.025
    _, combined, _ = step.gradients(batch, lr=xi)
    names = list(model.named_weight_parameters())
    theta = [p.detach() for p in model.weight_parameters()]
    alphas = model.arch_parameters()

    def unrolled_objective() -> float:
        params = dict(zip(names, [t.clone().requires_grad_(True) for t in theta], strict=True))
        loss = F.cross_entropy(functional_call(model, params, (batch.x_train,)), batch.y_train)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True)
        unrolled = {n: t - xi * g for (n, t), g in zip(params.items(), grads, strict=True)}
        return float(F.cross_entropy(functional_call(model, unrolled, (batch.x_val,)), batch.y_val))

    gen = torch.Generator().manual_seed(5)
    h = 1e-7  # pooling and ReLU make the unrolled objective piecewise smooth: keep the probe inside one piece
    for _ in range(3):
        d = [torch.randn(a.shape, generator=gen, dtype=a.dtype) for a in alphas]
        with torch.no_grad():
            for a, t in zip(alphas, d, strict=True):
                a.add_(h * t)
        f_plus = unrolled_objective()
        with torch.no_grad():
            for a, t in zip(alphas, d, strict=True):
                a.sub_(2 * h * t)
        f_minus = unrolled_objective()
        with torch.no_grad():
            for a, t in zip(alphas, d, strict=True):
                a.add_(h * t)
        fd = (f_plus - f_minus) / (2 * h)
        analytic = float(combined @ torch.cat([t.reshape(-1) for t in d]))
        assert analytic == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_nan_guard():
    _, step, batch = _setup()
    bad = StepBatch(batch.x_train * float("nan"), batch.y_train, batch.x_val, batch.y_val, batch.x_ood_lower,
                    batch.x_ood_upper)
    with pytest.raises(DivergenceError, match="NaN"):
        step.step(bad, lr=0.025)


TINY = dict(dataset="digits", ood_dataset="digits-ood", layers=3, C=4, epochs=2, batch_size=16,
            max_steps_per_epoch=2, deploy_layers=5, deploy_C=8, params_bound=0.05, flops_bound=2.0, val_batches=1)


def _alphas(run_dir: Path) -> list:
    return [json.loads(line) for line in (run_dir / "alphas.jsonl").read_text().splitlines()][-1]


def test_resume_equals_uninterrupted_run(tmp_path):
    cfg = SearchConfig(**TINY, amp="auto")  # auto: tf32 on CUDA, off here; config.yaml records what ran
    full = run_search(cfg, out_dir=tmp_path / "full")
    assert yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())["search"]["amp"] == "off"

    calls = {"n": 0}

    def interrupt(rec):
        calls["n"] += 1
        if calls["n"] == 3:  # mid-way through the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, out_dir=tmp_path / "cut", on_step=interrupt)
    ckpt = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step_in_epoch"] == 1
    # --cuda-graphs is speed, not the search: another value resumes (it is not captured on the CPU either way)
    resumed = run_search(dataclasses.replace(cfg, cuda_graphs="off"), out_dir=tmp_path / "cut", resume=True)
    assert resumed["genotype"] == full["genotype"]
    assert _alphas(tmp_path / "cut") == _alphas(tmp_path / "full")
    assert full["cuda_graphs"] == {"setting": "auto", "captured": False, "captures": 0, "replays": 0, "notes": []}
    assert resumed["cuda_graphs"]["setting"] == "off"
    for name in ("genotype.json", "summary.json", "config.yaml", "metrics.jsonl"):
        assert (tmp_path / "cut" / name).is_file()
    with pytest.raises(Exception, match="already holds a search"):
        run_search(cfg, out_dir=tmp_path / "full")


def test_bounds_steer_the_search(tmp_path):
    """Same seed: a low params bound L ends in a genotype with fewer params than a high one (DARTS rule: the alphas
    alone, not the budget-aware derivation, carry the bound)."""
    base = TINY | dict(epochs=3, max_steps_per_epoch=3, objectives=("val", "params", "flops"), a_lr=0.02,
                       derive="darts")
    shape = DeployShape(layers=5, C=8, num_classes=5, input_size=16)
    fixed = CostModel(shape).fixed
    low = run_search(SearchConfig(**base | dict(params_bound=fixed.params_m, flops_bound=fixed.macs_m)),
                     out_dir=tmp_path / "low")
    high = run_search(SearchConfig(**base | dict(params_bound=1.0, flops_bound=40.0)), out_dir=tmp_path / "high")
    assert low["exact_params_m"] < high["exact_params_m"]


def test_cli_rejects_malformed_config(tmp_path):
    from e2rnas.cli.app import app

    bad = tmp_path / "search.yaml"
    bad.write_text("search:\n  epochz: 3\n")
    result = CliRunner().invoke(app, ["search", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "unknown setting(s) epochz" in str(result.exception) + result.output
    bad.write_text("search:\n  objectives: val,speed\n")
    result = CliRunner().invoke(app, ["search", "--config", str(bad), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "speed" in str(result.exception) + result.output


def test_pdarts_stages_prune_ops_grow_depth_and_resume(tmp_path):
    cfg = SearchConfig(**TINY | dict(method="p-darts", epochs=3, max_steps_per_epoch=1, pdarts_layers=(3, 4, 5),
                                     pdarts_keep=(8, 4, 2), pdarts_skip_dropout=(0.0, 0.2, 0.4)))
    full = run_search(cfg, out_dir=tmp_path / "full")
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    assert ckpt["stage"] == 2
    normal_mask = ckpt["masks"][0]
    assert normal_mask.sum(1).max() <= 2 and not normal_mask[:, 0].any()  # 2 ops per edge, `none` dropped
    assert sum(op == "skip_connect" for op, _ in full["genotype"]["normal"]) <= 2

    calls = {"n": 0}

    def interrupt(rec):
        calls["n"] += 1
        if calls["n"] == 2:  # first step of the second stage
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, out_dir=tmp_path / "cut", on_step=interrupt)
    resumed = run_search(cfg, out_dir=tmp_path / "cut", resume=True)
    assert resumed["genotype"] == full["genotype"]
    assert _alphas(tmp_path / "cut") == _alphas(tmp_path / "full")


def test_hessian_vector_product_replays_the_dropout_masks():
    """With P-DARTS' skip dropout on, both finite-difference schemes must see the same masks in every pass: the
    forward and central products then agree; with fresh masks per pass they would differ by O(|grad| / r).
    r |v| = 1e-8: dropout's exact zeros put ReLU/max-pool kinks near theta, and at 1e-6 one side of this seed's
    difference crosses one (a real difference of the two schemes, not of the masks)."""
    model, step, batch = _setup(objectives=("val",), dtype=torch.float64, weighting="equal", hvp_eps=1e-8, n=4)
    model.set_skip_dropout(0.5)
    out = []
    for central in (False, True):
        step.hvp = "central" if central else "forward"
        torch.manual_seed(3)
        out.append(step.gradients(batch, lr=0.025)[1])
    assert torch.allclose(out[0], out[1], rtol=1e-4, atol=1e-8)
    assert torch.get_rng_state().ne(torch.manual_seed(3).get_state()).any()  # the global stream moved on


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("partial_channels", [1, 4], ids=["darts", "pc-darts"])
def test_search_step_runs_at_one_and_two_threads(partial_channels, threads):
    """One full second-order step (forward and backward through every op, NHWC on the CPU): the layout where
    oneDNN's AVX2 kernels once corrupted the heap (run under MALLOC_CHECK_=3 and forced AVX2 in CI)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        model = SearchNetwork(C=8, layers=3, num_classes=5, partial_channels=partial_channels)
        cost = CostModel(DeployShape(layers=5, C=8, num_classes=5, input_size=16))
        step = BilevelStep(model, objectives=make_objectives(ALL), weighting=Weighting("mgda"), cost_model=cost,
                           w_optimizer=torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9),
                           a_optimizer=torch.optim.Adam(model.arch_parameters(), lr=3e-4),
                           params_bound_m=0.05, macs_bound_m=2.0)
        g = torch.Generator().manual_seed(1)
        x = [torch.rand(4, 3, 16, 16, generator=g) for _ in range(4)]
        batch = StepBatch(x[0], torch.arange(4) % 5, x[1], (torch.arange(4) + 1) % 5, x[2], x[3])
        before = [a.detach().clone() for a in model.arch_parameters()]
        res = step.step(batch, lr=0.025, generator=torch.Generator().manual_seed(0))
        assert all(torch.isfinite(torch.tensor(v)) for v in res.losses.values())
        assert all(not torch.equal(a, b) for a, b in zip(before, model.arch_parameters(), strict=True))
    finally:
        torch.set_num_threads(previous)


def test_resume_after_a_kill_logs_each_step_once(tmp_path):
    """A kill after the epoch checkpoint leaves logged steps that the resume runs again: they appear once."""
    import shutil

    cfg = SearchConfig(**TINY)
    saved = tmp_path / "epoch1.pt"
    calls = {"n": 0}

    def keep_epoch_checkpoint(rec):
        shutil.copy(tmp_path / "run" / "checkpoint.pt", saved)

    def interrupt(rec):
        calls["n"] += 1
        if calls["n"] == 3:  # epoch 2, step 1 is logged, then the process "dies"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(cfg, out_dir=tmp_path / "run", on_step=interrupt, on_epoch=keep_epoch_checkpoint)
    shutil.copy(saved, tmp_path / "run" / "checkpoint.pt")  # what a kill leaves: the epoch-end checkpoint
    run_search(cfg, out_dir=tmp_path / "run", resume=True)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["epoch"], r["step"]) for r in records if r["type"] == "step"]
    assert steps == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [1, 2]


def test_prune_keeps_none_as_a_candidate_only_when_asked():
    from e2rnas.search.runner import prune_mask
    from e2rnas.space.ops import PRIMITIVES

    strengths = torch.full((14, len(PRIMITIVES)), 0.01)
    strengths[:, PRIMITIVES.index("none")] = 0.5  # the strongest op on every edge
    strengths[:, PRIMITIVES.index("sep_conv_3x3")] = 0.3
    pdarts = prune_mask(strengths, PRIMITIVES, 2, keep_none=True)
    assert pdarts[:, PRIMITIVES.index("none")].all() and pdarts[:, PRIMITIVES.index("sep_conv_3x3")].all()
    assert pdarts.sum(1).tolist() == [2] * 14
    plain = prune_mask(strengths, PRIMITIVES, 2)
    assert not plain[:, PRIMITIVES.index("none")].any() and plain.sum(1).tolist() == [2] * 14


def test_pdarts_skip_dropout_schedule_and_identity_only():
    from e2rnas.search.runner import skip_dropout
    from e2rnas.space.supernet import MixedOp

    cfg = SearchConfig(method="p-darts", epochs=75, pdarts_warmup_epochs=10, pdarts_dropout_decay=True,
                       pdarts_skip_dropout=(0.0, 0.4, 0.7), ood_dataset=None, ll_ood=False,
                       objectives=("val", "params", "flops"))
    assert cfg.first_order is True  # P-DARTS searches first order unless told otherwise
    assert skip_dropout(cfg, 1, 0, 25) == pytest.approx(0.4 * 24 / 25)
    assert skip_dropout(cfg, 2, 12, 25) == pytest.approx(0.7 * torch.exp(torch.tensor(-0.4)).item())
    # P-DARTS' schedule restarts at p when the alphas start to move, then decays exponentially
    assert skip_dropout(cfg, 2, 10, 25) == pytest.approx(0.7)
    assert skip_dropout(cfg, 2, 24, 25) < skip_dropout(cfg, 2, 11, 25) < 0.7
    reduce_edge = MixedOp(8, 2, ("skip_connect",))
    reduce_edge.skip_dropout = 0.9
    x = torch.rand(2, 8, 8, 8)
    w = torch.ones(1)
    reduce_edge.train()
    assert torch.equal(reduce_edge(x, w), reduce_edge.ops[0](x))  # FactorizedReduce: no dropout
    normal_edge = MixedOp(8, 1, ("skip_connect",))
    normal_edge.skip_dropout = 0.9
    normal_edge.train()
    assert not torch.equal(normal_edge(x, w), x)


def test_pc_darts_cost_estimate_follows_the_edge_betas():
    torch.manual_seed(0)
    model = SearchNetwork(C=8, layers=3, num_classes=5, partial_channels=4)
    cost = CostModel(DeployShape(layers=5, C=8, num_classes=5, input_size=16))
    a_n, a_r, keep = model.cost_inputs()
    uniform = cost.expected_cost(a_n, a_r)
    assert torch.allclose(torch.stack(cost.expected_cost(a_n, a_r, keep)), torch.stack(uniform), rtol=1e-2)
    with torch.no_grad():  # node 0: the edge from s0 carries only sep_conv_5x5, the edge from s1 only skips
        model.alpha_normal[0].fill_(-10.0)
        model.alpha_normal[0, model.primitives.index("sep_conv_5x5")] = 10.0
        model.alpha_normal[1].fill_(-10.0)
        model.alpha_normal[1, model.primitives.index("skip_connect")] = 10.0
    a_n, a_r, _ = model.cost_inputs()
    base = float(cost.expected_cost(a_n, a_r, model.cost_inputs()[2])[0].detach())
    with torch.no_grad():
        model.beta_normal[:2] = torch.tensor([-5.0, 5.0])  # the node prefers its skip edge
    params, _ = cost.expected_cost(*model.cost_inputs())
    assert float(params) < base
    params.backward()
    assert model.beta_normal.grad is not None and float(model.beta_normal.grad.abs().sum()) > 0


def test_ll_ood_weight_scales_the_lower_level_ood_term():
    grads = {}
    for ll_ood, weight in ((False, 1.0), (True, 0.0), (True, 1.0)):
        model, step, batch = _setup(objectives=("val",), first_order=True, ll_ood=ll_ood)
        step.ll_ood_weight = weight
        grads[(ll_ood, weight)], _, _ = step.gradients(batch, lr=0.025)
    assert all(torch.allclose(a, b) for a, b in zip(grads[(False, 1.0)], grads[(True, 0.0)], strict=True))
    assert not all(torch.allclose(a, b) for a, b in zip(grads[(False, 1.0)], grads[(True, 1.0)], strict=True))


def test_fgsm_example_is_made_at_the_unrolled_weights(monkeypatch):
    import e2rnas.search.bilevel as bilevel

    seen = []
    real = bilevel.fgsm

    def spy(model, x, *args, **kwargs):
        seen.append(model)
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(bilevel, "fgsm", spy)
    model, step, batch = _setup(objectives=("val", "adv"))
    step.gradients(batch, lr=0.025)
    assert len(seen) == 1 and seen[0] is not model  # a functional call at theta', not the module at theta_t


def test_search_config_resolves_method_defaults_and_augmentation():
    assert SearchConfig().first_order is False and SearchConfig(method="pc-darts").first_order is True
    assert SearchConfig().search_augment is True
    digits = SearchConfig(dataset="digits", ood_dataset="digits-ood")
    assert digits.search_augment is False
    with pytest.raises(ValueError, match="search_cutout"):
        SearchConfig(dataset="digits", ood_dataset="digits-ood", search_cutout=8)
    with pytest.raises(ValueError, match="hvp"):
        SearchConfig(hvp="backward")
    with pytest.raises(ValueError, match="amp fp16 needs a gradient scaler.*use --amp bf16 or tf32"):
        SearchConfig(amp="fp16")
    with pytest.raises(ValueError, match="amp must be one of off, auto, tf32, bf16, got 'fp8'"):
        SearchConfig(amp="fp8")


def test_search_augmentation_changes_both_halves_and_resumes_identically(tmp_path):
    from e2rnas.search.runner import SearchRun, load_search_data

    cfg = SearchConfig(**TINY | dict(search_augment=True, search_cutout=4))
    data = load_search_data(cfg)
    run = SearchRun(cfg, data, tmp_path)
    first = next(run.epoch_batches())
    again = next(run.epoch_batches())  # replayed from the epoch-start state
    assert torch.equal(first.x_train, again.x_train) and torch.equal(first.x_val, again.x_val)
    plain = SearchRun(SearchConfig(**TINY), data, tmp_path / "b")
    raw = next(plain.epoch_batches())
    assert not torch.equal(first.x_train, raw.x_train) and not torch.equal(first.x_val, raw.x_val)
