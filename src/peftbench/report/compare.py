"""Comparing two result sets: differences per method × task and whether they exceed seed noise.

Each cell's difference of seed means gets Welch's t-test over the two sets of seed scores (p); with
fewer than two seeds on either side there is no noise estimate and it says so. With no spread on
either side (runs that do not depend on the seed, such as zero-shot), Welch's test is undefined:
a difference is real (p = 0) unless the means are equal to rounding (p = 1; a mean of identical
scores is not always exact in the last bit). A grid compares many cells at once, so a difference
"exceeds seed noise" when its Holm–Bonferroni adjusted p-value is below 0.05: the chance of any
false "yes" over all compared cells stays at 5 % (unadjusted, 27 unchanged cells of 2 seeds a side
gave at least one "yes" in about half of simulated grids). A task scored by another primary metric
in the two sets is not compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    p_holm: float | None  # adjusted over every compared cell: what `exceeds_noise` reads
    exceeds_noise: bool | None
    not_done_a: int = 0
    not_done_b: int = 0


def noise_p(a: Cell, b: Cell) -> float | None:
    """Welch's p-value for the difference of two cells' seed means (None: no noise estimate)."""
    if a.n_seeds < 2 or b.n_seeds < 2:
        return None
    sd_a, sd_b = a.score_sd or 0.0, b.score_sd or 0.0
    if sd_a == 0 and sd_b == 0:  # deterministic on both sides: any difference is real
        return 1.0 if math.isclose(a.score_mean, b.score_mean, rel_tol=1e-9, abs_tol=1e-9) else 0.0
    result = stats.ttest_ind_from_stats(a.score_mean, sd_a, a.n_seeds, b.score_mean, sd_b, b.n_seeds,
                                        equal_var=False)
    p = float(result.pvalue)
    return p if math.isfinite(p) else None


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the given order (None stays None and is not counted):
    the i-th smallest of m is multiplied by m − i + 1, kept monotone and capped at 1."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def compare(a: Summary, b: Summary) -> list[Difference]:
    """Every method × task present in both summaries (B minus A), scored by one primary metric."""
    pairs = []
    for method in [m for m in a.methods if m in b.methods]:
        for task in [t for t in a.tasks if t in b.tasks]:
            ca, cb = a.cell(method, task), b.cell(method, task)
            same_metric = a.primary_metrics.get(task) == b.primary_metrics.get(task)
            diff = None if ca.score_mean is None or cb.score_mean is None or not same_metric \
                else cb.score_mean - ca.score_mean
            pairs.append((ca, cb, diff, noise_p(ca, cb) if diff is not None else None))
    adjusted = holm([p for *_, p in pairs])
    return [Difference(ca.method, ca.task, ca.score_mean, cb.score_mean, diff, ca.n_seeds, cb.n_seeds, p, q,
                       None if q is None else q < ALPHA, ca.n_not_done, cb.n_not_done)
            for (ca, cb, diff, p), q in zip(pairs, adjusted, strict=True)]


def notes(a: Summary, b: Summary, config_a: Mapping[str, Any] | None = None,
          config_b: Mapping[str, Any] | None = None) -> list[str]:
    """What the comparison leaves out or sets side by side that differs: methods and tasks in one
    set only, tasks scored by another metric, cells with failed runs, and the settings in which the
    two grids' configs differ (model, training, evaluation, costs)."""
    out = []
    for what, left, right in (("methods", a.methods, b.methods), ("tasks", a.tasks, b.tasks)):
        if only := [x for x in left if x not in right]:
            out.append(f"{what} only in A, not compared: {', '.join(only)}")
        if only := [x for x in right if x not in left]:
            out.append(f"{what} only in B, not compared: {', '.join(only)}")
    for task in [t for t in a.tasks if t in b.tasks]:
        if a.primary_metrics.get(task) != b.primary_metrics.get(task):
            out.append(f"task {task}: primary metric {a.primary_metrics.get(task)} in A, "
                       f"{b.primary_metrics.get(task)} in B: not compared")
    failed = [f"{c.method}/{c.task} ({side})" for side, s in (("A", a), ("B", b)) for c in s.cells
              if c.n_not_done and c.method in a.methods and c.method in b.methods
              and c.task in a.tasks and c.task in b.tasks]
    if failed:
        out.append(f"cells with runs not done, compared over their done seeds: {', '.join(failed)}")
    if config_a is not None and config_b is not None:
        differing = [key for section in ("model", "training", "evaluation", "costs")
                     for key in _differing(config_a.get(section), config_b.get(section), section)]
        methods_a, methods_b = _method_settings(config_a), _method_settings(config_b)
        differing += [f"methods[{m}]" for m in methods_a if m in methods_b and methods_a[m] != methods_b[m]]
        if differing:
            shown = ", ".join(differing[:8]) + (f" and {len(differing) - 8} more" if len(differing) > 8 else "")
            out.append(f"the two configs differ in {shown}: the runs were not made alike")
    return out


def _differing(left: Any, right: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return [key for k in sorted(set(left) | set(right), key=str)
                for key in _differing(left.get(k), right.get(k), f"{prefix}.{k}")]
    return [] if left == right else [prefix]


def _method_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """Each method label's name, arguments, learning rate and mitigation, as the config gives them."""
    out = {}
    for m in config.get("methods") or []:
        entry = {"name": m} if isinstance(m, str) else dict(m)
        out[entry.get("label") or entry["name"]] = entry
    return out
