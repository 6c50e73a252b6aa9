"""Executors run the pending runs of a grid; the driver loop records their outcomes in the store.

`local` runs in this process or in N worker processes, `ray` as Ray tasks, `slurm` as submitit
job arrays. All three go through the same driver (`driver.drive`): same claims, retries and store.
"""

from __future__ import annotations

from rich.console import Console

from peftbench.executors.driver import Backend, GridProgress, drive
from peftbench.pipeline import RunContext
from peftbench.plan import RunSpec
from peftbench.store import Store

__all__ = ["execute_grid"]


def execute_grid(pending: list[RunSpec], ctx: RunContext, store: Store, console: Console) -> dict[str, int]:
    """Run every pending run with the configured executor; returns counts by final status."""
    cfg = ctx.cfg
    kind = cfg.executor.kind

    def make_backend(ctx: RunContext, progress: GridProgress) -> Backend:  # Ray and submitit are optional
        if kind == "ray":
            from peftbench.executors.ray import RayBackend

            return RayBackend(ctx, progress, cfg.executor.ray, len(pending))
        if kind == "slurm":
            from peftbench.executors.slurm import SlurmBackend

            return SlurmBackend(ctx, progress, cfg.executor.slurm, len(pending), console)
        from peftbench.executors.local import InlineBackend, PoolBackend

        if cfg.runtime.workers > 1:
            return PoolBackend(ctx, progress, cfg.runtime.workers)
        return InlineBackend(ctx, progress)

    return drive(pending, ctx, store, console, cfg.executor, make_backend)
