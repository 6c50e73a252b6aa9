"""PSCP, PEFT-Bench's cost-aware score (higher is better).

PSCP = P · (1 + M_p/C_p)^−β_p · (1 + M_f/C_f)^−β_f · (1 + M_m/C_m)^−β_m

P is the mean score over tasks (0–100), M_p the trainable parameters, M_f the extra inference
TFLOPs over the base model, M_m the peak training memory in GB. The constants scale each cost to
the point where it halves (β = 1) the score: 500 M parameters, 10 TFLOPs, 94 GB.

P's rule: each task's score is floored at 0 before averaging (`p_score`). Correlation metrics
(MCC, Pearson, Spearman) go down to −100, e.g. Pearson −87.3 on STS-B from all-invalid outputs;
averaged as they are, such a task would cancel another task's score, and a negative P turns every
cost penalty into a reward, ranking the method with the most parameters first. Floored, a broken
task counts as nothing, P stays in 0–100, and PSCP never rises with a cost (the paper's intent).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable

from peftbench.config import PSCPConfig
from peftbench.errors import PeftbenchError

SCALE = (0.0, 100.0)


class PSCPInputError(PeftbenchError, ValueError):
    """A score or cost PSCP is not defined for: a `ValueError` for callers, and one line with exit
    code 2 when it comes from the CLI (`peftbench pscp --score 120`)."""


def p_score(task_scores: Iterable[float]) -> float:
    """P: the mean over tasks of each task's score floored at 0 (and capped at 100, which only a
    float rounding error could pass), so that a broken task cannot cancel another."""
    return statistics.fmean(min(max(s, SCALE[0]), SCALE[1]) for s in task_scores)


def pscp(score: float, params: float, tflops: float, mem_gb: float, k: PSCPConfig | None = None) -> float:
    """Penalise a quality score by parameter, FLOP and memory cost (constants: `PSCPConfig`).

    A score outside 0–100 is refused rather than computed: below 0 the penalties would reward cost.
    """
    k = k or PSCPConfig()
    if not (math.isfinite(score) and SCALE[0] <= score <= SCALE[1]):
        raise PSCPInputError(f"PSCP needs a score P in 0–100, got {score!r} (P is a mean of task scores floored "
                             "at 0; below 0 the cost penalties would turn into rewards)")
    if not all(cost >= 0 for cost in (params, tflops, mem_gb)):  # `not >=` also refuses NaN
        raise PSCPInputError(f"PSCP costs must be non-negative numbers, got params={params!r}, tflops={tflops!r}, "
                             f"mem_gb={mem_gb!r}")
    return (
        score
        * (1 + params / k.c_p) ** -k.beta_p
        * (1 + tflops / k.c_f) ** -k.beta_f
        * (1 + mem_gb / k.c_m) ** -k.beta_m
    )


def _number(value: float) -> str:
    """500,000,000 rather than 5e+08."""
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def explain(k: PSCPConfig) -> list[str]:
    """The formula with this report's constants and P's rule, in words a report page can show."""
    betas = (f"β = {k.beta_p:g}" if k.beta_p == k.beta_f == k.beta_m
             else f"β_p = {k.beta_p:g}, β_f = {k.beta_f:g}, β_m = {k.beta_m:g}")
    return [
        "PSCP = P · (1 + M_p/C_p)^−β_p · (1 + M_f/C_f)^−β_f · (1 + M_m/C_m)^−β_m — higher is better.",
        f"Constants: C_p = {_number(k.c_p)} trainable parameters, C_f = {_number(k.c_f)} extra TFLOPs, "
        f"C_m = {_number(k.c_m)} GB, "
        f"{betas}. M_p: trainable parameters; M_f: extra inference FLOPs over the base model (one forward "
        "pass of 1 × 512 tokens); M_m: peak training memory.",
        "P (P_avg) is the mean over tasks of each task's score floored at 0: a task whose metric is below 0 (a "
        "negative correlation, e.g. from all-invalid outputs) counts 0, so it cannot cancel another task and P "
        "is never negative (a negative P would turn every cost penalty into a reward).",
    ]
