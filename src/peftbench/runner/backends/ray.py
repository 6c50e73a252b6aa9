"""The Ray backend: each batch of runs is one Ray task with declared resources.

Tasks run in long-lived Ray worker processes (`max_calls=0`, also for GPU tasks), so a worker keeps
its loaded model across runs. Ray's own task retries are off: the driver resubmits a run whose
worker died, with the same retry budget and bookkeeping as every other backend. Worker output
is streamed to the driver's terminal (`log_to_driver`); a failed run's traceback is written under
`<output>/logs/`, which must be on a filesystem the workers share with the driver.
"""

from __future__ import annotations

from typing import Any

from peftbench.config import BenchConfig, RayConfig
from peftbench.errors import PeftbenchError
from peftbench.modeling import ModelSource
from peftbench.plan import RunSpec
from peftbench.runner.progress import GridProgress
from peftbench.runner.run import RunContext
from peftbench.runner.worker import Results, run_batch, worker_context


def _ray_task(setup: tuple[BenchConfig, ModelSource, Any], specs: list[RunSpec]) -> Results:
    """What a Ray task runs: a batch, on this Ray worker's context for the grid."""
    import ray

    runtime = ray.get_runtime_context()
    where = {"node": runtime.get_node_id(), "task": runtime.get_task_id()}
    return run_batch(worker_context(*setup), specs, "ray", extra=where)


class RayBackend:
    batch_size = 1

    def __init__(self, ctx: RunContext, progress: GridProgress, cfg: RayConfig, n_runs: int) -> None:
        import ray  # installed: checked before the run started (grid.check_executor)
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(address=cfg.address, num_cpus=cfg.local_cpus if cfg.address is None else None,
                         include_dashboard=False, log_to_driver=True, configure_logging=False)
            except ConnectionError as exc:
                raise PeftbenchError(f"executor.ray.address: cannot connect to {cfg.address!r}: {exc}") from None
        options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus, "max_retries": 0,
                                   "max_calls": 0}
        if cfg.memory_gb:
            options["memory"] = int(cfg.memory_gb * 2**30)
        self.remote = ray.remote(**options)(_ray_task)
        self.setup = ray.put((ctx.cfg, ctx.source, ctx.out_dir))
        self.capacity = max(1, n_runs)  # Ray queues tasks by their declared resources

    def submit(self, batches: list[list[RunSpec]]) -> list[Any]:
        return [self.remote.remote(self.setup, batch) for batch in batches]

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        return ready

    def collect(self, handle: Any) -> tuple[Results, str | None]:
        try:
            return self.ray.get(handle), None
        except self.ray.exceptions.RayError as exc:
            return {}, f"Ray task failed: {str(exc).strip().splitlines()[0]}"

    def cancel(self, handles: list[Any]) -> None:
        for handle in handles:
            self.ray.cancel(handle, force=True)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
