"""The latency table's arithmetic, matching and file format on a synthetic table (no measurement: fast).

Every op's time is a distinct number derived from (op, C, stride, size), so any slip in the edge geometry, the cell
widths, the op scale or the keep weights changes a predicted latency. The expected numbers are computed here from
the DARTS network written out by hand (5 cells, reductions at cells 1 and 3), not from the library's slots.
``tests/test_latency_table.py`` measures a real table through ``e2rnas lut``; the mutation run of
``e2rnas/space/latency_table.py`` selects this file (docs/testing.md).
"""

from __future__ import annotations

import json

import pytest
import torch

from e2rnas.space.cost import DeployShape
from e2rnas.space.genotypes import GENOTYPES, Genotype
from e2rnas.space.latency_table import LatencyTable, LatencyTableError, describe_shape, lut_command
from e2rnas.space.ops import PRIMITIVES

TINY = DeployShape(layers=5, C=8, num_classes=5, input_size=16)
#: (C, size in, reduction) of the five cells of TINY: C doubles and the resolution halves at cells 1 and 3
CELLS = [(8, 16, False), (16, 16, True), (16, 8, False), (32, 8, True), (32, 4, False)]
FIXED = 0.7512345678901  # not a float32 number: the fixed part must stay float64
SCALE = {"sep_conv_3x3": 1.5, "max_pool_3x3": 0.5}
#: in-degree order of the 14 edges: node i has inputs 0 .. i+1
EDGES = [(node, inp) for node in range(4) for inp in range(2 + node)]


def _ms(op: str, C: int, stride: int, size: int) -> float:
    return 0.01 * (PRIMITIVES.index(op) + 1) + 1e-3 * C + 0.1 * stride + 1e-4 * size


def _geometry(C: int, size: int, reduction: bool, inp: int) -> tuple[int, int, int]:
    """(C, stride, input size) of an edge from input ``inp``: stride 2 from a reduction cell's inputs, half
    resolution after them."""
    if not reduction:
        return C, 1, size
    return (C, 2, size) if inp < 2 else (C, 1, size // 2)


def _data(**changes) -> dict:
    ops = []
    for C, size, reduction in CELLS:
        for inp in range(5):
            g = _geometry(C, size, reduction, inp)
            for op in PRIMITIVES:
                if op != "none" and not any((o["op"], o["C"], o["stride"], o["size"]) == (op, *g) for o in ops):
                    ops.append({"op": op, "C": g[0], "stride": g[1], "size": g[2], "ms": _ms(op, *g)})
    data = {"format": "e2rnas-latency-table", "version": 1, "unit": "ms", "fixed_ms": FIXED, "op_scale": SCALE,
            "key": {"target": "cpu", "runtime": "onnxruntime", "precision": "fp32", "batch": 1, "threads": 1,
                    "deploy_shape": {"layers": 5, "C": 8, "num_classes": 5, "input_size": 16, "variant": "cifar"},
                    "primitives": list(PRIMITIVES)},
            "environment": {"cpu": "synthetic"}, "ops": ops, "measurement": {"runs": 3}}
    data.update(changes)
    return data


@pytest.fixture
def table() -> LatencyTable:
    return LatencyTable.from_dict(_data())


def _op_ms(op: str, C: int, stride: int, size: int) -> float:
    return 0.0 if op == "none" else SCALE.get(op, 1.0) * _ms(op, C, stride, size)


def test_identity_fields(table) -> None:
    assert table.shape == TINY and table.primitives == PRIMITIVES and table.target == "cpu"
    assert table.batch == 1 and isinstance(table.batch, int) and table.precision == "fp32"
    assert table.fixed_ms == FIXED and table.op_scale == SCALE and table.environment == {"cpu": "synthetic"}
    assert table.measurement == {"runs": 3}


def test_op_ms_applies_the_scale_and_none_is_free(table) -> None:
    assert table.op_ms("none", 8, 1, 16) == 0.0
    assert table.op_ms("sep_conv_3x3", 16, 2, 16) == pytest.approx(1.5 * _ms("sep_conv_3x3", 16, 2, 16), rel=1e-15)
    assert table.op_ms("max_pool_3x3", 32, 1, 4) == pytest.approx(0.5 * _ms("max_pool_3x3", 32, 1, 4), rel=1e-15)
    assert table.op_ms("dil_conv_5x5", 8, 1, 16) == _ms("dil_conv_5x5", 8, 1, 16)  # no scale: 1
    assert table.op_ms("skip_connect", 16.0, 1.0, 8.0) == _ms("skip_connect", 16, 1, 8)  # keys are ints
    with pytest.raises(LatencyTableError) as err:
        table.op_ms("sep_conv_3x3", 36, 1, 32)
    assert str(err.value) == (
        "latency table has no entry for sep_conv_3x3 at C=36, stride 1, 32px (measured for 5 cells C=8 16px "
        "5 classes): run `e2rnas lut --target cpu --deploy-layers 5 --deploy-channels 8 --deploy-image-size 16 "
        "--classes 5 --out lut.json`")


def test_tables_hold_each_ops_ms_summed_over_the_cells_of_each_type(table) -> None:
    expected = {kind: torch.zeros(14, len(PRIMITIVES), dtype=torch.float64) for kind in ("normal", "reduce")}
    for C, size, reduction in CELLS:
        for e, (_, inp) in enumerate(EDGES):
            for k, op in enumerate(PRIMITIVES):
                expected["reduce" if reduction else "normal"][e, k] += _op_ms(op, *_geometry(C, size, reduction, inp))
    for kind in ("normal", "reduce"):
        assert table.tables[kind].dtype == torch.float64
        torch.testing.assert_close(table.tables[kind], expected[kind], rtol=1e-14, atol=0)


def _genotype_by_hand(g: Genotype) -> float:
    total = FIXED
    for C, size, reduction in CELLS:
        for op, inp in g.reduce if reduction else g.normal:
            total += _op_ms(op, *_geometry(C, size, reduction, inp))
    return total


@pytest.mark.parametrize("name", ["DARTS_V2", "PDARTS", "PC_DARTS"])
def test_genotype_ms_is_fixed_plus_its_kept_edges(table, name) -> None:
    g = GENOTYPES[name]
    assert table.genotype_ms(g) == pytest.approx(_genotype_by_hand(g), rel=1e-14)


def test_expected_ms_at_uniform_alpha_is_the_keep_weighted_mean(table) -> None:
    a_n = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64, requires_grad=True)
    a_r = torch.zeros(14, len(PRIMITIVES), dtype=torch.float64, requires_grad=True)
    t = table.expected_ms(a_n, a_r)
    ops = [op for op in PRIMITIVES if op != "none"]
    by_hand = FIXED
    for C, size, reduction in CELLS:
        for node, inp in EDGES:
            by_hand += 2 / (2 + node) * sum(_op_ms(op, *_geometry(C, size, reduction, inp)) for op in ops) / len(ops)
    assert t.dtype == torch.float64 and t.dim() == 0
    assert float(t.detach()) == pytest.approx(by_hand, rel=1e-13)
    t.backward()
    assert float(a_n.grad.abs().sum()) > 0 and float(a_r.grad.abs().sum()) > 0
    assert torch.all(a_n.grad[:, PRIMITIVES.index("none")] == 0)  # none is not a latency choice


def test_expected_ms_with_one_hot_alpha_and_keep_is_the_genotype_ms(table) -> None:
    g = GENOTYPES["DARTS_V2"]
    alphas, keeps = [], []
    for cell in (g.normal, g.reduce):
        a = torch.full((14, len(PRIMITIVES)), -1e4, dtype=torch.float64)
        keep = torch.zeros(14, dtype=torch.float64)
        for k, (op, inp) in enumerate(cell):
            e = EDGES.index((k // 2, inp))
            a[e, PRIMITIVES.index(op)] = 0.0
            keep[e] = 1.0
        alphas.append(a)
        keeps.append(keep)
    got = table.expected_ms(alphas[0], alphas[1], keep=(keeps[0], keeps[1]))
    assert float(got) == pytest.approx(table.genotype_ms(g), rel=1e-12)


def test_check_matches_names_everything_that_differs(table) -> None:
    table.check_matches(shape=TINY, target="cpu", batch=1, precision="fp32", primitives=PRIMITIVES)
    table.check_matches(shape=TINY)  # None: not checked
    with pytest.raises(LatencyTableError) as err:
        table.check_matches(shape=DeployShape(), target="cuda", batch=8, precision="fp16",
                            primitives=PRIMITIVES[:4])
    assert str(err.value) == (
        "latency table was measured for target cpu, deploy shape 5 cells C=8 16px 5 classes, batch 1, fp32; this "
        "search deploys 20 cells C=36 32px 10 classes and targets cuda and runs batch 8 and runs fp16 and searches "
        f"ops {', '.join(PRIMITIVES[:4])} (the table has {', '.join(PRIMITIVES)}): run `e2rnas lut --target cuda "
        "--deploy-layers 20 --deploy-channels 36 --deploy-image-size 32 --classes 10 --batch 8 --out lut.json`")
    for kwargs, part in ((dict(target="cuda"), "this search targets cuda: run `e2rnas lut --target cuda "),
                         (dict(batch=4), "this search runs batch 4: run `e2rnas lut --target cpu "),
                         (dict(precision="int8"), "this search runs int8: run"),
                         (dict(primitives=tuple(reversed(PRIMITIVES))),
                          f"this search searches ops {PRIMITIVES[-1]}, ")):
        with pytest.raises(LatencyTableError) as err:
            table.check_matches(shape=TINY, **kwargs)
        assert part in str(err.value) and " and " not in str(err.value).split("; ")[1]


def test_describe_and_command_name_the_stem_and_the_batch() -> None:
    imagenet = DeployShape(layers=14, C=48, num_classes=1000, input_size=224, variant="imagenet")
    assert describe_shape(imagenet) == "14 cells C=48 224px 1000 classes, imagenet stem"
    assert describe_shape(TINY) == "5 cells C=8 16px 5 classes"
    assert lut_command(shape=imagenet, target="cuda", batch=8) == (
        "e2rnas lut --target cuda --deploy-layers 14 --deploy-channels 48 --deploy-image-size 224 --classes 1000 "
        "--variant imagenet --batch 8 --out lut.json")
    assert lut_command(shape=TINY, target="cpu") == (
        "e2rnas lut --target cpu --deploy-layers 5 --deploy-channels 8 --deploy-image-size 16 --classes 5 "
        "--out lut.json")


def test_round_trip_through_a_file(table, tmp_path) -> None:
    path = tmp_path / "sub" / "lut.json"
    path.parent.mkdir()
    table.save(path)
    data = json.loads(path.read_text())
    assert data == _data()
    again = LatencyTable.load(path)
    assert again.to_dict() == table.to_dict() and again.ops == table.ops
    assert [p.name for p in path.parent.iterdir()] == ["lut.json"]  # atomic: no temporary file left


def test_from_dict_normalises_types_and_defaults() -> None:
    data = _data(op_scale=None, environment=None)
    data.pop("measurement")
    data["key"] = {**data["key"], "batch": "2", "primitives": tuple(PRIMITIVES)}
    data["key"]["deploy_shape"] = {k: v for k, v in data["key"]["deploy_shape"].items() if k != "variant"}
    data["ops"] = [{**o, "C": str(o["C"]), "ms": str(o["ms"])} for o in data["ops"]]
    t = LatencyTable.from_dict(data)
    assert t.batch == 2 and t.key["batch"] == 2 and t.key["primitives"] == list(PRIMITIVES)
    assert t.key["deploy_shape"]["variant"] == "cifar"
    assert t.op_scale == {} and t.environment == {} and t.measurement == {}
    assert t.ops[("sep_conv_3x3", 8, 1, 16)] == _ms("sep_conv_3x3", 8, 1, 16)


FIX = "re-run `e2rnas lut` to measure a new table"


@pytest.mark.parametrize("data, message", [
    ([1, 2], f"here is not a latency table (a JSON object is expected): {FIX}"),
    (_data(format="onnx"), f"here is not an e2rnas latency table (format 'onnx'): {FIX}"),
    ({"version": 1}, f"here is not an e2rnas latency table (format None): {FIX}"),
    (_data(version=2), f"here is latency-table version 2; this e2rnas reads version 1: {FIX}"),
    ({k: v for k, v in _data().items() if k not in ("ops", "unit")}, f"here misses unit, ops: {FIX}"),
    (_data(key={"target": "cpu"}),
     f"here misses key.runtime, key.precision, key.batch, key.threads, key.deploy_shape, key.primitives: {FIX}"),
    (_data(unit="s"), f"here is in unit 's', expected ms: {FIX}"),
    (_data(ops=[{"op": "sep_conv_3x3"}]), f"here has a malformed entry (KeyError: 'C'): {FIX}"),
    (_data(fixed_ms="fast"), f"here has a malformed entry (ValueError: could not convert string to float: 'fast'): "
                             f"{FIX}"),
    (_data(ops=None), f"here has a malformed entry (TypeError: 'NoneType' object is not iterable): {FIX}"),
    (_data(op_scale=[1]), f"here has a malformed entry (AttributeError: 'list' object has no attribute 'items'): "
                          f"{FIX}"),
])
def test_bad_dicts_are_one_line_errors(data, message) -> None:
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.from_dict(data, where="here")
    assert str(err.value) == message
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.from_dict(data)
    assert str(err.value) == "latency table" + message[len("here"):]


def test_bad_files(tmp_path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.load(missing)
    assert str(err.value) == (f"latency table not found: {missing}; measure one with `e2rnas lut --target cpu "
                              f"--out {missing}`")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(LatencyTableError, match="not found"):
        LatencyTable.load(tmp_path / "dir.json")
    cut = tmp_path / "cut.json"
    cut.write_text('{"format": "e2rnas-latency-table",\n "version": ')
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.load(cut)
    assert str(err.value) == (f"{cut} is not valid JSON (Expecting value at line 2; truncated?): re-run `e2rnas lut` "
                              "to measure a new table")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(LatencyTableError) as err:
        LatencyTable.load(binary)
    assert str(err.value) == (f"{binary} is not valid JSON (not text; truncated?): re-run `e2rnas lut` to measure a "
                              "new table")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_data(version=3)))
    with pytest.raises(LatencyTableError, match=rf"^{wrong} is latency-table version 3"):
        LatencyTable.load(wrong)
    assert LatencyTable.load(_write(tmp_path)).fixed_ms == FIXED  # a str path works too


def _write(tmp_path) -> str:
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_data()))
    return str(path)
