"""Option aliases shared by the commands (one definition, one help text)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from e2rnas.config import resolve_device  # one device check for every command

__all__ = ["resolve_device"]

Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Preset = Annotated[str, typer.Option("--preset", help="Named settings: embedded-default (minutes on a CPU) or paper.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="YAML file of settings; flags override it.")]
Out = Annotated[Path | None, typer.Option("--out", help="Run directory for every artifact of this command.")]
Device = Annotated[str | None, typer.Option("--device", help="torch device: cpu, cuda, cuda:1, mps, or auto "
                                                          "(cuda when a GPU is visible, else cpu).")]
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


Tracker = Annotated[str | None, typer.Option("--tracker", help="Also send the metrics to tensorboard (<run>/"
                                                            "tensorboard/) or mlflow (MLFLOW_TRACKING_URI); "
                                                            "metrics.jsonl stays the record.")]

# the deployed network's shape, as `search` names it (`--layers` etc. still work for `cost` and `genotypes`)
DeployLayers = Annotated[int | None, typer.Option("--deploy-layers", "--layers", help="Cells of the deployed network.")]
DeployChannels = Annotated[int | None, typer.Option("--deploy-channels", "--channels",
                                                    help="Initial channels C of the deployed network.")]
DeployImageSize = Annotated[int | None, typer.Option("--deploy-image-size", "--image-size",
                                                     help="Input resolution of the deployed network (square).")]
DeployClasses = Annotated[int | None, typer.Option("--deploy-classes", "--classes",
                                                   help="Classes of the deployed network.")]
