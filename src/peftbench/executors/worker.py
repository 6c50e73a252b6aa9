"""What a worker does, whatever started it (a local process, a Ray task, a Slurm job).

A worker keeps one `RunContext` per grid, so the base model's weights, the tokenizer and the
tokenized task data are loaded once and reused by every run it executes (each run still starts
from a pristine copy of the base model).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench.config import BenchConfig
from peftbench.executors.driver import Results, run_one
from peftbench.modeling import ModelSource
from peftbench.pipeline import PhaseFn, RunContext
from peftbench.plan import RunSpec
from peftbench.utils import quiet_libraries

_CONTEXTS: dict[str, RunContext] = {}


def worker_context(cfg: BenchConfig, source: ModelSource, out_dir: Path) -> RunContext:
    """This process's context for the grid; a new grid replaces the old one (and frees its model)."""
    key = json.dumps([cfg.model_dump(mode="json"), source.location, source.revision, str(out_dir)], sort_keys=True)
    if key not in _CONTEXTS:
        quiet_libraries()
        _CONTEXTS.clear()
        _CONTEXTS[key] = RunContext(cfg, source, out_dir)
    return _CONTEXTS[key]


def run_batch(ctx: RunContext, specs: list[RunSpec], executor: str,
              phase_for: Callable[[RunSpec], PhaseFn | None] | None = None,
              extra: dict[str, Any] | None = None) -> Results:
    """Run `specs` one after the other on `ctx`; every outcome carries where it ran."""
    where = {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(), **(extra or {})}
    results: Results = {}
    for spec in specs:
        outcome = run_one(spec, ctx, phase_for(spec) if phase_for else None)
        results[spec.run_id] = (outcome, {**ctx.provenance, **outcome.provenance, "worker": where})
    return results


def work(cfg: BenchConfig, source: ModelSource, out_dir: Path, specs: list[RunSpec], executor: str,
         phase_for: Callable[[RunSpec], PhaseFn | None] | None = None,
         extra: dict[str, Any] | None = None) -> Results:
    """`run_batch` in a worker process, on this process's context for the grid."""
    return run_batch(worker_context(cfg, source, out_dir), specs, executor, phase_for, extra)
