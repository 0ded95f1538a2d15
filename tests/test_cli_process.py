"""The forked CLI runner of the tests (tests/_cli_process.py) ends a command exactly as a fresh interpreter does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _cli_process import _zygote, run_cli

SCRIPTS = {
    "clean": "print('out'); import sys; print('err', file=sys.stderr)",
    "code": "import sys; print('partial', end=''); sys.exit(3)",
    "message": "import sys; sys.exit('refused: because')",
    "none": "import sys; sys.exit()",
    "raises": "import sys; print('before', file=sys.stderr); raise ValueError('bad input')",
    "atexit": "import atexit, sys; atexit.register(lambda: print('at exit', file=sys.stderr)); print('main')",
    "thread": ("import threading, time, sys\n"
               "def late():\n    time.sleep(0.2); print('thread done', flush=True)\n"
               "threading.Thread(target=late).start(); print('main returns')"),
    "argv_env_cwd": "import os, sys; print(sys.argv[1:], os.environ.get('COLUMNS'), os.getcwd())",
    "signal": "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    "stdin": "import sys; print(repr(sys.stdin.read()))",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("modules")
    for name, code in SCRIPTS.items():
        (d / f"m_{name}.py").write_text(code + "\n")
    return d


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_a_forked_command_ends_as_a_fresh_interpreter_does(folder, name):
    env = dict(os.environ, COLUMNS="123")
    forked = run_cli(["a b", "--x"], module=f"m_{name}", env=env, cwd=folder)
    fresh = subprocess.run([sys.executable, "-m", f"m_{name}", "a b", "--x"], capture_output=True, text=True,
                           env=env, cwd=folder, timeout=60)
    assert _zygote.proc is not None and not _zygote.failed  # the fork path ran, not the fallback
    assert forked.returncode == fresh.returncode and forked.stdout == fresh.stdout
    if name == "raises":  # the frames above the module differ (runpy called from the zygote), the error does not
        assert forked.stderr.splitlines()[0] == "before" and forked.stderr.splitlines()[-1] == "ValueError: bad input"
        assert fresh.stderr.splitlines()[-1] == "ValueError: bad input"
    else:
        assert forked.stderr == fresh.stderr


def test_a_command_past_its_timeout_is_killed(folder):
    (folder / "m_sleep.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_cli([], module="m_sleep", cwd=folder, timeout=1)
    assert info.value.output == "started\n"  # str: the fork path ran (subprocess.run's TimeoutExpired holds bytes)


def test_another_start_up_environment_takes_a_fresh_interpreter(folder):
    """A variable that an imported package may read at import (not a terminal width) is not forked with."""
    env = dict(os.environ, OMP_NUM_THREADS="3")
    code = "import os; print(os.getppid())"
    (folder / "m_parent.py").write_text(code + "\n")
    assert int(run_cli([], module="m_parent", env=env, cwd=folder).stdout) == os.getpid()
    assert int(run_cli([], module="m_parent", cwd=folder).stdout) == _zygote.proc.pid


def test_a_lasting_change_of_the_environment_restarts_the_zygote(folder, monkeypatch):
    (folder / "m_env.py").write_text("import os; print(os.getppid(), os.environ.get('E2RNAS_TEST_LASTING'))\n")
    run_cli([], module="m_env", cwd=folder)
    before = _zygote.proc.pid
    monkeypatch.setenv("E2RNAS_TEST_LASTING", "1")  # as a test that sets a variable and keeps it
    parent, value = run_cli([], module="m_env", cwd=folder).stdout.split()
    assert int(parent) == _zygote.proc.pid != before and value == "1"
