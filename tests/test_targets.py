"""Target registry contract (every registered profile) and user target files."""

from __future__ import annotations

import dataclasses

import pytest

from e2rnas.deploy_targets.profiles import (
    BACKENDS,
    TARGETS,
    Target,
    TargetError,
    get_target,
    load_target_file,
    target_from_dict,
    version_allowed,
)


@pytest.mark.parametrize("name", list(TARGETS))
def test_every_target_honours_the_contract(name: str) -> None:
    t = TARGETS[name]
    assert t.name == name and t.description
    assert set(t.backends) <= set(BACKENDS) and t.backends
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.threads = 3  # type: ignore[misc]
    assert target_from_dict(t.as_dict(), where="roundtrip") == t  # a profile is plain data a YAML file can hold
    if t.device == "cuda":
        assert "CUDAExecutionProvider" in t.ort_providers
        assert t.precision in ("fp16", "fp32", "int8")
    else:
        assert t.ort_providers == ("CPUExecutionProvider",) and "tensorrt" not in t.backends
    if t.remote:  # SSH devices run exported files, never the torch model
        assert "torch" not in t.backends
        assert t.jetpack and t.power_mode and t.compute_capability and t.tensorrt
    if t.compute_capability:
        assert t.tensorrt, "a GPU profile says which TensorRT versions support it"
        version_allowed("10.3.0", t.tensorrt)  # parses


def test_expected_targets_are_registered() -> None:
    assert {"cpu", "cuda", "v100", "a100", "h100", "jetson-orin-nano", "jetson-agx-orin",
            "jetson-xavier-nx"} <= set(TARGETS)


def test_tensorrt_support_windows() -> None:
    assert TARGETS["v100"].supports_tensorrt("10.4.0.26")
    assert not TARGETS["v100"].supports_tensorrt("10.5.0")  # Volta removed in TensorRT 10.5
    assert TARGETS["h100"].supports_tensorrt("10.8.0") and not TARGETS["h100"].supports_tensorrt("8.5.3")
    assert TARGETS["jetson-xavier-nx"].supports_tensorrt("8.5.2.2")
    assert not TARGETS["jetson-xavier-nx"].supports_tensorrt("10.3")
    assert version_allowed("8.6.1", ">=8.5,<=10.3") and not version_allowed("10.4", ">=8.5,<=10.3")
    with pytest.raises(TargetError, match="bad version clause"):
        version_allowed("1.0", "~=1")


def test_target_file_with_base(tmp_path) -> None:
    f = tmp_path / "nx.yaml"
    f.write_text("name: my-orin-nx\nbase: jetson-orin-nano\npower_mode: MAXN\njetpack: 6.2\nworkspace_mb: 2048\n")
    t = load_target_file(f)
    assert t.name == "my-orin-nx" and t.remote and t.power_mode == "MAXN" and t.jetpack == "6.2"
    assert t.compute_capability == "8.7" and t.workspace_mb == 2048
    assert get_target(target_file=f) == t and get_target("my-orin-nx", target_file=f) == t
    with pytest.raises(TargetError, match="drop one"):
        get_target("cpu", target_file=f)


@pytest.mark.parametrize("text, match", [
    ("name: x\nthreds: 2\n", "unknown key"),
    ("name: x\nthreads: two\n", "threads must be int"),
    ("name: x\nbackends: torch\n", "list of strings"),
    ("name: x\nbackends: [torch, tflite]\n", "backends must be"),
    ("name: x\ndevice: tpu\n", "device must be"),
    ("name: x\ndevice: cpu\nbackends: [tensorrt]\n", "TensorRT needs device: cuda"),
    ("name: x\nbase: jetson-nano-2gb\n", "not a built-in"),
    ("device: cpu\n", "needs a name"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_target_files_give_one_line(tmp_path, text: str, match: str) -> None:
    f = tmp_path / "t.yaml"
    f.write_text(text)
    with pytest.raises(TargetError, match=match) as info:
        load_target_file(f)
    assert "\n" not in str(info.value)


def test_unknown_target_name_lists_choices() -> None:
    with pytest.raises(TargetError, match="choose from cpu, cuda"):
        get_target("tpu-v5")
    assert get_target() is TARGETS["cpu"]
    with pytest.raises(TargetError):
        Target("bad name")
