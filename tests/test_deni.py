"""DENI's pure core (peftbench.deni): the step schedule, the noisy copies and their average, the votes.

Every expected value below is worked out by hand from the paper's defaults: K = 10 members, NI from
round(0.3T) with cycles of 125 single + 125 multi steps while a cycle starts before round(0.6T), DE from
round(0.9T).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from peftbench.deni.noise import average, noise_generator, noisy_copy
from peftbench.deni.schedule import Schedule, Segment, boundaries, events, segments, step_equivalents
from peftbench.deni.vote import default_normalise, mean_vote, vote, vote_rows

DEFAULT = Schedule()


def spans(total: int, schedule: Schedule = DEFAULT, **flags: bool) -> list[tuple[str, int, int]]:
    return [(s.kind, s.start, s.end) for s in segments(total, schedule, **flags)]


# --------------------------------------------------------------------------------------- schedule


def test_defaults_are_the_papers():
    assert (DEFAULT.members, DEFAULT.ni_start, DEFAULT.ni_end, DEFAULT.de_start) == (10, 0.3, 0.6, 0.9)
    assert (DEFAULT.ni_single_steps, DEFAULT.ni_multi_steps) == (125, 125)
    with pytest.raises(AttributeError):
        DEFAULT.members = 3  # frozen


def test_t1000_segments_by_hand():
    # NI may start at 300, and no copies are made at or after 600; DE from 900.
    # Cycle 1 starts at 300: single 300-425, copies at 425 (< 600), multi 425-550.
    # Cycle 2 starts at 550: its copies would come at 675 >= 600 -- NI is over (only a multi phase
    # still running at 600 would finish): normal training 550-900, then DE 900-1000.
    assert boundaries(1000, DEFAULT) == (300, 600, 900)
    assert spans(1000) == [
        ("single", 0, 300),
        ("single", 300, 425),
        ("ni_multi", 425, 550),
        ("single", 550, 900),
        ("de", 900, 1000),
    ]
    assert segments(1000, DEFAULT)[2] == Segment("ni_multi", 425, 550)
    assert segments(1000, DEFAULT)[2].steps == 125
    assert events(1000, DEFAULT) == {425: "spawn_ni", 550: "average", 900: "spawn_de"}
    # single: 300 + 125 + 350 = 775 steps × 1; multi: 125 steps × 10; DE: 100 × 10
    # (775 + 1250 + 1000) / 1000 = 3.025, against 10 for an ensemble: 0.3025
    assert step_equivalents(1000, DEFAULT) == pytest.approx(3.025, abs=1e-12)


def test_t10000_step_equivalents_by_hand():
    # Boundaries 3000, 6000, 9000. Cycles of 125 + 125 = 250 steps start at 3000 + 250 j while < 6000:
    # j = 0..11, 12 cycles, the last ending exactly at 6000.
    #   normal 0-3000:            3000 steps × 1  =  3000
    #   NI single: 12 × 125     = 1500 steps × 1  =  1500
    #   NI multi:  12 × 125     = 1500 steps × 10 = 15000
    #   normal 6000-9000:         3000 steps × 1  =  3000
    #   DE 9000-10000:            1000 steps × 10 = 10000
    # total 32500 model-steps / 10000 = 3.25 single trainings (paper: "about 3.3", against 10 for an ensemble)
    assert step_equivalents(10_000, DEFAULT) == pytest.approx(3.25, abs=1e-12)
    got = segments(10_000, DEFAULT)
    multi = [s for s in got if s.kind == "ni_multi"]
    assert len(multi) == 12 and multi[0] == Segment("ni_multi", 3125, 3250) and multi[-1].end == 6000
    assert got[-2:] == [Segment("single", 6000, 9000), Segment("de", 9000, 10_000)]
    assert [s for s, e in events(10_000, DEFAULT).items() if e == "spawn_ni"] == list(range(3125, 6000, 250))
    # ablations: DE only = (9000 + 1000 × 10) / 10000; NI only = (3000 + 1500 + 15000 + 4000) / 10000
    assert step_equivalents(10_000, DEFAULT, ni=False) == pytest.approx(1.9, abs=1e-12)
    assert step_equivalents(10_000, DEFAULT, de=False) == pytest.approx(2.35, abs=1e-12)
    assert step_equivalents(10_000, DEFAULT, ni=False, de=False) == 1.0


def test_ablations_at_t1000():
    assert spans(1000, ni=False) == [("single", 0, 900), ("de", 900, 1000)]
    assert events(1000, DEFAULT, ni=False) == {900: "spawn_de"}
    assert spans(1000, de=False) == [
        ("single", 0, 300),
        ("single", 300, 425),
        ("ni_multi", 425, 550),
        ("single", 550, 1000),
    ]
    assert events(1000, DEFAULT, de=False) == {425: "spawn_ni", 550: "average"}
    assert spans(1000, ni=False, de=False) == [("single", 0, 1000)]
    assert events(1000, DEFAULT, ni=False, de=False) == {}


def test_a_multi_phase_running_at_ni_end_finishes():
    # Cycles of 20 + 200 from 300: single 300-320, multi 320-520; single 520-540, multi 540-740 (runs
    # through 600 and finishes); the next cycle would start at 740 >= 600.
    schedule = Schedule(ni_single_steps=20, ni_multi_steps=200)
    assert spans(1000, schedule) == [
        ("single", 0, 300),
        ("single", 300, 320),
        ("ni_multi", 320, 520),
        ("single", 520, 540),
        ("ni_multi", 540, 740),
        ("single", 740, 900),
        ("de", 900, 1000),
    ]
    assert events(1000, schedule)[740] == "average"


def test_small_t_cuts_ni_at_de_and_at_t():
    # T = 10: boundaries 3, 6, 9. NI's first single phase (125 steps) is cut at DE's start: no multi phase.
    assert boundaries(10, DEFAULT) == (3, 6, 9)
    assert spans(10) == [("single", 0, 3), ("single", 3, 9), ("de", 9, 10)]
    assert events(10, DEFAULT) == {9: "spawn_de"}
    assert step_equivalents(10, DEFAULT) == pytest.approx((9 + 1 * 10) / 10)
    # T = 300: boundaries 90, 180, 270. NI's first copies would come at 90 + 125 = 215 >= 180: no NI.
    assert boundaries(300, DEFAULT) == (90, 180, 270)
    assert spans(300) == [("single", 0, 90), ("single", 90, 270), ("de", 270, 300)]
    assert events(300, DEFAULT) == {270: "spawn_de"}
    assert step_equivalents(300, DEFAULT) == pytest.approx((270 + 30 * 10) / 300)
    # Single 50, multi 250: copies at 140 (< 180); the multi phase 140-390 is cut at DE's start 270,
    # where it still averages -- just before DE spawns its copies: both events on step 270, in that order.
    long = Schedule(ni_single_steps=50, ni_multi_steps=250)
    assert spans(300, long) == [("single", 0, 90), ("single", 90, 140), ("ni_multi", 140, 270), ("de", 270, 300)]
    assert events(300, long) == {140: "spawn_ni", 270: "average+spawn_de"}
    assert step_equivalents(300, long) == pytest.approx((140 + 130 * 10 + 30 * 10) / 300)
    # Without DE the same multi phase is cut at T = 300 and averages after the last step.
    assert spans(300, long, de=False) == [("single", 0, 90), ("single", 90, 140), ("ni_multi", 140, 300)]
    assert events(300, long, de=False) == {140: "spawn_ni", 300: "average"}
    # Cut at DE also with a custom cycle: K = 3, single 1, multi 125, T = 10 -> multi 4-9 then DE 9-10.
    short = Schedule(members=3, ni_single_steps=1)
    assert spans(10, short) == [("single", 0, 3), ("single", 3, 4), ("ni_multi", 4, 9), ("de", 9, 10)]
    assert events(10, short) == {4: "spawn_ni", 9: "average+spawn_de"}
    assert step_equivalents(10, short) == pytest.approx((4 + 5 * 3 + 1 * 3) / 10)


def test_tiny_t_and_rounding():
    # Python's round, half to even: T = 1 -> (0, 1, 1); T = 5 -> 1.5 -> 2, 3.0 -> 3, 4.5 -> 4.
    assert boundaries(1, DEFAULT) == (0, 1, 1)
    assert spans(1) == [("single", 0, 1)]
    assert events(1, DEFAULT) == {}
    assert boundaries(4, DEFAULT) == (1, 2, 4)  # 0.9 × 4 = 3.6 -> 4: DE is empty
    assert spans(4) == [("single", 0, 1), ("single", 1, 4)]
    assert boundaries(5, DEFAULT) == (2, 3, 4)
    assert spans(5) == [("single", 0, 2), ("single", 2, 4), ("de", 4, 5)]


def test_no_single_steps_puts_average_and_spawn_on_one_step():
    # Multi phases of 100 back to back from 300 while they start before 600: 300-400, 400-500, 500-600.
    schedule = Schedule(ni_single_steps=0, ni_multi_steps=100)
    assert spans(1000, schedule) == [
        ("single", 0, 300),
        ("ni_multi", 300, 400),
        ("ni_multi", 400, 500),
        ("ni_multi", 500, 600),
        ("single", 600, 900),
        ("de", 900, 1000),
    ]
    assert events(1000, schedule) == {
        300: "spawn_ni",
        400: "average+spawn_ni",
        500: "average+spawn_ni",
        600: "average",
        900: "spawn_de",
    }


@pytest.mark.parametrize("total", [0, -1, -1000])
def test_non_positive_t_is_rejected(total):
    for function in (segments, events, step_equivalents):
        with pytest.raises(ValueError, match="positive"):
            function(total, DEFAULT)


@pytest.mark.parametrize("total", [10.0, True, "10"])
def test_non_int_t_is_rejected(total):
    with pytest.raises(TypeError):
        segments(total, DEFAULT)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"members": 0},
        {"ni_start": 0.7},  # after ni_end
        {"ni_end": 0.95},  # after de_start
        {"de_start": 1.1},
        {"ni_start": -0.1},
        {"ni_single_steps": -1},
        {"ni_multi_steps": 0},
    ],
)
def test_invalid_schedule_is_rejected(kwargs):
    with pytest.raises(ValueError):
        Schedule(**kwargs)


SCHEDULES = [
    DEFAULT,
    Schedule(members=3, ni_single_steps=3, ni_multi_steps=5),
    Schedule(ni_single_steps=0, ni_multi_steps=1),
]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_segments_cover_every_t_exactly(schedule):
    for total, ni, de in itertools.product(range(1, 3000, 7), (True, False), (True, False)):
        got = segments(total, schedule, ni=ni, de=de)
        where = f"T={total} ni={ni} de={de}"
        assert got[0].start == 0 and got[-1].end == total, where
        assert all(s.end > s.start for s in got), where  # no empty segment
        assert all(a.end == b.start for a, b in itertools.pairwise(got)), where  # no gap, no overlap
        ni_at, ni_until, de_at = boundaries(total, schedule)
        limit = de_at if de else total
        multi = [s for s in got if s.kind == "ni_multi"]
        assert ni or not multi, where
        for segment in multi:
            assert ni_at <= segment.start and segment.end <= limit, where  # never into DE, never past T
            assert segment.steps == schedule.ni_multi_steps or segment.end == limit, where
        de_segments = [s for s in got if s.kind == "de"]
        assert de_segments == ([Segment("de", de_at, total)] if de and de_at < total else []), where
        # every spawn_ni is followed by exactly one average before the next spawn
        sequence = [name for joined in events(total, schedule, ni=ni, de=de).values() for name in joined.split("+")]
        assert sequence.count("spawn_ni") == sequence.count("average") == len(multi), where
        ni_events = [name for name in sequence if name != "spawn_de"]
        assert ni_events == ["spawn_ni", "average"] * len(multi), where
        assert sequence.count("spawn_de") == len(de_segments), where
        if "spawn_de" in sequence:
            assert sequence[-1] == "spawn_de", where
        cost = step_equivalents(total, schedule, ni=ni, de=de)
        assert 1.0 <= cost <= schedule.members, where
        model_steps = sum(s.steps * (1 if s.kind == "single" else schedule.members) for s in got)
        assert cost == model_steps / total, where


# ------------------------------------------------------------------------------------------- noise


def with_std(shape: tuple[int, ...], std: float, seed: int = 0, mean: float = 0.5) -> torch.Tensor:
    """A float32 tensor whose unbiased std is `std` (up to float32 rounding)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ((x - x.mean()) / x.std() * std + mean).float()


@pytest.mark.parametrize(
    ("step", "expected_factor"), [(1, math.sqrt(0.25 / 1)), (100, math.sqrt(0.25 / 100)), (None, math.sqrt(0.25))]
)
def test_noise_scale_per_tensor(step, expected_factor):
    # Two tensors of different std: each is perturbed relative to its own std.
    params = {"a": with_std((1000, 1000), 3.0, seed=1), "b": with_std((1000, 1000), 0.02, seed=2)}
    noisy = noisy_copy(params, sigma2=0.25, generator=noise_generator(0, 1), step=step)
    for name, s in (("a", 3.0), ("b", 0.02)):
        delta = (noisy[name].double() - params[name].double())
        expected = expected_factor * s
        assert delta.std().item() == pytest.approx(expected, rel=0.02), name
        assert abs(delta.mean().item()) < 0.01 * expected, name  # centred


def test_noise_is_exactly_the_documented_formula():
    # ε = randn (CPU, float32, from the member's generator, in key order) · sqrt(σ²/t) · std(p)
    params = {"w": with_std((4, 5), 2.0, seed=3), "v": with_std((7,), 0.5, seed=4)}
    noisy = noisy_copy(params, sigma2=0.1, generator=noise_generator(42, 3), step=7)
    reference = noise_generator(42, 3)
    for name in ("w", "v"):
        p = params[name]
        eps = torch.randn(p.shape, generator=reference, dtype=torch.float32)
        expected = p + eps.mul_(math.sqrt(0.1 / 7) * p.std().item())
        assert torch.equal(noisy[name], expected), name


def test_zero_std_and_one_element_tensors_are_unchanged_and_draw_nothing():
    w = with_std((50, 50), 1.0, seed=5)
    params = {"zeros": torch.zeros(10, 10), "constant": torch.full((3, 3), 4.0), "one": torch.tensor([2.5]), "w": w}
    noisy = noisy_copy(params, sigma2=1.0, generator=noise_generator(0, 1), step=None)
    assert torch.equal(noisy["zeros"], params["zeros"])
    assert torch.equal(noisy["constant"], params["constant"])
    assert torch.equal(noisy["one"], params["one"])
    # the skipped tensors took nothing from the stream: w gets the same noise as when alone
    alone = noisy_copy({"w": w}, sigma2=1.0, generator=noise_generator(0, 1), step=None)
    assert torch.equal(noisy["w"], alone["w"])
    assert not torch.equal(noisy["w"], w)


def test_untargeted_tensors_are_copied_unchanged_and_draw_nothing():
    head, body = with_std((40, 40), 1.0, seed=1), with_std((40, 40), 2.0, seed=2)
    noisy = noisy_copy({"body": body, "head": head}, sigma2=0.3, generator=noise_generator(3, 1), step=None,
                       targets={"head"})
    alone = noisy_copy({"head": head}, sigma2=0.3, generator=noise_generator(3, 1), step=None)
    assert torch.equal(noisy["body"], body) and noisy["body"].data_ptr() != body.data_ptr()
    assert torch.equal(noisy["head"], alone["head"]) and not torch.equal(noisy["head"], head)


def test_noise_leaves_inputs_alone_and_returns_new_tensors():
    params = {"w": with_std((20, 20), 1.0)}
    before = params["w"].clone()
    noisy = noisy_copy(params, sigma2=0.5, generator=noise_generator(0, 1), step=1)
    assert torch.equal(params["w"], before)
    assert noisy["w"].data_ptr() != params["w"].data_ptr()
    zeros = torch.zeros(3)
    unchanged = noisy_copy({"z": zeros}, sigma2=0.5, generator=noise_generator(0, 1), step=1)["z"]
    assert torch.equal(unchanged, zeros) and unchanged.data_ptr() != zeros.data_ptr()  # a copy, not an alias


def test_noise_ignores_the_global_rng_and_differs_between_members():
    params = {"w": with_std((30, 30), 1.0)}
    torch.manual_seed(1)
    first = noisy_copy(params, sigma2=0.3, generator=noise_generator(7, 1), step=5)["w"]
    torch.manual_seed(2)
    second = noisy_copy(params, sigma2=0.3, generator=noise_generator(7, 1), step=5)["w"]
    assert torch.equal(first, second)
    other_member = noisy_copy(params, sigma2=0.3, generator=noise_generator(7, 2), step=5)["w"]
    other_seed = noisy_copy(params, sigma2=0.3, generator=noise_generator(8, 1), step=5)["w"]
    assert not torch.equal(first, other_member)
    assert not torch.equal(first, other_seed)
    # a drawn copy does not consume the global RNG either
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    noisy_copy(params, sigma2=0.3, generator=noise_generator(7, 1), step=5)
    assert torch.equal(torch.rand(3), expected)
    # one generator reused across NI cycles: fresh noise each cycle
    generator = noise_generator(7, 1)
    cycle_1 = noisy_copy(params, sigma2=0.3, generator=generator, step=5)["w"]
    cycle_2 = noisy_copy(params, sigma2=0.3, generator=generator, step=5)["w"]
    assert torch.equal(cycle_1, first) and not torch.equal(cycle_1, cycle_2)


def test_noise_keeps_dtype():
    params = {"h": with_std((16, 16), 1.0).to(torch.bfloat16), "d": with_std((16, 16), 1.0).double()}
    noisy = noisy_copy(params, sigma2=0.5, generator=noise_generator(0, 1), step=2)
    assert noisy["h"].dtype == torch.bfloat16 and noisy["d"].dtype == torch.float64
    assert not torch.equal(noisy["h"], params["h"]) and not torch.equal(noisy["d"], params["d"])
    # σ² = 0: an exact copy
    silent = noisy_copy(params, sigma2=0.0, generator=noise_generator(0, 1), step=None)
    assert all(torch.equal(silent[k], params[k]) for k in params)


@pytest.mark.parametrize("step", [0, -3, True, 1.5])
def test_noise_rejects_a_bad_step(step):
    with pytest.raises(ValueError, match="step"):
        noisy_copy({"w": torch.ones(3)}, sigma2=0.1, generator=noise_generator(0, 1), step=step)


def test_noise_rejects_bad_inputs():
    generator = noise_generator(0, 1)
    with pytest.raises(ValueError, match="sigma2"):
        noisy_copy({"w": torch.ones(3)}, sigma2=-0.1, generator=generator, step=1)
    with pytest.raises(ValueError, match="floating"):
        noisy_copy({"ids": torch.arange(3)}, sigma2=0.1, generator=generator, step=1)
    with pytest.raises(ValueError, match="non-finite"):
        noisy_copy({"w": torch.tensor([1.0, float("nan")])}, sigma2=0.1, generator=generator, step=1)
    with pytest.raises(ValueError, match="member"):
        noise_generator(0, -1)


def test_average_exact_on_hand_values():
    members = [{"x": torch.tensor(1.0), "y": torch.tensor([0.0, 3.0])},
               {"x": torch.tensor(2.0), "y": torch.tensor([1.0, 3.0])},
               {"x": torch.tensor(4.0), "y": torch.tensor([2.0, 6.0])}]
    got = average(members)
    assert list(got) == ["x", "y"]
    assert got["x"].dtype == torch.float32
    assert torch.equal(got["x"], torch.tensor(7 / 3, dtype=torch.float32))
    assert torch.equal(got["y"], torch.tensor([1.0, 4.0]))
    assert torch.equal(members[0]["x"], torch.tensor(1.0))  # inputs unchanged


def test_average_sums_in_float64():
    # 60000 + 60000 overflows float16 (max 65504); the float64 sum does not.
    half = [{"w": torch.tensor([60000.0], dtype=torch.float16)}] * 2
    assert torch.equal(average(half)["w"], torch.tensor([60000.0], dtype=torch.float16))
    # ten float32 copies of 0.1 average to float32(0.1) exactly
    ten = [{"w": torch.full((5,), 0.1)}] * 10
    assert torch.equal(average(ten)["w"], torch.full((5,), 0.1))
    bf16 = [{"w": torch.tensor([1.0], dtype=torch.bfloat16)}, {"w": torch.tensor([2.0], dtype=torch.bfloat16)}]
    assert torch.equal(average(bf16)["w"], torch.tensor([1.5], dtype=torch.bfloat16))
    assert torch.equal(average([{"w": torch.tensor([3.0])}])["w"], torch.tensor([3.0]))


@pytest.mark.parametrize(
    ("second", "match"),
    [
        ({"x": torch.zeros(2)}, "keys"),  # missing y
        ({"x": torch.zeros(2), "y": torch.zeros(2), "z": torch.zeros(2)}, "keys"),  # extra z
        ({"x": torch.zeros(2), "y": torch.zeros(3)}, "y"),  # shape
        ({"x": torch.zeros(2), "y": torch.zeros(2, dtype=torch.float64)}, "y"),  # dtype
    ],
)
def test_average_rejects_mismatches(second, match):
    first = {"x": torch.zeros(2), "y": torch.zeros(2)}
    with pytest.raises(ValueError, match=match) as raised:
        average([first, second])
    assert "\n" not in str(raised.value)


def test_average_of_nothing():
    with pytest.raises(ValueError):
        average([])


# -------------------------------------------------------------------------------------------- vote


def test_vote_majority_and_ties():
    assert vote(["a", "b", "b"]) == 1  # clear majority: the first member giving it
    assert vote(["a", "b", "a", "b"]) == 0  # 2-2 tie involving the main model: member 0
    assert vote(["b", "a", "a", "b", "c"]) == 0
    assert vote(["x", "b", "a", "a", "b"]) == 1  # tie without member 0: the lowest index among the tied
    assert vote(["x", "a", "b", "a", "b"]) == 1
    assert vote(["x", "y", "z"]) == 0  # all tied at one vote: the main model
    assert vote(["only"]) == 0


def test_vote_normalises():
    assert default_normalise("  Positive \n") == "positive"
    assert vote([" Positive", "positive", "negative", "NEGATIVE ", "Negative"]) == 2
    assert vote(["Negative", " Positive", "positive"]) == 1
    assert vote(["Negative", " Positive", "positive"], normalise=lambda s: s) == 0  # no normalisation: all tied
    with pytest.raises(ValueError):
        vote([])


def test_vote_rows_returns_original_strings():
    per_member = [
        [" Positive", "no", "A"],
        ["positive", "Yes ", "b"],
        ["NEGATIVE", "yes", "c"],
    ]
    assert vote_rows(per_member) == [" Positive", "Yes ", "A"]
    with pytest.raises(ValueError, match="member 1"):
        vote_rows([["a", "b"], ["a"]])
    with pytest.raises(ValueError):
        vote_rows([])
    assert vote_rows([[], []]) == []


def test_mean_vote():
    assert mean_vote([1.0, None, 2.0, None, 4.5]) == 2.5
    assert mean_vote([None, 3.0]) == 3.0
    assert mean_vote([None, None]) is None
    assert mean_vote([]) is None
    assert mean_vote([0.1] * 10) == 0.1  # fsum: no rounding drift over the members
