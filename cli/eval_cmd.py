"""``e2rnas eval``: accuracy, size, PGD / FGSM accuracy and OoD detection, in the layout of the paper's Table I."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from e2rnas.cli import _options as opt
from e2rnas.cli._output import console, print_json, print_table
from e2rnas.errors import E2RNASError

TestDataset = Annotated[str | None, typer.Option(
    "--test-dataset", help="Test set; default: the one recorded in model.pt (else the data set's test split).")]
OodDataset = Annotated[str | None, typer.Option(
    "--ood-dataset", help="OoD set (same forms as --dataset, or none); default: the one recorded in model.pt.")]
Eps = Annotated[str | None, typer.Option("--eps", help="L-inf radius in pixel units [0, 1], e.g. 0.0078 or 2/255.")]
Steps = Annotated[int | None, typer.Option("--steps", help="PGD steps.")]
StepSize = Annotated[str | None, typer.Option("--step-size", help="PGD step (default 2.5 eps / steps), e.g. 1/255.")]
RandomStart = Annotated[bool | None, typer.Option("--random-start/--no-random-start", help="PGD random start.")]
AttackPreset = Annotated[str | None, typer.Option(
    "--attack-preset", help="Attack protocol: paper (eps 2/255, PGD-10; default) or robustbench (8/255, PGD-20, "
    "random start).")]
OldPreset = Annotated[str | None, typer.Option("--preset", hidden=True, help="Old name of --attack-preset.")]
MaxSamples = Annotated[int | None, typer.Option("--max-samples", help="Evaluate on this many test/OoD images.")]
OodMaxSamples = Annotated[int | None, typer.Option(
    "--ood-max-samples", help="OoD images in the detection pool (default: as --max-samples; 10000 against "
    "CIFAR's 10k test images gives a half-OoD pool).")]
SourceModel = Annotated[Path | None, typer.Option(
    "--source-model", help="model.pt an .onnx/.engine was exported from: data sets, sizes and transfer attacks.")]
EvalOut = Annotated[Path | None, typer.Option("--out", help="Folder for eval.json (default: the model's folder).")]


def eval_model(
    model: Annotated[Path, typer.Argument(help="model.pt, or an exported .onnx / .engine (see --source-model).")],
    dataset: opt.Dataset = None, test_dataset: TestDataset = None, ood_dataset: OodDataset = None,
    source_model: SourceModel = None, attack_preset: AttackPreset = None, preset: OldPreset = None,
    eps: Eps = None, steps: Steps = None,
    step_size: StepSize = None, random_start: RandomStart = None, max_samples: MaxSamples = None,
    ood_max_samples: OodMaxSamples = None, batch_size: opt.BatchSize = None, seed: opt.Seed = None,
    data_dir: opt.DataDir = None,
    download: opt.Download = None, device: opt.Device = None, out: EvalOut = None, json: opt.Json = False,
) -> None:
    """Evaluate a trained model (or an exported artifact) on clean, adversarial and OoD data."""
    from e2rnas.config import fraction
    from e2rnas.evaluation.evaluate import evaluate_file, protocol_from

    dev = opt.resolve_device(device)
    if attack_preset and preset and attack_preset != preset:
        raise E2RNASError("--attack-preset and its old name --preset disagree: give --attack-preset only")
    protocol = protocol_from(attack_preset or preset or "paper", eps=fraction(eps, "--eps"), steps=steps,
                             step_size=fraction(step_size, "--step-size"), random_start=random_start,
                             max_samples=max_samples, ood_max_samples=ood_max_samples, batch_size=batch_size,
                             seed=seed)
    out_dir = out or model.parent
    result = evaluate_file(model, out_dir=out_dir, protocol=protocol, source_model=source_model, dataset=dataset,
                           test_dataset=test_dataset, ood_dataset=ood_dataset, data_dir=data_dir,
                           download=bool(download), device=dev, progress=not json)
    if json:
        print_json(result)
        return
    show(result)
    console.print(f"eval.json: {out_dir / 'eval.json'}", highlight=False)


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.2f}"


def show(r: dict[str, Any]) -> None:
    p, cost, ood = r["protocol"], r["cost"] or {}, r["ood"] or {}
    row = [r["architecture"], _pct(r["test_err"]), _pct(r["clean_acc"]),
           None if not cost else f"{cost['params'] / 1e6:.4f}", None if not cost else f"{cost['macs'] / 1e6:.2f}",
           None if not cost else f"{cost['flops'] / 1e6:.2f}", _pct(r["pgd_acc"]), _pct(r["fgsm_acc"]),
           _pct(ood.get("aupr_out")), None if not ood else f"{ood['auroc']:.4f}",
           None if not ood else f"{ood['fpr95']:.4f}"]
    caption = (f"{r['predictor']} on {r['samples']['test']} test images ({r['datasets']['test']}); "
               f"PGD L-inf eps {p['eps'] * 255:.3g}/255, {p['steps']} steps of {p['pgd_step_size'] * 255:.3g}/255, "
               f"random start {'on' if p['random_start'] else 'off'}, {r['attack'] or 'no attack'}; "
               f"FGSM eps {p['fgsm_eps'] * 255:.3g}/255; OoD: {r['samples']['ood']} images of "
               f"{r['datasets']['ood'] or '-'} ({100 * (r.get('ood_pool') or {}).get('fraction_ood', 0):.0f}% of "
               f"the pool), score -MSP, AUPR with OoD positive (AUPR-in "
               f"{_pct(ood.get('aupr_in')) or '-'}%); params exclude the aux head; MACs conv/linear, FLOPs = 2 MACs")
    print_table("Evaluation (layout of the paper's Table I)",
                ["Architecture", "Test Err. (%)", "Acc. (%)", "Params (M)", "MACs (M)", "FLOPs (M)", "PGD Acc. (%)",
                 "FGSM Acc. (%)", "OoD AUPR (%)", "AUROC", "FPR95"], [row], caption=caption)
    for note in r["notes"]:
        console.print(f"note: {note}", highlight=False)
