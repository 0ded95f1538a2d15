"""Run the e2rnas CLI in a real process of its own, without paying each time for the interpreter and torch's import.

Most CLI tests run one short command in a subprocess and read its exit code, stdout and stderr (a fault ends in one
line, a refusal changes nothing). A fresh interpreter spends about 2 s importing torch, ONNX and friends before the
command starts: over a hundred such calls were a third of the suite. Here one helper process per pytest process (the
"zygote") imports those third-party packages once, and each command is a ``fork()`` of it: a real, separate process
with its own pid, stdin/stdout/stderr pipes, working directory, environment and exit status, which imports e2rnas
itself afresh (nothing of e2rnas is loaded before the fork, so module-level state reads the command's environment).
The child runs ``python -m MODULE`` as ``runpy`` does and ends as the interpreter would: ``SystemExit`` codes, a
traceback and exit 1 for an uncaught exception, atexit handlers, flushed streams.

A fresh interpreter is used instead (same result type) when the command's environment differs from the zygote's in
a variable that an already imported package may have read (anything but the terminal-width keys below), when this
platform has no ``fork``/``send_fds``, when the zygote cannot start, or when ``E2RNAS_TESTS_FRESH_PROCESS=1``.
Tests about interpreter start-up itself (what an import loads, a signal sent to a running command, two commands at
once) call ``subprocess`` directly.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Environment keys that may differ between a command and the zygote: only read when the command runs (pytest
#: changes PYTEST_CURRENT_TEST at every test).
RUNTIME_KEYS = frozenset({"COLUMNS", "LINES", "TERMINAL_WIDTH", "NO_COLOR", "FORCE_COLOR", "TERM",
                          "PYTEST_CURRENT_TEST"})
#: Third-party packages the e2rnas commands import anyway; none starts a thread or reads the data at import.
PRELOAD = ("numpy", "torch", "torch.nn", "torch.optim", "torchvision", "onnx", "onnxruntime", "scipy.optimize",
           "yaml", "pydantic", "typer", "click", "rich.console", "rich.table", "rich.markdown")

_ZYGOTE = r'''
import json, os, runpy, signal, socket, struct, sys, threading, traceback
for name in sys.argv[2].split(","):
    __import__(name)
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sys.argv[1]); srv.listen(8)
print("ready", flush=True)

def child(req, fds):
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.environ.clear(); os.environ.update(req["env"])
    os.chdir(req["cwd"])
    sys.stdin = open(0, "r", closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", errors="backslashreplace", closefd=False, buffering=1)
    sys.argv = [req["module"], *req["args"]]
    code = 0
    try:
        runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
    except SystemExit as e:
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    try:
        threading._shutdown()  # as the interpreter does: wait for non-daemon threads, then atexit
        import atexit
        atexit._run_exitfuncs()
        sys.stdout.flush(); sys.stderr.flush()
    except BaseException:
        pass
    if code < 0:
        signal.signal(-code, signal.SIG_DFL); os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)

while True:
    conn, _ = srv.accept()
    msg, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    size = struct.unpack("!I", msg[:4])[0]
    while len(msg) < 4 + size:
        msg += conn.recv(1 << 16)
    req = json.loads(msg[4:4 + size])
    pid = os.fork()
    if pid == 0:
        conn.close(); srv.close()
        child(req, fds)
    for fd in fds:
        os.close(fd)
    conn.sendall(f"{pid}\n".encode())
    status = os.waitpid(pid, 0)[1]
    conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())
    conn.close()
'''


class _Zygote:
    """One pre-imported interpreter per pytest process, started on first use, stopped at exit."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.path = ""
        self.failed = False
        self.lock = threading.Lock()
        atexit.register(self.stop)

    def start(self) -> bool:
        if self.proc is not None and self.proc.poll() is None:
            return True
        if self.failed:
            return False
        folder = tempfile.mkdtemp(prefix="e2rnas-zygote-")
        self.path = os.path.join(folder, "s")
        self.env = dict(os.environ)
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE, self.path, ",".join(PRELOAD)],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                         env=self.env, text=True)
            ready = self.proc.stdout.readline().strip() == "ready"
        except OSError:
            ready = False
        if not ready:
            self.stop()
            self.failed = True
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        if self.path:
            shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)  # the socket's folder, one per start
            self.path = ""


_zygote = _Zygote()


def _same_start(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    return all(a.get(k) == b.get(k) for k in (set(a) | set(b)) - RUNTIME_KEYS)


def _usable(env: Mapping[str, str]) -> bool:
    """Whether the zygote can run a command with ``env``; restarted once when this process's own environment
    changed for good since it started (a test that set a variable and kept it), so later commands fork again."""
    if os.environ.get("E2RNAS_TESTS_FRESH_PROCESS") == "1" or not hasattr(os, "fork") or not hasattr(
            socket, "send_fds") or sys.platform != "linux":
        return False
    if not _zygote.start():
        return False
    if _same_start(env, _zygote.env):
        return True
    if not _same_start(env, os.environ):
        return False  # a one-off environment for this command: a fresh interpreter
    _zygote.stop()
    return _zygote.start()


def run_cli(args: Sequence[str | os.PathLike], *, module: str = "e2rnas.cli.app", env: Mapping[str, str] | None = None,
            cwd: str | os.PathLike | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` with captured text output, as ``subprocess.run(..., capture_output=True, text=True,
    timeout=...)`` gives it (``TimeoutExpired`` after killing the command)."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    argv = [sys.executable, "-m", module, *args]
    with _zygote.lock:
        if not _usable(env):
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        return _forked(argv, module=module, args=args, env=env, cwd=str(Path(cwd or os.getcwd()).resolve()),
                       timeout=timeout)


def _forked(argv: list[str], *, module: str, args: list[str], env: dict[str, str], cwd: str,
            timeout: float) -> subprocess.CompletedProcess:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    null = os.open(os.devnull, os.O_RDONLY)
    body = json.dumps({"module": module, "args": args, "env": env, "cwd": cwd}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(_zygote.path)
        socket.send_fds(conn, [struct.pack("!I", len(body)) + body], [null, out_w, err_w])
        for fd in (null, out_w, err_w):
            os.close(fd)
        reader = conn.makefile("r")
        pid = int(reader.readline())
        chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

        def drain(fd: int) -> None:
            with open(fd, "rb", closefd=True) as f:
                while block := f.read1(1 << 16):
                    chunks[fd].append(block)

        threads = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in (out_r, err_r)]
        for t in threads:
            t.start()
        conn.settimeout(timeout)
        try:
            code = int(reader.readline())
        except TimeoutError:
            os.kill(pid, 9)
            for t in threads:
                t.join(5)
            raise subprocess.TimeoutExpired(argv, timeout, output=b"".join(chunks[out_r]).decode(errors="replace"),
                                            stderr=b"".join(chunks[err_r]).decode(errors="replace")) from None
        for t in threads:
            t.join()
    text = {fd: b"".join(parts).decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
            for fd, parts in chunks.items()}  # universal newlines, as text=True reads them
    return subprocess.CompletedProcess(argv, code, text[out_r], text[err_r])
