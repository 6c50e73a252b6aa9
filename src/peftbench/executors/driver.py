"""The driver loop shared by every executor: claim, submit, collect, record, retry.

Workers only compute; the driver (the `peftbench run` process) claims every run before handing it
out and is the only writer of the store. One writer means no lock contention and no lost rows,
and it keeps SQLite off network filesystems' unreliable locks: on a cluster only the driver's
machine opens the database. A run whose worker died (killed, pre-empted, crashed) is resubmitted
up to `executor.max_retries` times, then recorded as failed with the reason; the grid goes on.
A heartbeat thread renews the driver's claims so that a second `peftbench run` on the same
output leaves them alone, and takes them over once the driver is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import sqlite3
import threading
import traceback
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from peftbench.config import ExecutorConfig
from peftbench.errors import PeftbenchError
from peftbench.pipeline import PhaseFn, RunContext, RunOutcome, checkpoint_dir, execute_run
from peftbench.plan import RunSpec
from peftbench.store import Store, owner_id
from peftbench.utils import atomic_write_jsonl, atomic_write_text

Results = dict[str, tuple[RunOutcome, dict[str, Any]]]


class Backend(Protocol):
    """Where runs execute. A submission is a batch of runs; `collect` returns the outcomes it has
    (by run id) and, when the worker died, why: runs without an outcome are retried."""

    capacity: int  # batches in flight at once
    batch_size: int  # runs per batch

    def submit(self, batches: list[list[RunSpec]]) -> list[Any]: ...

    def wait(self, handles: list[Any], timeout: float) -> list[Any]: ...

    def collect(self, handle: Any) -> tuple[Results, str | None]: ...

    def cancel(self, handles: list[Any]) -> None: ...

    def close(self) -> None: ...


BackendFactory = Callable[[RunContext, "GridProgress"], Backend]


def drive(pending: list[RunSpec], ctx: RunContext, store: Store, console: Console, executor: ExecutorConfig,
          make_backend: BackendFactory) -> dict[str, int]:
    """Run every pending run through a backend; returns counts by final status."""
    owner = owner_id()
    lease = float(executor.claim_timeout_s)
    todo = deque(pending)
    retried: dict[str, int] = {}
    in_flight: dict[Any, list[RunSpec]] = {}
    with GridProgress(console, len(pending)) as progress, _Heartbeat(store, owner, lease / 4):
        backend = make_backend(ctx, progress)
        try:
            while todo or in_flight:
                batches = []
                while todo and len(in_flight) + len(batches) < backend.capacity:
                    batch = _claim_batch(todo, backend.batch_size, store, owner, lease, progress)
                    if batch:
                        batches.append(batch)
                if batches:
                    in_flight.update(zip(backend.submit(batches), batches, strict=True))
                if not in_flight:
                    continue
                for handle in backend.wait(list(in_flight), timeout=5.0):
                    batch = in_flight[handle]  # stays claimed (and released on a stop) until recorded
                    results, died = backend.collect(handle)
                    for spec in batch:
                        if spec.run_id in results:
                            outcome, provenance = results[spec.run_id]
                        elif retried.get(spec.run_id, 0) < executor.max_retries:
                            retried[spec.run_id] = retried.get(spec.run_id, 0) + 1
                            console.print(f"[yellow]{run_label(spec)}: worker died ({died}); retrying "
                                          f"({retried[spec.run_id]}/{executor.max_retries})[/yellow]", highlight=False)
                            todo.appendleft(spec)
                            continue
                        else:
                            outcome, provenance = RunOutcome(status="failed", error=f"worker died: {died}"), {}
                        _record_or_stop(store, spec, outcome, provenance)
                        progress.finished(spec, outcome)
                    del in_flight[handle]
        except (KeyboardInterrupt, ResultsNotWritten):
            with contextlib.suppress(sqlite3.Error):  # on a full disk, the dead-owner rule reclaims them later
                store.release(owner)
            backend.cancel(list(in_flight))
            raise
        finally:
            backend.close()
    return progress.counts


class ResultsNotWritten(PeftbenchError):
    """The output directory stopped accepting writes (disk full, permissions): stop the grid."""


def _record_or_stop(store: Store, spec: RunSpec, outcome: RunOutcome, provenance: dict[str, Any]) -> None:
    try:
        record(store, spec, outcome, provenance)
    except (OSError, sqlite3.Error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ResultsNotWritten(
            f"cannot write results to {store.out_dir}: {reason}; finished runs are stored, run the same "
            f"command again once it is writable"
        ) from None


def _claim_batch(todo: deque[RunSpec], size: int, store: Store, owner: str, lease: float,
                 progress: GridProgress) -> list[RunSpec]:
    batch: list[RunSpec] = []
    while todo and len(batch) < size:
        spec = todo.popleft()
        if store.claim(spec.run_id, owner, lease):
            batch.append(spec)
        else:  # finished or held by another live peftbench process
            progress.finished(spec, None)
    return batch


class _Heartbeat:
    """Renews the driver's claims every `interval` seconds while the grid runs."""

    def __init__(self, store: Store, owner: str, interval: float) -> None:
        self.store, self.owner, self.interval = store, owner, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            self.store.heartbeat(self.owner)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def run_one(spec: RunSpec, ctx: RunContext, phase: PhaseFn | None = None) -> RunOutcome:
    """Execute one run; an exception inside it becomes a failed outcome with the reason."""
    try:
        return execute_run(spec, ctx, _traced(spec, phase))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # the run failed; record why and let the grid go on
        return _failed(exc, ctx.out_dir / "logs" / f"{spec.run_id}.log")


def trace(spec: RunSpec, name: str, done: int = 0, total: int = 1) -> None:
    """With PEFTBENCH_TRACE=FILE, append where a run is (run id, phase, step, pid) to FILE as a JSON
    line: for debugging, and for fault-injection tests that must act at a known point of a run."""
    path = os.environ.get("PEFTBENCH_TRACE")
    if path:
        line = {"run_id": spec.run_id, "method": spec.method_id, "seed": spec.seed, "phase": name, "step": done,
                "total": total, "pid": os.getpid()}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def _traced(spec: RunSpec, phase: PhaseFn | None) -> PhaseFn | None:
    if not os.environ.get("PEFTBENCH_TRACE"):
        return phase

    def traced(name: str, done: int, total: int) -> None:
        trace(spec, name, done, total)
        if phase is not None:
            phase(name, done, total)

    return traced


def record(store: Store, spec: RunSpec, outcome: RunOutcome, provenance: dict[str, Any]) -> None:
    """Predictions first (atomically), then the row: a done row always has its predictions."""
    trace(spec, "record")
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
    shutil.rmtree(checkpoint_dir(store.out_dir, spec.run_id), ignore_errors=True)  # kept until the run is stored


def _failed(exc: BaseException, log_path: Path) -> RunOutcome:
    """The reason first: `out of memory: …` for an OOM (the grid goes on with smaller runs), the
    user's mistake as is, anything else with its type and a saved traceback."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, PeftbenchError):
        return RunOutcome(status="failed", error=message)
    atomic_write_text(log_path, "".join(traceback.format_exception(exc)))
    oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in message.lower()
    reason = f"out of memory: {message}" if oom else f"{type(exc).__name__}: {message}"
    return RunOutcome(status="failed", error=f"{reason} (traceback in {log_path})")


def run_label(spec: RunSpec) -> str:
    """How a run is named on the progress display and in messages."""
    return f"{spec.method_id} · {spec.task} · seed {spec.seed}"


class GridProgress:
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

    def __enter__(self) -> GridProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def phase_fn(self, spec: RunSpec) -> PhaseFn:
        label = run_label(spec)
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
        """Show phase messages that worker processes put on a queue, until `stop` is set."""
        while not stop.is_set():
            try:
                self.update(*messages.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return

    def finished(self, spec: RunSpec, outcome: RunOutcome | None) -> None:
        status = outcome.status if outcome else "skipped"
        label = run_label(spec)
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self.ended.add(label)
            task = self.lines.pop(label, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.grid)
        if outcome and outcome.status != "done":
            self.console.print(f"[yellow]{label}: {outcome.status}: {outcome.error}[/yellow]", highlight=False)
