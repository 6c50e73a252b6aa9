"""Text renderings of a `Summary` and the stored runs: rich tables, Markdown, CSV, JSON, LaTeX."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table
from rich.text import Text

from peftbench.jsonsafe import dumps_json
from peftbench.pscp import SCALE, explain
from peftbench.report.aggregate import (
    MIN_CI_SEEDS,
    REFERENCE_MODELS,
    Cell,
    MethodSummary,
    Spread,
    Summary,
    fmt,
    pscp_sensitivity,
    stability,
)
from peftbench.store import RunRecord


def cell_text(cell: Cell) -> str:
    if cell.score_mean is None:
        return "failed" if cell.n_not_done else "—"
    text = fmt(cell.score_mean) + (f" ± {fmt(cell.score_sd)}" if cell.score_sd is not None else "")
    return text + (f" ({cell.n_not_done} not done)" if cell.n_not_done else "")


def params_text(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


FLOP_UNITS = (("PFLOPs", 1e15), ("TFLOPs", 1e12), ("GFLOPs", 1e9), ("MFLOPs", 1e6), ("kFLOPs", 1e3))


def flops_text(tflops: float | None) -> str:
    """Extra FLOPs with an SI unit and 3 significant digits: a tiny model's 1.2e-7 TFLOPs would print
    as 0.000000 in a fixed-point TFLOPs column."""
    if tflops is None:
        return "—"
    flops = tflops * 1e12
    unit, size = next(((u, v) for u, v in FLOP_UNITS if abs(flops) >= v), ("FLOPs", 1.0))
    return "0" if flops == 0 else f"{flops / size:.3g} {unit}"


BOARD_COLUMNS = ("rank", "method", "P_avg", "invalid %", "mean rank", "trainable params", "extra FLOPs",
                 "peak mem GB", "PSCP")


def percent(rate: float | None) -> float | None:
    return None if rate is None else 100.0 * rate


def board_row(s: MethodSummary) -> list[str]:
    return [str(s.rank or "—"), s.method, fmt(s.p_avg), fmt(percent(s.invalid_rate)), fmt(s.mean_rank, 2),
            params_text(s.trainable_params), flops_text(s.extra_tflops), fmt(s.peak_mem_gb, 3), fmt(s.pscp, 2)]


def explanation(summary: Summary) -> list[str]:
    """What the leaderboard's numbers mean: the PSCP formula with this report's constants, P's rule,
    ranks, and where the reference rows come from."""
    lines = [*explain(summary.constants),
             "Rank: by PSCP, 1 = best; the same PSCP shares a rank. Scores, P and invalid outputs (%) are on a "
             "0–100 scale (correlation metrics from −100); results.csv and summary.json keep `invalid_rate` as a "
             "fraction (0–1)."]
    if summary.reference is not None:
        model = REFERENCE_MODELS.get(summary.reference, "another model")
        lines.append(f"Rows marked [{summary.reference}] are published figures measured on {model}, shown for "
                     "scale and not ranked: their costs are another model's.")
    return lines


def task_header(summary: Summary, task: str) -> str:
    """A task with its primary metric, e.g. `sst2 (f1)`: scores of different metrics are not alike."""
    metric = summary.primary_metrics.get(task)
    return f"{task} ({metric})" if metric else task


def score_grid(summary: Summary) -> tuple[list[str], list[list[str]], int]:
    """The score table as (headers, rows, number of label columns): tasks as rows, with category and
    metric, when there are more tasks than methods (24 task columns fit neither a terminal nor a
    page); methods as rows otherwise, each task's metric in its header."""
    if len(summary.tasks) > len(summary.methods):
        return (["task", "category", "metric", *summary.methods],
                [[t, summary.categories[t], summary.primary_metrics.get(t) or "—",
                  *(cell_text(summary.cell(m, t)) for m in summary.methods)] for t in summary.tasks], 3)
    return (["method", *(task_header(summary, t) for t in summary.tasks)],
            [[m, *(cell_text(summary.cell(m, t)) for t in summary.tasks)] for m in summary.methods], 1)


def sensitivity_headers(summary: Summary) -> list[str]:
    return [f"β={b[0]:g},{b[1]:g},{b[2]:g}" + (" *" if r.changed else "") for b, r in
            ((r.betas, r) for r in pscp_sensitivity(summary))]


def _table(title: str, headers: list[str], labels: int, caption: str | None = None) -> Table:
    """A rich table whose header, caption and cells are literal text (a label such as
    `lora [peftbench-paper]` is not markup); the first `labels` columns are left-aligned."""
    table = Table(title=title, caption=Text(caption) if caption else None, caption_justify="left")
    for i, header in enumerate(headers):
        table.add_column(Text(header), justify="left" if i < labels else "right", overflow="fold",
                         no_wrap=i < labels)
    return table


def _row(table: Table, cells: list[str], style: str | None = None) -> None:
    table.add_row(*(Text(c) for c in cells), style=style)


def rich_tables(summary: Summary) -> Group:
    headers, rows, labels = score_grid(summary)
    scores = _table("Score by method × task (mean ± sd over seeds, 0–100)", headers, labels)
    for row in rows:
        _row(scores, row)
    board = _table("Leaderboard (PSCP: quality penalised by parameters, extra FLOPs and training memory; higher is "
                   "better)", list(BOARD_COLUMNS), 2, "\n".join(explanation(summary)))
    for s in summary.summaries:
        _row(board, board_row(s), "dim" if s.reference else None)
    rows_sens = pscp_sensitivity(summary)
    sensitivity = _table("PSCP sensitivity to (β_p, β_f, β_m); * = the ranking changes",
                         ["method", *sensitivity_headers(summary)], 1)
    for s in summary.summaries:
        if s.pscp is not None:
            _row(sensitivity, [s.method, *(fmt(r.pscp[s.method], 2) for r in rows_sens)],
                 "dim" if s.reference else None)
    return Group(scores, board, sensitivity)


def ci_texts(cell: Cell) -> tuple[str, str]:
    """A cell's 95 % CI as (± half-width, bounds within the scale). Below `MIN_CI_SEEDS` seeds: "n too
    small". A half-width whose interval would be wider than the 0–100 scale is not shown as a number,
    and bounds past the scale are clipped to it and marked."""
    if (bounds := cell.ci_range()) is None:  # fewer than MIN_CI_SEEDS seeds (or none done)
        return ("n too small", "—") if cell.n_seeds else ("—", "—")
    low, high, clipped = bounds
    half = "wider than the scale" if 2 * cell.ci95 > SCALE[1] - SCALE[0] else f"± {fmt(cell.ci95, 2)}"
    return half, f"{fmt(low)}–{fmt(high)}" + (" (clipped)" if clipped else "")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]], labels: int = 1) -> list[str]:
    """A markdown table's lines: `labels` left-aligned columns first, the rest right-aligned numbers."""
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * labels + "---:|" * (len(headers) - labels),
            *("| " + " | ".join(row) + " |" for row in rows)]


def markdown(summary: Summary, notes: Sequence[str] = ()) -> str:
    lines = ["# peftbench leaderboard", "", *(f"> **Note:** {n}\n" for n in notes),
             "| " + " | ".join(BOARD_COLUMNS) + " |", "|---:|---|" + "---:|" * (len(BOARD_COLUMNS) - 2)]
    lines += ["| " + " | ".join(board_row(s)) + " |" for s in summary.summaries]
    lines += ["", *(f"{line}\n" for line in explanation(summary))]
    lines += ["## Score by method × task (mean ± sd over seeds, the task's primary metric)", "",
              *md_table(*score_grid(summary))]
    sens = pscp_sensitivity(summary)
    lines += ["", "## PSCP sensitivity (* = the ranking changes)", "",
              *md_table(["method", *sensitivity_headers(summary)],
                         [[s.method, *(fmt(r.pscp[s.method], 2) for r in sens)] for s in summary.summaries
                          if s.pscp is not None])]
    lines += ["", "## Every metric (mean over seeds)", "", "| method | task | metrics |", "|---|---|---|"]
    lines += [f"| {c.method} | {c.task} | " + ", ".join(f"{k} {fmt(v)}" for k, v in c.metrics.items()) + " |"
              for c in summary.cells if c.metrics]
    lines += ["", "## Stability (sd over seeds)", "",
              f"95 % CI: Student t over seeds, from {MIN_CI_SEEDS} seeds on; its bounds are clipped to the score "
              "scale (0–100, or −100–100 where a correlation is negative).", "",
              "| method | task | n | mean | sd | 95 % CI | min | max | IQR | 95 % CI bounds |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in stability(summary):
        spread = Spread.of(c.scores)
        half, bounds = ci_texts(c)
        lines.append(f"| {c.method} | {c.task} | {c.n_seeds} | {fmt(c.score_mean)} | {fmt(c.score_sd, 2)} | "
                     f"{half} | {fmt(spread.minimum) if spread else '—'} | {fmt(spread.maximum) if spread else '—'} | "
                     f"{fmt(spread.iqr, 2) if spread else '—'} | {bounds} |")
    return "\n".join(lines) + "\n"


RUN_COLUMNS = ("run_id", "method", "task", "seed", "status", "score", "primary_metric", "invalid_rate")
COST_COLUMNS = ("trainable_params", "extra_tflops", "peak_train_mem_gb", "est_train_mem_gb", "adapter_bytes",
                "flops_per_token", "prefill_s", "per_token_s", "train_s", "eval_s", "error")


def metric_columns(records: Sequence[RunRecord]) -> list[str]:
    """Every metric any run reported (the tasks' own, pass@k, counts), in first-seen order: a new
    metric reaches the CSV without a column list to edit."""
    seen = dict.fromkeys(k for r in records for k in (r.metrics or {}))
    return [k for k in seen if k not in RUN_COLUMNS]


def runs_csv(records: Sequence[RunRecord]) -> str:
    """One row per run (every seed): the headline metric, every other metric, costs and timings."""
    columns = [*RUN_COLUMNS, *metric_columns(records), *COST_COLUMNS]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for r in records:
        row = {**(r.costs or {}), **(r.timings or {}), **(r.metrics or {}), "run_id": r.run_id,
               "method": r.method, "task": r.task, "seed": r.seed, "status": r.status, "error": r.error}
        writer.writerow(["" if row.get(c) is None else row[c] for c in columns])
    return out.getvalue()


def summary_json(summary: Summary) -> str:
    return dumps_json(summary.to_json(), indent=2)


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    return re.sub(r"[&%$#_{}~^\\<>]", lambda m: _LATEX_SPECIAL[m.group()], text)


def latex(summary: Summary) -> str:
    """booktabs tables: the paper's main layout (method × task, mean ± sd, P_avg) and the PSCP table."""
    tasks = summary.tasks
    out = ["% generated by peftbench report; needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
           "\\small", "\\begin{tabular}{l" + "c" * (len(tasks) + 1) + "}", "\\toprule",
           "Method & " + " & ".join(latex_escape(task_header(summary, t)) for t in tasks) + " & $P_{avg}$ \\\\",
           "\\midrule"]
    p_avg = {s.method: s.p_avg for s in summary.summaries}
    for method in summary.methods:
        cells = [summary.cell(method, t) for t in tasks]
        body = [f"{fmt(c.score_mean)} $\\pm$ {fmt(c.score_sd)}" if c.score_sd is not None else fmt(c.score_mean)
                for c in cells]
        out.append(f"{latex_escape(method)} & " + " & ".join(body) + f" & {fmt(p_avg.get(method))} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\caption{Score (mean $\\pm$ sd over seeds).}", "\\end{table}", "",
            "\\begin{table}[t]", "\\centering", "\\small", "\\begin{tabular}{lrrrrr}", "\\toprule",
            "Method & $P_{avg}$ & $M_p$ & $M_f$ (extra FLOPs) & $M_m$ (GB) & PSCP \\\\", "\\midrule"]
    for s in summary.summaries:
        out.append(f"{latex_escape(s.method)} & {fmt(s.p_avg)} & {params_text(s.trainable_params)} & "
                   f"{flops_text(s.extra_tflops)} & {fmt(s.peak_mem_gb, 3)} & {fmt(s.pscp, 2)} \\\\")
    k = summary.constants
    out += ["\\bottomrule", "\\end{tabular}",
            f"\\caption{{PSCP with $\\beta_p={k.beta_p:g}, \\beta_f={k.beta_f:g}, \\beta_m={k.beta_m:g}$.}}",
            "\\end{table}"]
    return "\n".join(out) + "\n"
