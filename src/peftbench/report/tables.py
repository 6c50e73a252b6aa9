"""Text renderings of a `Summary` and the stored runs: rich tables, Markdown, CSV, JSON, LaTeX."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence

from rich.console import Group
from rich.table import Table

from peftbench.jsonsafe import dumps_json
from peftbench.report.aggregate import Cell, MethodSummary, Spread, Summary, fmt, pscp_sensitivity, stability
from peftbench.store import RunRecord


def cell_text(cell: Cell) -> str:
    if cell.score_mean is None:
        return "failed" if cell.n_not_done else "—"
    text = fmt(cell.score_mean) + (f" ± {fmt(cell.score_sd)}" if cell.score_sd is not None else "")
    return text + (f" ({cell.n_not_done} not done)" if cell.n_not_done else "")


def params_text(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


BOARD_COLUMNS = ("rank", "method", "P_avg", "invalid %", "mean rank", "trainable params", "extra TFLOPs",
                 "peak mem GB", "PSCP")


def percent(rate: float | None) -> float | None:
    return None if rate is None else 100.0 * rate


def board_row(s: MethodSummary) -> list[str]:
    return [str(s.rank or "—"), s.method, fmt(s.p_avg), fmt(percent(s.invalid_rate)), fmt(s.mean_rank, 2),
            params_text(s.trainable_params), fmt(s.extra_tflops, 6), fmt(s.peak_mem_gb, 3), fmt(s.pscp, 2)]


def sensitivity_headers(summary: Summary) -> list[str]:
    return [f"β={b[0]:g},{b[1]:g},{b[2]:g}" + (" *" if r.changed else "") for b, r in
            ((r.betas, r) for r in pscp_sensitivity(summary))]


def rich_tables(summary: Summary) -> Group:
    scores = Table(title="Score by method × task (mean ± sd over seeds, 0–100)")
    scores.add_column("method", style="bold")
    for task in summary.tasks:
        scores.add_column(task, justify="right")
    for method in summary.methods:
        scores.add_row(method, *(cell_text(summary.cell(method, t)) for t in summary.tasks))
    board = Table(title="Leaderboard (PSCP: quality penalised by parameters, extra FLOPs and training memory)")
    for col in BOARD_COLUMNS:
        board.add_column(col, justify="left" if col == "method" else "right")
    for s in summary.summaries:
        board.add_row(*board_row(s), style="dim" if s.reference else None)
    sensitivity = Table(title="PSCP sensitivity to (β_p, β_f, β_m); * = the ranking changes")
    sensitivity.add_column("method")
    rows = pscp_sensitivity(summary)
    for header in sensitivity_headers(summary):
        sensitivity.add_column(header, justify="right")
    for s in summary.summaries:
        if s.pscp is not None:
            sensitivity.add_row(s.method, *(fmt(r.pscp[s.method], 2) for r in rows))
    return Group(scores, board, sensitivity)


def markdown(summary: Summary, notes: Sequence[str] = ()) -> str:
    lines = ["# peftbench leaderboard", "", *(f"> **Note:** {n}\n" for n in notes),
             "| " + " | ".join(BOARD_COLUMNS) + " |", "|---:|---|" + "---:|" * (len(BOARD_COLUMNS) - 2)]
    lines += ["| " + " | ".join(board_row(s)) + " |" for s in summary.summaries]
    lines += ["", "## Score by method × task (mean ± sd over seeds)", "",
              "| method | " + " | ".join(summary.tasks) + " |", "|---|" + "---:|" * len(summary.tasks)]
    for method in summary.methods:
        lines.append(f"| {method} | " + " | ".join(cell_text(summary.cell(method, t)) for t in summary.tasks) + " |")
    rows = pscp_sensitivity(summary)
    lines += ["", "## PSCP sensitivity (* = the ranking changes)", "",
              "| method | " + " | ".join(sensitivity_headers(summary)) + " |", "|---|" + "---:|" * len(rows)]
    lines += [f"| {s.method} | " + " | ".join(fmt(r.pscp[s.method], 2) for r in rows) + " |"
              for s in summary.summaries if s.pscp is not None]
    lines += ["", "## Every metric (mean over seeds)", "", "| method | task | metrics |", "|---|---|---|"]
    lines += [f"| {c.method} | {c.task} | " + ", ".join(f"{k} {fmt(v)}" for k, v in c.metrics.items()) + " |"
              for c in summary.cells if c.metrics]
    lines += ["", "## Stability (sd over seeds)", "", "| method | task | n | mean | sd | 95 % CI | min | max | IQR |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in stability(summary):
        spread = Spread.of(c.scores)
        lines.append(f"| {c.method} | {c.task} | {c.n_seeds} | {fmt(c.score_mean)} | {fmt(c.score_sd, 2)} | "
                     f"{'± ' + fmt(c.ci95, 2) if c.ci95 is not None else '—'} | "
                     f"{fmt(spread.minimum) if spread else '—'} | {fmt(spread.maximum) if spread else '—'} | "
                     f"{fmt(spread.iqr, 2) if spread else '—'} |")
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
           "Method & " + " & ".join(latex_escape(t) for t in tasks) + " & $P_{avg}$ \\\\", "\\midrule"]
    p_avg = {s.method: s.p_avg for s in summary.summaries}
    for method in summary.methods:
        cells = [summary.cell(method, t) for t in tasks]
        body = [f"{fmt(c.score_mean)} $\\pm$ {fmt(c.score_sd)}" if c.score_sd is not None else fmt(c.score_mean)
                for c in cells]
        out.append(f"{latex_escape(method)} & " + " & ".join(body) + f" & {fmt(p_avg.get(method))} \\\\")
    out += ["\\bottomrule", "\\end{tabular}", "\\caption{Score (mean $\\pm$ sd over seeds).}", "\\end{table}", "",
            "\\begin{table}[t]", "\\centering", "\\small", "\\begin{tabular}{lrrrrr}", "\\toprule",
            "Method & $P_{avg}$ & $M_p$ & $M_f$ (TFLOPs) & $M_m$ (GB) & PSCP \\\\", "\\midrule"]
    for s in summary.summaries:
        out.append(f"{latex_escape(s.method)} & {fmt(s.p_avg)} & {params_text(s.trainable_params)} & "
                   f"{fmt(s.extra_tflops, 4)} & {fmt(s.peak_mem_gb, 2)} & {fmt(s.pscp, 2)} \\\\")
    k = summary.constants
    out += ["\\bottomrule", "\\end{tabular}",
            f"\\caption{{PSCP with $\\beta_p={k.beta_p:g}, \\beta_f={k.beta_f:g}, \\beta_m={k.beta_m:g}$.}}",
            "\\end{table}"]
    return "\n".join(out) + "\n"
