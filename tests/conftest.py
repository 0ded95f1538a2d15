"""Shared test settings: one torch thread (tiny tensors run faster, and results do not depend on core count), in
this process and in every command a test starts; under pytest-xdist the same console width as a serial run."""

import os

# Commands that tests start (the CLI, torchrun ranks) use one intra-op thread too: with two test processes on two
# cores, a second thread per command only contends (docs/testing.md). A test that needs more sets it itself.
os.environ["OMP_NUM_THREADS"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist gives its workers the controller's terminal size (COLUMNS=80, LINES); a serial run without a terminal
    # has none, and Rich fixes its console width from COLUMNS when e2rnas.cli._output is imported at collection.
    for key in ("COLUMNS", "LINES"):
        os.environ.pop(key, None)

import pytest  # noqa: E402
import torch  # noqa: E402
from _lut import tiny_lut  # noqa: E402,F401  (a session fixture)


def pytest_report_header(config):
    """Which CPU kernels this run exercises (CI runs a second pass with AVX2 forced: docs/onednn-avx2-crash.md)."""
    keys = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MALLOC_CHECK_")
    forced = {k: os.environ[k] for k in keys if k in os.environ}
    return f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}" + (
        f", forced {forced}" if forced else "")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
