"""Comparing two result sets: differences per method × task and whether they exceed seed noise.

A difference "exceeds seed noise" when Welch's t-test over the two sets of seed scores gives
p < 0.05; with fewer than two seeds on either side there is no noise estimate and it says so. With
no spread on either side (runs that do not depend on the seed, such as zero-shot), Welch's test is
undefined: any difference exceeds the noise, reported as p = 0, and no difference gives p = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from peftbench.report.aggregate import Cell, Summary

ALPHA = 0.05


@dataclass(frozen=True)
class Difference:
    method: str
    task: str
    mean_a: float | None
    mean_b: float | None
    diff: float | None
    n_a: int
    n_b: int
    p_value: float | None
    exceeds_noise: bool | None


def noise_test(a: Cell, b: Cell) -> tuple[float | None, bool | None]:
    """(p-value, exceeds) for the difference of two cells' seed means."""
    if a.n_seeds < 2 or b.n_seeds < 2:
        return None, None
    sd_a, sd_b = a.score_sd or 0.0, b.score_sd or 0.0
    if sd_a == 0 and sd_b == 0:  # deterministic on both sides: any difference is real
        return (0.0, True) if a.score_mean != b.score_mean else (1.0, False)
    result = stats.ttest_ind_from_stats(a.score_mean, sd_a, a.n_seeds, b.score_mean, sd_b, b.n_seeds,
                                        equal_var=False)
    p = float(result.pvalue)
    return p, (p < ALPHA) if math.isfinite(p) else None


def compare(a: Summary, b: Summary) -> list[Difference]:
    """Every method × task present in both summaries (B minus A)."""
    out = []
    for method in [m for m in a.methods if m in b.methods]:
        for task in [t for t in a.tasks if t in b.tasks]:
            ca, cb = a.cell(method, task), b.cell(method, task)
            diff = None if ca.score_mean is None or cb.score_mean is None else cb.score_mean - ca.score_mean
            p, exceeds = noise_test(ca, cb) if diff is not None else (None, None)
            out.append(Difference(method, task, ca.score_mean, cb.score_mean, diff, ca.n_seeds, cb.n_seeds, p, exceeds))
    return out
