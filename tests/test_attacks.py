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
