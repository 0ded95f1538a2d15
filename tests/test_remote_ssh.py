"""The SSH target against a real OpenSSH server on 127.0.0.1 (no mocks): copy, run, parse, clean up, errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from _deploy_helpers import make_tiny_run
from _sshd import sshd  # noqa: F401 - fixture
from typer.testing import CliRunner

from e2rnas.cli.app import app
from e2rnas.deploy_targets.remote import RemoteError, SshConfig, run_remote

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("tiny"))


def _cfg(s, **kw) -> SshConfig:
    base = dict(port=s.port, identity=s.identity, known_hosts=s.known_hosts, remote_python=s.remote_python,
                connect_timeout=5)
    host = kw.pop("host", s.host)
    return SshConfig(host, **{**base, **kw})


def test_artifact_copied_run_parsed_and_removed(sshd, tiny) -> None:  # noqa: F811
    res = run_remote(tiny["onnx"], ssh_config=_cfg(sshd), batch_sizes=(1, 3), warmup=1, runs=6, threads=1,
                     input_shape=(3, 16, 16))
    assert res["ok"] and res["backend"] == "onnxruntime" and res["providers"] == ["CPUExecutionProvider"]
    local = tiny["onnx"].read_bytes()
    assert res["artifact"]["sha256"] == hashlib.sha256(local).hexdigest()  # the device ran our exact file
    assert res["artifact"]["path"].startswith(res["remote_dir"] + "/")
    assert [r["batch"] for r in res["results"]] == [1, 3]
    for r in res["results"]:
        assert r["runs"] == 6 and 0 < r["min_ms"] <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert res["device"]["machine"] and "onnxruntime" in res["device"]
    assert res["remote_dir_removed"] and not Path(res["remote_dir"]).exists()  # loopback: same file system


def test_unreachable_port_is_one_line(sshd, tiny) -> None:  # noqa: F811
    from _sshd import _free_port

    with pytest.raises(RemoteError, match="refused") as info:
        run_remote(tiny["onnx"], ssh_config=_cfg(sshd, port=_free_port()), runs=1)
    assert "\n" not in str(info.value) and "--port" in str(info.value)


def test_wrong_key_is_one_line(sshd, tiny) -> None:  # noqa: F811
    with pytest.raises(RemoteError, match="Permission denied") as info:
        run_remote(tiny["onnx"], ssh_config=_cfg(sshd, identity=sshd.wrong_identity), runs=1)
    assert "\n" not in str(info.value) and "--identity" in str(info.value)


def test_host_key_mismatch_is_refused(sshd, tiny) -> None:  # noqa: F811
    with pytest.raises(RemoteError, match="(?i)host key") as info:
        run_remote(tiny["onnx"], ssh_config=_cfg(sshd, known_hosts=sshd.wrong_known_hosts), runs=1)
    assert "\n" not in str(info.value)


def test_runner_failure_is_reported_and_cleaned_up(sshd, tiny, tmp_path, monkeypatch) -> None:  # noqa: F811
    from e2rnas.deploy_targets import remote

    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    made: list[str] = []  # the device folder of this run (other tests may have their own in /tmp meanwhile)
    real = remote.make_remote_dir
    monkeypatch.setattr(remote, "make_remote_dir", lambda cfg: made.append(real(cfg)) or made[-1])
    with pytest.raises(RemoteError, match="runner on .* failed") as info:
        run_remote(bad, ssh_config=_cfg(sshd), runs=1)
    assert "\n" not in str(info.value)
    assert len(made) == 1 and made[0].startswith("/") and not Path(made[0]).exists()  # gone with the failure


def test_ipv6_loopback_host_runs_ssh_and_scp(sshd, tiny) -> None:  # noqa: F811
    """``user@::1``: ssh gets the bare address, scp the bracketed one (``user@[::1]:path``)."""
    from _sshd import _has_ipv6_loopback

    if not _has_ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    user = sshd.host.split("@")[0]
    res = run_remote(tiny["onnx"], ssh_config=_cfg(sshd, host=f"{user}@::1"), batch_sizes=(2,), warmup=1, runs=3,
                     threads=1, input_shape=(3, 16, 16))
    assert res["ok"] and res["host"] == f"{user}@::1" and [r["batch"] for r in res["results"]] == [2]
    assert res["remote_dir_removed"]


@pytest.mark.parametrize("host", ["-oProxyCommand=touch /tmp/pwned", "root@host;rm -rf /", "a b@c", ""])
def test_hostile_host_strings_are_rejected(host: str) -> None:
    with pytest.raises(RemoteError, match="bad --host"):
        SshConfig(host)


def test_bench_cli_on_a_remote_target(sshd, tiny, tmp_path) -> None:  # noqa: F811
    target = tmp_path / "loopback.yaml"
    target.write_text("name: loopback\ndescription: this machine over SSH\nremote: true\nbackends: [onnxruntime]\n")
    result = CliRunner().invoke(app, [
        "bench", str(tiny["onnx"]), "--target-file", str(target), "--host", sshd.host, "--port", str(sshd.port),
        "--identity", str(sshd.identity), "--known-hosts", str(sshd.known_hosts), "--remote-python",
        sshd.remote_python, "--batch", "1,2", "--runs", "5", "--warmup", "1", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (row,) = data["rows"]
    assert row["status"] == "ok" and set(row["latency"]) == {"1", "2"}
    assert row["remote"]["remote_dir_removed"] and row["runner"]["providers"] == ["CPUExecutionProvider"]
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][0]["latency"]["2"]["runs"] == 5


def test_remote_runner_is_self_contained() -> None:
    """It runs on the device: standard library, numpy, onnxruntime or tensorrt only (never e2rnas or torch)."""
    import ast

    from e2rnas.deploy_targets.remote import RUNNER_SCRIPT

    tree = ast.parse(RUNNER_SCRIPT.read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert names - set(sys.stdlib_module_names) <= {"numpy", "onnxruntime", "tensorrt"}
