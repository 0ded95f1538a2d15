"""Clean accuracy, FGSM / PGD accuracy and OoD detection of any predictor (torch, ONNX Runtime, TensorRT).

Everything is measured through the predict interface (float32 pixels in [0, 1] in, logits out). Attacks need
gradients: on a ``TorchPredictor`` they are white-box; on any other predictor the adversarial images are made on
``attack_model`` (the torch model the artifact was exported from) and then classified by the artifact, a transfer
evaluation that is recorded as such. See docs/evaluation-protocol.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from e2rnas.data import ImageSet, batches
from e2rnas.errors import E2RNASError
from e2rnas.evaluation.attacks import pgd
from e2rnas.evaluation.ood_metrics import max_softmax, ood_metrics
from e2rnas.imagefolder import FolderIndex
from e2rnas.predict import Predictor, TorchPredictor
from e2rnas.presets import PRESETS

METRICS = ("accuracy", "robustness", "ood")


@dataclass(frozen=True)
class EvalProtocol:
    """L-inf attacks in pixel space [0, 1]; ``step_size=None`` is 2.5 eps / steps (Madry et al.)."""

    eps: float = 2 / 255
    steps: int = 10
    step_size: float | None = None
    random_start: bool = False
    fgsm_eps: float | None = None  # None: eps
    batch_size: int = 200
    max_samples: int | None = None  # None: every test (and OoD) image
    ood_max_samples: int | None = None  # None: as max_samples (10000 with 10k test images: a half-OoD pool)
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.eps <= 1, f"eps must be in [0, 1] (pixel scale), got {self.eps}"),
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.step_size is None or self.step_size >= 0, f"step_size must be >= 0, got {self.step_size}"),
            (self.fgsm_eps is None or 0 <= self.fgsm_eps <= 1, f"fgsm_eps must be in [0, 1], got {self.fgsm_eps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.max_samples is None or self.max_samples >= 1, f"max_samples must be >= 1, got {self.max_samples}"),
            (self.ood_max_samples is None or self.ood_max_samples >= 1,
             f"ood_max_samples must be >= 1, got {self.ood_max_samples}"),
        ]
        for ok, message in checks:
            if not ok:
                raise E2RNASError(f"bad evaluation setting: {message}")

    @property
    def pgd_step(self) -> float:
        return 2.5 * self.eps / max(self.steps, 1) if self.step_size is None else self.step_size

    @property
    def fgsm_size(self) -> float:
        return self.eps if self.fgsm_eps is None else self.fgsm_eps

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pgd_step_size": self.pgd_step, "fgsm_eps": self.fgsm_size, "norm": "Linf",
                "pixel_range": [0.0, 1.0], "fgsm": "one step of fgsm_eps from the clean image, no random start",
                "ood_score": "max softmax probability; AUPR-out ranks by -MSP (OoD positive)"}


#: Named protocols: the paper's (eps 2/255, PGD-10, step 2.5 eps / 10) and the usual RobustBench-style L-inf check.
PROTOCOLS: dict[str, EvalProtocol] = {
    "paper": EvalProtocol(**PRESETS["paper"]["eval"]),
    "robustbench": EvalProtocol(eps=8 / 255, steps=20, step_size=2 / 255, random_start=True),
}


def protocol_from(name: str, **overrides: Any) -> EvalProtocol:
    """A named protocol with the given fields replaced (``None`` values are ignored)."""
    if name in PROTOCOLS:
        base = PROTOCOLS[name]
    elif "eval" in PRESETS.get(name, {}):  # the project-wide presets (embedded-default) carry an eval section too
        base = EvalProtocol(**PRESETS[name]["eval"])
    else:
        raise E2RNASError(f"unknown evaluation preset {name!r}; choose from {', '.join(PROTOCOLS)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@contextmanager
def _attack_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode, parameter gradients off (the attack needs input gradients only); restored afterwards."""
    was_training = module.training
    flags = [p.requires_grad for p in module.parameters()]
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        module.train(was_training)


class _Bar:
    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("evaluate", total=total)

    def __enter__(self) -> _Bar:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def advance(self, description: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, description=description)


def evaluate(predictor: Predictor, *, test: ImageSet | FolderIndex, ood: ImageSet | FolderIndex | None = None,
             protocol: EvalProtocol = PROTOCOLS["paper"], attack_model: torch.nn.Module | None = None,
             metrics: Sequence[str] = METRICS, progress: bool = False) -> dict[str, Any]:
    """Accuracies (fractions in [0, 1]), OoD metrics and the protocol, as one JSON-ready dict."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise E2RNASError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    test = test.head(protocol.max_samples)
    n_ood = protocol.ood_max_samples or protocol.max_samples
    ood = ood.head(n_ood) if ood is not None and "ood" in metrics else None
    notes: list[str] = []
    attacker, attack = None, None
    if "robustness" in metrics:
        if isinstance(predictor, TorchPredictor):
            attacker, attack = predictor.module, "white-box"
        elif attack_model is not None:
            attacker, attack = attack_model, "transfer from torch"
        else:
            notes.append(f"robustness skipped: a {predictor.name} predictor has no gradients; pass the source "
                         "torch model (attack_model / --source-model) for a transfer attack")
    if "ood" in metrics and ood is None:
        notes.append("OoD detection skipped: no OoD data set (pass --ood-dataset)")

    bs = protocol.batch_size
    n_test_batches = -(-len(test) // bs)
    n_ood_batches = -(-len(ood) // bs) if ood is not None else 0
    gen = torch.Generator().manual_seed(protocol.seed)
    correct = {"clean": 0, "fgsm": 0, "pgd": 0}
    in_scores: list[np.ndarray] = []
    t0 = time.perf_counter()
    with _Bar(progress, n_test_batches + n_ood_batches) as bar, \
            (_attack_mode(attacker) if attacker is not None else _null()) as module:
        device = next(module.parameters()).device if module is not None else None
        for x, y in batches(test, bs, shuffle=False):
            logits = predictor(x.numpy())
            correct["clean"] += int((logits.argmax(1) == y.numpy()).sum())
            in_scores.append(max_softmax(logits))
            if module is not None:
                xd, yd = x.to(device), y.to(device)
                x_fgsm = pgd(module, xd, yd, eps=protocol.fgsm_size, steps=1, step_size=protocol.fgsm_size)
                correct["fgsm"] += int((predictor(x_fgsm.cpu().numpy()).argmax(1) == y.numpy()).sum())
                x_pgd = pgd(module, xd, yd, eps=protocol.eps, steps=protocol.steps, step_size=protocol.pgd_step,
                            random_start=protocol.random_start, generator=gen)
                correct["pgd"] += int((predictor(x_pgd.cpu().numpy()).argmax(1) == y.numpy()).sum())
            bar.advance("attacks on test images" if module is not None else "test images")
        out_scores = []
        if ood is not None:
            for x, _ in batches(ood, bs, shuffle=False):
                out_scores.append(max_softmax(predictor(x.numpy())))
                bar.advance("OoD images")
    n = len(test)
    result: dict[str, Any] = {
        "predictor": predictor.name, "attack": attack,
        "clean_acc": correct["clean"] / n if "accuracy" in metrics or attack else None,
        "test_err": 1 - correct["clean"] / n if "accuracy" in metrics or attack else None,
        "fgsm_acc": correct["fgsm"] / n if attack else None,
        "pgd_acc": correct["pgd"] / n if attack else None,
        "ood": ood_metrics(np.concatenate(in_scores), np.concatenate(out_scores)) if ood is not None else None,
        "samples": {"test": n, "ood": len(ood) if ood is not None else 0},
        "ood_pool": None if ood is None else {
            "in_distribution": n, "ood": len(ood), "fraction_ood": len(ood) / (n + len(ood)),
            "score": "max softmax probability (MSP) of the logits, float64",
            "normalisation": "inside the model: the training set's per-channel mean/std, for the OoD images too",
            "aupr_out_chance": len(ood) / (n + len(ood))},
        "datasets": {"test": test.name, "ood": ood.name if ood is not None else None},
        "protocol": protocol.as_dict(), "notes": notes, "time_s": round(time.perf_counter() - t0, 3),
    }
    return result


@contextmanager
def _null() -> Iterator[None]:
    yield None


@dataclass(frozen=True)
class EvalData:
    test: ImageSet | FolderIndex
    ood: ImageSet | FolderIndex | None
    specs: dict[str, Any]


def eval_data(data_meta: dict[str, Any], *, dataset: str | None = None, test_dataset: str | None = None,
              ood_dataset: str | None = None, data_dir: str | Path | None = None, download: bool = False,
              image_size: int | None = None, workers: int = 0) -> EvalData:
    """The test and OoD sets for a model: flags first, then what ``model.pt`` recorded (``data`` meta).

    ``ood_dataset="none"`` turns OoD detection off. Split-less sets (npz:, imagefolder:) give their 20% test
    part, the part training never saw (``e2rnas.train.trainer.load_split``). Image folders stream from disk,
    decoded batch by batch by ``workers`` DataLoader processes; the other sets are read into memory.
    """
    from e2rnas.train.trainer import load_split, load_test_set

    spec = dataset or data_meta.get("dataset")
    if not spec:
        raise E2RNASError("no data set to evaluate on: pass --dataset (the artifact records none; "
                          "--source-model model.pt supplies it)")
    test_spec = test_dataset or (data_meta.get("test_dataset") if spec == data_meta.get("dataset") else None)
    ood_spec = ood_dataset or data_meta.get("ood_dataset")
    ood_spec = None if ood_spec in (None, "", "none") else ood_spec
    size = image_size or data_meta.get("image_size")
    kw: dict[str, Any] = dict(data_dir=data_dir or data_meta.get("data_dir"), download=download, image_size=size,
                              stream=True, workers=workers)
    test = load_test_set(spec, test_spec, **kw)
    n_cls = data_meta.get("num_classes")
    if n_cls is not None and int(test.y.max()) >= n_cls:
        raise E2RNASError(f"test set {test.name} has label {int(test.y.max())} but the model has {n_cls} classes; "
                          "pass the data set the model was trained on")
    ood = load_split(ood_spec, "test", **kw) if ood_spec else None
    return EvalData(test, ood, {"dataset": spec, "test_dataset": test_spec, "ood_dataset": ood_spec,
                                "image_size": test.image_size})


def evaluate_file(model: str | Path, *, out_dir: str | Path | None = None, protocol: EvalProtocol,
                  source_model: str | Path | None = None, dataset: str | None = None,
                  test_dataset: str | None = None, ood_dataset: str | None = None, data_dir: str | Path | None = None,
                  download: bool = False, device: str = "cpu", progress: bool = True, workers: int = 0
                  ) -> dict[str, Any]:
    """Evaluate ``model.pt`` (or an exported .onnx/.engine, with ``source_model`` for sizes and transfer attacks)
    and write ``eval.json`` into ``out_dir`` (default: the model's folder); returns what it wrote."""
    from e2rnas._io import atomic_write_json
    from e2rnas.model_io import load_model
    from e2rnas.predict import TorchPredictor, load_predictor
    from e2rnas.space.genotypes import GENOTYPES
    from e2rnas.space.network import count_macs, count_params

    model = Path(model)
    if model.suffix == ".pt":
        loaded = load_model(model, device=device)
        predictor, attack_model = TorchPredictor(loaded.model, device), None
    else:
        predictor = load_predictor(model, device=device)
        loaded = load_model(source_model, device=device) if source_model else None
        attack_model = loaded.model if loaded else None
    meta = loaded.meta if loaded else {}
    data = eval_data(meta.get("data", {}), dataset=dataset, test_dataset=test_dataset, ood_dataset=ood_dataset,
                     data_dir=data_dir, download=bool(download),
                     image_size=loaded.spec.input_size if loaded else None, workers=workers)
    result = evaluate(predictor, test=data.test, ood=data.ood, protocol=protocol, attack_model=attack_model,
                      progress=progress)
    result["model"] = str(model)
    result["data"] = data.specs
    if loaded is not None:
        macs = count_macs(loaded.model, input_size=loaded.spec.input_size)
        counted_on = Path(source_model) if source_model else model
        name = next((n for n, g in GENOTYPES.items() if g == loaded.genotype), None)
        result["architecture"] = name or str(meta.get("search", {}).get("genotype_source") or counted_on.parent.name)
        result["cost"] = {"params": count_params(loaded.model, exclude_aux=True), "macs": macs, "flops": 2 * macs,
                          "input_size": loaded.spec.input_size, "counted_on": str(counted_on)}
        result["genotype"] = loaded.genotype.to_dict()
    else:
        result["architecture"], result["cost"] = model.stem, None
        result["notes"].append("params/MACs not counted: pass --source-model model.pt")
    atomic_write_json(Path(out_dir or model.parent) / "eval.json", result)
    return result

