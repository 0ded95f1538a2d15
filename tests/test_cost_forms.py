"""Cost forms (target and band), by hand inside and outside the band, and a satisfied band dropped from MGDA."""

import pytest
import torch

from e2rnas.search.mgda import Weighting
from e2rnas.search.objectives import (
    COST_FORMS,
    FlopsLoss,
    LatencyLoss,
    ObjectiveContext,
    ParamsLoss,
    make_objectives,
)


def _value_and_slope(obj, **ctx):
    key = next(k for k in ("params_m", "macs_m", "latency_ms") if k in ctx)
    v = torch.tensor(ctx[key], dtype=torch.float64, requires_grad=True)
    out = obj(ObjectiveContext(**(ctx | {key: v})))
    out.backward()
    return float(out.detach()), float(v.grad)


@pytest.mark.parametrize("value, expected, slope", [
    (0.25, 0.25, 1.0),      # above L = 0.2: (0.25 - 0.2) / 0.2, slope 1 / L
    (0.2, 0.0, 0.0),        # at L
    (0.18, 0.0, 0.0),       # inside [0.16, 0.2]: zero and flat
    (0.16, 0.0, 0.0),       # at the floor
    (0.12, 0.2, -1.0),      # below the floor: (0.16 - 0.12) / 0.2, slope -1 / L
])
def test_band_params_by_hand(value, expected, slope):
    out, grad = _value_and_slope(ParamsLoss("band"), params_m=value, params_bound_m=0.2, params_lower_m=0.16)
    assert out == pytest.approx(expected)
    assert grad == pytest.approx(slope / 0.2)


@pytest.mark.parametrize("cls, key, bound_key", [(FlopsLoss, "macs_m", "macs_bound_m"),
                                                 (LatencyLoss, "latency_ms", "latency_bound_ms")])
def test_band_is_one_sided_for_macs_and_latency(cls, key, bound_key):
    for value, expected, slope in [(12.0, 0.2, 0.1), (10.0, 0.0, 0.0), (3.0, 0.0, 0.0)]:
        out, grad = _value_and_slope(cls("band"), **{key: value, bound_key: 10.0})
        assert out == pytest.approx(expected)
        assert grad == pytest.approx(slope)


def test_target_form_is_two_sided_and_ignores_the_floor():
    out, grad = _value_and_slope(ParamsLoss("target"), params_m=0.18, params_bound_m=0.2, params_lower_m=0.16)
    assert out == pytest.approx(0.1)
    assert grad == pytest.approx(-5.0)


def test_make_objectives_passes_the_form_and_rejects_unknown_ones():
    objs = make_objectives(("val", "params", "flops", "latency"), cost_form="band")
    assert [getattr(o, "form", None) for o in objs] == [None, "band", "band", "band"]
    assert make_objectives(("params",))[0].form == "target"
    assert set(COST_FORMS) == {"target", "band"}
    with pytest.raises(ValueError, match="unknown cost form 'hinge'; choose from target, band"):
        ParamsLoss("hinge")


def test_a_satisfied_band_sits_out_mgda():
    """Inside the band the params objective's alpha-gradient is exactly zero: MGDA drops it (gamma 0)."""
    alpha = torch.randn(6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(alpha, 0)
    cost = torch.arange(6, dtype=torch.float64) / 10  # expected cost in [0, 0.5]
    params = (w * cost).sum()
    band = ParamsLoss("band")(ObjectiveContext(params_m=params, params_bound_m=1.0, params_lower_m=0.0))
    val = (w * torch.tensor([3.0, 1, 2, 0, 5, 4], dtype=torch.float64)).sum()
    grads = torch.stack([torch.autograd.grad(loss, alpha, retain_graph=True, allow_unused=True,
                                             materialize_grads=True)[0] for loss in (val, band)])
    losses = torch.stack([val.detach(), band.detach()])
    weighting = Weighting("mgda")
    assert weighting.degenerate(grads, losses).tolist() == [False, True]
    gamma, _ = weighting.weights(grads, losses, ["val", "params"])
    assert gamma.tolist() == [1.0, 0.0]


def test_cost_form_flag_presets_and_a_bad_value():
    from e2rnas.cli._config import build_config
    from e2rnas.search.runner import SearchConfig

    def form(preset, **overrides):
        return build_config(SearchConfig, preset=preset, section="search", overrides=overrides).cost_form

    assert form("embedded-default") == "band"
    assert form("paper") == form("paper-pdarts") == form("paper-pcdarts") == "target"
    assert form("paper", cost_form="band") == "band"
    units = build_config(SearchConfig, preset="paper", section="search", overrides={}).cost_units
    assert units == "paper" and build_config(SearchConfig, preset="embedded-default", section="search",
                                             overrides={}).cost_units == "relative"
    with pytest.raises(Exception, match="unknown cost_form 'hinge'; choose from target, band"):
        form("embedded-default", cost_form="hinge")


def test_paper_units_are_eqs_5_and_6_as_written():
    """units "paper": |N - L| in M params and |F - F| in M MACs (no division); the band form likewise."""
    out, grad = _value_and_slope(ParamsLoss("target", "paper"), params_m=2.0, params_bound_m=2.5)
    assert (out, grad) == (pytest.approx(0.5), pytest.approx(-1.0))
    out, grad = _value_and_slope(FlopsLoss("band", "paper"), macs_m=450.0, macs_bound_m=425.0)
    assert (out, grad) == (pytest.approx(25.0), pytest.approx(1.0))
    assert make_objectives(("flops",), cost_units="paper")[0].units == "paper"
    with pytest.raises(ValueError, match="unknown cost units 'ms'; choose from relative, paper"):
        ParamsLoss("target", "ms")
