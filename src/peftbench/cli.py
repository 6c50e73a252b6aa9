"""The `peftbench` command line.

The command names and options here are a contract with users and scripts: extend, don't break.
User errors print one line on stderr and exit with code 2; an interrupted grid exits with 130
and resumes when the same command runs again.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, RenderableType

from peftbench.errors import PeftbenchError
from peftbench.jsonsafe import dumps_json
from peftbench.utils import end_without_collecting

if TYPE_CHECKING:
    from peftbench.config import BenchConfig
    from peftbench.plan import RunSpec
    from peftbench.runner.backends.processes import WorkerProcesses
    from peftbench.runner.grid import GridResult
    from peftbench.tasks import TaskSpec

app = typer.Typer(
    help="Benchmark parameter-efficient fine-tuning methods: quality, cost and PSCP, end to end.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
# No emoji codes: rich would print "lora:train:17" as "lora🚋17", and names, paths and messages are data.
out_console = Console(emoji=False)
err_console = Console(stderr=True, emoji=False)


def print_table(table: RenderableType) -> None:
    """On a terminal, as wide as the terminal; redirected (a log file, a pipe, a Slurm job's
    output) and without COLUMNS, as wide as the table needs: rich would wrap it to 80 columns and
    split numbers such as 12,288 across two lines."""
    if out_console.is_terminal or "COLUMNS" in os.environ:
        out_console.print(table)
        return
    needed = out_console.measure(table, options=out_console.options.update(width=10_000)).maximum
    width = out_console.width
    out_console.width = max(width, needed)
    try:
        out_console.print(table)
    finally:
        out_console.width = width


def _show_version(value: bool) -> None:
    if value:
        from peftbench import __version__

        print(f"peftbench {__version__}")
        raise typer.Exit()


@app.callback()
def _app(version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                               help="Print the version and exit.")] = False) -> None:
    """Benchmark parameter-efficient fine-tuning methods: quality, cost and PSCP, end to end."""

OutOption = Annotated[Path | None, typer.Option("--out", help="Output directory (default: the config's output_dir).")]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Worker processes running runs in parallel (runtime.workers).")
]
SetOption = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE",
                                   help="Override a config key, e.g. --set training.max_steps=50 (repeatable).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress: only errors and the final report.")]
NoReportOption = Annotated[bool, typer.Option("--no-report", help="Skip the report at the end (config: "
                                             "report: false); `peftbench report` writes it later.")]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Off a terminal, a line for every phase and "
                                             "each tenth of training (with its loss), not only runs starting and "
                                             "finishing.")]


def _verbosity(quiet: bool, verbose: bool) -> int:
    if quiet and verbose:
        raise PeftbenchError("--quiet and --verbose: choose one")
    return 0 if quiet else 2 if verbose else 1


class ReportFormat(str, Enum):
    table = "table"
    md = "md"
    csv = "csv"
    json = "json"
    latex = "latex"


class ListFormat(str, Enum):
    table = "table"
    json = "json"
    md = "md"


class ListWhat(str, Enum):
    methods = "methods"
    tasks = "tasks"


def quickstart_config_path() -> Path:
    return Path(str(resources.files("peftbench") / "configs" / "quickstart.yaml"))


class ExecutorKind(str, Enum):
    local = "local"
    ray = "ray"
    slurm = "slurm"


ExecutorOption = Annotated[
    ExecutorKind | None, typer.Option("--executor", help="Where runs execute (executor.kind in the config).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the plan (runs done and pending, resources, estimate); start nothing.")
]
TflopsOption = Annotated[
    float | None, typer.Option("--tflops", min=0.001, help="Sustained TFLOP/s per run for the --dry-run estimate "
                               "(default: 400 on a GPU, this machine's measured rate on CPU).")
]


@app.command()
def quickstart(out: OutOption = None, set_: SetOption = None, workers: WorkersOption = None,
               executor: ExecutorOption = None, dry_run: DryRunOption = False, quiet: QuietOption = False,
               verbose: VerboseOption = False, no_report: NoReportOption = False) -> None:
    """Run the embedded offline grid (tiny built-in model, generated tasks, every method × 2 seeds), then report."""
    verbosity = _verbosity(quiet, verbose)
    cfg = _grid_config(quickstart_config_path(), set_ or [], workers, executor, out, dry_run)
    report = cfg.report and not no_report
    processes = _prepare_grid(cfg, out, report)
    from peftbench.runner.grid import run_grid

    with _resumable():
        result = run_grid(cfg, out, err_console, verbosity=verbosity, processes=processes)
    _print_finished(result, report)


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    out: OutOption = None,
    set_: SetOption = None,
    workers: WorkersOption = None,
    executor: ExecutorOption = None,
    dry_run: DryRunOption = False,
    tflops: TflopsOption = None,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    no_report: NoReportOption = False,
) -> None:
    """Train, evaluate and cost every run of CONFIG that is not done yet (re-running resumes)."""
    verbosity = _verbosity(quiet, verbose)
    cfg = _grid_config(config, set_ or [], workers, executor, out, dry_run, tflops)
    report = cfg.report and not no_report
    processes = _prepare_grid(cfg, out, report)
    from peftbench.runner.grid import run_grid

    with _resumable():
        result = run_grid(cfg, out, err_console, verbosity=verbosity, processes=processes)
    _print_finished(result, report)


def _grid_config(config: Path, overrides: list[str], workers: int | None, executor: ExecutorKind | None,
                 out: Path | None, dry_run: bool, tflops: float | None = None) -> BenchConfig:
    """The config with the command's overrides (--workers and --executor are overrides too); with
    --dry-run, print its plan and end the command here: nothing is started."""
    from peftbench.config import load_config

    overrides = [*overrides, *([f"runtime.workers={workers}"] if workers else []),
                 *([f"executor.kind={executor.value}"] if executor else [])]
    cfg = load_config(config, overrides)
    if dry_run:
        _print_plan(cfg, Path(out or cfg.output_dir), tflops)
        raise typer.Exit()
    return cfg


def _prepare_grid(cfg: BenchConfig, out: Path | None, report: bool) -> WorkerProcesses | None:
    """Start what a grid will wait for while it is still being checked: a new local grid's worker
    processes, before the run path is imported here (`start_early`), and, once it is, the import of
    what drawing the report needs."""
    from peftbench.runner.backends.processes import start_early

    processes = start_early(cfg, Path(out or cfg.output_dir))
    try:
        importlib.import_module("peftbench.runner.grid")
    except BaseException:  # Ctrl-C in these seconds: do not leave the workers to finish their imports
        if processes is not None:
            processes.close()
        raise
    _import_plotting(report)
    return processes


def _import_plotting(report: bool) -> None:
    """Import what drawing the report needs (matplotlib: 0.3–0.5 s) while the grid is checked and
    run rather than after its last run: the grid leaves a core idle while it waits for its workers,
    and training releases the GIL in its backward passes. Started once the run path is imported, so
    that what the main thread still imports is transformers' and peft's lazy modules, not
    matplotlib's (and Python's import locks make an overlap safe). Not a daemon, so that the
    interpreter never ends in the middle of an import: a failing grid waits for it, under a second
    (seconds the first time, while matplotlib builds its font cache)."""
    if report:
        threading.Thread(target=importlib.import_module, args=("peftbench.report.plots",),
                         name="peftbench-import-plotting").start()


@contextmanager
def _resumable() -> Iterator[None]:
    """An interrupted grid exits with 130 and says how to resume (typer would exit silently).

    A context manager rather than a wrapper, so the grid runs one call below the command."""
    try:
        yield
    except KeyboardInterrupt:
        err_console.print("interrupted: finished runs are stored; run the same command again to resume",
                          highlight=False)
        raise typer.Exit(130) from None


def _print_finished(result: GridResult, report: bool) -> None:
    """The report (its files rewritten only when what they are made from changed), what this
    invocation ran, and exit code 1 if any run failed."""
    if report:
        _print_report(result.out_dir, ReportFormat.table, always_write=False)
    failed = result.counts.get("failed", 0)
    ran = ", ".join(f"{v} {k}" for k, v in sorted(result.counts.items())) or "nothing left to run"
    err_console.print(
        f"finished: {result.total} run{'' if result.total == 1 else 's'}, {result.already_done} already done before; "
        f"this time: {ran}. "
        f"Report files are in {result.out_dir}.",
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


def _check_against_model(cfg: BenchConfig, runs: list[RunSpec]) -> None:
    """The methods' target modules resolved on the model, as `run` does first, where the model is
    available (the built-in one, a local directory, the cache or the hub); otherwise a note."""
    from peftbench.modeling import ModelUnavailable, resolve_model
    from peftbench.runner.grid import check_methods

    try:
        source = resolve_model(cfg.model)
    except ModelUnavailable:
        err_console.print(f"note: methods not checked against {cfg.model.name} (its weights are not available "
                          f"here; `run` checks them first)", highlight=False, markup=False, soft_wrap=True)
        return
    check_methods(cfg, source, runs)


def _print_data_notes(cfg: BenchConfig) -> None:
    """Check every task's data before anything runs (one error listing every missing split) and show
    how splits that had to be carved are made."""
    from peftbench.plan import check_data

    for note in check_data(cfg):
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)


def _duration(seconds: float, units: tuple[str, str, str] = ("s", "min", "h")) -> str:
    """Seconds, minutes or hours, whichever reads best (a tiny model's 2 s run is not "0.0 min")."""
    from peftbench.report.aggregate import fmt

    if seconds < 60:
        return f"{fmt(seconds)} {units[0]}"
    return f"{fmt(seconds / 60)} {units[1]}" if seconds < 3600 else f"{fmt(seconds / 3600, 2)} {units[2]}"


def _run_time(seconds: float) -> str:
    """A sum of runs' times: run-seconds, run-minutes or run-hours."""
    return _duration(seconds, ("run-seconds", "run-minutes", "run-hours"))


def _flops_estimate(cfg: BenchConfig, runs: list[RunSpec], tflops: float | None) -> str:
    """Pending runs of methods without a finished run, from counted training FLOPs (`estimate.py`)."""
    from peftbench.runner.estimate import estimate_training

    found = estimate_training(cfg, runs, tflops)
    if found is None:
        return (f"no time estimate for the {len(runs)} runs of methods without finished runs: the configuration of "
                f"{cfg.model.name} is not available here")
    text = (f"≈ {_run_time(found.hours * 3600)} of training for the {found.runs} pending runs without finished "
            f"runs, from counted training "
            f"FLOPs at {found.tflops:.3g} TFLOP/s ({found.throughput}; tokens per example: "
            f"{'; '.join(found.lengths.values())}, unpadded, where a batch is padded to its longest example: a few "
            f"% low; evaluation, cost measurement and the overheads that dominate a small model's runs not included)")
    if found.unknown:
        text += f", not counting {', '.join(found.unknown)} (training rows not available here)"
    return text


def _print_plan(cfg: BenchConfig, out: Path, tflops: float | None = None) -> None:
    from rich.table import Table

    from peftbench.report.aggregate import fmt
    from peftbench.runner.grid import executor_line, plan_summary

    _print_data_notes(cfg)
    rows, pending_runs = plan_summary(cfg, out)
    table = Table(title=f"{cfg.name}: plan for {out}")
    for column in ("method", "runs", "done", "failed", "pending", "mean run time", "peak train memory"):
        table.add_column(column, justify="left" if column == "method" else "right", overflow="fold")
    for r in rows:
        table.add_row(r.method, str(r.runs), str(r.done), str(r.failed), str(r.pending),
                      _duration(r.mean_run_s) if r.mean_run_s else "–",
                      f"{fmt(r.peak_train_mem_gb, 3)} GB" if r.peak_train_mem_gb else "–")
    print_table(table)
    pending = sum(r.pending for r in rows)
    known = [r for r in rows if r.pending and r.mean_run_s]
    seconds = sum(r.pending * r.mean_run_s for r in known)
    estimate = (f"≈ {_run_time(seconds)} for the {sum(r.pending for r in known)} pending runs of methods "
                f"with finished runs (their measured times)" if known else "")
    unmeasured = {r.method for r in rows if r.pending and not r.mean_run_s}
    if unmeasured:
        estimate += ("; " if estimate else "") + _flops_estimate(
            cfg, [r for r in pending_runs if r.method_id in unmeasured], tflops)
    where = executor_line(cfg, pending)
    out_console.print(f"{pending} of {sum(r.runs for r in rows)} runs pending, to run on {where}; "
                      f"{estimate}. Dry run: nothing was started or written.", highlight=False)
    if cfg.tpv is not None:
        from peftbench.tpv.study import second_stage_size

        later = second_stage_size(cfg.tpv, len(cfg.tpv.seeds or cfg.seeds))
        out_console.print("Then, once these are stored, the TPV study's second stage: "
                          + ", ".join(f"{n} {what}" for what, n in later.items() if n) + ".", highlight=False)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="Results directory.")] = Path("runs/quickstart"),
    format: Annotated[ReportFormat, typer.Option("--format", help="What to print.")] = ReportFormat.table,
    reference: Annotated[str | None, typer.Option(help="Show published rows beside ours: peftbench-paper.")] = None,
) -> None:
    """Aggregate a results directory: print one rendering and write every artefact beside the store
    (leaderboard.md/.html, results.csv, summary.json, tables.tex, plots/)."""
    _print_report(out, format, reference)


def _print_report(out: Path, format: ReportFormat, reference: str | None = None, always_write: bool = True) -> None:
    """Print one rendering; write the files always, or only when what they are made from changed."""
    from peftbench.report import (
        REFERENCES,
        build_report,
        report_json,
        report_latex,
        report_markdown,
        rich_tables,
        runs_csv,
        write_report_if_changed,
    )
    from peftbench.report import write_report as write_artifacts

    if reference is not None and reference not in REFERENCES:
        raise PeftbenchError(f"--reference {reference!r}: known references are {', '.join(REFERENCES)}")
    result = build_report(out, reference=reference)
    if always_write:
        write_artifacts(result)
    else:
        write_report_if_changed(result)
    if result.other_runs:
        err_console.print(f"note: {result.other_runs} run(s) in {out} belong to an earlier config and are not shown",
                          highlight=False)
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    renderings = {
        ReportFormat.md: lambda: report_markdown(result),
        ReportFormat.csv: lambda: runs_csv(result.records),
        ReportFormat.json: lambda: report_json(result) + "\n",
        ReportFormat.latex: lambda: report_latex(result),
    }
    if format is ReportFormat.table:
        from rich.markdown import Markdown

        from peftbench.report import tpv

        if result.summary.methods or result.tpv is None:
            print_table(rich_tables(result.summary))
        if result.tpv is not None:
            out_console.print(Markdown(tpv.markdown(result.tpv)))
    else:
        sys.stdout.write(renderings[format]())


@app.command()
def compare(
    dir_a: Annotated[Path, typer.Argument(help="Results directory A.")],
    dir_b: Annotated[Path, typer.Argument(help="Results directory B (differences are B − A).")],
    format: Annotated[ListFormat, typer.Option("--format")] = ListFormat.table,
) -> None:
    """Two result sets side by side: score differences per method × task, and whether they exceed seed noise."""
    from dataclasses import asdict

    from rich.table import Table

    from peftbench.report import build_report, current_config
    from peftbench.report.aggregate import fmt
    from peftbench.report.compare import compare as compare_summaries
    from peftbench.report.compare import notes
    from peftbench.report.tables import md_table

    a, b = build_report(dir_a).summary, build_report(dir_b).summary
    rows = compare_summaries(a, b)
    if not rows:
        raise PeftbenchError(f"{dir_a} and {dir_b} have no method × task in common")
    configs = [current_config(d) for d in (dir_a, dir_b)]
    dumped = [c.model_dump(mode="json") if c is not None else None for c in configs]
    for note in notes(a, b, *dumped):  # on stderr: the JSON on stdout stays a list of rows
        err_console.print(f"note: {note}", soft_wrap=True)
    if format is ListFormat.json:
        print(dumps_json([asdict(r) for r in rows], indent=2))
        return
    headers = ("method", "task", "A", "B", "B − A", "seeds A/B", "p", "p (Holm)", "beyond noise")
    verdict = {True: "yes", False: "no", None: "n/a"}

    def seeds(n: int, not_done: int) -> str:
        return f"{n}" + (f" (+{not_done} not done)" if not_done else "")

    cells = [(r.method, r.task, fmt(r.mean_a), fmt(r.mean_b), fmt(r.diff, 2),
              f"{seeds(r.n_a, r.not_done_a)}/{seeds(r.n_b, r.not_done_b)}", fmt(r.p_value, 4), fmt(r.p_holm, 4),
              verdict[r.exceeds_noise]) for r in rows]
    title = (f"B − A  (A = {dir_a}, B = {dir_b}); noise: Welch's t-test over seeds, Holm-adjusted over the "
             f"{sum(r.p_value is not None for r in rows)} tested cells, p < 0.05")
    if format is ListFormat.md:
        print("\n".join([title, "", *md_table(headers, cells, labels=2)]))
        return
    table = Table(title=title)
    for col in headers:
        table.add_column(col, justify="left" if col in ("method", "task") else "right")
    for c in cells:
        table.add_row(*c)
    print_table(table)


@app.command()
def pscp(
    score: Annotated[float, typer.Option(help="Mean primary score over tasks, 0–100.")],
    params: Annotated[float, typer.Option(help="Trainable parameters (M_p).", min=0)],
    tflops: Annotated[float, typer.Option(help="Extra inference TFLOPs over the base model (M_f).", min=0)],
    mem_gb: Annotated[float, typer.Option("--mem-gb", help="Peak training memory in GB (M_m).", min=0)],
    beta: Annotated[float, typer.Option(help="β for all three costs (2 = default, 1 = paper v1).", min=0)] = 2.0,
    c_p: Annotated[float, typer.Option("--c-p", help="C_p", min=0)] = 5e8,
    c_f: Annotated[float, typer.Option("--c-f", help="C_f", min=0)] = 10.0,
    c_m: Annotated[float, typer.Option("--c-m", help="C_m", min=0)] = 94.0,
) -> None:
    """Print the PSCP value for one method's quality and costs."""
    from pydantic import ValidationError

    from peftbench.config import PSCPConfig, describe_validation_error
    from peftbench.pscp import pscp as pscp_value
    from peftbench.report.aggregate import fmt

    try:
        constants = PSCPConfig(c_p=c_p, c_f=c_f, c_m=c_m, beta_p=beta, beta_f=beta, beta_m=beta)
    except ValidationError as exc:
        raise PeftbenchError(f"pscp: {describe_validation_error(exc)}") from None
    print(fmt(pscp_value(score, params, tflops, mem_gb, constants), 2))


@app.command()
def validate(
    config: Annotated[Path, typer.Argument(help="YAML config file.")],
    set_: SetOption = None,
) -> None:
    """Check a config without running it; print the number of runs it defines."""
    from peftbench.config import load_config
    from peftbench.plan import grid_size, plan_runs
    from peftbench.runner.grid import executor_line

    cfg = load_config(config, set_ or [])
    runs = plan_runs(cfg)
    _check_against_model(cfg, runs)
    _print_data_notes(cfg)
    study = ""
    if cfg.tpv is not None:
        from peftbench.tpv.study import plan_first_stage, second_stage_size

        later = sum(second_stage_size(cfg.tpv, len(cfg.tpv.seeds or cfg.seeds)).values())
        study = f", plus a TPV study of {len(plan_first_stage(cfg))} runs and then {later} more"
    print(f"{config}: valid — {grid_size(cfg)} "
          f"= {len(runs)} runs{study}, model {cfg.model.name}, on {executor_line(cfg)}")


DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Local task files: DIR/<task>/<split>.jsonl in the hub's row schema.")
]
TasksDirOption = Annotated[
    list[Path] | None, typer.Option("--tasks-dir", help="A directory of your own task files (*.yaml); repeatable.")
]


def _task(name: str, tasks_dir: list[Path] | None) -> TaskSpec:
    from peftbench.tasks import catalog

    return catalog(tasks_dir or []).get(name)


@app.command(name="show-task")
def show_task(
    name: Annotated[str, typer.Argument(help="Task name (see: peftbench list tasks).")],
    data_dir: DataDirOption = None,
    tasks_dir: TasksDirOption = None,
    split: Annotated[str | None, typer.Option(help="Split (default: the task's training split).")] = None,
    index: Annotated[int, typer.Option(help="Row number within the split.", min=0)] = 0,
) -> None:
    """Show one row of a task as the model sees it: instruction, rendered prompt and target."""
    from peftbench.tasks import load_rows
    from peftbench.tasks.prompts import PLAIN_TEMPLATE

    task = _task(name, tasks_dir)
    split = split or task.train_split
    rows = load_rows(task, split, data_dir)
    if index >= len(rows):
        raise PeftbenchError(f"--index {index}: split {split!r} has {len(rows)} rows")
    row = rows[index]
    print(f"task: {task.name} ({task.category}) — {task.description}")
    print(f"kind: {task.kind}; metrics: {', '.join(task.metrics)} (primary {task.primary_metric}); "
          f"max new tokens: {task.max_new_tokens}; splits: {task.train_split} → {task.eval_split}")
    if task.labels:
        print(f"labels: {', '.join(task.labels)}")
    print(f"--- prompt ({split}[{index}], plain template; models with a chat template get it as one user turn)")
    print(PLAIN_TEMPLATE.format(instruction=task.instruction, input=task.render_input(row)), end="")
    print(f"--- target\n{task.render_target(row)}")


@app.command()
def score(
    task_name: Annotated[str, typer.Argument(metavar="TASK", help="Task name.")],
    predictions: Annotated[Path, typer.Argument(help="JSONL: one {\"index\": i, \"prediction\": text} per line.")],
    data_dir: DataDirOption = None,
    tasks_dir: TasksDirOption = None,
    split: Annotated[str | None, typer.Option(help="Split the indices refer to (default: the eval split).")] = None,
    missing_as_wrong: Annotated[bool, typer.Option(
        "--missing-as-wrong", help="Score rows without a prediction as wrong (invalid) instead of failing.")] = False,
    records: Annotated[Path | None, typer.Option(
        "--records", help="Also write each row as a run's predictions file holds it (JSONL: what was read, the "
        "reference it was compared with, whether it was right), to check the scores row by row.")] = None,
) -> None:
    """Score predictions produced anywhere (vLLM, another stack) with the task's metrics; prints JSON.

    Every row of the split is scored: a row without a prediction is an error (exit 2), or with
    --missing-as-wrong an invalid output, so a score never covers a silently smaller subset."""
    from peftbench.scoring import score as score_outputs
    from peftbench.tasks import load_rows
    from peftbench.tasks.data import read_jsonl

    task = _task(task_name, tasks_dir)
    split = split or task.eval_split
    rows = load_rows(task, split, data_dir)
    given: dict[int, str] = {}
    for lineno, record in enumerate(read_jsonl(predictions, task=task.name), start=1):
        index, text = record.get("index"), record.get("prediction")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(rows):
            raise PeftbenchError(f"{predictions}: line {lineno}: 'index' must be an integer in 0..{len(rows) - 1}")
        if not isinstance(text, str):
            raise PeftbenchError(f"{predictions}: line {lineno}: 'prediction' must be a string")
        if index in given:
            raise PeftbenchError(f"{predictions}: line {lineno}: index {index} appears twice")
        given[index] = text
    if not given:
        raise PeftbenchError(f"{predictions}: no predictions (expected one {{\"index\": i, \"prediction\": text}} "
                             f"line per row of {task.name} {split}, {len(rows)} rows)")
    missing = [i for i in range(len(rows)) if i not in given]
    if missing and not missing_as_wrong:
        shown = ", ".join(map(str, missing[:5])) + (", …" if len(missing) > 5 else "")
        raise PeftbenchError(f"{predictions}: {len(missing)} of {len(rows)} rows of {task.name} {split} have no "
                             f"prediction (indices {shown}); pass --missing-as-wrong to score them as wrong")
    if missing:
        err_console.print(f"note: {len(missing)} of {len(rows)} rows have no prediction and are scored as wrong")
    result = score_outputs(task, rows, [given.get(i, "") for i in range(len(rows))])
    if records is not None:
        from peftbench.utils import atomic_write_jsonl

        atomic_write_jsonl(records, result.records)
    print(dumps_json({
        "task": task.name, "split": split, "n": result.n, "n_predicted": len(given), "n_missing": len(missing),
        "primary_metric": task.primary_metric, "score": result.primary,
        "metrics": result.metrics, "invalid_rate": result.invalid_rate,
    }, indent=2))


@app.command()
def cost(
    model_config: Annotated[str, typer.Option("--model-config", help="Named config (llama3-8b), a config.json, a "
                                              "model directory or a hub id.")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated method names (default: the paper's 7).")
                       ] = None,
    format: Annotated[ListFormat, typer.Option("--format")] = ListFormat.table,
    seq_len: Annotated[int | None, typer.Option(help="Tokens in the costed forward pass (default: the cost "
                                                     "protocol's costs.flops_seq_len).", min=1)] = None,
    grid: Annotated[Path | None, typer.Option("--config", help="A grid's config: its methods with their "
                                              "arguments, and its cost protocol's forward shape, as its runs "
                                              "measure them.")] = None,
) -> None:
    """Parameters and forward FLOPs of each method from a model's configuration alone (no weights);
    counts are kept in ~/.cache/peftbench/counts/ for the next call."""
    from rich.table import Table

    from peftbench.config import CostsConfig, load_config
    from peftbench.costs.from_config import config_counts, cost_from_config, load_model_config, voted_row
    from peftbench.methods import paper_methods, resolve_method
    from peftbench.plan import resolve_methods
    from peftbench.report.aggregate import fmt
    from peftbench.report.tables import md_table
    from peftbench.utils import quiet_libraries

    quiet_libraries()
    protocol = CostsConfig()
    if grid is not None:
        if methods is not None:
            raise PeftbenchError("--methods and --config: give one of them (--config costs the config's methods)")
        cfg = load_config(grid, [])
        _, training = resolve_methods(cfg)  # the grid's methods only: its tasks are not costed
        protocol = cfg.costs
        entries: list[str | tuple[str, dict]] = [(m.name, m.args) for m in cfg.methods]
    else:
        entries = [m.strip() for m in methods.split(",") if m.strip()] if methods is not None else paper_methods()
        if not entries:
            raise PeftbenchError("--methods: expected at least one method name (comma-separated)")
        for name in entries:
            resolve_method(name)  # unknown names fail before any costing
    seq_len = seq_len or protocol.flops_seq_len
    config = load_model_config(model_config)
    counts = config_counts(config, batch_size=protocol.flops_batch_size, seq_len=seq_len)
    rows = cost_from_config(config, entries, batch_size=protocol.flops_batch_size, seq_len=seq_len, count=counts,
                            variants=grid is None)
    if grid is not None:  # the grid's labels, and its voting strategies' K models, as its runs store them
        rows = [{**row, "method": m.id, **voted_row(row, training[m.id].mitigation.votes)}
                for m, row in zip(cfg.methods, rows, strict=True)]
    counts.save()
    if all("error" in row for row in rows):
        raise PeftbenchError(rows[0]["error"])
    if format is ListFormat.json:
        print(dumps_json(rows, indent=2))
        return
    title = f"{model_config}: forward of {protocol.flops_batch_size} × {seq_len} tokens"
    headers = ("method", "trainable params", "base TFLOPs", "extra TFLOPs", "extra TFLOPs unmerged")
    lines = [(label, "not applicable", "", "", "") if "error" in entry else
             (label, f"{entry['trainable_params']:,}", fmt(entry["base_tflops"], 3), fmt(entry["extra_tflops"], 4),
              fmt(entry["extra_tflops_unmerged"], 4))
             for row in rows
             for entry, label in [(row, row["method"]), *((v, f"  ↳ {v['description']}") for v in row["variants"])]]
    if format is ListFormat.md:
        print("\n".join([title, "", *md_table(headers, lines)]))
    else:
        table = Table(title=title)
        for col in headers:
            table.add_column(col, justify="left" if col == "method" else "right")
        for line in lines:
            table.add_row(*line)
        print_table(table)
    for error in dict.fromkeys(e["error"] for row in rows for e in (row, *row["variants"]) if "error" in e):
        print(f"not applicable: {error}")


@app.command(name="list")
def list_(
    what: Annotated[ListWhat, typer.Argument(help="methods or tasks")],
    format: Annotated[ListFormat, typer.Option("--format", help="md: the tasks table of docs/tasks.md")
                      ] = ListFormat.table,
    tasks_dir: TasksDirOption = None,
) -> None:
    """List the registered methods or tasks."""
    from rich.table import Table

    if what is ListWhat.methods:
        from peftbench.config import PEFT_TUNER_LR
        from peftbench.methods import METHODS

        rows = [{"name": n, "paper": bool(METHODS.get(n).paper), "mergeable": METHODS.get(n).mergeable,
                 "default_lr": METHODS.get(n).default_lr, "defaults": dict(METHODS.get(n).defaults),
                 "description": METHODS.get(n).description} for n in METHODS.names()]
        rows.append({"name": "peft:<TYPE>", "paper": False, "mergeable": False, "default_lr": PEFT_TUNER_LR,
                     "defaults": {}, "description": "any other peft tuner, configured by args (e.g. peft:LOHA "
                     "with r: 8)"})
    else:
        from peftbench.tasks import catalog
        from peftbench.tasks.catalog import tasks_table

        tasks = catalog(tasks_dir or [])
        if format is ListFormat.md:
            sys.stdout.write(tasks_table(tasks))
            return
        rows = []
        for n in tasks.names():
            t = tasks.get(n)
            rows.append({"name": n, "category": t.category, "tags": list(t.tags), "metric": t.primary_metric,
                         "splits": list(t.splits), "description": t.description})
    if format is ListFormat.md:
        raise PeftbenchError("--format md lists tasks only")
    if format is ListFormat.json:
        print(dumps_json(rows, indent=2))
        return
    table = Table()
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(dumps_json(v) if isinstance(v, (dict, list)) else str(v) for v in row.values()))
    print_table(table)


tpv_app = typer.Typer(help="Task prompt vectors kept by origin-initialised prompt-tuning runs (docs/tpv.md).",
                      no_args_is_help=True)
app.add_typer(tpv_app, name="tpv")
ResultsDirOption = Annotated[Path, typer.Option("--out", help="Results directory.")]


@tpv_app.command(name="list")
def tpv_list(out: ResultsDirOption, format: Annotated[ListFormat, typer.Option("--format")] = ListFormat.table) -> None:
    """Every kept TPV: run, method, task, study, shots, origin, seed, score (in the study's metric, as
    the report) and norm."""
    from rich.table import Table

    from peftbench.report import current_config, tpv_metric
    from peftbench.report.aggregate import fmt
    from peftbench.tpv.runs import kept_vectors

    kept = kept_vectors(out, study_metric=tpv_metric(current_config(out)))
    rows = [{"run": k.run_id, "method": k.method, "task": k.task, "study": k.study, "shots": k.shots,
             "origin": k.origin, "seed": k.seed, "metric": k.metric, "score": k.score, "norm": k.norm,
             "tokens": k.n_tokens} for k in kept]
    if format is ListFormat.json:
        print(dumps_json(rows, indent=2))
        return
    if format is ListFormat.md:
        raise PeftbenchError("--format md: tpv list prints table or json")
    table = Table(title=f"task prompt vectors in {out}")
    for key in ("run", "method", "task", "study", "shots", "origin", "seed", "metric", "score", "norm", "tokens"):
        table.add_column(key, justify="left" if key in ("run", "method", "task", "study", "metric") else "right",
                         no_wrap=key == "run")
    for r in rows:
        table.add_row(r["run"], r["method"], r["task"], r["study"], "—" if r["shots"] is None else str(r["shots"]),
                      str(r["origin"]), str(r["seed"]), r["metric"], fmt(r["score"]), fmt(r["norm"], 3),
                      str(r["tokens"]))
    print_table(table)


@tpv_app.command(name="combine")
def tpv_combine(
    runs: Annotated[list[str], typer.Argument(help="Run ids whose TPVs are added (see: peftbench tpv list).")],
    out: ResultsDirOption,
    save: Annotated[Path, typer.Option("--save", help="Prompt file to write (.safetensors), for args.init_prompt.")],
    lam: Annotated[float, typer.Option("--lambda", help="Scale of the summed TPVs (θ = θ₀ + λ·Σ τ).")] = 1.0,
    negate: Annotated[list[str] | None, typer.Option("--negate", help="Run id whose TPV is subtracted.")] = None,
) -> None:
    """Write θ₀ + λ·(Σ τ − Σ τ_negated) as a prompt file; TPVs of different origins do not mix."""
    from peftbench.tpv import vectors
    from peftbench.tpv.runs import combine_runs

    prompt = combine_runs(out, runs, negate or [], lam)
    vectors.save(prompt, save, sources=",".join(runs), negated=",".join(negate or []), scale=lam)
    err_console.print(f"wrote {prompt.describe()} to {save}", highlight=False, markup=False)


def main() -> None:
    """Entry point: run the app and turn user errors into one line and exit code 2."""
    end_without_collecting()
    try:
        code = app(standalone_mode=False)
    except PeftbenchError as exc:
        err_console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()
            sys.exit(2)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx else ""
        err_console.print(f"error: {exc.format_message()}{hint}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
