"""One latency table of the tiny deploy shape, measured by ``e2rnas lut`` once per test session and shared
read-only by the table's CLI tests and the latency-objective search tests (each built its own before)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: the tiny deploy network (5 cells, C=8, 16 px, 5 classes), timed briefly on one thread
CLI_TINY = ["--deploy-layers", "5", "--deploy-channels", "8", "--deploy-image-size", "16", "--classes", "5",
            "--runs", "3", "--rounds", "1", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="session")
def tiny_lut(tmp_path_factory) -> tuple[Path, object]:
    """``e2rnas lut --target cpu CLI_TINY --json``: the file it wrote and Click's result (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from e2rnas.cli.app import app

    path = tmp_path_factory.mktemp("lut") / "lut.json"
    result = CliRunner().invoke(app, ["lut", "--target", "cpu", *CLI_TINY, "--out", str(path), "--json"])
    return path, result
