"""A real OpenSSH server on 127.0.0.1 for the remote-target tests: fresh host and client keys, a free port.

The server runs as the current user with its own config (no PAM, StrictModes off, keys in tmp_path); the
"device" side runs this interpreter (it has numpy and onnxruntime). Skips when /usr/sbin/sshd is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    identity: Path
    known_hosts: Path
    wrong_identity: Path
    wrong_known_hosts: Path
    remote_python: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} not found: install openssh-server to run the SSH target tests")
    for tool in ("ssh", "scp", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: install openssh-client")
    privsep = Path("/run/sshd")
    if not privsep.is_dir():
        try:
            privsep.mkdir(mode=0o755, parents=True)
        except OSError:
            pytest.skip("sshd needs /run/sshd (its privilege separation directory) and it cannot be created here")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key", "other_key", "other_host_key"):
        _keygen(d / name)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port = _free_port()
    sftp = next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if os.path.exists(p)), None)
    config = d / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", *(["ListenAddress [::1]"] if _has_ipv6_loopback() else []),
        f"HostKey {d / 'host_key'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "UsePAM no", f"PidFile {d / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "LogLevel ERROR",
        *([f"Subsystem sftp {sftp}"] if sftp else []), ""]))
    user = os.environ.get("USER") or __import__("getpass").getuser()
    host_pub = (d / "host_key.pub").read_text().split()[:2]
    other_pub = (d / "other_host_key.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n[::1]:{port} {' '.join(host_pub)}\n")
    (d / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(other_pub)}\n")
    log = open(d / "sshd.log", "w")  # closed at teardown
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.close()
            pytest.skip(f"sshd exited at start: {(d / 'sshd.log').read_text().strip()[-300:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.skip("sshd did not start listening within 10 s")
    python = sys.executable  # the test venv's interpreter: numpy and onnxruntime are there
    try:
        yield Sshd(host=f"{user}@127.0.0.1", port=port, identity=d / "client_key", known_hosts=d / "known_hosts",
                   wrong_identity=d / "other_key", wrong_known_hosts=d / "wrong_known_hosts", remote_python=python)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
