"""The local backends: runs in this process, or in N spawned worker processes with pinned threads.

Each run seeds itself and pins its threads, so a run's result does not depend on which process
or in which order it ran. A worker process that dies breaks the process pool; the pool is
rebuilt and the runs it held are resubmitted by the driver.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from peftbench.config import BenchConfig
from peftbench.modeling import ModelSource
from peftbench.plan import RunSpec
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


_MESSAGES: dict[str, Any] = {}


def worker_pool(workers: int, messages: Any) -> ProcessPoolExecutor:
    """`workers` spawned processes that send run phases to `messages` and end with their driver."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(messages,))


def _init_worker(messages: Any) -> None:
    _MESSAGES["queue"] = messages
    threading.Thread(target=_exit_with_driver, name="peftbench-driver-watch", daemon=True).start()


def _exit_with_driver() -> None:
    """A driver killed outright (SIGKILL, the OOM killer) never shuts its pool down: its workers
    would finish their run, then wait forever on the pool's queue, each holding a model in memory.
    The driver's end of this pipe closes when it dies, however it dies; then the worker ends too."""
    driver = mp.parent_process()
    if driver is not None:
        multiprocessing.connection.wait([driver.sentinel])
        os._exit(1)


def _pool_job(cfg: BenchConfig, source: ModelSource, out_dir: Any, spec: RunSpec) -> Results:
    """What a pool worker runs: a batch of one run, its phases sent to the driver's display."""
    messages = _MESSAGES["queue"]
    last = [0.0]

    def phase(name: str, done: int, total: int, loss: float | None = None) -> None:
        now = time.monotonic()
        if now - last[0] > 0.25 or done >= total or done == 0:
            last[0] = now
            messages.put((spec.run_id, name, done, total, loss))

    return run_batch(worker_context(cfg, source, out_dir), [spec], "local", lambda _: phase)


class PoolBackend:
    """N spawned worker processes; each keeps its model and task data across runs."""

    batch_size = 1

    def __init__(self, ctx: RunContext, progress: GridProgress, workers: int) -> None:
        self.ctx, self.capacity = ctx, workers
        self.messages = mp.get_context("spawn").Queue()
        self.stop = threading.Event()
        self.pump = threading.Thread(target=progress.pump, args=(self.messages, self.stop), daemon=True)
        self.pump.start()
        self.pool = worker_pool(workers, self.messages)

    def submit(self, batches: list[list[RunSpec]]) -> list[Future]:
        ctx, futures = self.ctx, []
        for (spec,) in batches:
            try:
                future = self.pool.submit(_pool_job, ctx.cfg, ctx.source, ctx.out_dir, spec)
            except BrokenProcessPool:  # a worker died: its runs come back through collect; go on in a new pool
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
        self.stop.set()
        self.pump.join(timeout=2)
        self.pool.shutdown(wait=True, cancel_futures=True)
