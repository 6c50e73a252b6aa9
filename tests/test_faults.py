"""Faults: kill -9 at every phase of a run, two drivers on one output, a full disk, an unwritable
output, out of memory, divergence, no network. Each test acts at a point the run reports (the
PEFTBENCH_TRACE phase markers), never after a sleep, and checks the store against an uninterrupted run."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_cli, start_traced, stored_results, wait_for_mark

from peftbench.cli import main
from peftbench.store import Store

pytestmark = pytest.mark.slow
# Where a run can be killed: model build, training, adapter save, evaluation, cost measurement,
# and the driver's store write (the marker comes right before predictions and row are written).
PHASES = [("load", 0), ("train", 12), ("save", 0), ("eval", 0), ("costs", 0), ("record", 0)]


def wait_for(proc: subprocess.Popen, trace: Path, phase: str, step: int) -> dict:
    return wait_for_mark(proc, trace, lambda m: m["phase"] == phase and m["step"] >= step and m["method"] == "lora")


def test_kill_9_at_every_phase_then_rerun_completes_with_the_same_results(small_grid, tmp_path):
    config, expected = small_grid
    out = tmp_path / "out"
    for i, (phase, step) in enumerate(PHASES):
        trace = tmp_path / f"trace{i}"
        proc = start_traced(config, out, trace, stop_at=f"lora:{phase}:{step}")
        mark = wait_for(proc, trace, phase, step)
        assert mark["pid"] == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # left claimed by a dead owner; only the store write may have completed before the kill landed
        assert Store.open(out).get(mark["run_id"]).status in (("running", "done") if phase == "record" else
                                                              ("running",))
    run_cli("run", str(config), "--out", str(out))
    records = Store.open(out).records()
    assert len(records) == 6 and {r.status for r in records} == {"done"}
    # the first LoRA run was killed in each phase (in the last one, perhaps just after its row was written)
    assert max(r.attempts for r in records) in (len(PHASES), len(PHASES) + 1)
    assert stored_results(out) == expected
    predictions = sorted(p.name for p in (out / "predictions").iterdir())
    assert predictions == sorted(f"{run_id}.jsonl" for run_id in expected)  # no temporary files left


def test_two_drivers_on_one_output_take_different_runs(small_grid, tmp_path):
    """Driver A is paused (SIGSTOP) while it trains the first run; driver B, started on the same output,
    must leave that run alone and do the other five; A then resumes and finishes its run."""
    config, expected = small_grid
    out = tmp_path / "out"
    trace = tmp_path / "trace"
    first = start_traced(config, out, trace, stop_at="lora:train:5")  # A stops itself there
    held = wait_for(first, trace, "train", 5)
    try:
        run_cli("run", str(config), "--out", str(out))
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    records = {r.run_id: r for r in Store.open(out).records()}
    assert len(records) == 6 and all(r.attempts == 1 for r in records.values())  # no run was done twice
    assert records[held["run_id"]].provenance["worker"]["pid"] == first.pid
    others = {r.provenance["worker"]["pid"] for k, r in records.items() if k != held["run_id"]}
    assert len(others) == 1 and first.pid not in others  # B did the other five
    assert stored_results(out) == expected


@pytest.fixture
def cli(capsys, monkeypatch):
    """`peftbench ARGS` in this process, so a test can inject a fault; returns (exit code, stderr)."""

    def invoke(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["peftbench", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        return exited.value.code or 0, capsys.readouterr().err

    return invoke


def test_a_full_disk_stops_the_grid_with_a_clear_error_and_the_store_intact(small_grid, tmp_path, monkeypatch, cli):
    from peftbench.runner import driver

    config, expected = small_grid
    out = tmp_path / "out"
    real_write = driver.atomic_write_jsonl
    writes = []

    def fill_up(path: Path, rows: list) -> None:
        writes.append(path)
        if len(writes) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real_write(path, rows)

    monkeypatch.setattr(driver, "atomic_write_jsonl", fill_up)
    code, err = cli("run", str(config), "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("error: cannot write results to") and "No space left" in lines[-1]
    assert "Traceback" not in err
    statuses = [r.status for r in Store.open(out).records()]
    assert sorted(statuses) == ["done", "done", "pending", "pending", "pending", "pending"]
    assert len(list((out / "predictions").iterdir())) == 2
    monkeypatch.setattr(driver, "atomic_write_jsonl", real_write)
    assert cli("run", str(config), "--out", str(out))[0] == 0
    assert stored_results(out) == expected


def test_an_unwritable_output_is_a_clear_error(small_grid, tmp_path, cli):
    config, _ = small_grid
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = cli("run", str(config), "--out", str(blocker / "out"))
    assert code == 2 and err.strip().startswith("error: output_dir: cannot write to") and len(err.splitlines()) == 1


FAULTY = """
name: faulty
methods: [{name: lora, learning_rate: 1.0e+30}, {name: bitfit, learning_rate: 0.0123}, base]
tasks: [qs_sentiment]
training: {max_steps: 10, batch_size: 4, cutoff_len: 128}
evaluation: {max_samples: 8}
costs: {latency: false, memory_steps: 1}
"""


def test_oom_and_divergence_are_recorded_the_grid_goes_on_and_nothing_touches_the_network(tmp_path, monkeypatch,
                                                                                           cli):
    from peftbench.runner import run

    config = tmp_path / "faulty.yaml"
    config.write_text(FAULTY)
    real_train = run.train

    def train(*args, **kwargs):
        if kwargs["learning_rate"] == 0.0123:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(*args, **kwargs)

    def no_network(*args, **kwargs):
        raise AssertionError(f"an offline run opened a connection: {args}")

    monkeypatch.setattr(run, "train", train)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    code, _ = cli("run", str(config), "--out", str(tmp_path / "out"))
    assert code == 1  # some runs failed; the grid finished
    by = {r.method: r for r in Store.open(tmp_path / "out").records()}
    assert by["bitfit"].status == "failed" and by["bitfit"].error.startswith("out of memory: CUDA out of memory")
    assert by["lora"].status == "diverged"
    assert "non-finite loss or gradient at step" in by["lora"].error and "last finite loss" in by["lora"].error
    assert by["base"].status == "done" and by["base"].metrics["n_eval"] == 8


def test_an_interrupted_run_resumes_from_its_last_checkpoint_with_the_uninterrupted_result(small_grid, tmp_path):
    config, expected = small_grid
    out = tmp_path / "out"
    args = ["run", str(config), "--out", str(out), "--set", "training.checkpoint_steps=5"]
    first, second = tmp_path / "trace1", tmp_path / "trace2"
    proc = start_traced(config, out, first, *args[4:], stop_at="lora:train:17")
    mark = wait_for(proc, first, "train", 17)  # stopped there: checkpoints at steps 5, 10 and 15 were saved
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    checkpoints = out / "checkpoints" / mark["run_id"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-15"]
    partial = checkpoints / "checkpoint-20"  # as if killed while saving the next one
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes(b"half-written")
    run_cli(*args, env={"PEFTBENCH_TRACE": str(second)})
    steps = [m["step"] for m in map(json.loads, second.read_text().splitlines())
             if m["run_id"] == mark["run_id"] and m["phase"] == "train"]
    assert steps[0] == 16 and steps[-1] == 30  # continued after step 15, not from step 0
    assert stored_results(out) == expected  # checkpoints do not change results, resuming neither
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def remote_code_model(path: Path, marker: Path) -> Path:
    """A model directory whose config asks for code of its own, which would leave `marker` if it ran."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({
        "model_type": "evil", "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.Evil"},
    }))
    (path / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (path / "model.safetensors").write_bytes(b"")
    return path


@pytest.mark.parametrize("case", ["missing", "not-a-model", "pickle-weights-only", "remote-code"])
def test_a_bad_or_hostile_model_is_a_clear_error_and_runs_nothing(small_grid, tmp_path, cli, case):
    config, _ = small_grid
    marker = tmp_path / "code-ran"
    model = tmp_path / "model"
    if case == "not-a-model":
        model.mkdir()
        (model / "notes.txt").write_text("hello")
    elif case == "pickle-weights-only":
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (model / "pytorch_model.bin").write_bytes(b"not loaded: pickles can run code")
    elif case == "remote-code":
        remote_code_model(model, marker)
    out = tmp_path / "out"
    code, err = cli("run", str(config), "--out", str(out), "--set", f"model.name={model}")
    expected = {"missing": "does not exist", "not-a-model": "no config.json", "pickle-weights-only":
                "no *.safetensors weights", "remote-code": "trust_remote_code"}[case]
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err, err
    assert not out.exists() and not marker.exists()


@pytest.mark.parametrize("override", ["model.name=meta-llama/Meta-Llama-3-8B-Instruct", "tasks=[sst2]"],
                         ids=["hub-model", "hub-dataset"])
def test_without_the_hub_a_run_that_needs_it_stops_at_once_with_what_to_do(small_grid, tmp_path, override):
    config, _ = small_grid
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://192.0.2.1:81", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("run", str(config), "--out", str(out), "--set", override, env=env, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "unreachable" in result.stderr and not out.exists()


def test_an_executor_whose_engine_is_missing_is_a_clear_error(small_grid, tmp_path, monkeypatch, cli):
    import importlib.util

    config, _ = small_grid
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    code, err = cli("run", str(config), "--out", str(tmp_path / "out"), "--executor", "ray")
    assert code == 2 and "pip install 'peftbench[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
