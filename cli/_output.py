"""One place for terminal output: Rich tables, JSON to stdout, one-line errors to stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

#: Width of output that goes to a file, a pipe or a CI log (no terminal to fit): wide enough that tables and help
#: pages are never cut; COLUMNS (Rich) or TERMINAL_WIDTH (Typer's help) still win when set.
NO_TTY_WIDTH = 200


def no_tty_width(stream: Any) -> int | None:
    """NO_TTY_WIDTH when ``stream`` is not a terminal and no width is set in the environment, else None (Rich
    measures the terminal)."""
    if os.environ.get("COLUMNS") or os.environ.get("TERMINAL_WIDTH"):
        return None
    isatty = getattr(stream, "isatty", None)
    return None if callable(isatty) and isatty() else NO_TTY_WIDTH


def wide_help_without_a_terminal() -> None:
    """Typer's help pages use their own console, 80 columns without a terminal: widen them the same way."""
    import typer.rich_utils as ru

    if ru.MAX_WIDTH is None:
        ru.MAX_WIDTH = no_tty_width(sys.stdout)


console = Console(width=no_tty_width(sys.stdout))
err_console = Console(stderr=True, width=no_tty_width(sys.stderr))


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *,
                caption: str | None = None) -> None:
    table = Table(title=title, caption=caption, header_style="bold")
    for i, col in enumerate(columns):  # fold, never cut: a narrow terminal wraps a number or a name, never drops it
        table.add_column(col, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console.print(table)


def print_json(data: Any) -> None:
    """Plain JSON on stdout (no Rich markup), for ``--json``."""
    print(json.dumps(data, indent=2, default=str))


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def error(message: str) -> None:
    """The message is plain text: ``pip install 'e2rnas[sweep]'`` keeps its brackets (no Rich markup)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
