"""Latency lookup table: a real (tiny, few-run) measurement, file format, prediction API, matching, CLI.

No timing assertions: the numbers depend on the machine; the structure and the arithmetic do not.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from _cli_process import run_cli
from _lut import CLI_TINY

from e2rnas.space.cost import CostModel, DeployShape
from e2rnas.space.genotypes import GENOTYPES, STEPS
from e2rnas.space.latency_table import LatencyTable, LatencyTableError
from e2rnas.space.ops import PRIMITIVES

TINY = DeployShape(layers=5, C=8, num_classes=5, input_size=16)


@pytest.fixture(scope="module")
def measured(tiny_lut):
    """``e2rnas lut`` on the tiny shape (the session's one table): the file it wrote and what it printed with --json."""
    path, result = tiny_lut
    assert result.exit_code == 0, result.output
    # no terminal: progress as plain lines on stderr (stdout holds the JSON alone), by tenths, with an ETA
    progress = result.stderr.splitlines()
    assert progress[0] == "lut: measuring op latencies: started" and progress[-1].startswith(
        "lut: measuring op latencies: done in "), progress
    timed = [line for line in progress if ": time " in line]
    assert 1 <= len(timed) <= 11 and "left)" in timed[0] and "/" in timed[-1], progress
    return path, json.loads(result.stdout)


@pytest.fixture(scope="module")
def table(measured):
    return LatencyTable.load(measured[0])


def test_cli_writes_a_versioned_table(measured) -> None:
    path, printed = measured
    data = json.loads(path.read_text())
    assert data == printed
    assert data["format"] == "e2rnas-latency-table" and data["version"] == 1 and data["unit"] == "ms"
    key = data["key"]
    assert key["target"] == "cpu" and key["batch"] == 1 and key["threads"] == 1 and key["precision"] == "fp32"
    assert key["deploy_shape"] == {"layers": 5, "C": 8, "num_classes": 5, "input_size": 16, "variant": "cifar"}
    assert key["primitives"] == list(PRIMITIVES)
    assert {"cpu", "versions", "cpu_capability", "date"} <= set(data["environment"])
    # >= 0: the fit never returns a negative fixed part, even from this 3-run measurement on a loaded machine
    assert data["fixed_ms"] >= 0 and set(data["op_scale"]) <= set(PRIMITIVES) - {"none"}
    assert all(v > 0 for v in data["op_scale"].values())
    # every non-none op at every edge geometry of the tiny network: (C, stride, input size)
    geometries = {(8, 1, 16), (16, 2, 16), (16, 1, 8), (32, 2, 8), (32, 1, 4)}
    assert {(o["op"], o["C"], o["stride"], o["size"]) for o in data["ops"]} == {
        (op, *g) for op in PRIMITIVES if op != "none" for g in geometries}
    assert all(o["ms"] >= 0 for o in data["ops"])
    assert all(o["ms"] == 0 for o in data["ops"] if o["op"] == "skip_connect" and o["stride"] == 1)  # no node
    assert len(data["measurement"]["references"]) >= 3


def test_round_trip(table, tmp_path) -> None:
    table.save(tmp_path / "again.json")
    again = LatencyTable.load(tmp_path / "again.json")
    assert again.to_dict() == table.to_dict()
    g = GENOTYPES["DARTS_V2"]
    assert again.genotype_ms(g) == table.genotype_ms(g)
    for kind in ("normal", "reduce"):
        assert torch.equal(again.tables[kind], table.tables[kind])


def _edge(k: int, inp: int) -> int:
    """Index in the DARTS edge order of the edge into node k // 2 from input ``inp``."""
    return sum(2 + i for i in range(k // 2)) + inp


def test_tables_layout_matches_cost_model(table) -> None:
    costs = CostModel(TINY).tables
    skip = PRIMITIVES.index("skip_connect")
    for kind in ("normal", "reduce"):
        t = table.tables[kind]
        assert t.shape == costs[kind].shape[:2] == (14, len(PRIMITIVES)) and t.dtype == torch.float64
        assert torch.all(t[:, PRIMITIVES.index("none")] == 0)
        # a skip costs time exactly where it costs parameters: the FactorizedReduce of reduction-cell inputs
        assert torch.equal(t[:, skip] > 0, costs[kind][:, skip, 0] > 0)
    g = GENOTYPES["DARTS_V2"]
    by_hand = table.fixed_ms + sum(float(table.tables[kind][_edge(k, inp), PRIMITIVES.index(op)])
                                   for kind in ("normal", "reduce") for k, (op, inp) in enumerate(getattr(g, kind)))
    correction = 0.0  # every correction is folded into fixed_ms and op_scale
    assert table.genotype_ms(g) == pytest.approx(by_hand + correction, rel=1e-12)


def test_genotype_ms_from_the_file_entries(table, measured) -> None:
    data = json.loads(measured[0].read_text())
    entry = {(o["op"], o["C"], o["stride"], o["size"]): o["ms"] for o in data["ops"]}
    g = GENOTYPES["PDARTS"]
    total = data["fixed_ms"]
    for slot in CostModel(TINY).slots:
        for op, inp in g.reduce if slot.reduction else g.normal:
            stride = 2 if slot.reduction and inp < 2 else 1
            size = math.ceil(slot.size_in / 2) if slot.reduction and inp >= 2 else slot.size_in
            total += data["op_scale"].get(op, 1.0) * entry[(op, slot.C, stride, size)]
    assert table.genotype_ms(g) == pytest.approx(total, rel=1e-12)


def _edges():
    """(keep weight 2 / in-degree, (C, stride, input size)) of every edge of every cell of the tiny network."""
    for slot in CostModel(TINY).slots:
        for node in range(STEPS):
            for inp in range(2 + node):
                stride = 2 if slot.reduction and inp < 2 else 1
                size = math.ceil(slot.size_in / 2) if slot.reduction and inp >= 2 else slot.size_in
                yield 2 / (2 + node), (slot.C, stride, size)


def test_expected_ms_is_differentiable_and_uniform_alpha_is_the_keep_weighted_mean(table) -> None:
    a_n = torch.zeros(14, len(PRIMITIVES), requires_grad=True)
    a_r = torch.zeros(14, len(PRIMITIVES), requires_grad=True)
    t = table.expected_ms(a_n, a_r)
    t.backward()
    assert t.dim() == 0 and a_n.grad is not None and a_n.grad.abs().sum() > 0 and a_r.grad.abs().sum() > 0
    ops = [op for op in PRIMITIVES if op != "none"]
    by_hand = table.fixed_ms + sum(w * sum(table.op_ms(op, *geo) for op in ops) / len(ops) for w, geo in _edges())
    assert float(t.detach()) == pytest.approx(by_hand, rel=1e-5)
    # alpha peaked on one op gives that op on every edge, kept-edge weighted
    # (compared with its own by-hand sum, not with the uniform value: which is larger depends on the measured times)
    peaked = torch.full((14, len(PRIMITIVES)), -30.0, dtype=torch.float64)
    peaked[:, PRIMITIVES.index("max_pool_3x3")] = 30.0
    pool = table.fixed_ms + sum(w * table.op_ms("max_pool_3x3", *geo) for w, geo in _edges())
    assert float(table.expected_ms(peaked, peaked)) == pytest.approx(pool, rel=1e-6)
    assert pool != pytest.approx(by_hand, rel=1e-3)  # the peaked value is not the uniform one


def test_check_matches_refuses_another_shape_or_target(table) -> None:
    table.check_matches(shape=TINY, target="cpu", batch=1, precision="fp32")
    cases = [dict(shape=DeployShape()), dict(shape=TINY, target="jetson-orin-nano"), dict(shape=TINY, batch=8),
             dict(shape=TINY, precision="fp16")]
    for kwargs in cases:
        with pytest.raises(LatencyTableError) as err:
            table.check_matches(**kwargs)
        text = str(err.value)
        assert "\n" not in text and "e2rnas lut --target" in text and "5 cells C=8 16px" in text
    with pytest.raises(LatencyTableError, match="20 cells C=36 32px"):
        table.check_matches(shape=DeployShape(), target="cpu")


def test_op_outside_the_table_is_an_error(table) -> None:
    with pytest.raises(LatencyTableError, match="no entry for sep_conv_3x3 at C=36"):
        table.op_ms("sep_conv_3x3", 36, 1, 32)


@pytest.mark.parametrize("damage, match", [
    (lambda text, data: text[: len(text) // 2], "not valid JSON"),
    (lambda text, data: json.dumps({**data, "version": 2}), "version 2"),
    (lambda text, data: json.dumps({k: v for k, v in data.items() if k != "ops"}), "misses ops"),
    (lambda text, data: json.dumps({**data, "key": {k: v for k, v in data["key"].items() if k != "batch"}}),
     "misses key.batch"),
    (lambda text, data: json.dumps({**data, "format": "something-else"}), "not an e2rnas latency table"),
    (lambda text, data: json.dumps({**data, "ops": [{"op": "sep_conv_3x3"}]}), "malformed entry"),
    (lambda text, data: "[1, 2]", "JSON object"),
])
def test_bad_files_are_one_line_errors(measured, tmp_path, damage, match) -> None:
    text = measured[0].read_text()
    bad = tmp_path / "bad.json"
    bad.write_text(damage(text, json.loads(text)))
    with pytest.raises(LatencyTableError, match=match) as err:
        LatencyTable.load(bad)
    assert "\n" not in str(err.value) and "e2rnas lut" in str(err.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(LatencyTableError, match="not found") as err:
        LatencyTable.load(tmp_path / "nope.json")
    assert "\n" not in str(err.value)


def test_gpu_targets_are_not_faked() -> None:
    import onnxruntime as ort

    from e2rnas.deploy_targets.lut import measure_latency_table

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # never a CPU table labelled cuda
        with pytest.raises(LatencyTableError, match="CUDA provider, which this machine lacks"):
            measure_latency_table(shape=TINY, target="cuda")
    with pytest.raises(LatencyTableError, match="not implemented for target jetson-orin-nano"):
        measure_latency_table(shape=TINY, target="jetson-orin-nano")


@pytest.mark.parametrize("extra", [["--deploy-layers", "2"], ["--target", "a100"], ["--runs", "0"]])
def test_bad_lut_input_exits_2(tmp_path, extra) -> None:
    args = ["lut", "--target", "cpu", *CLI_TINY, "--out", str(tmp_path / "lut.json"), *extra]
    proc = run_cli(args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error:")
    assert not (tmp_path / "lut.json").exists()
