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


#: expensive session fixtures: every module that uses one goes to the same xdist worker, which builds it once
SHARED_FIXTURES = ("sshd", "tiny_lut")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (``--dist loadgroup``): each test module is one group, sent whole to one worker, so that its
    module-scoped fixtures are built once; the modules that use one of SHARED_FIXTURES (the loopback sshd, the tiny
    latency table) form one group, so that the session builds it once and tests that look at what it leaves behind
    (remote folders in /tmp) never see another worker's. The collection order is kept: handing out the slow-marked
    groups first was measured slower (the pipeline, sweep and torchrun tests, each several processes or threads,
    then ran side by side on the two cores)."""
    if not (hasattr(config, "workerinput") or getattr(config.option, "numprocesses", None)):
        return
    group: dict[str, str] = {}
    for item in items:
        name = item.module.__name__
        shared = next((f for f in SHARED_FIXTURES if f in item.fixturenames), None)
        if shared is not None:
            group[name] = shared
        group.setdefault(name, name)
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group[item.module.__name__]))
