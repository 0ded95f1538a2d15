"""FGSM / PGD: bounds of the perturbation, eps 0, and the accuracy ordering on a briefly trained model."""

import pytest
import torch

from e2rnas.data import load_dataset
from e2rnas.evaluation.attacks import fgsm, pgd
from e2rnas.evaluation.evaluate import EvalProtocol, evaluate
from e2rnas.model_io import load_model
from e2rnas.predict import TorchPredictor
from e2rnas.space.genotypes import GENOTYPES
from e2rnas.space.network import Network
from e2rnas.train.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """DARTS_V2, 3 cells, C=8, 6 epochs on digits (about 10 s on one core): well above chance, not robust."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: one thread is faster, and immune to other jobs on the cores
    out = tmp_path_factory.mktemp("trained")
    cfg = TrainConfig(dataset="digits", layers=3, C=8, epochs=6, batch_size=32, lr=0.1, cutout=0, crop_pad=2,
                      flip=False, drop_path=0.0, auxiliary=False, val_fraction=0.1)
    train(cfg, genotype=GENOTYPES["DARTS_V2"], out_dir=out, progress=False)
    yield load_model(out / "model.pt").model
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("digits", split="test")


def _untrained() -> Network:
    torch.manual_seed(0)
    return Network(GENOTYPES["DARTS_V2"], 4, 3, 5, input_size=16).eval()


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_stays_within_eps_and_the_pixel_range(random_start):
    model, x = _untrained(), torch.rand(8, 3, 16, 16)
    x[:, :, :2] = 0.0  # pixels at the bounds must stay inside [0, 1]
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 5, (8,))
    eps = 8 / 255
    adv = pgd(model, x, y, eps=eps, steps=5, step_size=eps / 2, random_start=random_start,
              generator=torch.Generator().manual_seed(0))
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2  # it did move
    fast = fgsm(model, x, y, eps=eps, generator=torch.Generator().manual_seed(0))
    assert (fast - x).abs().max() <= eps + 1e-6 and fast.min() >= 0 and fast.max() <= 1


def test_pgd_with_eps_zero_returns_the_input_and_clean_accuracy(trained, test_set):
    x, y = test_set.tensors()
    assert torch.equal(pgd(trained, x[:16], y[:16], eps=0.0, steps=10, step_size=0.01), x[:16])
    r = evaluate(TorchPredictor(trained), test=test_set, protocol=EvalProtocol(eps=0.0, fgsm_eps=0.0),
                 metrics=("accuracy", "robustness"))
    assert r["pgd_acc"] == r["clean_acc"] == r["fgsm_acc"]
    assert r["clean_acc"] > 0.8


def test_pgd_is_at_most_fgsm_which_is_at_most_clean(trained, test_set):
    r = evaluate(TorchPredictor(trained), test=test_set, protocol=EvalProtocol(eps=8 / 255, steps=10),
                 metrics=("accuracy", "robustness"))
    assert r["attack"] == "white-box"
    assert r["pgd_acc"] <= r["fgsm_acc"] <= r["clean_acc"]
    assert r["pgd_acc"] < r["clean_acc"]  # the attack does something on an undefended model


def test_attacks_leave_the_model_as_they_found_it(trained, test_set):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    evaluate(TorchPredictor(trained), test=test_set.head(20), protocol=EvalProtocol(), metrics=("robustness",))
    assert all(p.requires_grad for p in trained.parameters())
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())  # BN stats untouched


# -- against a hand-written PGD on a linear model, whose input gradient is known in closed form ----------------------
def _linear(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(5, 3 * 4 * 4, generator=g, dtype=torch.float64)
    W[:, 0] = 0.0  # a pixel the logits ignore: its gradient is exactly 0 and PGD must leave it where it is
    return W, torch.randn(5, generator=g, dtype=torch.float64)


def _reference_pgd(W, b, x, y, *, eps, steps, step_size, delta=None):
    """PGD written out: grad_x CE(Wx + b, y) = W^T (softmax - onehot) per image; sign step; project; clip."""
    n = x.shape[0]
    flat = x.reshape(n, -1)
    adv = (flat + (delta.reshape(n, -1) if delta is not None else 0)).clamp(0, 1)
    onehot = torch.nn.functional.one_hot(y, 5).to(x.dtype)
    for _ in range(steps):
        p = torch.softmax(adv @ W.T + b, dim=1)
        grad = (p - onehot) @ W / n  # the mean over the batch, as cross_entropy's default reduction
        adv = adv + step_size * torch.sign(grad)
        adv = torch.minimum(torch.maximum(adv, flat - eps), flat + eps).clamp(0, 1)
    return adv.reshape(x.shape)


def _inputs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    x[0] = 0.0  # images at the pixel bounds: the [0, 1] clip must act
    x[1] = 1.0
    return x, torch.randint(0, 5, (n,), generator=g)


@pytest.mark.parametrize("steps, step_size", [(1, 0.01), (3, 0.004), (7, 0.02)])
def test_pgd_matches_a_hand_written_pgd(steps, step_size):
    W, b = _linear()
    x, y = _inputs()
    eps = 0.03
    got = pgd(lambda t: t.reshape(len(t), -1) @ W.T + b, x, y, eps=eps, steps=steps, step_size=step_size)
    want = _reference_pgd(W, b, x, y, eps=eps, steps=steps, step_size=step_size)
    assert torch.allclose(got, want, atol=1e-12) and not got.requires_grad
    assert not torch.equal(got, x)  # it moved
    assert torch.equal(got.reshape(len(x), -1)[:, 0], x.reshape(len(x), -1)[:, 0])  # but not where grad is 0


def test_random_start_draws_uniform_noise_from_the_generator():
    W, b = _linear()
    x, y = _inputs()
    eps = 0.05
    model = lambda t: t.reshape(len(t), -1) @ W.T + b  # noqa: E731
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=x.dtype) * 2 - 1) * eps
    got = pgd(model, x, y, eps=eps, steps=2, step_size=0.01, random_start=True,
              generator=torch.Generator().manual_seed(7))
    assert torch.allclose(got, _reference_pgd(W, b, x, y, eps=eps, steps=2, step_size=0.01, delta=delta), atol=1e-12)
    # without a generator: torch's global stream
    torch.manual_seed(3)
    noise = torch.rand_like(x)
    torch.manual_seed(3)
    got = pgd(model, x, y, eps=eps, steps=2, step_size=0.01, random_start=True)
    assert torch.allclose(got, _reference_pgd(W, b, x, y, eps=eps, steps=2, step_size=0.01,
                                              delta=(noise * 2 - 1) * eps), atol=1e-12)


def test_fgsm_is_one_random_start_step_of_1_25_eps():
    W, b = _linear()
    x, y = _inputs()
    eps = 0.05
    model = lambda t: t.reshape(len(t), -1) @ W.T + b  # noqa: E731
    delta = (torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype) * 2 - 1) * eps
    got = fgsm(model, x, y, eps=eps, generator=torch.Generator().manual_seed(2))
    want = _reference_pgd(W, b, x, y, eps=eps, steps=1, step_size=1.25 * eps, delta=delta)
    assert torch.allclose(got, want, atol=1e-12)
    # a start below -eps/4 and a 1.25 eps step land inside the ball: the default step size shows in the result
    one = _reference_pgd(W, b, x, y, eps=eps, steps=1, step_size=1.0 * eps, delta=delta)
    assert not torch.allclose(got, one)
    given = fgsm(model, x, y, eps=eps, step_size=0.5 * eps, random_start=False)
    assert torch.allclose(given, _reference_pgd(W, b, x, y, eps=eps, steps=1, step_size=0.5 * eps), atol=1e-12)


def test_no_attack_for_zero_steps_or_radius_and_the_input_is_not_aliased():
    W, b = _linear()
    x, y = _inputs()
    model = lambda t: t.reshape(len(t), -1) @ W.T + b  # noqa: E731
    for kw in (dict(eps=0.0, steps=3), dict(eps=0.1, steps=0)):
        out = pgd(model, x, y, step_size=0.05, random_start=True, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()
    # the smallest positive radius still attacks
    assert not torch.equal(pgd(model, x, y, eps=1e-3, steps=1, step_size=1e-3), x)
