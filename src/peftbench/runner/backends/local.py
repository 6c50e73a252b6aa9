"""The local backends: runs in this process, or in N worker processes with pinned threads.

Each run seeds itself and pins its threads, so a run's result does not depend on which process
or in which order it ran. A worker process that dies breaks the process pool; the pool is
rebuilt and the runs it held are resubmitted by the driver.
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from peftbench.config import BenchConfig
from peftbench.modeling import ModelSource
from peftbench.plan import RunSpec
from peftbench.runner.backends.processes import MESSAGES, WorkerProcesses, worker_pool
from peftbench.runner.progress import GridProgress
from peftbench.runner.run import RunContext
from peftbench.runner.worker import Results, run_batch, worker_context


class InlineBackend:
    """Runs in the driver process, one run at a time, when the driver waits for it."""

    capacity = 1
    batch_size = 1

    def __init__(self, ctx: RunContext, progress: GridProgress) -> None:
        self.ctx, self.progress = ctx, progress
        self.batches: dict[int, list[RunSpec]] = {}
        self.ids = itertools.count()

    def submit(self, batches: list[list[RunSpec]]) -> list[int]:
        handles = [next(self.ids) for _ in batches]
        self.batches.update(zip(handles, batches, strict=True))
        return handles

    def wait(self, handles: list[int], timeout: float) -> list[int]:
        return handles[:1]

    def collect(self, handle: int) -> tuple[Results, str | None]:
        return run_batch(self.ctx, self.batches.pop(handle), "local", self.progress.phase_fn), None

    def cancel(self, handles: list[Any]) -> None:
        pass

    def close(self) -> None:
        pass


def _pool_job(cfg: BenchConfig, source: ModelSource, out_dir: Any, spec: RunSpec) -> Results:
    """What a pool worker runs: a batch of one run, its phases sent to the driver's display."""
    messages = MESSAGES["queue"]
    last = [0.0]

    def phase(name: str, done: int, total: int, loss: float | None = None) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25 or done >= total or done == 0:
            last[0] = now
            messages.put((spec.run_id, name, done, total, loss))

    return run_batch(worker_context(cfg, source, out_dir), [spec], "local", lambda _: phase)


class PoolBackend:
    """N worker processes (`processes.worker_context`); each keeps its model and task data across runs."""

    batch_size = 1

    def __init__(self, ctx: RunContext, progress: GridProgress, processes: WorkerProcesses) -> None:
        self.ctx, self.capacity = ctx, processes.workers
        self.messages = processes.messages
        self.stop = threading.Event()
        self.pump = threading.Thread(target=progress.pump, args=(self.messages, self.stop), daemon=True)
        self.pump.start()
        self.pool = processes.take()

    def submit(self, batches: list[list[RunSpec]]) -> list[Future]:
        ctx, futures = self.ctx, []
        for (spec,) in batches:
            try:
                future = self.pool.submit(_pool_job, ctx.cfg, ctx.source, ctx.out_dir, spec)
            except (BrokenProcessPool, EOFError):  # a worker died (its runs come back through collect), or
                # the server that forks them died before it forked this one: go on in a new pool
                self.pool.shutdown(wait=False, cancel_futures=True)
                self.pool = worker_pool(self.capacity, self.messages)
                future = self.pool.submit(_pool_job, ctx.cfg, ctx.source, ctx.out_dir, spec)
            futures.append(future)
        return futures

    def wait(self, handles: list[Future], timeout: float) -> list[Future]:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def collect(self, handle: Future) -> tuple[Results, str | None]:
        try:
            return handle.result(), None
        except BrokenProcessPool as exc:
            return {}, f"worker process died: {exc}"

    def cancel(self, handles: list[Future]) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers without waiting for their interpreters to wind down (over a second, with
        torch loaded): the driver records and reports meanwhile, and Python waits for them at its exit."""
        self.stop.set()
        self.pump.join(timeout=2)
        self.pool.shutdown(wait=False, cancel_futures=True)
