"""A benchmark grid: check everything, then register the runs and hand what is not done to the driver,
on the backend the config asks for.

All checks that can fail on user input (model availability, method targets on this
architecture, task data) run before the output directory is created, so bad input leaves
nothing half-written behind.
"""

from __future__ import annotations

import importlib.util
import sqlite3
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.markup import escape

from peftbench.config import BenchConfig
from peftbench.errors import PeftbenchError
from peftbench.modeling import ModelSource, ModelUnavailable, resolve_model
from peftbench.plan import RunSpec, check_data, grid_size, plan_runs
from peftbench.report import CONFIG_FILE
from peftbench.runner.backends.local import InlineBackend, PoolBackend
from peftbench.runner.backends.processes import WorkerProcesses, local_workers
from peftbench.runner.backends.ray import RayBackend
from peftbench.runner.backends.slurm import SlurmBackend
from peftbench.runner.driver import Backend, drive
from peftbench.runner.progress import GridProgress, trace_stop
from peftbench.runner.run import RunContext
from peftbench.store import FINAL, TPV_PLAN, Store
from peftbench.tpv.study import plan_first_stage, plan_second_stage
from peftbench.utils import atomic_write_text, quiet_libraries


@dataclass
class GridResult:
    out_dir: Path
    total: int
    already_done: int
    counts: dict[str, int]


def check_methods(cfg: BenchConfig, source: ModelSource, plan: list[RunSpec]) -> None:
    """Apply-time checks (target modules exist, biases can be added) on a weightless copy of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    remote = cfg.model.trust_remote_code
    try:
        model_config = AutoConfig.from_pretrained(source.location, revision=source.revision, trust_remote_code=remote)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=remote)
    except (OSError, ValueError, KeyError) as exc:
        if "trust_remote_code" in str(exc):
            raise PeftbenchError(f"model.name: {cfg.model.name!r} needs code of its own to load; peftbench runs "
                                 f"it only when the config sets model.trust_remote_code: true") from None
        error = PeftbenchError if source.is_local else ModelUnavailable  # the hub refused (gated, no token, offline)
        raise error(f"model.name: cannot load the configuration of {cfg.model.name!r}: "
                    f"{str(exc).strip().splitlines()[0]}") from None
    written = [m.id for m in cfg.methods]
    for method_id, method in {r.method_id: r.method for r in plan}.items():
        try:
            method.check(skeleton)
        except PeftbenchError as exc:
            where = cfg.method_key(written.index(method_id)) if method_id in written else "tpv"
            raise PeftbenchError(f"{where} ({method_id}): {exc}") from None


def check_executor(cfg: BenchConfig) -> None:
    """The optional engine of the configured executor, and the loggers the training reports to, are installed."""
    needs = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}.get(cfg.executor.kind)
    if needs and importlib.util.find_spec(needs[0]) is None:
        raise PeftbenchError(f"executor.kind: {cfg.executor.kind!r} needs {needs[0]}, which is not installed "
                             f"(pip install 'peftbench[{needs[1]}]')")
    for logger in cfg.training.report_to:
        if importlib.util.find_spec(logger) is None:
            raise PeftbenchError(f"training.report_to: {logger!r} needs the {logger} package, which is not installed "
                                 f"(pip install {logger})")


def run_grid(cfg: BenchConfig, out_dir: Path | None = None, console: Console | None = None,
             verbosity: int = 1, processes: WorkerProcesses | None = None) -> GridResult:
    """Run every run of the grid that is not done yet into `out_dir` (default: the config's output_dir),
    then the second stage of a TPV study (runs defined by what the first stage stored). `verbosity`:
    0 no progress, 1 runs starting and finishing, 2 every phase (`GridProgress`). `processes`: local
    workers the caller started early (`processes.start_early`); the grid owns and ends them."""
    console = console or Console(stderr=True, emoji=False)
    quiet_libraries()
    out_dir = Path(out_dir or cfg.output_dir)
    with ExitStack() as owned:
        if processes is not None:
            owned.callback(processes.close)  # a no-op once the grid's backend took them
        check_executor(cfg)
        trace_stop()  # a malformed fault-test mark is refused here, before anything runs
        plan = plan_runs(cfg) if cfg.methods else []
        study = plan_first_stage(cfg) if cfg.tpv else []
        if processes is None:
            processes = _start_workers(cfg, out_dir, plan + study)
            if processes is not None:
                owned.callback(processes.close)
        source = resolve_model(cfg.model)
        check_methods(cfg, source, plan + study)
        for note in check_data(cfg, unchecked_note=False):
            console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        ctx = RunContext(cfg, source, out_dir)
        for task in {r.task: r.task_spec for r in plan + study}.values():
            ctx.task_data(task)

        try:
            store = Store.create(out_dir)
            atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
            store.register([(r.run_id, r.method_id, r.task, r.seed, r.identity) for r in plan + study])
            store.set_plan([r.run_id for r in plan])
            store.set_plan([r.run_id for r in study], key=TPV_PLAN)
        except (OSError, sqlite3.Error) as exc:
            raise PeftbenchError(f"output_dir: cannot write to {out_dir}: {getattr(exc, 'strerror', None) or exc}") \
                from None
        what = (f"{len(plan)} runs ({grid_size(cfg)})"
                if plan else "")
        if study:
            what += f"{' + ' if what else ''}{len(study)} TPV study runs (stage 1 of 2)"
        result = GridResult(out_dir=out_dir, total=0, already_done=0, counts={})
        stage: list[RunSpec] | None = plan + study
        second_stage_due = cfg.tpv is not None
        while stage is not None:  # the grid, then (for a TPV study) the runs defined by what it stored
            status = {r.run_id: r.status for r in store.records()}
            pending = [r for r in stage if status.get(r.run_id) not in FINAL]
            if cfg.executor.kind != "slurm" or cfg.executor.slurm.runs_per_job == 1:
                pending = dispatch_order(pending)  # a Slurm job of several runs keeps one method's together
            result.total += len(stage)
            result.already_done += len(stage) - len(pending)
            console.print(f"[bold]{escape(cfg.name)}[/bold]: {what}, {len(stage) - len(pending)} already finished, "
                          f"{len(pending)} to run on {executor_line(cfg, len(pending))} → {escape(str(out_dir))}")
            counts = drive(pending, store, console, cfg.executor,
                           partial(_backend, ctx, n_runs=len(pending), console=console, processes=processes),
                           verbosity) if pending else {}
            processes = None  # a later stage starts its own
            for key, value in counts.items():
                result.counts[key] = result.counts.get(key, 0) + value
            stage = None
            if second_stage_due:
                second_stage_due = False
                second = plan_second_stage(cfg, out_dir, study, {r.run_id: r.status for r in store.records()})
                store.register([(r.run_id, r.method_id, r.task, r.seed, r.identity) for r in second.runs])
                store.set_plan([r.run_id for r in study + second.runs], key=TPV_PLAN)
                stage, what = second.runs, f"{len(second.runs)} TPV study runs (stage 2 of 2)"
                if second.waiting:
                    console.print(f"tpv: {second.waiting} stage-2 run(s) wait for stage-1 runs that did not finish; "
                                  f"run the same command again to retry them", highlight=False)
        return result


def dispatch_order(runs: list[RunSpec]) -> list[RunSpec]:
    """`runs` with every method's first run before any method's second, and so on (plan order
    within each round), for executors that hand out one run at a time. A method's costs are
    measured by its first run and read from `<output>/costs/` by its later ones
    (`RunContext.method_costs`); two workers starting the same method at once would both measure
    them (0.5 s each on the quickstart's model, 9 methods), one for nothing. Results do not depend
    on the order (each run seeds itself and pins its threads)."""
    seen: dict[str, int] = {}
    rounds = []
    for run in runs:
        rounds.append(seen.get(run.method_id, 0))
        seen[run.method_id] = rounds[-1] + 1
    return [run for _, _, run in sorted(zip(rounds, range(len(runs)), runs, strict=True), key=lambda t: t[:2])]


def _start_workers(cfg: BenchConfig, out_dir: Path, runs: list[RunSpec]) -> WorkerProcesses | None:
    """The local worker processes of the grid's first stage, started now so that they import while
    the grid is checked and the model is built or loaded; None where they are not local processes.
    Their number comes from the runs not finished in an existing store; a store that cannot be
    read starts none here (the grid reports it when it opens the store)."""
    if cfg.executor.kind != "local" or cfg.runtime.workers < 2 or not runs:
        return None
    store = Store(out_dir)
    try:
        status = {r.run_id: r.status for r in store.records()} if store.path.is_file() else {}
    except (OSError, sqlite3.Error):
        return None
    workers = local_workers(cfg, sum(status.get(r.run_id) not in FINAL for r in runs))
    return WorkerProcesses(workers) if workers > 1 else None


def _backend(ctx: RunContext, progress: GridProgress, n_runs: int, console: Console,
             processes: WorkerProcesses | None = None) -> Backend:
    """Where the runs execute: the configured executor (in this process when there is one worker);
    local worker processes already started (`processes`) are used where their number fits."""
    cfg = ctx.cfg
    if cfg.executor.kind == "ray":
        return RayBackend(ctx, progress, cfg.executor.ray, n_runs)
    if cfg.executor.kind == "slurm":
        return SlurmBackend(ctx, progress, cfg.executor.slurm, n_runs, console)
    workers = local_workers(cfg, n_runs)
    if processes is not None and processes.workers != workers:  # one worker runs in this process
        processes.close()
        processes = None
    if workers > 1:
        return PoolBackend(ctx, progress, processes or WorkerProcesses(workers))
    return InlineBackend(ctx, progress)


def executor_line(cfg: BenchConfig, pending: int | None = None) -> str:
    """What the configured executor will ask for, in one line (with `pending`, the local workers that
    really start)."""
    ex = cfg.executor
    if ex.kind == "ray":
        r = ex.ray
        where = f"Ray at {r.address}" if r.address else "a local Ray"
        mem = f", {r.memory_gb:g} GB memory" if r.memory_gb else ""
        return f"{where} (per run: {r.num_cpus:g} CPU, {r.num_gpus:g} GPU{mem})"
    if ex.kind == "slurm":
        s = ex.slurm
        mem = f", {s.mem_gb:g} GB" if s.mem_gb else ""
        return (f"Slurm via submitit (partition {s.partition or 'default'}, per job: {s.runs_per_job} run(s), "
                f"{s.gpus_per_job} GPU, {s.cpus_per_job} CPU{mem}, {s.time_min} min; {s.array_parallelism} at once)")
    workers = local_workers(cfg, pending)
    return f"this machine ({workers} worker process{'es' if workers > 1 else ''}, {cfg.runtime.threads} thread(s) each)"


@dataclass
class PlanRow:
    """One method's share of the grid, with what finished runs say about its cost."""

    method: str
    runs: int
    done: int
    failed: int
    pending: int
    mean_run_s: float | None
    peak_train_mem_gb: float | None


def plan_summary(cfg: BenchConfig, out_dir: Path) -> tuple[list[PlanRow], list[RunSpec]]:
    """The grid's state without starting anything (nothing is loaded, created or written): a row per
    method, and the runs still to do."""
    plan = plan_runs(cfg) if cfg.methods else []
    plan += plan_first_stage(cfg) if cfg.tpv else []
    store = Store(out_dir)
    records = {r.run_id: r for r in store.records()} if store.path.is_file() else {}
    rows = []
    for method in dict.fromkeys(r.method_id for r in plan):
        mine = [records.get(r.run_id) for r in plan if r.method_id == method]
        finished = [r for r in mine if r is not None and r.status == "done"]
        times = [r.timings["total_s"] for r in finished if r.timings and r.timings.get("total_s")]
        mems = [r.costs["peak_train_mem_gb"] for r in finished if r.costs and r.costs.get("peak_train_mem_gb")]
        n_final = sum(r is not None and r.status in FINAL for r in mine)
        rows.append(PlanRow(
            method=method, runs=len(mine), done=n_final,
            failed=sum(r is not None and r.status == "failed" for r in mine), pending=len(mine) - n_final,
            mean_run_s=sum(times) / len(times) if times else None, peak_train_mem_gb=max(mems) if mems else None,
        ))
    return rows, [r for r in plan if r.run_id not in records or records[r.run_id].status not in FINAL]
