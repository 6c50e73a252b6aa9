"""Local worker processes, started before the run path is imported where the grid is new.

This module imports nothing heavy, so that the command line can start the workers as soon as the
config is read. Importing torch, transformers and peft takes seconds of CPU. On Linux the workers
are forked from a server process that imported them once (multiprocessing's forkserver with the run
path preloaded; Python 3.14's default start method there), which it does while the driver imports
them too and checks the grid: on a 2-core machine, the first run started 4.0–4.5 s after the
command instead of 5.6–5.9 s, when each worker imported for itself beside the driver. Elsewhere (macOS,
where forking a process that imported torch is not safe) they are spawned, and start importing at
once. A new worker after one died is forked from the same server, without importing again.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.forkserver
import os
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from peftbench.config import BenchConfig
from peftbench.store import DB_NAME
from peftbench.utils import end_without_collecting

MESSAGES: dict[str, Any] = {}
"""This worker's queue to the driver's progress display (`queue`)."""

RUN_PATH = "peftbench.runner.backends.local"
"""What a worker runs; importing it imports torch, transformers and peft."""

FORKSERVER_IS_PRIVATE = sys.version_info >= (3, 11, 1) or (3, 10, 9) <= sys.version_info < (3, 11)
"""Before these releases the server's socket was open to every local user (CVE-2022-42919)."""


def worker_context() -> BaseContext:
    """How worker processes start: forked from a server that preloaded the run path (Linux; the
    server is one per driver process and ends with it), or spawned."""
    if sys.platform != "linux" or not FORKSERVER_IS_PRIVATE:
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["peftbench.runner.backends.preload"])
    return context


def worker_pool(workers: int, messages: Any) -> ProcessPoolExecutor:
    """`workers` processes that send run phases to `messages` and end with their driver. Their
    `os.environ` is the driver's as it is now, not as it was when the server started (for an
    earlier grid of this process); what libraries read from it as they were imported stays as the
    server read it, as it stays in the driver."""
    return ProcessPoolExecutor(workers, mp_context=worker_context(), initializer=_init_worker,
                               initargs=(messages, dict(os.environ)))


def start_server() -> bool:
    """Start the server that workers fork from, where they fork: it imports the run path for
    seconds, so the sooner the better, and it does not depend on how many workers there will be.
    Returns at once; False where workers are spawned instead."""
    if worker_context().get_start_method() != "forkserver":
        return False
    multiprocessing.forkserver.ensure_running()
    return True


def import_run_path() -> None:
    """Import what a worker runs. Ctrl-C reaches every process of the command while they import;
    the driver says what happened, once."""
    try:
        importlib.import_module(RUN_PATH)
    except KeyboardInterrupt:
        os._exit(130)


def _init_worker(messages: Any, environ: dict[str, str]) -> None:
    MESSAGES["queue"] = messages
    os.environ.clear()
    os.environ.update(environ)
    end_without_collecting()
    threading.Thread(target=_exit_with_driver, name="peftbench-driver-watch", daemon=True).start()
    import_run_path()  # spawned: before the first run asks; forked: imported already


def _exit_with_driver() -> None:
    """A driver killed outright (SIGKILL, the OOM killer) never shuts its pool down: its workers
    would finish their run, then wait forever on the pool's queue, each holding a model in memory.
    The driver's end of this pipe closes when it dies, however it dies; then the worker ends too."""
    driver = mp.parent_process()
    if driver is not None:
        multiprocessing.connection.wait([driver.sentinel])
        os._exit(1)


def _started() -> None:
    """A spawned worker's first job: nothing (the worker imported the run path as it started)."""


class WorkerProcesses:
    """`workers` worker processes, made ready before the grid needs them. Forked: the server starts
    importing the run path now, and the workers are forked from it as the first runs are submitted
    (a few milliseconds each). Spawned: a process pool starts processes only as work is submitted,
    so one empty job per worker starts them all now."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.messages = worker_context().Queue()
        self.pool: ProcessPoolExecutor | None = worker_pool(workers, self.messages)
        if not start_server():
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
        error must not wait seconds for spawned workers still importing). They are terminated, as
        Python 3.14's `ProcessPoolExecutor.terminate_workers` does it (which reads `_processes` too).
        Forked ones were never started; their server ends with this process (once it has imported
        the run path, if it is still at it)."""
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
    workers once it knows how many runs are pending (`runner.grid`). The price, where workers are
    spawned: a grid that fails its checks reports that later, by the cores the importing workers
    take (a bad target module here: 6.5–7.4 s, against 3.9 s with one worker). Forked from the
    server, which imports on the other core: 4.2–4.4 s. `peftbench validate` is quicker. For a
    resumed grid or a TPV study only that server starts now (`start_server`)."""
    if cfg.executor.kind != "local" or cfg.runtime.workers < 2:
        return None
    if cfg.tpv is not None or (Path(out_dir) / DB_NAME).exists():
        start_server()
        return None
    workers = local_workers(cfg, len(cfg.methods) * len(cfg.tasks) * len(cfg.seeds))
    return WorkerProcesses(workers) if workers > 1 else None
