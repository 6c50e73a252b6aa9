"""Which of T optimisation steps do what under DENI, as half-open step ranges.

The paper's schedule, with every boundary at `round(fraction * T)` (Python's `round`, half to even):

- [0, round(ni_start·T)): normal training of the main model.
- Noisy interpolation (NI) cycles from round(ni_start·T): `ni_single_steps` steps of the main model,
  then K−1 noisy copies are made and all K models train `ni_multi_steps` steps on the same batches,
  then the main model becomes their uniform average and the copies are dropped. Copies are made
  only before round(ni_end·T): a multi phase still running at ni_end·T finishes and averages (so NI
  may extend past it), while a cycle still in its single-model steps there ends NI.
- Normal training again until round(de_start·T).
- Delayed ensemble (DE) from round(de_start·T) to T: K−1 noisy copies train with the main model to the
  end, and predictions are the majority vote of the K (no averaging).

NI never runs into DE or past T: a single or multi phase that would is cut at the DE start (or at T
without DE), and a cut multi phase still averages where it ends. Events that fall on the same step
are joined with "+" in the order they happen ("average+spawn_de", "average+spawn_ni").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SegmentKind = Literal["single", "ni_multi", "de"]

SPAWN_NI = "spawn_ni"
SPAWN_DE = "spawn_de"
AVERAGE = "average"


@dataclass(frozen=True)
class Schedule:
    """DENI's schedule parameters, defaulting to the paper's. `members` is K: the main model plus
    K−1 noisy copies (in NI's multi phases and in DE alike)."""

    members: int = 10
    ni_start: float = 0.3
    ni_end: float = 0.6
    de_start: float = 0.9
    ni_single_steps: int = 125
    ni_multi_steps: int = 125

    def __post_init__(self) -> None:
        # Rejected here, once, so that segments() can trust its inputs (and cannot loop forever).
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if not 0.0 <= self.ni_start <= self.ni_end <= self.de_start <= 1.0:
            raise ValueError(
                "need 0 <= ni_start <= ni_end <= de_start <= 1, "
                f"got {self.ni_start}, {self.ni_end}, {self.de_start}"
            )
        if self.ni_single_steps < 0:
            raise ValueError(f"ni_single_steps must be >= 0, got {self.ni_single_steps}")
        if self.ni_multi_steps < 1:
            raise ValueError(f"ni_multi_steps must be >= 1, got {self.ni_multi_steps}")


@dataclass(frozen=True)
class Segment:
    """Steps [start, end) of one kind: "single" trains the main model alone (normal training and NI's
    single-model steps), "ni_multi" trains the K models of an NI cycle, "de" the K of the ensemble."""

    kind: SegmentKind
    start: int
    end: int

    @property
    def steps(self) -> int:
        return self.end - self.start


def boundaries(total_steps: int, schedule: Schedule) -> tuple[int, int, int]:
    """The step indices where NI may start, from which no NI copies are made, and where DE starts:
    `round(fraction * T)` each (monotonic, so they stay ordered)."""
    _check_total(total_steps)
    return (
        round(schedule.ni_start * total_steps),
        round(schedule.ni_end * total_steps),
        round(schedule.de_start * total_steps),
    )


def segments(total_steps: int, schedule: Schedule, *, ni: bool = True, de: bool = True) -> list[Segment]:
    """The run's steps as consecutive, non-empty segments covering [0, T) exactly.

    `ni=False` gives the "DE only" ablation, `de=False` "NI only" (the baseline that adds weight noise
    reuses NI's segments); with both False the run is one normal "single" segment.
    """
    ni_at, ni_until, de_at = boundaries(total_steps, schedule)
    limit = de_at if de else total_steps  # NI and normal training end here
    out: list[Segment] = []

    def add(kind: SegmentKind, start: int, end: int) -> None:
        if end > start:
            out.append(Segment(kind, start, end))

    cursor = 0
    if ni:
        first = min(ni_at, limit)
        add("single", 0, first)
        cursor = first
        while cursor < min(ni_until, limit):
            single_end = min(cursor + schedule.ni_single_steps, limit)
            if single_end >= ni_until:  # the copies would come at or after ni_end·T: NI is over
                break
            add("single", cursor, single_end)
            multi_end = min(single_end + schedule.ni_multi_steps, limit)
            add("ni_multi", single_end, multi_end)
            cursor = multi_end  # strictly increases unless it reached limit: ni_multi_steps >= 1
    add("single", cursor, limit)
    if de:
        add("de", limit, total_steps)
    return out


def events(total_steps: int, schedule: Schedule, *, ni: bool = True, de: bool = True) -> dict[int, str]:
    """Step index → what happens *before* that step: "spawn_ni" (make K−1 noisy copies with decaying
    noise), "spawn_de" (K−1 copies with constant noise, kept to the end) and "average" (the main model
    becomes the mean of the K, copies dropped) at the step after a multi phase's last step — which is
    T itself when a multi phase is cut at the end of training. Sorted by step; same-step events are
    joined with "+" in the order they happen."""
    happening: dict[int, list[str]] = {}
    for segment in segments(total_steps, schedule, ni=ni, de=de):
        if segment.kind == "ni_multi":
            happening.setdefault(segment.start, []).append(SPAWN_NI)
            happening.setdefault(segment.end, []).append(AVERAGE)
        elif segment.kind == "de":
            happening.setdefault(segment.start, []).append(SPAWN_DE)
    return {step: "+".join(names) for step, names in sorted(happening.items())}


def step_equivalents(total_steps: int, schedule: Schedule, *, ni: bool = True, de: bool = True) -> float:
    """Model-steps trained over the run divided by T: the cost in single trainings (a normal run is
    1.0, an ensemble of K independent runs K), counting every model of a multi or DE segment."""
    model_steps = sum(
        segment.steps * (1 if segment.kind == "single" else schedule.members)
        for segment in segments(total_steps, schedule, ni=ni, de=de)
    )
    return model_steps / total_steps


def _check_total(total_steps: int) -> None:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int):
        raise TypeError(f"total_steps must be an int, got {total_steps!r}")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
