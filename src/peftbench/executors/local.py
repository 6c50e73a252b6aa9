"""The local executor: runs one after another in this process, sharing the loaded tokenizer and data."""

from __future__ import annotations

import traceback
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from peftbench.errors import PeftbenchError
from peftbench.pipeline import RunContext, RunOutcome, execute_run
from peftbench.plan import RunSpec
from peftbench.store import Store
from peftbench.utils import atomic_write_jsonl, atomic_write_text


def run_local(pending: list[RunSpec], ctx: RunContext, store: Store, console: Console) -> dict[str, int]:
    """Run every pending run; failures are recorded and the grid goes on. Returns counts by status."""
    counts: dict[str, int] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        grid = progress.add_task("grid", total=len(pending))
        phase_task = progress.add_task("", total=1)
        for spec in pending:
            label = f"{spec.method_id} · {spec.task} · seed {spec.seed}"
            if not store.claim(spec.run_id):
                counts["skipped"] = counts.get("skipped", 0) + 1
                progress.advance(grid)
                continue

            def phase(name: str, done: int, total: int, label: str = label) -> None:
                progress.update(phase_task, description=f"{label} [{name}]", completed=done, total=max(total, 1))

            try:
                outcome = execute_run(spec, ctx, phase)
            except KeyboardInterrupt:
                store.release(spec.run_id)
                raise
            except Exception as exc:  # the run failed; record why and go on with the grid
                outcome = _failed(exc, store.out_dir / "logs" / f"{spec.run_id}.log")
            record(store, spec, outcome, ctx.provenance)
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
            if outcome.status != "done":
                console.print(f"[yellow]{label}: {outcome.status}: {outcome.error}[/yellow]")
            progress.advance(grid)
    return counts


def record(store: Store, spec: RunSpec, outcome: RunOutcome, provenance: dict) -> None:
    """Predictions first (atomically), then the row: a done row always has its predictions."""
    if outcome.predictions:
        atomic_write_jsonl(store.predictions_path(spec.run_id), outcome.predictions)
    store.finish(
        spec.run_id,
        outcome.status,
        metrics=outcome.metrics,
        costs=outcome.costs,
        timings=outcome.timings,
        training=outcome.training,
        provenance=provenance,
        error=outcome.error,
    )


def _failed(exc: Exception, log_path: Path) -> RunOutcome:
    oom = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
    reason = "out of memory" if oom else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if not isinstance(exc, PeftbenchError):
        atomic_write_text(log_path, "".join(traceback.format_exception(exc)))
        reason = f"{type(exc).__name__}: {reason} (traceback in {log_path})"
    return RunOutcome(status="failed", error=reason)
