"""Schedules: exact alpha values at window / ramp boundaries, periodic gating, metric release, validation,
and the engine attaching hooks only while a schedule is on."""

from __future__ import annotations

import math

import pytest
import torch

from clamp.interventions import InterventionEngine, MetricCondition, Schedule, Window
from models import Transformer, TransformerConfig

torch.set_num_threads(1)


def alphas(s: Schedule | Window, steps, **kw) -> list[float]:
    return [s.alpha(i, **kw) for i in steps]


# --------------------------------------------------------------------------- windows


def test_window_start_stop_and_open_end() -> None:
    assert alphas(Window(start=2, stop=6), range(8)) == [0, 0, 1, 1, 1, 1, 0, 0]
    w = Window(start=5)
    assert w.alpha(4) == 0 and w.alpha(5) == 1 and w.alpha(10**9) == 1
    assert alphas(Window(), range(3)) == [1, 1, 1]
    assert alphas(Window(start=3, stop=3), range(6)) == [0] * 6  # empty window


def test_ramp_in_rises_linearly_to_one_over_ramp_steps() -> None:
    w = Window(start=10, ramp=4)
    assert alphas(w, range(9, 16)) == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1])
    assert alphas(Window(start=0, ramp=1), range(3)) == [1, 1, 1]


def test_ramp_out_falls_linearly_to_zero_over_ramp_out_steps_ending_at_stop() -> None:
    w = Window(start=0, stop=20, ramp_out=5)
    # 1 until stop - ramp_out, then down by 1/ramp_out per step; 0 from stop on
    assert alphas(w, range(14, 22)) == pytest.approx([1, 1, 0.8, 0.6, 0.4, 0.2, 0, 0])


@pytest.mark.parametrize("r", [1, 2, 3, 5])
def test_ramps_in_and_out_are_mirror_images(r: int) -> None:
    start, stop = 7, 7 + 2 * r + 4
    w = Window(start=start, stop=stop, ramp=r, ramp_out=r)
    a = alphas(w, range(start, stop))
    assert a == pytest.approx(a[::-1])
    assert a[:r] == pytest.approx([(i + 1) / r for i in range(r)])  # same slope 1/r both ways
    assert max(a) == 1


def test_shortest_valid_window_reaches_one() -> None:
    w = Window(start=2, stop=2 + 3 + 4, ramp=3, ramp_out=4)
    w.validate("w")
    a = alphas(w, range(0, 12))
    assert max(a) == 1
    assert a == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0])


def test_windows_list_takes_the_max() -> None:
    s = Schedule(windows=[Window(start=0, stop=10, ramp_out=4), Window(start=8, stop=20, ramp=4)])
    s.validate()
    assert alphas(s, [5, 6, 7, 8, 9, 10, 11, 19, 20]) == pytest.approx([1, 1, 0.75, 0.5, 0.5, 0.75, 1, 1, 0])
    s = Schedule(windows=[Window(0, 3), Window(10, 12)])
    assert alphas(s, range(13)) == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]


def test_periodic_gating_counted_from_window_start() -> None:
    s = Schedule(start=3, stop=20, period=4, on=2)
    s.validate()
    on = [i for i in range(25) if s.alpha(i) > 0]
    assert on == [3, 4, 7, 8, 11, 12, 15, 16, 19]
    s = Schedule(windows=[Window(2, 6), Window(10, 14)], period=3, on=1)
    assert [i for i in range(16) if s.alpha(i) > 0] == [2, 5, 11]  # origin = earliest window start


def test_strength_scales_everything() -> None:
    s = Schedule(start=0, ramp=2, strength=0.3)
    assert alphas(s, range(4)) == pytest.approx([0.15, 0.3, 0.3, 0.3])
    assert Schedule(strength=0.0).alpha(5) == 0


# --------------------------------------------------------------------------- until


def test_until_release_and_ramp_out() -> None:
    s = Schedule(until=MetricCondition("val/acc", 0.9, ramp_out=4))
    assert s.alpha(100) == 1
    assert s.alpha(3, released_at=10) == 1  # before the release: untouched (never above strength)
    assert alphas(s, range(10, 16), released_at=10) == pytest.approx([1, 0.75, 0.5, 0.25, 0, 0])
    s0 = Schedule(until=MetricCondition("val/acc", 0.9))
    assert s0.alpha(9, released_at=10) == 1 and s0.alpha(10, released_at=10) == 0
    below = MetricCondition("val/loss", 0.5, mode="below")
    assert below.crossed(0.4) and not below.crossed(0.5) and not below.crossed(0.6)
    above = MetricCondition("val/acc", 0.9)
    assert above.crossed(0.95) and not above.crossed(0.9)


# --------------------------------------------------------------------------- bounds, validation


def test_bounds() -> None:
    assert Schedule(start=3, stop=10).bounds() == (3, 10.0)
    assert Schedule().bounds() == (0, math.inf)
    assert Schedule(windows=[Window(5, 9), Window(2, 4)]).bounds() == (2, 9.0)
    assert Schedule(windows=[Window(5, 9), Window(20)]).bounds() == (5, math.inf)


@pytest.mark.parametrize(
    ("schedule", "match"),
    [
        (Schedule(start=10, stop=12, ramp=3), r"stop=12 must be >= start \+ ramp \+ ramp_out = 13"),
        (Schedule(start=0, stop=5, ramp=3, ramp_out=3), "= 6"),
        (Schedule(start=-1), ">= 0"),
        (Schedule(start=0, ramp=-2), ">= 0"),
        (Schedule(windows=[Window(0, 5)], start=3), "either `windows`"),
        (Schedule(windows=[]), "empty"),
        (Schedule(windows=[Window(0, 5), Window(4, 5, ramp=2)]), r"windows\[1\]"),
        (Schedule(period=4), "both `period` and `on`"),
        (Schedule(on=2), "both `period` and `on`"),
        (Schedule(period=4, on=5), "on <= period"),
        (Schedule(period=4, on=0), "on <= period"),
        (Schedule(strength=1.5), "strength"),
        (Schedule(strength=-0.1), "strength"),
        (Schedule(until=MetricCondition("m", 1.0, mode="sideways")), "mode"),  # type: ignore[arg-type]
    ],
)
def test_validation_errors(schedule: Schedule, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        schedule.validate()


# --------------------------------------------------------------------------- engine


@pytest.fixture
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(TransformerConfig(n_layers=2, n_heads=4, d_model=32, attn_only=False).resolved(d_vocab=16, n_ctx=8))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


TOK = torch.randint(0, 16, (4, 8), generator=torch.Generator().manual_seed(1))


def test_engine_update_turns_hooks_on_and_off_with_the_window(model: Transformer) -> None:
    with torch.no_grad():
        plain = model(TOK)
    engine = InterventionEngine(model, [{"site": "layer0.head0.z", "op": {"kind": "zero"}, "schedule": {"start": 2, "stop": 5, "ramp": 2}}])
    engine.set_mode("train")
    seen = []
    hooks = []
    for step in range(7):
        a = engine.update(step)["layer0.head0.z:zero"]
        active = model.site("layer0.z").active
        with torch.no_grad():
            out = model(TOK)
        seen.append((a, active))
        hooks.append(list(model.site("layer0.z")._hooks))
        assert active == (a > 0)
        assert torch.equal(out, plain) if not active else not torch.allclose(out, plain, atol=1e-4)
    assert seen == [(0, False), (0, False), (0.5, True), (1, True), (1, True), (0, False), (0, False)]
    assert len(hooks[2]) == 1 and hooks[2][0] is hooks[3][0] is hooks[4][0]  # alpha changes do not re-attach
    # alpha is read live by the attached hook: the half-strength step is exactly halfway
    engine.update(2)
    _, c = model.run_with_cache(TOK, names=["layer0.z"])
    engine.detach()
    _, c0 = model.run_with_cache(TOK, names=["layer0.z"])
    assert torch.allclose(c["layer0.z"][:, 0], 0.5 * c0["layer0.z"][:, 0], atol=1e-5)
    assert engine.update(None)["layer0.head0.z:zero"] == 1  # analysis: fully on
    engine.detach()


def test_engine_until_release_latches_and_fades(model: Transformer) -> None:
    spec = {"site": "layer1.resid_pre", "op": {"kind": "scale", "k": 0.0}, "schedule": {"until": {"metric": "val/acc", "threshold": 0.9, "ramp_out": 2}}}
    engine = InterventionEngine(model, [spec])
    label = "layer1.resid_pre:scale"
    assert engine.update(0, {"val/acc": 0.2})[label] == 1
    assert engine.update(1, {"other": 1.0})[label] == 1  # metric absent: nothing happens
    assert engine.update(2, {"val/acc": 0.9})[label] == 1  # not strictly above
    engine.observe(3, {"val/acc": 0.95})
    assert engine.released == {label: 3}
    assert engine.update(3, {"val/acc": 0.95})[label] == 1
    assert model.site("layer1.resid_pre").active
    assert engine.update(4, {"val/acc": 0.99})[label] == pytest.approx(0.5)  # latched at the first crossing
    assert engine.released == {label: 3}
    assert engine.update(5, {"val/acc": 0.1})[label] == 0  # stays released when the metric falls back
    assert not model.site("layer1.resid_pre").active
    # the release is part of the state: a fresh engine resumed from it follows the same schedule
    other = InterventionEngine(model, [spec])
    other.load_state_dict(engine.state_dict())
    assert other.update(4)[label] == pytest.approx(0.5)
    assert other.update(6, {"val/acc": 0.0})[label] == 0
    engine.detach()
    other.detach()
    assert not any(s.active for s in model.site_map().values())


def test_a_zero_length_window_is_refused_naming_its_bounds() -> None:
    with pytest.raises(ValueError, match=r"start=100 == stop=100 is an empty window"):
        Window(100, 100).validate("schedule")
