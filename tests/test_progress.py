"""Progress a user can follow anywhere: lines on stdout when it is not a terminal (nohup, Slurm, CI,
a pipe), a log file per run beside the store, and phase names that survive rich's markup."""

from __future__ import annotations

import io
import re

import pytest
from conftest import run_cli
from rich.console import Console

from peftbench.runner.progress import GridProgress
from peftbench.store import Store

CONFIG = """
model: {name: builtin:tiny-llama}
methods: [{name: lora, learning_rate: 5.0e-3}]
tasks: [qs_sentiment]
seeds: [0, 1]
training: {max_steps: 6, batch_size: 4, cutoff_len: 128, max_train_samples: 40, eval_steps: 6}
evaluation: {batch_size: 32, max_samples: 8}
costs: {latency: false, memory_steps: 1}
runtime: {threads: 1, workers: 1}
"""


def test_a_redirected_grid_prints_a_line_per_run_and_logs_every_run(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    result = run_cli("run", str(config), "--out", str(tmp_path / "out"))  # stdout is a pipe here
    for seed in (0, 1):
        label = f"lora · qs_sentiment · seed {seed}"
        assert f"start {label}" in result.stdout
        assert re.search(rf"done {label}: score \d+\.\d, \d+:\d\d — grid [12]/2, \d+:\d\d elapsed, eta", result.stdout)
    assert "grid 2/2" in result.stdout and " train " not in result.stdout  # phases only with --verbose
    records = Store.open(tmp_path / "out").records()
    for r in records:
        log = (tmp_path / "out" / "logs" / f"{r.run_id}.log").read_text()
        assert "start lora" in log and re.search(r"train 6/6, loss \d+\.\d{4}", log) and "done lora" in log
        assert f"score {r.metrics['score']:.1f}" in log


def test_verbose_shows_every_tenth_of_training_with_its_loss_and_quiet_shows_none(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("seeds: [0, 1]", "seeds: [0]"))
    verbose = run_cli("run", str(config), "--out", str(tmp_path / "v"), "--verbose").stdout
    steps = re.findall(r"lora · qs_sentiment · seed 0: train (\d)/6", verbose)
    assert steps == [str(s) for s in range(1, 7)]  # 6 steps: each crosses a tenth of training
    assert re.search(r"train 6/6, loss \d+\.\d{4}", verbose) and "eval " in verbose
    quiet = run_cli("run", str(config), "--out", str(tmp_path / "q"), "--quiet").stdout
    assert "start lora" not in quiet and "done lora" not in quiet
    assert run_cli("run", str(config), "--quiet", "--verbose", check=False).returncode == 2


def test_phase_names_in_brackets_are_shown_not_read_as_markup():
    """Nor as emoji codes: rich's default turns ':train:' into a train."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    with GridProgress(console, 1, live=True) as progress:
        progress.update("lora[r=8] · t · seed 0", "train", 1, 2)
        progress.update("peft:train:x · t · seed 0", "eval", 1, 2)
    assert "lora[r=8] · t · seed 0 [train]" in out.getvalue()
    assert "peft:train:x · t · seed 0 [eval]" in out.getvalue()


def test_report_to_is_checked_before_anything_runs_and_is_not_part_of_a_run_id(tmp_path):
    import importlib.util

    from peftbench.config import validate_config
    from peftbench.plan import plan_runs

    base = {"methods": ["lora"], "tasks": ["qs_sentiment"]}
    plain = plan_runs(validate_config(base))[0].run_id
    logged = plan_runs(validate_config({**base, "training": {"report_to": ["tensorboard", "wandb"]}}))[0].run_id
    assert plain == logged
    if importlib.util.find_spec("tensorboard") is not None:
        return
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.replace("eval_steps: 6}", "eval_steps: 6, report_to: [tensorboard]}"))
    result = run_cli("run", str(config), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert result.stderr.strip() == ("error: training.report_to: 'tensorboard' needs the tensorboard package, which is "
                                     "not installed (pip install tensorboard)")


def test_the_finish_line_counts_elapsed_time_and_the_eta_by_hand(monkeypatch, capsys):
    """Four runs; the first starts at t = 100 s and finishes at t = 175 s: 1:15 elapsed for one of
    four, so 3 × 75 s = 3:45 to go."""
    from peftbench.config import validate_config
    from peftbench.plan import plan_runs
    from peftbench.runner import progress as module
    from peftbench.runner.run import RunOutcome

    now = [100.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    spec = plan_runs(validate_config({"methods": ["lora"], "tasks": ["qs_sentiment"]}))[0]
    progress = GridProgress(Console(file=io.StringIO()), 4, live=False)
    progress.phase_fn(spec)("train", 0, 10)
    now[0] = 175.0
    progress.finished(spec, RunOutcome(status="done", metrics={"score": 87.25}))
    assert capsys.readouterr().out.splitlines() == [
        "start lora · qs_sentiment · seed 0",
        "done lora · qs_sentiment · seed 0: score 87.2, 1:15 — grid 1/4, 1:15 elapsed, eta 3:45"]


def test_the_trace_stops_the_first_process_at_its_mark_and_only_that_one(tmp_path):
    """PEFTBENCH_TRACE_STOP: the first process to write a matching mark stops itself right after it
    (what fault tests act on); a later process of the same grid writes its mark and goes on."""
    import os
    import signal
    import subprocess
    import sys

    trace = tmp_path / "trace"
    code = ("from types import SimpleNamespace as S; from peftbench.runner.progress import trace; "
            "spec = S(run_id='r', method_id='tpv-cross@o0<o1', seed=0); "
            "trace(spec, 'train', 3); trace(spec, 'eval', 0); print('went on')")
    env = {**os.environ, "PEFTBENCH_TRACE": str(trace), "PEFTBENCH_TRACE_STOP": "tpv-cross*:eval:0"}
    first = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    _, status = os.waitpid(first.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status) and (tmp_path / "trace.stopped").read_text() == str(first.pid)
    assert [line.split('"phase": ')[1][:7] for line in trace.read_text().splitlines()] == ['"train"', '"eval",']
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and second.stdout == "went on\n"


@pytest.mark.parametrize("value", ["lora:train", "lora:train:x", "train:-1", "lora:train:²"])
def test_a_malformed_trace_stop_is_a_one_line_error_before_anything_runs(tmp_path, value):
    """Not a ValueError in a worker halfway through a run: the grid refuses to start, writing nothing."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG)
    env = {"PEFTBENCH_TRACE": str(tmp_path / "trace"), "PEFTBENCH_TRACE_STOP": value}
    result = run_cli("run", str(config), "--out", str(tmp_path / "out"), env=env, check=False)
    assert result.returncode == 2 and not (tmp_path / "out").exists() and not (tmp_path / "trace").exists()
    assert result.stderr.strip() == ("error: PEFTBENCH_TRACE_STOP: expected METHOD:PHASE:STEP (e.g. lora:train:17), "
                                     f"got {value!r}")
