import json

import pytest

from e2rnas.space.genotypes import GENOTYPES, Genotype, GenotypeError, resolve_genotype


@pytest.mark.parametrize("name", list(GENOTYPES))
def test_json_round_trip(name, tmp_path):
    g = GENOTYPES[name]
    g.save(tmp_path / "g.json")
    assert Genotype.load(tmp_path / "g.json") == g
    assert resolve_genotype(tmp_path / "g.json") == g
    assert resolve_genotype(name) == g


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["normal"].__setitem__(0, ["conv_7x7", 0]), "unknown op"),
    (lambda d: d["normal"].__setitem__(0, ["none", 0]), "unknown op"),
    (lambda d: d["reduce"].__setitem__(2, ["skip_connect", 3]), "input 3 is invalid"),
    (lambda d: d["normal"].pop(), "needs 8"),
    (lambda d: d.pop("reduce"), "missing"),
    (lambda d: d["normal"].__setitem__(1, "sep_conv_3x3"), "pairs"),
])
def test_malformed_genotypes_are_rejected(mutate, message, tmp_path):
    data = GENOTYPES["DARTS_V2"].to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GenotypeError, match=message):
        Genotype.load(path)


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(GenotypeError, match="not valid JSON"):
        Genotype.load(tmp_path / "x.json")
    with pytest.raises(GenotypeError, match="neither a built-in"):
        resolve_genotype("NO_SUCH_THING")


def test_frozen():
    with pytest.raises(AttributeError):
        GENOTYPES["DARTS_V2"].normal = ()


def test_describe_is_one_line_per_network():
    from e2rnas.space.genotypes import GENOTYPES

    text = GENOTYPES["DARTS_V2"].describe()
    assert text.startswith("normal [sep_conv_3x3 from 0, sep_conv_3x3 from 1; sep_conv_3x3 from 0, ")
    assert text.endswith("reduce [max_pool_3x3 from 0, max_pool_3x3 from 1; skip_connect from 2, max_pool_3x3 from 1; "
                         "max_pool_3x3 from 0, skip_connect from 2; skip_connect from 2, max_pool_3x3 from 1]")
    assert "\n" not in text


def test_a_reduce_cell_of_pools_and_skips_is_information_not_a_warning():
    from e2rnas.search.guards import search_notes, search_warnings

    darts = GENOTYPES["DARTS_V2"]  # its reduce cell: max pools and skips
    assert len(search_notes(darts)) == 1 and "reduce cell has no parametric op" in search_notes(darts)[0]
    assert not any("reduce" in w for w in search_warnings(darts))
    conv = Genotype(normal=darts.normal, normal_concat=darts.normal_concat,
                    reduce=[("sep_conv_3x3", 0), *darts.reduce[1:]], reduce_concat=darts.reduce_concat)
    assert search_notes(conv) == []
