"""Scoring model outputs against a task's gold answers: one parser per output kind turns outputs
into `Outputs`, then each of the task's metrics (`metrics.METRICS`) computes from them.

Every output that cannot be read as an answer of the task's form (outside the label set, no
number, empty) is *invalid*: it counts as wrong and the run records the invalid-output rate.
This is the one place where outputs become scores, for runs and for `peftbench score` alike.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from peftbench.errors import PeftbenchError
from peftbench.metrics import (
    INVALID,
    METRICS,
    Outputs,
    code_reference,
    max_over_golds,
    parse_number,
    pass_at_k,
    same_number,
)
from peftbench.tasks.spec import Row, TaskSpec, answer_form

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[\w+-]*[ \t]*\n?(.*?)\n?```", re.DOTALL)


def clean_output(text: str) -> str:
    """Strip thinking blocks, a surrounding code fence and whitespace."""
    text = _THINK.sub("", text).strip()
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1)
    return text.strip()


def parse_label(text: str, labels: tuple[str, ...]) -> int:
    """Index of the label the output states exactly, both in `answer_form` (first line; case,
    surrounding quotes and trailing punctuation aside)."""
    stated = answer_form(clean_output(text))
    for i, label in enumerate(labels):
        if stated == answer_form(label):
            return i
    return INVALID


@dataclass
class Scores:
    metrics: dict[str, float]
    primary: float
    invalid_rate: float
    n: int
    records: list[dict[str, Any]] = field(default_factory=list)


def score(task: TaskSpec, rows: list[Row], outputs: list[str]) -> Scores:
    """Score outputs (one per row, same order) with the task's metrics, 0–100."""
    if len(rows) != len(outputs):
        raise ValueError(f"{len(outputs)} outputs for {len(rows)} rows")
    if not rows:
        raise PeftbenchError(f"task {task.name!r}: nothing to score (no rows)")
    golds = [task.gold_of(r) for r in rows]
    scored, parsed, correct = SCORERS[task.kind](task, rows, golds, outputs)
    metrics = {name: METRICS.get(name).compute(scored) for name in task.metrics}
    # INVALID is a class index; a numeric answer of -1 is a valid answer, not the marker.
    invalid = [p is None or (task.kind == "classification" and p == INVALID) for p in parsed]
    groups = [_json_key(task.group_of(r)) for r in rows] if task.group else [None] * len(rows)
    records = [
        {"index": i, "prediction": o, "parsed": _shown(task, p), "gold": task.render_target(r),
         "reference": _reference(task, g), "correct": c, **({"group": k} if task.group else {})}
        for i, (r, o, p, g, c, k) in enumerate(zip(rows, outputs, parsed, golds, correct, groups, strict=True))
    ]
    n = len(rows)
    return Scores(
        metrics=metrics,
        primary=metrics[task.primary_metric],
        invalid_rate=sum(invalid) / n,
        n=n,
        records=records,
    )


def _reference(task: TaskSpec, gold: Any) -> Any:
    """What the metrics compare a row's output with, where the training target (`gold` in the
    predictions file) is not it exactly: STS-B's unrounded score, all of a ReCoRD query's answers,
    GSM8K's number rather than its worked solution, a code task's reference program (its tests
    stay out: `correct` says whether they passed)."""
    if task.kind == "classification":
        return task.labels[gold]
    if task.kind == "code":
        return code_reference(gold)
    return list(gold) if task.kind == "span" else gold


def _json_key(key: Any) -> Any:
    """A group key as JSON holds it: scalars and tuples (as lists) as they are, anything else by its
    repr, so that a task's own group hook can never stop the predictions file being written."""
    if key is None or isinstance(key, (str, int, float, bool)):
        return key
    if isinstance(key, (tuple, list)):
        return [_json_key(k) for k in key]
    return repr(key)


def _shown(task: TaskSpec, parsed: Any) -> Any:
    if task.kind == "classification":
        return task.labels[parsed] if parsed != INVALID else None
    return parsed


Scorer = Callable[[TaskSpec, list[Row], list[Any], list[str]], tuple[Outputs, list[Any], list[bool | None]]]


def _classification(task: TaskSpec, rows: list[Row], golds: list[int], outputs: list[str]):
    pred = [parse_label(o, task.labels) for o in outputs]
    groups = [task.group_of(r) for r in rows] if task.group else None
    return (Outputs(golds, pred, n_labels=len(task.labels), groups=groups), pred,
            [g == p for g, p in zip(golds, pred, strict=True)])


def _numeric(task: TaskSpec, rows: list[Row], golds: list[float], outputs: list[str]):
    """`task.parse` may return (value, consistency flag) — SVAMP's equation check."""
    parse = task.parse or (lambda text: parse_number(text))
    answers = [parse(clean_output(o)) for o in outputs]
    values = [a[0] if isinstance(a, tuple) else a for a in answers]
    flags = [a[1] if isinstance(a, tuple) else None for a in answers]
    correct = [v is not None and same_number(v, g) for g, v in zip(golds, values, strict=True)]
    return Outputs(golds, values, consistent=flags), values, correct


def _regression(task: TaskSpec, rows: list[Row], golds: list[float], outputs: list[str]):
    """Predictions are clipped to the task's range; an unparsable output is invalid and scored as
    the worst prediction for its row (the far end of the range), never silently dropped."""
    low, high = task.value_range or (-math.inf, math.inf)
    parsed = [parse_number(clean_output(o)) for o in outputs]
    values = [
        min(max(p, low), high) if p is not None else (high if g - low < high - g else low)
        for g, p in zip(golds, parsed, strict=True)
    ]
    clipped = [min(max(p, low), high) if p is not None else None for p in parsed]
    return Outputs(golds, values), clipped, [None] * len(rows)  # correlation: no per-row right or wrong


def _span(task: TaskSpec, rows: list[Row], golds: list[list[str]], outputs: list[str]):
    answers = [clean_output(o).split("\n", 1)[0].strip() or None for o in outputs]
    correct = [a is not None and max_over_golds(a, g)[0] == 1.0 for g, a in zip(golds, answers, strict=True)]
    return Outputs(golds, answers), answers, correct


def _code(task: TaskSpec, rows: list[Row], golds: list[Any], outputs: list[str]):
    """Programs run in the sandbox only when one of the task's metrics needs it."""
    programs = [clean_output(o) or None for o in outputs]
    passed = None
    if any(METRICS.get(m).executes for m in task.metrics):
        from peftbench.sandbox import passes_tests

        passed = [p is not None and passes_tests(p, g["tests"]) for g, p in zip(golds, programs, strict=True)]
    return Outputs(golds, programs, passed=passed), programs, list(passed or [False] * len(rows))


def pass_at_ks(task: TaskSpec, rows: list[Row], samples: list[list[str]]) -> tuple[dict[str, float], list[int]]:
    """pass@k ×100 for k = 1, 5, 10, 20, ... up to the number of samples per row (unbiased estimator,
    Chen et al. 2021), from each row's sampled programs run against its tests; and the passes per row."""
    from peftbench.sandbox import passes_tests

    n = min(len(s) for s in samples) if samples else 0
    tests = [task.gold_of(r)["tests"] for r in rows]  # once per problem, not once per sample
    passed = [sum(1 for o in outs if (p := clean_output(o)) and passes_tests(p, t))
              for t, outs in zip(tests, samples, strict=True)]
    ks = [k for k in (1, 5, 10, 20, 50, 100) if k <= n]
    return {f"pass_at_{k}_sampled": 100.0 * sum(pass_at_k(n, c, k) for c in passed) / len(passed)
            for k in ks}, passed


SCORERS: dict[str, Scorer] = {
    "classification": _classification,
    "numeric": _numeric,
    "regression": _regression,
    "span": _span,
    "code": _code,
}
