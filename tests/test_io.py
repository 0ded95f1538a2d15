import os
import stat
from pathlib import Path

import pytest

from e2rnas._io import atomic_write, atomic_write_text


def test_atomic_write_gives_the_umask_mode_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "first")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_json_helpers_round_trip_arrays_paths_and_lines(tmp_path):
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from e2rnas._io import append_jsonl, atomic_torch_save, atomic_write_json, read_jsonl

    path = tmp_path / "new" / "dir" / "a.json"  # missing parents are made
    atomic_write_json(path, {"t": torch.tensor([1.5, 2.0]), "n": np.arange(2), "p": Path("x/y")})
    assert path.read_text() == json.dumps({"t": [1.5, 2.0], "n": [0, 1], "p": "x/y"}, indent=2) + "\n"
    with pytest.raises(TypeError, match="cannot serialise object"):
        atomic_write_json(tmp_path / "b.json", {"o": object()})
    assert not (tmp_path / "b.json").exists() and [p.name for p in tmp_path.iterdir()] == ["new"]

    log = tmp_path / "new" / "log.jsonl"
    assert read_jsonl(log) == []
    append_jsonl(log, {"step": 1, "x": np.float64(0.5)})
    append_jsonl(log, {"step": 2, "p": Path("r")})
    with open(log, "a") as fh:
        fh.write("\n  \n")  # blank lines (a crash between records) are skipped
    assert log.read_text().startswith('{"step": 1, "x": 0.5}\n{"step": 2, "p": "r"}\n')
    assert read_jsonl(log) == [{"step": 1, "x": 0.5}, {"step": 2, "p": "r"}]

    ckpt = tmp_path / "new" / "c.pt"
    atomic_torch_save(ckpt, {"w": torch.ones(2)})
    assert torch.equal(torch.load(ckpt, weights_only=True)["w"], torch.ones(2))


def test_read_yaml_errors_are_one_line(tmp_path):
    from e2rnas._io import read_yaml

    class Bad(Exception):
        pass

    path = tmp_path / "b.yaml"
    with pytest.raises(Bad, match=rf"^budget file not found: {path}$"):
        read_yaml(path, kind="budget file", error=Bad)
    path.write_text("a: [1\n")
    with pytest.raises(Bad, match=rf"^{path} is not valid YAML: while parsing a flow sequence$"):
        read_yaml(path, kind="budget file", error=Bad)
    path.write_text("a: 1\nb: [2, 3]\n")
    assert read_yaml(path, kind="budget file", error=Bad) == {"a": 1, "b": [2, 3]}


def test_the_temporary_file_is_a_hidden_sibling_and_a_vanished_one_does_not_mask_the_error(tmp_path):
    path = tmp_path / "out.txt"
    seen = []

    def write(tmp):
        seen.append(tmp)
        tmp.write_text("x")

    atomic_write(path, write)
    (tmp,) = seen
    assert tmp.parent == path.parent  # same filesystem: the rename is atomic
    assert tmp.name.startswith(".out.txt.") and tmp.name.endswith(".tmp") and not tmp.exists()

    def vanish(tmp):
        tmp.unlink()
        raise RuntimeError("writer failed")

    with pytest.raises(RuntimeError, match="writer failed"):
        atomic_write(path, vanish)
    assert path.read_text() == "x"


def test_the_write_is_a_rename_a_reader_of_the_old_file_keeps_it_whole(tmp_path):
    """What makes the write atomic, each of which a copy-then-unlink (or an in-place rewrite) would break: the new
    content arrives as a new inode by one rename; until then the destination holds the old content; a reader that
    opened the old file before the write keeps reading the old content after it."""
    path = tmp_path / "summary.json"
    path.write_text("old content\n")
    before = path.stat().st_ino
    seen_during: list[str] = []

    def write(tmp: Path) -> None:
        tmp.write_text("new content, longer than the old one\n")
        seen_during.append(path.read_text())  # the destination while the new file is being written

    with open(path) as reader:  # a reader holding the old file across the write
        atomic_write(path, write)
        assert reader.read() == "old content\n"
    assert seen_during == ["old content\n"]
    assert path.read_text() == "new content, longer than the old one\n"
    assert path.stat().st_ino != before
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]  # no temporary file left


def test_a_failure_half_way_leaves_the_old_file_whole_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x00" * 4096)
    inode = path.stat().st_ino

    def half(tmp: Path) -> None:
        tmp.write_bytes(b"\x01" * 1000)
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, half)
    assert path.read_bytes() == b"\x00" * 4096 and path.stat().st_ino == inode
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
