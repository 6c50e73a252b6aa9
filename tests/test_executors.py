"""Executors: the same grid on local, Ray (a local 2-CPU cluster) and Slurm (submitit's local executor)
gives identical stored results; a worker killed mid-run is retried; a grid started on one executor
finishes on another; --dry-run starts nothing; local workers start early only for a new grid, and
runs go out one per method first."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import interruptible, start_traced, wait_for_mark
from conftest import run_cli as cli
from conftest import stored_results as results

from peftbench.store import Store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "src/peftbench/configs/quickstart.yaml"
# The quickstart grid (9 methods x 3 tasks) on a short budget, one seed.
QUICK = ["--set", "seeds=[0]", "--set", "training.max_steps=20", "--set", "evaluation.max_samples=16",
         "--set", "costs.latency=false", "--set", "costs.memory_steps=1", "--set", "runtime.workers=1"]
RAY = ["--executor", "ray", "--set", "executor.ray.local_cpus=2"]
SLURM = ["--executor", "slurm", "--set", "executor.slurm.array_parallelism=2"]


def test_the_quickstart_grid_gives_identical_results_on_local_ray_and_slurm(tmp_path):
    local, ray, slurm = tmp_path / "local", tmp_path / "ray", tmp_path / "slurm"
    cli("run", str(QUICKSTART), "--out", str(local), *QUICK)
    cli("run", str(QUICKSTART), "--out", str(ray), *QUICK, *RAY)
    done = cli("run", str(QUICKSTART), "--out", str(slurm), *QUICK, *SLURM,
               "--set", "executor.slurm.runs_per_job=5")
    assert "no Slurm here" in done.stderr  # the laptop path: submitit's local executor
    expected = results(local)
    assert len(expected) == 27 and {v[0] for v in expected.values()} == {"done"}
    assert any(v[1]["score"] > 0 for v in expected.values())
    assert results(ray) == expected
    assert results(slurm) == expected
    workers = {json.dumps(r.provenance["worker"].get("executor")) for r in Store.open(ray).records()}
    assert workers == {'"ray"'}
    slurm_records = Store.open(slurm).records()
    assert all(r.attempts == 1 for r in slurm_records)
    assert all(Path(r.provenance["worker"]["log"]).is_file() for r in slurm_records)
    # 27 runs in jobs of 5: each job loads the model once for all its runs
    assert len({r.provenance["worker"]["slurm_job"] for r in slurm_records}) == 6


def trace_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def kill_a_worker_mid_training(config: Path, out: Path, extra: list[str]) -> tuple[str, subprocess.CompletedProcess]:
    """Start the grid, SIGKILL the process that runs the first LoRA run once it is half-way through
    training (it stops itself at that mark of the phase trace), and let the grid finish."""
    trace = out.parent / f"{out.name}.trace"
    proc = start_traced(config, out, trace, *extra, stop_at="lora:train:15")
    victim = wait_for_mark(proc, trace, lambda t: t["method"] == "lora" and t["phase"] == "train" and t["step"] >= 15)
    assert victim["pid"] != proc.pid  # a worker, not the driver
    os.kill(victim["pid"], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    return victim["run_id"], subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr)


@pytest.mark.parametrize("executor", [["--workers", "2"], RAY, SLURM], ids=["local-pool", "ray", "slurm"])
def test_a_worker_killed_mid_run_is_retried_and_the_grid_completes(small_grid, tmp_path, executor):
    config, expected = small_grid
    out = tmp_path / "out"
    killed, done = kill_a_worker_mid_training(config, out, executor)
    assert "worker died" in done.stderr and "retrying (1/2)" in done.stderr
    records = {r.run_id: r for r in Store.open(out).records()}
    assert len(records) == 6 and {r.status for r in records.values()} == {"done"}
    assert records[killed].attempts == 2
    assert results(out) == expected  # the retried run starts afresh: same result as uninterrupted


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a process it did not start through a pidfd")
def test_workers_end_when_their_driver_is_killed(small_grid, tmp_path):
    """SIGKILL reaches the driver alone, mid-training in a worker: no pool shutdown is sent, yet
    the workers end (before, they trained on and then waited on the pool's queue for ever)."""
    config, _ = small_grid
    trace = tmp_path / "trace"
    proc = start_traced(config, tmp_path / "out", trace, "--workers", "2")
    worker = wait_for_mark(proc, trace, lambda t: t["phase"] == "train" and t["step"] >= 5)["pid"]
    assert worker != proc.pid
    watch = os.pidfd_open(worker)  # readable once the worker has ended, even if nobody reaps it
    ended: list[int] = []
    try:
        proc.kill()
        proc.wait()
        ended, _, _ = select.select([watch], [], [], 120)
        assert ended, f"worker {worker} still alive 120 s after its driver was killed"
    finally:
        if not ended:
            signal.pidfd_send_signal(watch, signal.SIGKILL)
        os.close(watch)


def test_a_grid_started_on_ray_finishes_locally(small_grid, tmp_path):
    config, expected = small_grid
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", "run", str(config), "--out", str(out), *RAY],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    deadline = time.monotonic() + 300
    while not out.joinpath("peftbench.db").is_file() or len(Store.open(out).records("done")) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    statuses = [r.status for r in Store.open(out).records()]
    assert "running" not in statuses and 2 <= statuses.count("done") < 6
    cli("run", str(config), "--out", str(out), "--executor", "local")
    assert results(out) == expected
    executors = {r.provenance["worker"]["executor"] for r in Store.open(out).records()}
    assert executors == {"ray", "local"}


def test_dry_run_lists_the_plan_and_writes_nothing(small_grid, tmp_path):
    config, _ = small_grid
    out = tmp_path / "out"
    shown = cli("run", str(config), "--out", str(out), "--executor", "ray", "--dry-run").stdout
    assert "6 of 6 runs pending" in shown and "a local Ray (per run: 1 CPU, 0 GPU)" in shown
    assert not out.exists()
    paper = cli("run", str(ROOT / "configs/peftbench-llama3-8b.yaml"), "--out", str(out), "--executor", "slurm",
                "--dry-run").stdout
    assert "945 of 945 runs pending" in paper and "Slurm via submitit" in paper
    assert not out.exists()
    cli("run", str(config), "--out", str(out), "--set", "methods=[base]")
    shown = cli("run", str(config), "--out", str(out), "--dry-run").stdout
    flat = " ".join(shown.split())
    assert "4 of 6 runs pending" in flat and "of training for the 4 pending runs without finished runs" in flat
    rows = {cells[1]: cells[2:6] for line in shown.splitlines()
            if len(cells := [c.strip() for c in line.split("│")]) > 6}
    assert rows["base"] == ["2", "2", "0", "0"] and rows["lora"] == ["2", "0", "0", "2"]


def test_a_worker_reads_the_weights_once_and_gives_each_run_its_own_copy(monkeypatch, tmp_path):
    import torch

    from peftbench.config import validate_config
    from peftbench.modeling import resolve_model
    from peftbench.runner import run
    from peftbench.runner.worker import worker_context

    reads = []
    real = run.load_model
    monkeypatch.setattr(run, "load_model", lambda *args: reads.append(args) or real(*args))
    cfg = validate_config({"methods": ["lora"], "tasks": ["qs_arith"]})
    ctx = worker_context(cfg, resolve_model(cfg.model), tmp_path)
    assert worker_context(cfg, resolve_model(cfg.model), tmp_path) is ctx  # one context per grid and process
    first, second = ctx.fresh_model(), ctx.fresh_model()
    assert len(reads) == 1
    with torch.no_grad():
        first.get_input_embeddings().weight.add_(1.0)  # what one run does to its model ...
    pristine = ctx.fresh_model().get_input_embeddings().weight
    assert torch.equal(second.get_input_embeddings().weight, pristine)  # ... no other run sees
    assert not torch.equal(first.get_input_embeddings().weight, pristine)


def test_the_plan_line_names_the_workers_that_really_start():
    from peftbench.config import validate_config
    from peftbench.runner.grid import executor_line

    cfg = validate_config({"model": {"name": "builtin:tiny-llama"}, "methods": ["lora"], "tasks": ["qs_sentiment"],
                           "runtime": {"workers": 2, "threads": 1}})
    assert "(2 worker processes, 1 thread(s) each)" in executor_line(cfg)
    assert "(1 worker process, 1 thread(s) each)" in executor_line(cfg, 1)
    assert "(2 worker processes," in executor_line(cfg, 7)


def test_workers_start_before_the_checks_only_for_a_new_local_grid_and_never_more_than_its_runs(tmp_path,
                                                                                                 monkeypatch):
    from peftbench.config import validate_config
    from peftbench.runner.backends import processes
    from peftbench.store import Store

    monkeypatch.setattr(processes, "WorkerProcesses", lambda workers: workers)  # the number it would start
    servers: list[bool] = []
    monkeypatch.setattr(processes, "start_server", lambda: servers.append(True))

    def early(out=tmp_path / "new", **overrides):
        grid = {"methods": ["lora", "ia3"], "tasks": ["qs_sentiment"], "seeds": [0, 1, 2], "runtime": {"workers": 4}}
        return processes.start_early(validate_config({**grid, **overrides}), out)

    assert early() == 4
    assert early(runtime={"workers": 8}) == 6  # 2 methods x 1 task x 3 seeds
    assert early(seeds=[0], methods=["lora"]) is None  # one run: it runs in the driver's process
    assert early(runtime={"workers": 1}) is None
    assert early(executor={"kind": "slurm"}) is None
    Store.create(tmp_path / "old")
    assert not servers
    assert early(out=tmp_path / "old") is None  # a resumed grid: the grid counts what is pending first,
    assert servers == [True]  # but the server the workers fork from starts importing now
    assert early(out=tmp_path / "old", runtime={"workers": 1}) is None and servers == [True]


def _environ_and_parent(key: str) -> tuple[str | None, int]:
    return os.environ.get(key), os.getppid()


@pytest.mark.skipif(sys.platform != "linux", reason="workers are spawned on this platform")
def test_forked_workers_start_when_runs_are_submitted_with_the_driver_s_environment_of_then(monkeypatch):
    """On Linux the workers fork from a server that imported the run path: making them ready starts
    no worker, so a grid that fails its checks has none to end; a worker made later gets the
    driver's environment as it is then, not the server's."""
    from peftbench.runner.backends import processes

    untaken = processes.WorkerProcesses(2)
    assert not untaken.pool._processes
    untaken.close()
    monkeypatch.setenv("PEFTBENCH_TEST_LATER", "set after the server started")
    pool = processes.WorkerProcesses(1).take()
    try:
        environ, parent = pool.submit(_environ_and_parent, "PEFTBENCH_TEST_LATER").result(timeout=300)
        preloaded = pool.submit(eval, "'peftbench.runner.backends.preload' in __import__('sys').modules")
        assert preloaded.result(timeout=300)  # imported by the server, never by a worker itself
    finally:
        pool.shutdown(wait=True)
    assert environ == "set after the server started"
    assert parent != os.getpid()  # the server's child, not the driver's


@pytest.mark.skipif(sys.platform != "linux", reason="workers are spawned on this platform")
def test_the_server_does_not_import_modules_from_the_directory_the_command_started_in(tmp_path):
    """The server runs as `python -c`, whose import path starts with the current directory; a
    user's `datasets.py` there once replaced the library in every worker (the driver has no such
    entry on its path)."""
    (tmp_path / "datasets.py").write_text("SHADOW = True\n")
    driver = """
import sys
del sys.path[0]  # as the console script: the current directory is not on the driver's path
from peftbench.runner.backends.processes import WorkerProcesses
pool = WorkerProcesses(1).take()
print(pool.submit(eval, "__import__('sys').modules['datasets'].__file__").result(timeout=300))
pool.shutdown()
"""
    done = subprocess.run([sys.executable, "-c", driver], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "site-packages" in done.stdout and str(tmp_path) not in done.stdout


def test_ctrl_c_while_the_run_path_is_imported_ends_the_process_quietly(tmp_path):
    """The server imports for seconds as a command starts; Ctrl-C then reaches it too, and only the
    driver says what happened."""
    (tmp_path / "interrupted.py").write_text("raise KeyboardInterrupt\n")
    code = ("from peftbench.runner.backends import processes\n"
            "processes.RUN_PATH = 'interrupted'\n"
            "processes.import_run_path()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stderr) == (130, "")


def test_the_run_path_the_workers_fork_from_touches_no_cuda():
    """Workers fork from a server that imported the run path; a child cannot use a CUDA its parent
    initialised, so importing it must not call into torch.cuda (a library release could start to)."""
    probe = """
import torch
calls = []
def wrapped(name, function):
    def call(*args, **kwargs):
        calls.append(name)
        return function(*args, **kwargs)
    return call
for name in ["is_available", "device_count", "init", "_lazy_init", "current_device", "mem_get_info",
             "get_device_properties", "synchronize", "set_device"]:
    setattr(torch.cuda, name, wrapped(name, getattr(torch.cuda, name)))
from peftbench.runner.backends.processes import RUN_PATH
__import__(RUN_PATH)
print(calls, torch.cuda.is_initialized())
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["[]", "False"]


def test_spawned_worker_processes_nobody_took_are_terminated_at_once_and_taken_ones_are_left_to_their_taker(
        monkeypatch):
    """A grid that fails its checks ends the workers it started early without waiting for their
    seconds of imports; a pool the backend took is the backend's to shut down."""
    import multiprocessing
    import multiprocessing.connection

    from peftbench.runner.backends import processes

    monkeypatch.setattr(processes, "worker_context", lambda: multiprocessing.get_context("spawn"))
    untaken = processes.WorkerProcesses(2)
    started = list(untaken.pool._processes.values())
    untaken.close()
    assert all(multiprocessing.connection.wait([p.sentinel], timeout=120) for p in started)
    # The pool's own thread may reap a child first; its exit status is then set a moment later.
    deadline = time.monotonic() + 60
    while any(p.exitcode is None for p in started) and time.monotonic() < deadline:
        for p in started:
            p.join(timeout=0.05)
    assert [p.exitcode for p in started] == [-signal.SIGTERM] * 2
    taken = processes.WorkerProcesses(1)
    pool = taken.take()
    taken.close()  # nothing: the pool is the taker's
    assert pool.submit(_environ_and_parent, "PEFTBENCH_NOT_SET").result(timeout=300) == (None, os.getpid())
    pool.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        taken.take()


def test_the_grid_runs_on_the_workers_started_early_when_their_number_fits_and_ends_them_otherwise():
    from types import SimpleNamespace

    from peftbench.config import validate_config
    from peftbench.runner.backends.local import InlineBackend, PoolBackend
    from peftbench.runner.grid import _backend

    class Started:  # stands for WorkerProcesses: records what the grid does with them
        def __init__(self, workers: int) -> None:
            self.workers, self.messages, self.taken, self.closed = workers, None, False, False
            self.pool = SimpleNamespace(shutdown=lambda **kwargs: None)

        def take(self):
            self.taken = True
            return self.pool

        def close(self) -> None:
            self.closed = True

    ctx = SimpleNamespace(cfg=validate_config({"methods": ["lora"], "tasks": ["qs_sentiment"], "seeds": [0, 1, 2],
                                               "runtime": {"workers": 2}}))
    progress = SimpleNamespace(pump=lambda messages, stop: None)
    early = Started(2)
    backend = _backend(ctx, progress, n_runs=3, console=None, processes=early)
    assert isinstance(backend, PoolBackend) and backend.pool is early.pool and early.taken and not early.closed
    backend.close()
    early = Started(2)
    assert isinstance(_backend(ctx, progress, n_runs=1, console=None, processes=early), InlineBackend)
    assert early.closed and not early.taken


def test_every_method_s_first_run_goes_out_before_any_method_s_second():
    from types import SimpleNamespace

    from peftbench.runner.grid import dispatch_order

    runs = [SimpleNamespace(method_id=m, n=i) for i, m in enumerate("aaabbc")]
    assert [(r.method_id, r.n) for r in dispatch_order(runs)] == [
        ("a", 0), ("b", 3), ("c", 5), ("a", 1), ("b", 4), ("a", 2)]
    assert dispatch_order([]) == []
