"""What a worker does, whatever started it (the driver's own process, a local worker process, a Ray
task, a Slurm job): run a batch of runs and return their outcomes; the driver records them.

A worker keeps one `RunContext` per grid, so the base model's weights, the tokenizer and the
tokenized task data are loaded once and reused by every run it executes (each run still starts
from a pristine copy of the base model).
"""

from __future__ import annotations

import json
import os
import socket
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftbench.config import BenchConfig
from peftbench.errors import PeftbenchError
from peftbench.modeling import ModelSource
from peftbench.plan import RunSpec
from peftbench.runner.progress import traced
from peftbench.runner.run import PhaseFn, RunContext, RunOutcome, execute_run
from peftbench.utils import atomic_write_text, quiet_libraries

Results = dict[str, tuple[RunOutcome, dict[str, Any]]]

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
    """Run `specs` one after the other on `ctx`; every outcome carries where it ran. A run that raises
    becomes a failed outcome with the reason, and the batch goes on."""
    where = {"executor": executor, "host": socket.gethostname(), "pid": os.getpid(), **(extra or {})}
    results: Results = {}
    for spec in specs:
        try:
            outcome = execute_run(spec, ctx, traced(spec, phase_for(spec) if phase_for else None))
        except Exception as exc:  # the run failed; record why and let the grid go on
            outcome = _failed(exc, ctx.out_dir / "logs" / f"{spec.run_id}.log")
        results[spec.run_id] = (outcome, {**ctx.provenance, **outcome.provenance, "worker": where})
    return results


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
