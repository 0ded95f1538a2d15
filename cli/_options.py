"""Option aliases shared by the commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Preset = Annotated[str, typer.Option("--preset", help="Named settings: embedded-default (minutes on a CPU) or paper.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of settings; flags override it.")]
Out = Annotated[Path | None, typer.Option("--out", help="Run directory for every artifact of this command.")]
Device = Annotated[str | None, typer.Option("--device", help="torch device: auto (default: cuda when a GPU is "
                                                          "visible, else cpu), cpu, cuda, cuda:1, mps.")]
PrintConfig = Annotated[bool, typer.Option("--print-config", help="Print the resolved settings (preset, then "
                                                                  "--config, then flags) as YAML and exit.")]
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Folder holding torchvision data sets.")]
Download = Annotated[bool | None, typer.Option("--download/--no-download", help="Fetch torchvision data sets.")]
Dataset = Annotated[str | None, typer.Option(
    "--dataset", help="digits | cifar10 | cifar100 | svhn | npz:PATH | imagefolder:PATH.")]
OodDataset = Annotated[str | None, typer.Option("--ood-dataset", help="OoD set, same forms as --dataset.")]
Seed = Annotated[int | None, typer.Option("--seed", help="Random seed.")]
Epochs = Annotated[int | None, typer.Option("--epochs", help="Number of epochs.")]
BatchSize = Annotated[int | None, typer.Option("--batch-size", help="Mini-batch size.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from the run directory's last checkpoint.")]
Layers = Annotated[int | None, typer.Option("--layers", help="Cells of the network.")]
Channels = Annotated[int | None, typer.Option("--channels", help="Initial channels C.")]
ImageSize = Annotated[int | None, typer.Option("--image-size", help="Input resolution (square).")]
Classes = Annotated[int | None, typer.Option("--classes", help="Number of classes.")]


def resolve_device(text: str | None) -> str:
    """``--device``: ``auto`` (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N or mps; a device this
    machine lacks is a one-line error (exit 2), never a traceback from deep inside torch."""
    import torch

    from e2rnas.errors import E2RNASError

    name = (text or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise E2RNASError(f"--device {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise E2RNASError(f"--device {text}: torch sees no CUDA GPU on this machine; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise E2RNASError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise E2RNASError(f"--device {text}: MPS is not available on this machine; use --device cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise E2RNASError(f"--device {text}: e2rnas runs on cpu, cuda or mps")
    return name
