"""Local worker processes, started before the run path is imported where the grid is new.

This module imports nothing heavy, so that the command line can start the workers as soon as the
config is read: each worker spends seconds importing torch, transformers and peft, which it then
does on the other cores while the driver imports them too, checks the grid and builds or loads the
model. The processes are spawned (not forked: the driver may already hold torch's threads).
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import multiprocessing.connection
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from peftbench.config import BenchConfig
from peftbench.store import DB_NAME
from peftbench.utils import end_without_collecting

MESSAGES: dict[str, Any] = {}
"""This worker's queue to the driver's progress display (`queue`)."""


def worker_pool(workers: int, messages: Any) -> ProcessPoolExecutor:
    """`workers` spawned processes that send run phases to `messages` and end with their driver."""
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                               initargs=(messages,))


def _init_worker(messages: Any) -> None:
    MESSAGES["queue"] = messages
    end_without_collecting()
    threading.Thread(target=_exit_with_driver, name="peftbench-driver-watch", daemon=True).start()
    try:
        importlib.import_module("peftbench.runner.backends.local")  # the run path, before the first run asks
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the driver says what happened, once
        os._exit(130)


def _exit_with_driver() -> None:
    """A driver killed outright (SIGKILL, the OOM killer) never shuts its pool down: its workers
    would finish their run, then wait forever on the pool's queue, each holding a model in memory.
    The driver's end of this pipe closes when it dies, however it dies; then the worker ends too."""
    driver = mp.parent_process()
    if driver is not None:
        multiprocessing.connection.wait([driver.sentinel])
        os._exit(1)


def _started() -> None:
    """A worker's first job: nothing (the worker imported the run path as it started)."""


class WorkerProcesses:
    """`workers` spawned worker processes, started before the grid needs them. A process pool
    spawns processes only as work is submitted, so one empty job per worker starts them all."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.messages = mp.get_context("spawn").Queue()
        self.pool: ProcessPoolExecutor | None = worker_pool(workers, self.messages)
        for _ in range(workers):
            self.pool.submit(_started)

    def take(self) -> ProcessPoolExecutor:
        """The pool, from now on the caller's to shut down."""
        pool, self.pool = self.pool, None
        if pool is None:
            raise RuntimeError("these worker processes were already taken or closed")
        return pool

    def close(self) -> None:
        """End the processes if nobody took them (a grid that stopped before it ran them: a user
        error must not wait seconds for workers still importing). They are terminated, as Python
        3.14's `ProcessPoolExecutor.terminate_workers` does it (which reads `_processes` too)."""
        if self.pool is None:
            return
        processes = list((self.pool._processes or {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = None
        for process in processes:
            process.terminate()


def local_workers(cfg: BenchConfig, pending: int | None = None) -> int:
    """Worker processes a local grid starts: the configured number, but (knowing the `pending` runs)
    never more than there are runs — a worker process costs its start-up, so none stays idle."""
    return cfg.runtime.workers if pending is None else max(1, min(cfg.runtime.workers, pending))


def start_early(cfg: BenchConfig, out_dir: Path) -> WorkerProcesses | None:
    """The worker processes of a new local grid (no store in `out_dir` yet: every run of the grid is
    pending), before anything is planned or checked; None otherwise, and the grid starts its
    workers once it knows how many runs are pending (`runner.grid`). The price: a grid that fails
    its checks reports that later, by the cores the importing workers took (2.3–3 s here: a bad
    target module in 6.6–7.3 s against 4.1–4.3 s with one worker; `peftbench validate` is quicker)."""
    if cfg.executor.kind != "local" or cfg.tpv is not None or (Path(out_dir) / DB_NAME).exists():
        return None
    workers = local_workers(cfg, len(cfg.methods) * len(cfg.tasks) * len(cfg.seeds))
    return WorkerProcesses(workers) if workers > 1 else None
