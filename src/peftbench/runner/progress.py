"""What a running grid shows: the progress display in the driver's terminal, and with
PEFTBENCH_TRACE the phase markers of every run in a file (workers write them too)."""

from __future__ import annotations

import json
import os
import queue
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from peftbench.plan import RunSpec
from peftbench.runner.run import PhaseFn, RunOutcome


def run_label(spec: RunSpec) -> str:
    """How a run is named on the progress display and in messages."""
    return f"{spec.method_id} · {spec.task} · seed {spec.seed}"


def trace(spec: RunSpec, name: str, done: int = 0, total: int = 1) -> None:
    """With PEFTBENCH_TRACE=FILE, append where a run is (run id, phase, step, pid) to FILE as a JSON
    line: for debugging, and for fault-injection tests that must act at a known point of a run."""
    path = os.environ.get("PEFTBENCH_TRACE")
    if path:
        line = {"run_id": spec.run_id, "method": spec.method_id, "seed": spec.seed, "phase": name, "step": done,
                "total": total, "pid": os.getpid()}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def traced(spec: RunSpec, phase: PhaseFn | None) -> PhaseFn | None:
    """`phase`, also writing each phase to the PEFTBENCH_TRACE file when it is set."""
    if not os.environ.get("PEFTBENCH_TRACE"):
        return phase

    def tracing(name: str, done: int, total: int) -> None:
        trace(spec, name, done, total)
        if phase is not None:
            phase(name, done, total)

    return tracing


class GridProgress:
    """A rich progress display: the grid (with ETA) and one line per run in flight."""

    def __init__(self, console: Console, total: int) -> None:
        self.console = console
        self.counts: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console,
        )
        self.grid = self.progress.add_task("grid", total=total)
        self.lines: dict[str, Any] = {}
        self.ended: set[str] = set()  # late messages from a worker must not revive a finished line
        self._lock = threading.Lock()

    def __enter__(self) -> GridProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def phase_fn(self, spec: RunSpec) -> PhaseFn:
        label = run_label(spec)
        return lambda name, done, total: self.update(label, name, done, total)

    def update(self, label: str, name: str, done: int, total: int) -> None:
        with self._lock:
            if label in self.ended:
                return
            if label not in self.lines:
                self.lines[label] = self.progress.add_task(label, total=max(total, 1))
            self.progress.update(self.lines[label], description=f"  {label} [{name}]", completed=done,
                                 total=max(total, 1))

    def pump(self, messages: Any, stop: threading.Event) -> None:
        """Show phase messages that worker processes put on a queue, until `stop` is set."""
        while not stop.is_set():
            try:
                self.update(*messages.get(timeout=0.2))
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return

    def finished(self, spec: RunSpec, outcome: RunOutcome | None) -> None:
        status = outcome.status if outcome else "skipped"
        label = run_label(spec)
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self.ended.add(label)
            task = self.lines.pop(label, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.grid)
        if outcome and outcome.status != "done":
            self.console.print(f"[yellow]{label}: {outcome.status}: {outcome.error}[/yellow]", highlight=False)
