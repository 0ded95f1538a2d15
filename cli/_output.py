"""One place for terminal output: Rich tables, JSON to stdout, one-line errors to stderr."""

from __future__ import annotations

import json
import os
import sys
import time
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


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


class Activity:
    """What a long command is doing. In a terminal: a Rich spinner with the latest step. Without one (a pipe, a CI
    log, where a spinner prints nothing): plain lines, one when it starts, one per tenth of the work with the time
    taken and an ETA, and one when it ends."""

    def __init__(self, label: str, *, enabled: bool = True, plain: bool | None = None, out: Console | None = None,
                 announce: bool = True):
        self.label, self.enabled, self.announce = label, enabled, announce
        self.out = out or console
        self.plain = not self.out.is_terminal if plain is None else plain
        self._status: Any = None
        self._t0 = self._phase_t0 = 0.0
        self._tenth = -1
        self._phase: str | None = None

    def __enter__(self) -> Activity:
        self._t0 = time.monotonic()
        if not self.enabled:
            return self
        if self.plain:
            if self.announce:
                self.out.print(f"{self.label}: started", highlight=False, soft_wrap=True)
        else:
            self._status = self.out.status(f"{self.label}...", spinner="dots")
            self._status.__enter__()
        return self

    def update(self, what: str, done: int | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        count = f" {done}/{total}" if done is not None and total else ""
        if self._status is not None:
            self._status.update(f"{self.label}: {what}{count}")
            return
        if not self.plain or done is None or not total:
            return
        if what != self._phase:  # a new phase (lut: export, then time) counts its own tenths and ETA
            self._phase, self._tenth, self._phase_t0 = what, -1, time.monotonic()
        tenth = min(10, 10 * done // total)
        if tenth <= self._tenth:
            return
        self._tenth = tenth
        spent = time.monotonic() - self._phase_t0
        eta = f", about {duration(spent * (total - done) / done)} left" if 0 < done < total else ""
        self.out.print(f"{self.label}: {what}{count} ({duration(spent)}{eta})", highlight=False, soft_wrap=True)

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
        elif self.enabled and self.plain and exc[0] is None:
            self.out.print(f"{self.label}: done in {duration(time.monotonic() - self._t0)}", highlight=False)
