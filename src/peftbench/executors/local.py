"""The local executor: runs in this process, or in N worker processes with pinned threads.

Workers only compute; the driver (this process) claims every run before handing it out and is
the only writer of the store. One writer means no lock contention and no lost rows, and a worker
that dies takes nothing with it: its run is recorded as failed and the next invocation retries it.
Each run seeds itself and pins its threads, so a run's result does not depend on which process
or in which order it ran.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from peftbench.config import BenchConfig
from peftbench.errors import PeftbenchError
from peftbench.modeling import ModelSource
from peftbench.pipeline import PhaseFn, RunContext, RunOutcome, execute_run
from peftbench.plan import RunSpec
from peftbench.store import Store
from peftbench.utils import atomic_write_jsonl, atomic_write_text


def run_local(
    pending: list[RunSpec], ctx: RunContext, store: Store, console: Console, workers: int = 1
) -> dict[str, int]:
    """Run every pending run; failures are recorded and the grid goes on. Returns counts by status."""
    with _GridProgress(console, len(pending)) as progress:
        if workers <= 1:
            return _run_sequential(pending, ctx, store, progress)
        return _run_pool(pending, ctx, store, progress, workers)


def _run_sequential(pending: list[RunSpec], ctx: RunContext, store: Store, progress: _GridProgress) -> dict[str, int]:
    for spec in pending:
        if not store.claim(spec.run_id):
            progress.finished(spec, None)
            continue
        try:
            outcome = run_one(spec, ctx, progress.phase_fn(_label(spec)))
        except KeyboardInterrupt:
            store.release(spec.run_id)
            raise
        record(store, spec, outcome, ctx.provenance)
        progress.finished(spec, outcome)
    return progress.counts


def run_one(spec: RunSpec, ctx: RunContext, phase: PhaseFn | None = None) -> RunOutcome:
    """Execute one run; an exception inside it becomes a failed outcome with the reason."""
    try:
        return execute_run(spec, ctx, phase)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the run failed; record why and let the grid go on
        return _failed(exc, ctx.out_dir / "logs" / f"{spec.run_id}.log")


def record(store: Store, spec: RunSpec, outcome: RunOutcome, provenance: dict[str, Any]) -> None:
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


def _failed(exc: BaseException, log_path: Path) -> RunOutcome:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        message = f"out of memory: {message}"
    if isinstance(exc, PeftbenchError):
        return RunOutcome(status="failed", error=message)
    atomic_write_text(log_path, "".join(traceback.format_exception(exc)))
    return RunOutcome(status="failed", error=f"{type(exc).__name__}: {message} (traceback in {log_path})")


# --- worker processes -----------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(cfg: BenchConfig, source: ModelSource, out_dir: Path, messages: Any) -> None:
    from peftbench.bench import quiet_libraries

    quiet_libraries()
    _WORKER["ctx"] = RunContext(cfg, source, out_dir)
    _WORKER["messages"] = messages


def _work(spec: RunSpec) -> tuple[RunOutcome, dict[str, Any]]:
    ctx: RunContext = _WORKER["ctx"]
    messages = _WORKER["messages"]
    label = _label(spec)
    last = [0.0]

    def phase(name: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25 or done >= total:
            last[0] = now
            messages.put((label, name, done, total))

    return run_one(spec, ctx, phase), ctx.provenance


def _run_pool(
    pending: list[RunSpec], ctx: RunContext, store: Store, progress: _GridProgress, workers: int
) -> dict[str, int]:
    spawn = mp.get_context("spawn")
    messages = spawn.Queue()
    stop = threading.Event()
    pump = threading.Thread(target=progress.pump, args=(messages, stop), daemon=True)
    pump.start()
    running: dict[Future, RunSpec] = {}
    todo = list(pending)
    pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init_worker,
                               initargs=(ctx.cfg, ctx.source, ctx.out_dir, messages))
    try:
        while todo or running:
            while todo and len(running) < workers:
                spec = todo.pop(0)
                if store.claim(spec.run_id):
                    running[pool.submit(_work, spec)] = spec
                else:
                    progress.finished(spec, None)
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                spec = running.pop(future)
                try:
                    outcome, provenance = future.result()
                except BrokenProcessPool as exc:
                    outcome, provenance = RunOutcome(status="failed", error=f"worker process died: {exc}"), {}
                record(store, spec, outcome, provenance)
                progress.finished(spec, outcome)
    except KeyboardInterrupt:
        for spec in running.values():
            store.release(spec.run_id)
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        stop.set()
        pump.join(timeout=2)
        pool.shutdown(wait=True, cancel_futures=True)
    return progress.counts


# --- progress ------------------------------------------------------------------------------------------


def _label(spec: RunSpec) -> str:
    return f"{spec.method_id} · {spec.task} · seed {spec.seed}"


class _GridProgress:
    """A rich progress display: the grid (with ETA) and one line per run in flight."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.counts: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
        self.grid = self.progress.add_task("grid", total=total)
        self.lines: dict[str, Any] = {}
        self.ended: set[str] = set()  # late messages from a worker must not revive a finished line
        self._lock = threading.Lock()

    def __enter__(self) -> _GridProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def phase_fn(self, label: str) -> PhaseFn:
        return lambda name, done, total: self.update(label, name, done, total)

    def update(self, label: str, name: str, done: int, total: int) -> None:
        with self._lock:
            if label in self.ended:
                return
            if label not in self.lines:
                self.lines[label] = self.progress.add_task(label, total=max(total, 1))
            self.progress.update(self.lines[label], description=f"  {label} [{name}]", completed=done,
                                 total=max(total, 1))

    def pump(self, messages: Any, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.update(*messages.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return

    def finished(self, spec: RunSpec, outcome: RunOutcome | None) -> None:
        status = outcome.status if outcome else "skipped"
        label = _label(spec)
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self.ended.add(label)
            task = self.lines.pop(label, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.grid)
        if outcome and outcome.status != "done":
            self.console.print(f"[yellow]{label}: {outcome.status}: {outcome.error}[/yellow]", highlight=False)
