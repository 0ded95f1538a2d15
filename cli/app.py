"""The ``e2rnas`` Typer app: command registration, global options (``--version``, ``-v/-q``, ``--log-file``),
help that shows each preset's values, and the one error mapper."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer

from e2rnas import __version__
from e2rnas.cli._output import error, wide_help_without_a_terminal

wide_help_without_a_terminal()
app = typer.Typer(
    name="e2rnas",
    help="E2RNAS: search, retrain, evaluate, export and deploy accurate, small, fast and robust networks.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

#: (command name, module under e2rnas.cli, function name), in the order of the workflow (and of --help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run_cmd", "run"),
    ("sweep", "sweep_cmd", "sweep"),
    ("search", "search_cmd", "search"),
    ("train", "train_cmd", "train"),
    ("eval", "eval_cmd", "eval_model"),
    ("export", "export_cmd", "export"),
    ("bench", "bench_cmd", "bench"),
    ("check", "check_cmd", "check"),
    ("baseline", "run_cmd", "baseline"),
    ("report", "run_cmd", "report"),
    ("lut", "lut_cmd", "lut"),
    ("cost", "info_cmd", "cost"),
    ("genotypes", "info_cmd", "genotypes"),
    # Add new commands here: (name, module in cli/, function).
)
#: command -> (config section, config class path) whose presets --help shows per option
PRESET_HELP = {"search": ("search", "e2rnas.search.runner:SearchConfig"),
               "train": ("train", "e2rnas.train.trainer:TrainConfig")}
GLOBAL_FLAGS = {"-v", "-vv", "-vvv", "--verbose", "-q", "--quiet"}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"e2rnas {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines (-vv: debug). Also after "
                                                                      "the command name."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    log_file: Path | None = typer.Option(None, "--log-file", help="Also write the log (debug level) to this file."),
) -> None:
    """E2RNAS command line."""
    setup_logging(verbose=verbose, quiet=quiet, log_file=log_file)


def setup_logging(*, verbose: int = 0, quiet: bool = False, log_file: Path | None = None) -> None:
    """stdlib logging through rich's handler on stderr (-v info, -vv debug, -q warnings); ``log_file`` gets all."""
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else (logging.DEBUG if verbose >= 2 else
                                           logging.INFO if verbose == 1 else logging.WARNING)
    handlers: list[logging.Handler] = [RichHandler(console=Console(stderr=True), show_path=False, level=level)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        handlers.append(file_handler)
    log = logging.getLogger("e2rnas")
    for h in list(log.handlers):
        log.removeHandler(h)
    for h in handlers:
        log.addHandler(h)
    log.setLevel(logging.DEBUG if log_file is not None else level)
    log.propagate = False


for _name, _module, _func in COMMANDS:
    app.command(_name)(getattr(importlib.import_module(f"e2rnas.cli.{_module}"), _func))


def cli_command() -> Any:
    """The click command of ``app``, with plain flags shown without a ``<bool>`` type and the search/train
    options' help naming each preset's value (``[embedded-default: 6, paper: 50]``)."""
    group = typer.main.get_command(app)  # typer may vendor click: options are recognised by their attributes
    for command in [group, *getattr(group, "commands", {}).values()]:
        _plain_help_flag(command)
        section_cls = PRESET_HELP.get(command.name or "")
        fields = _fields(section_cls[1]) if section_cls else {}
        for param in command.params:
            if getattr(param, "param_type_name", "") == "argument":
                _argument_metavar(param)
            if getattr(param, "param_type_name", "") != "option":
                continue
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
            if section_cls and param.opts and not getattr(param, "hidden", False):
                _add_preset_help(param, section_cls[0], fields)
    return group


def _argument_metavar(param: Any) -> None:
    """Arguments as ``RUN``, ``[RUN]`` and ``ARTIFACTS...`` with types such as ``<path>``, not ``{run}`` or
    ``<list[Path]>`` (Typer's own renderings)."""
    import re

    many = getattr(param, "nargs", 1) == -1
    if param.metavar is None:
        param.metavar = (param.name or "arg").upper()
    piece = param.metavar + ("..." if many else "")
    param.get_usage_pieces = lambda ctx: [piece if param.required else f"[{piece}]"]
    if callable(getattr(param, "display_type_rich", None)):
        shown = param.display_type_rich
        param.display_type_rich = lambda ctx: re.sub(r"<list\[(\w+)\]>", lambda m: f"<{m.group(1).lower()}>",
                                                     shown(ctx) or "") or None


def _plain_help_flag(command: Any) -> None:
    """``--help`` is made on demand by click: give it no type column either."""
    make = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option


def _fields(path: str) -> dict[str, Any]:
    import dataclasses

    module, _, name = path.partition(":")
    return {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), name))}


def _add_preset_help(param: Any, section: str, fields: dict[str, Any]) -> None:
    import dataclasses

    from e2rnas.cli._config import field_name
    from e2rnas.presets import PRESETS

    key = field_name(section, param.opts[0].lstrip("-"))
    if key not in fields:
        return
    default = fields[key].default
    default = None if default is dataclasses.MISSING else default
    shown = []
    for preset in ("embedded-default", "paper"):
        value = PRESETS[preset].get(section, {}).get(key, default)
        shown.append(f"{preset}: {as_text(value)}")
    from rich.markup import escape

    param.help = f"{param.help or ''} {escape('[' + '; '.join(shown) + ']')}".strip()


def as_text(value: Any) -> str:
    """A setting as a person writes it: 'unset', 'on'/'off', '3, 5, 5', 'a=1, b=2', never a Python repr."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(as_text(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={as_text(v)}" for k, v in value.items()) or "none"
    return str(value)


def hoist_global_options(argv: list[str]) -> list[str]:
    """``e2rnas search -v --log-file x.log ...`` -> ``e2rnas -v --log-file x.log search ...``: the logging options
    work after the command name too (click reads group options only before it)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            rest += argv[i:]
            break
        if token in GLOBAL_FLAGS:
            front.append(token)
        elif token == "--log-file" and i + 1 < len(argv):
            front += argv[i:i + 2]
            i += 1
        elif token.startswith("--log-file="):
            front.append(token)
        else:
            rest.append(token)
        i += 1
    return front + rest


def main() -> None:
    """Entry point, and the one place that turns failures into one line on stderr (``E2RNAS_DEBUG=1`` for
    tracebacks): a known error, a usage error and a file-system error exit 2, Ctrl-C 130, SIGTERM 143."""
    import signal

    from e2rnas.distributed import env_world
    from e2rnas.errors import E2RNASError

    if env_world().rank > 0:  # under torchrun rank 0 alone prints results; errors still reach stderr
        from e2rnas.cli._output import console

        console.quiet = True
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    stopped_by: list[str] = []

    def on_sigterm(signum: int, frame: Any) -> None:  # the same path as Ctrl-C: the search saves its checkpoint
        stopped_by.append("SIGTERM")
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    _click = _vendored_click()
    debug = bool(os.environ.get("E2RNAS_DEBUG"))
    try:
        code = cli_command()(hoist_global_options(sys.argv[1:]), prog_name="e2rnas", standalone_mode=False)
    except _click.exceptions.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `e2rnas`: the help, as before
            exc.show()
            sys.exit(exc.exit_code)
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        _fail(" ".join(exc.format_message().replace("Value error, ", "").split()) + hint, exc.exit_code or 2, debug)
    except _abort_class():
        _fail("aborted", 1, debug)
    except _click.exceptions.ClickException as exc:
        _fail(" ".join(exc.format_message().split()), exc.exit_code or 2, debug)
    except E2RNASError as exc:
        _fail(str(exc), 2, debug)
    except OSError as exc:
        _fail(describe_os_error(exc), 2, debug)
    except KeyboardInterrupt:
        code = 130
    if code == 130:  # typer turns Ctrl-C (and our SIGTERM) into exit code 130
        how = "stopped by SIGTERM" if stopped_by else "interrupted"
        error(f"{how}; the last checkpoint is kept: run the same command again (search and train: add --resume) "
              f"to continue")
        sys.exit(143 if stopped_by else 130)
    sys.exit(code if isinstance(code, int) else 0)


def _vendored_click() -> Any:
    """typer >= 0.16 ships its own copy of click; its exception classes are the ones raised."""
    try:
        from typer import _click
    except ImportError:
        import click as _click
    return _click


def _abort_class() -> type[BaseException]:
    try:
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort
    return Abort


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        raise
    logging.getLogger("e2rnas").debug("error", exc_info=True)
    error(message)
    sys.exit(code)


#: errno -> what to do about it
_OS_FIXES = {
    errno.EROFS: "choose a writable --out",
    errno.EACCES: "choose a folder you may write (--out) or fix its permissions",
    errno.EPERM: "choose a folder you may write (--out) or fix its permissions",
    errno.ENOSPC: "free space or choose --out on another disk; the last complete files are kept",
    errno.EDQUOT: "free space or choose --out on another disk; the last complete files are kept",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is where a file is expected",
}


def describe_os_error(exc: OSError) -> str:
    """One line: the path, the cause and the fix (``[Errno 30] ...`` never reaches the user)."""
    path = str(exc.filename) + (f" -> {exc.filename2}" if exc.filename2 else "") if exc.filename else "a file"
    fix = _OS_FIXES.get(exc.errno or 0)
    return f"cannot use {path}: {exc.strerror or exc or type(exc).__name__}" + (f"; {fix}" if fix else "")


if __name__ == "__main__":
    main()
