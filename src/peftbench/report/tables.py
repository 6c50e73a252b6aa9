"""Rendering a `Summary` and the stored runs: rich tables, Markdown, CSV, JSON."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table

from peftbench.report.aggregate import Cell, Summary, fmt
from peftbench.store import RunRecord


def _cell_text(cell: Cell) -> str:
    if cell.score_mean is None:
        return "failed" if cell.n_not_done else "—"
    text = fmt(cell.score_mean) + (f" ± {fmt(cell.score_sd)}" if cell.score_sd is not None else "")
    return text + (f" ({cell.n_not_done} not done)" if cell.n_not_done else "")


def _cost_row(s) -> list[str]:
    params = "—" if s.trainable_params is None else f"{s.trainable_params:,.0f}"
    return [params, fmt(s.extra_tflops, 6), fmt(s.peak_mem_gb, 3)]


def rich_tables(summary: Summary) -> Group:
    scores = Table(title="Score by method × task (mean ± sd over seeds, 0–100)")
    scores.add_column("method", style="bold")
    for task in summary.tasks:
        scores.add_column(task, justify="right")
    for method in summary.methods:
        cells = [c for c in summary.cells if c.method == method]
        scores.add_row(method, *(_cell_text(c) for c in cells))
    board = Table(title="Leaderboard (PSCP: quality penalised by parameters, extra FLOPs and training memory)")
    for col in ("rank", "method", "P_avg", "trainable params", "extra TFLOPs", "peak mem GB", "PSCP"):
        board.add_column(col, justify="left" if col == "method" else "right")
    for s in summary.summaries:
        board.add_row(str(s.rank or "—"), s.method, fmt(s.p_avg), *_cost_row(s), fmt(s.pscp, 2))
    return Group(scores, board)


def markdown(summary: Summary) -> str:
    lines = ["# peftbench leaderboard", "", "| rank | method | P_avg | trainable params | extra TFLOPs | "
             "peak mem GB | PSCP |", "|---:|---|---:|---:|---:|---:|---:|"]
    for s in summary.summaries:
        lines.append(f"| {s.rank or '—'} | {s.method} | {fmt(s.p_avg)} | " + " | ".join(_cost_row(s))
                     + f" | {fmt(s.pscp, 2)} |")
    lines += ["", "## Score by method × task (mean ± sd over seeds)", "",
              "| method | " + " | ".join(summary.tasks) + " |", "|---|" + "---:|" * len(summary.tasks)]
    for method in summary.methods:
        cells = [c for c in summary.cells if c.method == method]
        lines.append(f"| {method} | " + " | ".join(_cell_text(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


RUN_COLUMNS = ("run_id", "method", "task", "seed", "status", "score", "primary_metric", "invalid_rate",
               "trainable_params", "extra_tflops", "peak_train_mem_gb", "adapter_bytes", "train_s", "eval_s", "error")


def runs_csv(records: Sequence[RunRecord]) -> str:
    """One row per run, with the headline metric, costs and timings."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RUN_COLUMNS)
    for r in records:
        row = {**(r.metrics or {}), **(r.costs or {}), **(r.timings or {}), "run_id": r.run_id,
               "method": r.method, "task": r.task, "seed": r.seed, "status": r.status, "error": r.error}
        writer.writerow(["" if row.get(c) is None else row[c] for c in RUN_COLUMNS])
    return out.getvalue()


def summary_json(summary: Summary) -> str:
    return json.dumps(summary.to_json(), indent=2)
