"""Shared test settings: one torch thread (tiny tensors run faster, and results do not depend on core count)."""

import os

import pytest
import torch


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
