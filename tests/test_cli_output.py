"""Output without a terminal (a file, a pipe, a CI log): nothing cut, settings written as a person would."""

from __future__ import annotations

import io
import os

import pytest
from _cli_process import run_cli
from rich.console import Console

from e2rnas.cli import _output
from e2rnas.cli.app import COMMANDS, as_text, cli_command


def no_width() -> dict[str, str]:
    """This process's environment as it is now (a test may have changed it since collection), without a width."""
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TERMINAL_WIDTH", "LINES")}


def test_no_terminal_means_a_wide_console_unless_a_width_is_set(monkeypatch):
    for key in ("COLUMNS", "TERMINAL_WIDTH"):
        monkeypatch.delenv(key, raising=False)
    assert _output.no_tty_width(io.StringIO()) == _output.NO_TTY_WIDTH

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert _output.no_tty_width(Tty()) is None  # a terminal: Rich measures it
    monkeypatch.setenv("COLUMNS", "100")
    assert _output.no_tty_width(io.StringIO()) is None


def test_a_narrow_table_folds_numbers_and_names_instead_of_cutting_them(monkeypatch):
    buf = io.StringIO()
    monkeypatch.setattr(_output, "console", Console(file=buf, width=40, color_system=None))
    _output.print_table("t", ["artifact", "p99 latency (ms)", "genotype"],
                        [["ArchitectureFromTheSearch.onnx", 99.12345, "sep_conv_3x3,dil_conv_5x5"]])
    text = buf.getvalue()
    assert "…" not in text
    body = [line.split("│")[1:-1] for line in text.splitlines() if line.startswith("│")]
    columns = ["".join(cells[i].strip() for cells in body) for i in range(3)]  # a folded cell, read down
    assert columns == ["ArchitectureFromTheSearch.onnx", "99.12", "sep_conv_3x3,dil_conv_5x5"], text


@pytest.mark.slow
def test_help_pages_without_a_terminal_cut_no_flag_name():
    """Piped help (no COLUMNS) at 80 columns cut ``--max-normal-free-o…``; every option of every command is whole."""
    group = cli_command()
    for name, _, _ in COMMANDS:
        proc = run_cli([name, "--help"], module="e2rnas.cli", env=no_width())
        assert proc.returncode == 0, proc.stderr
        assert "…" not in proc.stdout, (name, proc.stdout)
        for param in group.commands[name].params:
            for flag in getattr(param, "opts", []):
                if flag.startswith("--") and not getattr(param, "hidden", False):
                    assert flag in proc.stdout, (name, flag)
        usage = next(line for line in proc.stdout.splitlines() if "Usage:" in line)
        assert "{" not in usage and "list[" not in proc.stdout, (name, usage)  # RUN, ARTIFACTS..., <path>
        if name == "run":
            from e2rnas.presets import PRESETS

            assert "[default: runs/default]" in proc.stdout and "[default: 50%]" in proc.stdout
            assert all(preset in proc.stdout for preset in PRESETS)
        if name == "search":
            assert "[floor x L, L]" in proc.stdout  # brackets in help are text, not Rich markup
            assert "None" not in proc.stdout and "False" not in proc.stdout and "['" not in proc.stdout


@pytest.mark.parametrize("value, text", [
    (None, "unset"), (True, "on"), (False, "off"), (0.05, "0.05"), (2.5e-4, "0.00025"), (("val", "ood"), "val, ood"),
    ([3, 5, 5], "3, 5, 5"), ((), "none"), ({"test": "digits", "ood": "mnist"}, "test=digits, ood=mnist"),
    ("cpu", "cpu")])
def test_settings_are_written_as_a_person_would(value, text):
    assert as_text(value) == text


def test_run_bounds_reach_the_search_and_override_the_file(tmp_path):
    from e2rnas.cli.run_cmd import pipeline_config

    f = tmp_path / "run.yaml"
    f.write_text("search: {epochs: 2, params_bound: 0.5}\nlatency_bound: 3ms\n")
    cfg = pipeline_config(f, params_bound=0.15, macs_bound=7.5, latency_bound="40%")
    assert cfg.search == {"epochs": 2, "params_bound": 0.15, "macs_bound": 7.5} and cfg.latency_bound == "40%"
    assert pipeline_config(f).search == {"epochs": 2, "params_bound": 0.5} and pipeline_config(f).latency_bound == "3ms"


def test_activity_without_a_terminal_prints_start_tenths_with_an_eta_and_the_end():
    """The first step (an early ETA), then one line per tenth of the work."""
    buf = io.StringIO()
    out = Console(file=buf, width=200, color_system=None)
    with _output.Activity("lut: measuring", out=out) as activity:
        for done in range(1, 101):
            activity.update("time", done, 100)
    lines = buf.getvalue().splitlines()
    assert lines[0] == "lut: measuring: started" and lines[-1].startswith("lut: measuring: done in ")
    steps = lines[1:-1]
    assert [s.split(" (")[0] for s in steps] == [f"lut: measuring: time {n}/100" for n in (1, *range(10, 101, 10))]
    assert all("left)" in s for s in steps[:-1]) and "left" not in steps[-1]
    phases = io.StringIO()
    with _output.Activity("lut", out=Console(file=phases, width=200, color_system=None)) as activity:
        for what in ("export", "time"):  # each phase counts its own tenths
            for done in range(1, 21):
                activity.update(what, done, 20)
    counted = [line.split(" (")[0] for line in phases.getvalue().splitlines()[1:-1]]
    assert counted == [f"lut: {what} {n}/20" for what in ("export", "time") for n in (1, *range(2, 21, 2))]
    quiet = io.StringIO()
    with _output.Activity("x", out=Console(file=quiet), enabled=False) as activity:
        activity.update("time", 1, 2)
    assert quiet.getvalue() == ""


def test_run_prints_the_search_and_stage_progress_without_a_terminal(capsys, monkeypatch):
    from e2rnas.cli import run_cmd, search_cmd

    monkeypatch.setattr(run_cmd, "console", Console(file=io.StringIO(), width=200))  # not a terminal
    for module in (_output, search_cmd):
        monkeypatch.setattr(module, "console", run_cmd.console)
    rec = {"epoch": 0, "epochs": 1, "step": 0, "steps_per_epoch": 2, "gammas": {"val": 0.6, "params": 0.4},
           "exact_params_m": 0.1, "exact_macs_m": 5.0}
    with run_cmd.SearchBar() as bar:
        for step in (1, 2):
            bar.update(rec | {"step": step})
    with run_cmd.StageLines() as lines:
        lines.start("lut", "e2rnas lut --target cpu")
        for done in (1, 2):
            lines.progress("time", done, 2)
        lines.result("lut", None)
        lines.start("eval", "skipped (outputs complete)")
    text = run_cmd.console.file.getvalue()
    assert "search epoch 1/1 step 2/2:" in text and "gamma val 0.60 params 0.40" in text
    assert "lut: time 1/2 (" in text and "lut: time 2/2 (" in text and "lut: done in " in text
    assert "eval: done" not in text  # a skipped stage has nothing to time
