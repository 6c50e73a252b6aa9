"""The Slurm backend: submitit job arrays, one job per `runs_per_job` runs.

Each job writes every run's outcome to `<folder>/outcomes/<run_id>.pkl` as soon as the run ends,
so a job killed half-way loses only the run in flight; the driver reads those files when the job
ends and resubmits the runs without one. Where `sbatch` is not installed the same jobs go through
submitit's local executor (with a warning), so this path runs on a laptop and in CI; there the
driver keeps at most `array_parallelism` jobs alive, which Slurm itself does on a cluster.
"""

from __future__ import annotations

import os
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from peftbench.config import BenchConfig, SlurmConfig
from peftbench.modeling import ModelSource
from peftbench.plan import RunSpec
from peftbench.runner.progress import GridProgress
from peftbench.runner.run import RunContext
from peftbench.runner.worker import Results, run_batch, worker_context
from peftbench.utils import atomic_write_bytes


def _slurm_job(cfg: BenchConfig, source: ModelSource, out_dir: Path, specs: list[RunSpec], outcomes: Path) -> None:
    """What a Slurm job runs: its runs one by one, each outcome written to `outcomes` when the run ends."""
    where = {"slurm_job": os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID")}
    ctx = worker_context(cfg, source, out_dir)
    for spec in specs:  # each outcome is written as soon as its run ends
        result = run_batch(ctx, [spec], "slurm", extra=where)[spec.run_id]
        atomic_write_bytes(outcomes / f"{spec.run_id}.pkl", pickle.dumps(result))


class SlurmBackend:
    def __init__(self, ctx: RunContext, progress: GridProgress, cfg: SlurmConfig, n_runs: int,
                 console: Console) -> None:
        import submitit  # installed: checked before the run started (grid.check_executor)
        self.ctx = ctx
        folder = Path(cfg.folder or ctx.out_dir / "slurm")
        self.outcomes = folder / "outcomes"
        self.outcomes.mkdir(parents=True, exist_ok=True)
        on_slurm = shutil.which("sbatch") is not None
        if not on_slurm:
            console.print("[yellow]warning: no Slurm here (sbatch not found): running the jobs with submitit's "
                          "local executor on this machine[/yellow]", highlight=False)
        self.executor = submitit.AutoExecutor(folder=folder / "%j", cluster=None if on_slurm else "local")
        params: dict[str, Any] = {"name": f"peftbench-{ctx.cfg.name}", "timeout_min": cfg.time_min,
                                  "cpus_per_task": cfg.cpus_per_job, "mem_gb": cfg.mem_gb}
        if on_slurm:
            params.update(gpus_per_node=cfg.gpus_per_job, slurm_partition=cfg.partition,
                          slurm_array_parallelism=cfg.array_parallelism, slurm_setup=cfg.setup,
                          slurm_additional_parameters=dict(cfg.sbatch))
        else:
            params.update(local_setup=cfg.setup)
        self.executor.update_parameters(**params)
        self.batch_size = cfg.runs_per_job
        self.capacity = max(1, -(-n_runs // cfg.runs_per_job)) if on_slurm else cfg.array_parallelism
        self.specs: dict[Any, list[RunSpec]] = {}

    def submit(self, batches: list[list[RunSpec]]) -> list[Any]:
        ctx = self.ctx
        with self.executor.batch():  # one job array per submission
            jobs = [self.executor.submit(_slurm_job, ctx.cfg, ctx.source, ctx.out_dir, batch, self.outcomes)
                    for batch in batches]
        self.specs.update(zip(jobs, batches, strict=True))
        return jobs

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        return _wait_polling(handles, lambda job: job.done(), timeout)

    def collect(self, handle: Any) -> tuple[Results, str | None]:
        died = None
        try:
            handle.result()
        except Exception as exc:  # submitit raises several types for a job that did not finish
            died = f"job {handle.job_id} ended as {handle.state}: {str(exc).strip().splitlines()[0]}"
        results: Results = {}
        for spec in self.specs.pop(handle):
            path = self.outcomes / f"{spec.run_id}.pkl"
            if path.is_file():
                outcome, provenance = pickle.loads(path.read_bytes())
                provenance["worker"]["log"] = str(handle.paths.stdout)
                results[spec.run_id] = (outcome, provenance)
                path.unlink()
        return results, died

    def cancel(self, handles: list[Any]) -> None:
        for job in handles:
            job.cancel(check=False)

    def close(self) -> None:
        pass


def _wait_polling(handles: list[Any], done: Callable[[Any], bool], timeout: float) -> list[Any]:
    """Handles that are done, polling every half second up to `timeout` (submitit has no wait for several jobs)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = [h for h in handles if done(h)]
        if ready or time.monotonic() >= deadline:
            return ready
        time.sleep(0.5)
