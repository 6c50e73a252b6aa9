"""Pure aggregation of stored runs into method × task cells and per-method summaries with PSCP.

A cell averages the seeds whose runs are done; failed or missing seeds are counted, not hidden.
A method's P_avg exists only when it has a done cell for every task of the grid: averaging over
the tasks that happened to finish would rank an incomplete method on an easier task set.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from peftbench.config import PSCPConfig
from peftbench.pscp import pscp
from peftbench.store import RunRecord


@dataclass(frozen=True)
class Cell:
    method: str
    task: str
    n_seeds: int
    n_not_done: int
    score_mean: float | None
    score_sd: float | None
    invalid_rate: float | None


@dataclass(frozen=True)
class MethodSummary:
    method: str
    n_tasks_done: int
    p_avg: float | None
    trainable_params: float | None
    extra_tflops: float | None
    peak_mem_gb: float | None
    pscp: float | None
    rank: int | None


@dataclass(frozen=True)
class Summary:
    tasks: list[str]
    methods: list[str]
    cells: list[Cell]
    summaries: list[MethodSummary]

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "cells": [asdict(c) for c in self.cells],
            "methods": [asdict(s) for s in self.summaries],
        }


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for a single value)."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def aggregate(records: Sequence[RunRecord], constants: PSCPConfig | None = None) -> Summary:
    methods = list(dict.fromkeys(r.method for r in records))
    tasks = list(dict.fromkeys(r.task for r in records))
    cells: list[Cell] = []
    by_method: dict[str, list[Cell]] = {m: [] for m in methods}
    for method in methods:
        for task in tasks:
            runs = [r for r in records if r.method == method and r.task == task]
            done = [r for r in runs if r.status == "done" and r.metrics]
            mean, sd = mean_sd([r.metrics["score"] for r in done])
            invalid = _mean([r.metrics["invalid_rate"] for r in done])
            cell = Cell(method, task, len(done), len(runs) - len(done), mean, sd, invalid)
            cells.append(cell)
            by_method[method].append(cell)

    summaries = []
    for method in methods:
        done_cells = [c for c in by_method[method] if c.score_mean is not None]
        p_avg = statistics.fmean(c.score_mean for c in done_cells) if len(done_cells) == len(tasks) else None
        costs = [r.costs for r in records if r.method == method and r.status == "done" and r.costs]
        params = _mean([c["trainable_params"] for c in costs])
        tflops = _mean([max(c["extra_tflops"], 0.0) for c in costs])
        mem = _mean([c["peak_train_mem_gb"] for c in costs])
        value = None
        if p_avg is not None and None not in (params, tflops, mem):
            value = pscp(p_avg, params, tflops, mem, constants)
        summaries.append(MethodSummary(method, len(done_cells), p_avg, params, tflops, mem, value, None))

    ranked = sorted((s for s in summaries if s.pscp is not None), key=lambda s: -s.pscp)
    ranks = {s.method: i + 1 for i, s in enumerate(ranked)}
    summaries = [MethodSummary(**{**asdict(s), "rank": ranks.get(s.method)}) for s in summaries]
    summaries.sort(key=lambda s: (s.rank is None, s.rank or 0, s.method))
    return Summary(tasks=tasks, methods=methods, cells=cells, summaries=summaries)


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"
