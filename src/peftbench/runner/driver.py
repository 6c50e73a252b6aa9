"""The driver loop shared by every backend: claim, submit, collect, record, retry.

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
import shutil
import sqlite3
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from rich.console import Console
from rich.markup import escape

from peftbench.config import ExecutorConfig
from peftbench.errors import PeftbenchError
from peftbench.plan import RunSpec
from peftbench.runner.progress import GridProgress, run_label, trace
from peftbench.runner.run import RunOutcome, checkpoint_dir
from peftbench.runner.worker import Results
from peftbench.store import Store, owner_id
from peftbench.utils import atomic_write_jsonl


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


def drive(pending: list[RunSpec], store: Store, console: Console, executor: ExecutorConfig,
          make_backend: Callable[[GridProgress], Backend], verbosity: int = 1) -> dict[str, int]:
    """Run every pending run through the backend `make_backend` builds for the progress display
    (live on a terminal, plain lines on stdout anywhere else); returns counts by final status."""
    owner = owner_id()
    lease = float(executor.claim_timeout_s)
    todo = deque(pending)
    retried: dict[str, int] = {}
    in_flight: dict[Any, list[RunSpec]] = {}
    live = console.is_terminal and sys.stdout.isatty()
    with GridProgress(console, len(pending), live=live, verbosity=verbosity, log_dir=store.out_dir / "logs") \
            as progress, _Heartbeat(store, owner, lease / 4):
        backend = make_backend(progress)
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
                            console.print(f"[yellow]{escape(run_label(spec))}: worker died ({escape(str(died))}); "
                                          f"retrying ({retried[spec.run_id]}/{executor.max_retries})[/yellow]",
                                          highlight=False)
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
            progress.expect(spec)
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
