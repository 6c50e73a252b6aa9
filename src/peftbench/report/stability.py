"""The stability section: per method label × task, the spread of the score over seeds, and — where a
grid compares mitigation strategies of one method (docs/stability.md) — each strategy's spread
against the plain method's and its training cost against an ensemble's.

Pure aggregation over stored runs (`strategy_rows`), then renderings; a strategy is read from each
run's identity, so labels are free-form.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from peftbench.report.aggregate import Spread, fmt
from peftbench.report.tables import latex_escape
from peftbench.store import RunRecord


@dataclass(frozen=True)
class StrategyRow:
    method: str  # the method's registry name (lora, prompt_tuning, ...)
    label: str  # the grid's method id
    strategy: str
    task: str
    spread: Spread
    scores: tuple[float, ...]
    step_equivalents: float | None  # mean training cost in single trainings
    sd_vs_default: float | None  # sd / the plain method's sd on the task (< 1: steadier)
    cost_vs_ensemble: float | None  # step-equivalents / the ensemble's, when the grid has one
    peak_train_mem_gb: float | None  # mean PSCP memory M (one model's AdamW measurement + what the strategy holds)
    run_peak_mem_gb: float | None  # mean measured peak of the runs' own training (RSS on CPU, CUDA peak on a GPU)
    not_done: int = 0  # failed or diverged runs of the cell: left out of the spread, never silently

    @property
    def n_text(self) -> str:
        return f"{self.spread.n}" + (f" ({self.not_done} not done)" if self.not_done else "")


def _gb(value: float | None) -> str:
    """Three significant digits: a tiny model's megabytes and an 8B model's tens of GB both readable."""
    return "—" if value is None else f"{value:.3g}"


def _mean_cost(runs: Sequence[RunRecord], key: str) -> float | None:
    values = [r.costs[key] for r in runs if r.costs and r.costs.get(key) is not None]
    return statistics.fmean(values) if values else None


def strategy_of(record: RunRecord) -> str:
    training = (record.config or {}).get("training") or {}
    return (training.get("mitigation") or {}).get("strategy", "default")


def compared_as(record: RunRecord) -> str:
    """What a run is apart from its strategy, label and seed: runs of two strategies are compared
    only when this is the same (the same method, arguments, learning rate, task and protocol), so
    that `lora-a-deni` is held against `lora-a`, never against another label of LoRA."""
    config = dict(record.config or {})
    config.pop("seed", None)
    config["method"] = {k: v for k, v in (config.get("method") or {}).items() if k != "id"}
    config["training"] = {k: v for k, v in (config.get("training") or {}).items() if k != "mitigation"}
    return json.dumps(config, sort_keys=True, default=str)


def strategy_rows(records: Sequence[RunRecord]) -> list[StrategyRow]:
    """One row per method label × task of the done runs, with the comparisons where they exist, and
    the count of its runs that failed or diverged (a seed that collapsed to a failure would otherwise
    vanish from the sd it is the point of). A cell with no done run has no row: the score table says
    "failed" there."""
    groups: dict[tuple[str, str, str, str], list[RunRecord]] = defaultdict(list)
    failed: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for r in records:
        key = (compared_as(r), r.method, strategy_of(r), r.task)
        if r.status == "done" and r.metrics:
            groups[key].append(r)
        elif r.status in ("failed", "diverged"):
            failed[key] += 1
    base: dict[tuple[str, str], tuple[Spread, float | None]] = {}
    rows = []
    for (key, label, strategy, task), runs in groups.items():
        name = ((runs[0].config or {}).get("method") or {}).get("name", label)
        scores = tuple(float(r.metrics["score"]) for r in sorted(runs, key=lambda r: r.seed))
        costs = [r.training["step_equivalents"] for r in runs if r.training and "step_equivalents" in r.training]
        cost = statistics.fmean(costs) if costs else (1.0 if strategy == "default" else None)
        spread = Spread.of(scores)
        memory = (_mean_cost(runs, "peak_train_mem_gb"), _mean_cost(runs, "train_run_peak_mem_gb"))
        rows.append((key, name, label, strategy, task, spread, scores, cost, memory,
                     failed[(key, label, strategy, task)]))
        base.setdefault((key, strategy), (spread, cost))
    out = []
    for key, name, label, strategy, task, spread, scores, cost, memory, not_done in rows:
        default = base.get((key, "default"))
        ensemble = base.get((key, "ensemble"))
        sd_ratio = (spread.sd / default[0].sd) if default and spread.sd is not None and default[0].sd else None
        cost_ratio = (cost / ensemble[1]) if ensemble and cost is not None and ensemble[1] else None
        out.append(StrategyRow(name, label, strategy, task, spread, scores, cost, sd_ratio, cost_ratio, *memory,
                               not_done))
    return sorted(out, key=lambda r: (r.task, r.method, r.strategy != "default", r.label))


def markdown(rows: Sequence[StrategyRow]) -> str:
    lines = ["", "## Stability by strategy (score over seeds)", "",
             "| task | method | strategy | n | mean | sd | min | max | IQR | sd / default | training cost | "
             "cost / ensemble | memory M (GB) | run peak (GB) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r.spread
        lines.append(f"| {r.task} | {r.label} | {r.strategy} | {r.n_text} | {fmt(s.mean)} | {fmt(s.sd, 2)} | "
                     f"{fmt(s.minimum)} | {fmt(s.maximum)} | {fmt(s.iqr, 2)} | {fmt(r.sd_vs_default, 2)} | "
                     f"{fmt(r.step_equivalents, 2)} | {fmt(r.cost_vs_ensemble, 2)} | {_gb(r.peak_train_mem_gb)} | "
                     f"{_gb(r.run_peak_mem_gb)} |")
    lines += ["", "Training cost: optimiser steps of all models / the steps of one training. Memory M: PSCP's "
              "training memory (one model's fixed AdamW measurement plus the copies or running average the "
              "strategy holds at once); run peak: the runs' own measured peak while training (CUDA peak on a GPU; on "
              "CPU the growth of the process's resident-set high-water mark, free heap pages returned first, plus "
              "the weights: noisy, above the tensors' peak by Python objects and library pages a worker touches "
              "first)."]
    return "\n".join(lines) + "\n"


def latex(rows: Sequence[StrategyRow]) -> str:
    out = ["", "% stability by strategy", "\\begin{table}[t]", "\\centering", "\\small",
           "\\begin{tabular}{lllrrrrrr}", "\\toprule",
           "Task & Method & Strategy & Mean & SD & IQR & SD/default & Cost/ensemble & Memory (GB) \\\\", "\\midrule"]
    out += [f"{latex_escape(r.task)} & {latex_escape(r.label)} & {latex_escape(r.strategy)} & {fmt(r.spread.mean)} & "
            f"{fmt(r.spread.sd, 2)} & {fmt(r.spread.iqr, 2)} & {fmt(r.sd_vs_default, 2)} & "
            f"{fmt(r.cost_vs_ensemble, 2)} & {_gb(r.peak_train_mem_gb)} \\\\" for r in rows]
    out += ["\\bottomrule", "\\end{tabular}", "\\caption{Score over seeds per mitigation strategy.}", "\\end{table}"]
    return "\n".join(out) + "\n"


def to_json(rows: Sequence[StrategyRow]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]


def write_plot(rows: Sequence[StrategyRow], out_dir: Path) -> Path | None:
    """Box plots with the seeds' scores as points: one box per method label, one panel per task; PNG
    (returned, for the page) and SVG, in the report's style (labels are text, never math)."""
    if not rows:
        return None
    import matplotlib
    from matplotlib.figure import Figure

    from peftbench.report.plots import STYLE, save_cropped

    tasks = list(dict.fromkeys(r.task for r in rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "stability_strategies.png"
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(max(5.0, 1.1 * len(rows) / len(tasks) + 2) * len(tasks), 4))
        axes = fig.subplots(1, len(tasks), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            mine = [r for r in rows if r.task == task]
            ax.boxplot([list(r.scores) for r in mine], showfliers=False)
            for i, r in enumerate(mine, start=1):
                ax.scatter([i] * len(r.scores), r.scores, s=10, alpha=0.6)
            ax.set_xticks(range(1, len(mine) + 1), [r.label for r in mine], rotation=35, ha="right", fontsize=7)
            ax.set(title=f"{task}: score over seeds", ylabel="score")
        fig.tight_layout()
        save_cropped(fig, path, path.with_suffix(".svg"))
    return path


def html(rows: Sequence[StrategyRow], plot: Path | None) -> str:
    import base64
    from html import escape

    headers = ["task", "method", "strategy", "n", "mean", "sd", "min", "max", "IQR", "sd / default",
               "training cost", "cost / ensemble", "memory M (GB)", "run peak (GB)"]
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in (
        r.task, r.label, r.strategy, r.n_text, fmt(r.spread.mean), fmt(r.spread.sd, 2), fmt(r.spread.minimum),
        fmt(r.spread.maximum), fmt(r.spread.iqr, 2), fmt(r.sd_vs_default, 2), fmt(r.step_equivalents, 2),
        fmt(r.cost_vs_ensemble, 2), _gb(r.peak_train_mem_gb), _gb(r.run_peak_mem_gb))) + "</tr>" for r in rows)
    table = ('<table class="stability"><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in headers)
             + f"</tr></thead><tbody>{body}</tbody></table>")
    image = ""
    if plot is not None:
        data = base64.b64encode(plot.read_bytes()).decode()
        image = f'<figure><img alt="stability by strategy" src="data:image/png;base64,{data}"></figure>'
    return f'<h2 id="stability">Stability by strategy</h2>{table}{image}'
