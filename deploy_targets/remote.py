"""A device reached over SSH (a Jetson): copy the artifact and ``remote_runner.py``, run it, read its JSON.

Only OpenSSH's ``ssh`` and ``scp`` are used, through argument lists (never a local shell). The one string the
remote shell sees is a fixed argv whose parts are each ``shlex.quote``d. Host keys are always checked
(``StrictHostKeyChecking=yes``, ``BatchMode=yes``: no prompt, no trust on first use); pass ``--known-hosts`` to use
a file other than ``~/.ssh/known_hosts``. Everything is copied into a fresh ``mktemp -d`` directory that is removed
afterwards, also when the run fails.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e2rnas.errors import E2RNASError

RUNNER_SCRIPT = Path(__file__).with_name("remote_runner.py")
REMOTE_SUFFIXES = (".onnx", ".engine", ".plan")
# user@address: a host name or ssh-config alias (letters, digits, '.', '-', '_'; no leading '-'), an IPv4 address,
# or an IPv6 address bare (::1) or in brackets ([::1]), with an optional %zone
_HOST = re.compile(r"^(?:(?P<user>[A-Za-z0-9._][A-Za-z0-9._-]*)@)?"
                   r"(?:(?P<name>[A-Za-z0-9_][A-Za-z0-9._-]*)|\[?(?P<ipv6>[0-9A-Fa-f]*:[0-9A-Fa-f:.]*(?:%[A-Za-z0-9_.-]+)?)\]?)$")
_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]*e2rnas\.[A-Za-z0-9]+$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/~+-]+$")


class RemoteError(E2RNASError):
    """The device could not be reached or the run on it failed."""


@dataclass(frozen=True)
class SshConfig:
    """How to reach the device. ``host`` is ``user@address`` (or ``address``: the local user name)."""

    host: str
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    remote_python: str = "python3"
    connect_timeout: int = 10

    def __post_init__(self) -> None:
        m = _HOST.match(self.host)
        if not m or (m.group("ipv6") and self.host.count("[") != self.host.count("]")):
            raise RemoteError(f"bad --host {self.host!r}: use user@address (a name or ssh-config alias of letters, "
                              "digits, '.', '-', '_'; an IPv4 address; or an IPv6 address such as ::1)")
        if not 0 < self.port < 65536:
            raise RemoteError(f"bad --port {self.port}: use 1-65535")
        for name, path in (("--identity", self.identity), ("--known-hosts", self.known_hosts)):
            if path is not None:
                if not Path(path).is_file():
                    raise RemoteError(f"{name} file not found: {path}")
                if not _SAFE_PATH.match(str(Path(path).resolve())):
                    raise RemoteError(f"{name} path {path} has characters ssh options cannot carry; move or link it")
        if not _SAFE_PATH.match(self.remote_python) or self.remote_python.startswith("-"):
            raise RemoteError(f"bad --remote-python {self.remote_python!r}: give a program name or an absolute path")

    @property
    def where(self) -> str:
        return f"{self.host} port {self.port}"

    def _parts(self) -> tuple[str, str, bool]:
        m = _HOST.match(self.host)
        assert m is not None  # checked in __post_init__
        user = f"{m.group('user')}@" if m.group("user") else ""
        return user, m.group("ipv6") or m.group("name"), bool(m.group("ipv6"))

    @property
    def ssh_destination(self) -> str:
        """What ssh takes: the bare address (``user@::1``); ssh does not strip brackets."""
        user, address, _ = self._parts()
        return user + address

    def scp_destination(self, path: str) -> str:
        """What scp takes: an IPv6 address in brackets (``user@[::1]:path``), else ``user@host:path``."""
        user, address, ipv6 = self._parts()
        return f"{user}[{address}]:{path}" if ipv6 else f"{user}{address}:{path}"

    def options(self) -> list[str]:
        """Options shared by ssh and scp (scp takes the port as -P, added by the callers)."""
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={self.connect_timeout}", "-o", "LogLevel=ERROR"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={Path(self.known_hosts).resolve()}", "-o",
                     "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            opts += ["-o", "IdentitiesOnly=yes", "-i", str(Path(self.identity).resolve())]
        return opts


def _one_line_reason(stderr: str, returncode: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and not ln.startswith("**")]
    return lines[-1] if lines else f"exit code {returncode}"


def _hint(reason: str) -> str:
    r = reason.lower()
    if "host key" in r or "identification has changed" in r or "host key verification failed" in r:
        return ("the device's host key is unknown or changed: add it to --known-hosts "
                "(ssh-keyscan -p PORT HOST, then compare the fingerprint with the device's)")
    if "permission denied" in r:
        return "the key was refused: pass --identity KEY whose public half is in the device's authorized_keys"
    if any(s in r for s in ("refused", "timed out", "no route", "could not resolve", "unreachable")):
        return "check --host and --port, the network, and that sshd runs on the device"
    return "run the same ssh command by hand to see why"


def ssh(cfg: SshConfig, argv: Sequence[str], *, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    """Run a fixed argv on the device; its parts are quoted, so input never becomes remote shell syntax."""
    cmd = ["ssh", *cfg.options(), "-p", str(cfg.port), "--", cfg.ssh_destination, shlex.join(argv)]
    return _run(cmd, cfg, timeout=timeout, what=what)


def scp(cfg: SshConfig, local: Path, remote_path: str, *, timeout: float) -> None:
    # An absolute local path: "name:with:colons" would otherwise be read as a remote host.
    cmd = ["scp", "-q", *cfg.options(), "-P", str(cfg.port), "--", str(Path(local).resolve()),
           cfg.scp_destination(remote_path)]
    _run(cmd, cfg, timeout=timeout, what=f"copying {Path(local).name}")


def _run(cmd: list[str], cfg: SshConfig, *, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise RemoteError(f"{cmd[0]} not found: install the OpenSSH client (openssh-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise RemoteError(f"{what} on {cfg.where} took longer than {timeout:.0f} s; check the device") from exc
    if proc.returncode == 255 or (proc.returncode != 0 and cmd[0] == "scp"):
        reason = _one_line_reason(proc.stderr, proc.returncode)
        raise RemoteError(f"ssh to {cfg.where} failed while {what}: {reason.rstrip('.')}; {_hint(reason)}")
    return proc


def make_remote_dir(cfg: SshConfig) -> str:
    proc = ssh(cfg, ["mktemp", "-d", "-t", "e2rnas.XXXXXXXX"], timeout=cfg.connect_timeout + 30,
               what="creating a temporary directory")
    path = proc.stdout.strip()
    if proc.returncode != 0 or not _REMOTE_DIR.match(path) or ".." in path:
        raise RemoteError(f"mktemp on {cfg.where} gave {path!r} (exit {proc.returncode}); is it a POSIX system?")
    return path


def remove_remote_dir(cfg: SshConfig, path: str) -> bool:
    if not _REMOTE_DIR.match(path) or ".." in path:  # never rm anything but the directory mktemp gave us
        return False
    try:
        proc = ssh(cfg, ["rm", "-rf", "--", path], timeout=cfg.connect_timeout + 30, what="removing the copies")
    except RemoteError:
        return False
    return proc.returncode == 0


def artifact_plan(artifact: Path) -> dict[str, Any]:
    """What the device runner needs to know about the artifact, read here on the host: for ONNX the input dims
    (-1: dynamic), the precision the graph carries and its quantisation; for an engine the export's sidecar
    (static batch or profile)."""
    if artifact.suffix == ".onnx":
        from e2rnas.export.graph_facts import graph_facts

        try:
            return graph_facts(artifact)
        except Exception:  # onnx raises DecodeError and friends: the device's runtime gives the reason
            return {"dims": None, "precision": "fp32", "quantization": None, "unreadable": True}
    plan: dict[str, Any] = {"dims": None, "precision": None, "quantization": None, "profile_max": None}
    sidecar = artifact.with_suffix(".json")
    try:
        record = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    except json.JSONDecodeError:
        record = {}
    if record.get("static_batch"):
        plan["dims"] = [int(record["static_batch"])]
    elif isinstance(record.get("profile"), dict):
        plan["dims"], plan["profile_max"] = [-1], int(record["profile"]["max"])
    plan["precision"] = record.get("precision")
    return plan


def remote_backend(target_backends: Sequence[str], plan: dict[str, Any], name: str) -> str:
    """The runner backend for an artifact on a remote target: ``auto`` (trtexec, else the TensorRT Python API,
    else ONNX Runtime) when the target has TensorRT, else ONNX Runtime. ONNX Runtime's asymmetric QDQ int8 file
    never goes to TensorRT (its parser rejects it): it runs on ONNX Runtime, or is refused in one line."""
    from e2rnas.export.graph_facts import tensorrt_problem

    if "tensorrt" not in target_backends:
        return "onnxruntime"
    problem = tensorrt_problem(plan, name)
    if problem is None:
        return "auto"
    if "onnxruntime" in target_backends:
        return "onnxruntime"
    raise RemoteError(problem)


def run_remote(artifact: str | Path, *, ssh_config: SshConfig, batch_sizes: Sequence[int] = (1,), warmup: int = 10,
               runs: int | None = None, duration: float | None = None, backend: str = "auto",
               providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
               precision: str = "fp32", workspace_mb: int | None = None, cuda_graph: bool = False,
               input_name: str = "images", input_shape: Sequence[int] = (3, 32, 32), trtexec: str | None = None,
               timeout: float = 1800) -> dict[str, Any]:
    """Latency of ``artifact`` measured on the device; the parsed runner JSON plus where it ran."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise RemoteError(f"artifact not found: {artifact}")
    if artifact.suffix not in REMOTE_SUFFIXES:
        raise RemoteError(f"{artifact.name}: a remote target runs ONNX or TensorRT files, not {artifact.suffix!r}; "
                          "export it first (e2rnas export --onnx)")
    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", input_name):
        raise RemoteError(f"unusual input name {input_name!r}")
    if trtexec is not None and not (trtexec.startswith("/") and _SAFE_PATH.match(trtexec)):
        raise RemoteError(f"bad trtexec path {trtexec!r}: give an absolute path on the device")
    plan = artifact_plan(artifact)
    if backend in ("tensorrt", "trtexec"):
        from e2rnas.export.graph_facts import tensorrt_problem

        problem = tensorrt_problem(plan, artifact.name)
        if problem:
            raise RemoteError(problem)
    remote_dir = make_remote_dir(ssh_config)
    removed = False
    try:
        remote_artifact = f"{remote_dir}/model{artifact.suffix}"
        scp(ssh_config, artifact, remote_artifact, timeout=timeout)
        scp(ssh_config, RUNNER_SCRIPT, f"{remote_dir}/remote_runner.py", timeout=60)
        argv = [ssh_config.remote_python, f"{remote_dir}/remote_runner.py", "--artifact", remote_artifact,
                "--batch", ",".join(str(int(b)) for b in batch_sizes), "--warmup", str(int(warmup)),
                "--backend", backend, "--providers", ",".join(providers), "--precision", precision,
                "--input-name", input_name, "--input-shape", "x".join(str(int(d)) for d in input_shape)]
        argv += ["--runs", str(int(runs))] if runs is not None else []
        argv += ["--duration", str(float(duration))] if duration is not None else []
        argv += ["--threads", str(int(threads))] if threads else []
        argv += ["--workspace-mb", str(int(workspace_mb))] if workspace_mb else []
        argv += ["--cuda-graph"] if cuda_graph else []
        argv += ["--trtexec", trtexec] if trtexec else []
        # "=": a dims string starting with -1 (dynamic batch) would otherwise read as an option
        argv += ["--input-dims=" + "x".join(str(int(d)) for d in plan["dims"])] if plan.get("dims") else []
        argv += ["--graph-precision", plan["precision"]] if artifact.suffix == ".onnx" else []
        argv += ["--profile-max", str(int(plan["profile_max"]))] if plan.get("profile_max") else []
        argv += ["--opset", str(int(plan["opset"]))] if plan.get("opset") else []
        proc = ssh(ssh_config, argv, timeout=timeout, what="running the benchmark")
        result = _parse_runner_output(proc, ssh_config)
    finally:
        removed = remove_remote_dir(ssh_config, remote_dir)
    return {**result, "host": ssh_config.host, "port": ssh_config.port, "remote_dir": remote_dir,
            "remote_dir_removed": removed}


def _parse_runner_output(proc: subprocess.CompletedProcess[str], cfg: SshConfig) -> dict[str, Any]:
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    if not lines:
        reason = _one_line_reason(proc.stderr, proc.returncode)
        raise RemoteError(f"the runner on {cfg.where} printed no result: {reason}; "
                          "does --remote-python point at a Python with numpy and onnxruntime or tensorrt?")
    try:
        data = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise RemoteError(f"the runner on {cfg.where} printed unreadable JSON ({exc})") from exc
    if not data.get("ok"):
        raise RemoteError(f"the runner on {cfg.where} failed: {data.get('error', 'no reason given')}")
    return data
