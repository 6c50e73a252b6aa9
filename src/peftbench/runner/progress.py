"""What a running grid shows: the progress display in the driver's terminal, and with
PEFTBENCH_TRACE the phase markers of every run in a file (workers write them too)."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from peftbench.errors import PeftbenchError
from peftbench.plan import RunSpec
from peftbench.runner.run import PhaseFn, RunOutcome


def run_label(spec: RunSpec) -> str:
    """How a run is named on the progress display and in messages."""
    return f"{spec.method_id} · {spec.task} · seed {spec.seed}"


def trace(spec: RunSpec, name: str, done: int = 0, total: int = 1) -> None:
    """With PEFTBENCH_TRACE=FILE, append where a run is (run id, phase, step, pid) to FILE as a JSON
    line: for debugging, and for fault-injection tests that must act at a known point of a run.
    With PEFTBENCH_TRACE_STOP=METHOD:PHASE:STEP as well (METHOD a shell pattern), the first process
    of the grid to write such a mark (that phase of such a method at STEP or later) stops itself
    (SIGSTOP) right after it, so that a test acts exactly there, however fast the run goes on;
    `FILE.stopped` records that it happened, and no other process stops."""
    path = os.environ.get("PEFTBENCH_TRACE")
    if path:
        line = {"run_id": spec.run_id, "method": spec.method_id, "seed": spec.seed, "phase": name, "step": done,
                "total": total, "pid": os.getpid()}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        stop = trace_stop()
        if stop and fnmatch.fnmatchcase(spec.method_id, stop[0]) and stop[1] == name and done >= stop[2]:
            try:
                with open(path + ".stopped", "x") as first:
                    first.write(str(os.getpid()))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGSTOP)


def trace_stop() -> tuple[str, str, int] | None:
    """PEFTBENCH_TRACE_STOP as (method pattern, phase, step), None when it or PEFTBENCH_TRACE is not
    set. A grid reads it before it starts (`run_grid`), so that a malformed value is a one-line error
    there, not a ValueError in a worker halfway through a run."""
    value = os.environ.get("PEFTBENCH_TRACE_STOP")
    if not value or not os.environ.get("PEFTBENCH_TRACE"):
        return None
    parts = value.rsplit(":", 2)
    if len(parts) != 3 or not parts[2].isdecimal() or not parts[2].isascii():
        raise PeftbenchError(f"PEFTBENCH_TRACE_STOP: expected METHOD:PHASE:STEP (e.g. lora:train:17), got {value!r}")
    return parts[0], parts[1], int(parts[2])


def traced(spec: RunSpec, phase: PhaseFn | None) -> PhaseFn | None:
    """`phase`, also writing each phase to the PEFTBENCH_TRACE file when it is set."""
    if not os.environ.get("PEFTBENCH_TRACE"):
        return phase

    def tracing(name: str, done: int, total: int, loss: float | None = None) -> None:
        trace(spec, name, done, total)
        if phase is not None:
            phase(name, done, total, loss)

    return tracing


LONG_RUN_LINE_S = 60.0
"""Without a live display, a run that has shown nothing for this long shows where it is."""


class GridProgress:
    """What a grid shows while it runs, and a log per run.

    On a terminal (`live`): a rich display, the grid with its ETA and one line per run in flight.
    Anywhere else — a pipe, nohup, Slurm, CI — plain lines on stdout, flushed at once: a run's
    start and finish (label, score, elapsed, the grid's ETA) and, with `verbosity` 2, every phase
    and each tenth of training with its loss (by default only when a run has shown nothing for a
    minute). `verbosity` 0 shows neither. Every run's phases, losses and outcome also go to
    `<log_dir>/<run_id>.log`, whatever the display.
    """

    def __init__(self, console: Console, total: int, *, live: bool, verbosity: int = 1,
                 log_dir: Path | None = None) -> None:
        self.console = console
        self.total, self.live, self.verbosity, self.log_dir = total, live and verbosity > 0, verbosity, log_dir
        self.counts: dict[str, int] = {}
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), console=console, disable=not self.live,
        )
        self.grid = self.progress.add_task("grid", total=total)
        # all by run id (labels repeat: few-shot runs of one method, task and seed differ in shots only)
        self.lines: dict[str, Any] = {}
        self.ended: set[str] = set()  # late messages from a worker must not revive a finished line
        self.started: dict[str, float] = {}  # when its first message came
        self.shown: dict[str, tuple[str, int]] = {}  # (phase, tenth of it) last logged
        self.labels: dict[str, str] = {}  # how it is named on screen and in its log
        self.printed: dict[str, float] = {}  # when a line of it last went to stdout
        self.began = time.monotonic()
        self._lock = threading.Lock()

    def __enter__(self) -> GridProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def phase_fn(self, spec: RunSpec) -> PhaseFn:
        self.expect(spec)

        def phase(name: str, done: int, total: int, loss: float | None = None) -> None:
            self.update(spec.run_id, name, done, total, loss)

        return phase

    def expect(self, spec: RunSpec) -> None:
        """A run handed to a worker: its messages will come under its run id."""
        self.labels[spec.run_id] = run_label(spec)

    def update(self, run_id: str, name: str, done: int, total: int, loss: float | None = None) -> None:
        with self._lock:
            if run_id in self.ended:
                return
            label = self.labels.setdefault(run_id, run_id)
            if run_id not in self.started:
                self.started[run_id] = time.monotonic()
                self._line(run_id, f"start {label}", always=True)
            tenth = done * 10 // max(total, 1)
            if self.shown.get(run_id) != (name, tenth):
                self.shown[run_id] = (name, tenth)
                loss_text = f", loss {loss:.4f}" if loss is not None else ""
                self._line(run_id, f"  {label}: {name} {done}/{total}{loss_text}, {self._since(run_id)}",
                           always=False)
            if self.live:
                if run_id not in self.lines:
                    self.lines[run_id] = self.progress.add_task(label, total=max(total, 1))
                self.progress.update(self.lines[run_id], description=f"  {label} [{name}]",
                                     completed=done, total=max(total, 1))

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
        label = self.labels.setdefault(spec.run_id, run_label(spec))
        with self._lock:
            self.counts[status] = self.counts.get(status, 0) + 1
            self.ended.add(spec.run_id)
            task = self.lines.pop(spec.run_id, None)
            if task is not None:
                self.progress.remove_task(task)
            self.progress.advance(self.grid)
            if outcome is not None:
                score = (outcome.metrics or {}).get("score")
                what = f"score {score:.1f}" if isinstance(score, (int, float)) and status == "done" else status
                finished = sum(self.counts.values())
                elapsed = time.monotonic() - self.began
                eta = elapsed / finished * (self.total - finished) if finished else 0.0
                self._line(spec.run_id, f"{status} {label}: {what}, {self._since(spec.run_id)} — grid "
                                        f"{finished}/{self.total}, {_clock(elapsed)} elapsed, eta {_clock(eta)}",
                           always=True)
        if outcome and outcome.status != "done":
            message = f"{label}: {outcome.status}: {outcome.error}"
            if self.live:
                self.console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False)
            else:
                print(message, file=sys.stdout, flush=True)
            self._log(spec.run_id, message)

    def _since(self, run_id: str) -> str:
        return _clock(time.monotonic() - self.started.get(run_id, time.monotonic()))

    def _line(self, run_id: str, text: str, *, always: bool) -> None:
        """To the run's log file, and to stdout when there is no live display (phases: verbose only)."""
        self._log(run_id, text.strip())
        if self.live or self.verbosity == 0:
            return
        now = time.monotonic()
        quiet_for = now - self.printed.get(run_id, self.started.get(run_id, now))
        if always or self.verbosity >= 2 or quiet_for >= LONG_RUN_LINE_S:
            self.printed[run_id] = now
            print(text, file=sys.stdout, flush=True)

    def _log(self, run_id: str, text: str) -> None:
        if self.log_dir is None:
            return
        with contextlib.suppress(OSError):  # a log is a convenience: never the reason a grid stops
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with (self.log_dir / f"{run_id}.log").open("a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"
