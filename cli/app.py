"""The ``e2rnas`` Typer app: command registration, ``--version`` and the one error mapper."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from e2rnas import __version__
from e2rnas.cli._output import error

app = typer.Typer(
    name="e2rnas",
    help="E2RNAS: search, retrain, evaluate, export and deploy accurate, small, fast and robust networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: (command name, module under e2rnas.cli, function name)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("genotypes", "info_cmd", "genotypes"),
    ("cost", "info_cmd", "cost"),
    ("bench", "bench_cmd", "bench"),
    ("check", "check_cmd", "check"),
    ("search", "search_cmd", "search"),
    ("run", "run_cmd", "run"),
    ("report", "run_cmd", "report"),
    ("export", "export_cmd", "export"),
    # Add new commands here: (name, module in cli/, function).
    ("train", "train_cmd", "train"),
    ("eval", "eval_cmd", "eval_model"),
    ("lut", "lut_cmd", "lut"),

)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"e2rnas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """E2RNAS command line."""


for _name, _module, _func in COMMANDS:
    app.command(_name)(getattr(importlib.import_module(f"e2rnas.cli.{_module}"), _func))


def main() -> None:
    """Entry point: known errors become one line on stderr and exit code 2 (``E2RNAS_DEBUG=1`` for tracebacks)."""
    from e2rnas.errors import E2RNASError

    try:
        app(standalone_mode=True)
    except E2RNASError as exc:
        if os.environ.get("E2RNAS_DEBUG"):
            raise
        error(str(exc))
        sys.exit(2)
    except KeyboardInterrupt:
        error("interrupted; the last checkpoint is kept, rerun with --resume to continue")
        sys.exit(130)


if __name__ == "__main__":
    main()
