"""The --dry-run estimate before any run has finished: steps as the Trainer counts them, FLOPs as a
real model counts them, and time as FLOPs over the stated throughput."""

from __future__ import annotations

import math
import re

import pytest
from conftest import run_cli

from peftbench.config import validate_config
from peftbench.plan import plan_runs
from peftbench.runner.estimate import _rows_and_length, estimate_training, training_steps
from peftbench.store import Store

GRID = {"model": {"name": "builtin:tiny-llama"}, "methods": [{"name": "lora", "learning_rate": 5e-3}],
        "tasks": ["qs_sentiment"], "seeds": [0],
        "training": {"epochs": 1.5, "batch_size": 3, "gradient_accumulation_steps": 2, "max_train_samples": 41,
                     "cutoff_len": 128, "select_best": False},
        "evaluation": {"batch_size": 32, "max_samples": 8}, "costs": {"latency": False, "memory_steps": 1},
        "runtime": {"threads": 1, "workers": 1}}


@pytest.mark.slow
def test_the_estimated_steps_are_the_steps_a_run_takes(tmp_path):
    import yaml

    cfg = validate_config(GRID)
    rows, _, _ = _rows_and_length(cfg, plan_runs(cfg)[0].task_spec, None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(GRID))
    run_cli("run", str(config), "--out", str(tmp_path / "out"))
    (record,) = Store.open(tmp_path / "out").records()
    assert record.training["steps"] == training_steps(cfg.training, rows)  # 41 rows − 4 held out: 37 → 13 batches
    assert rows == 37 and training_steps(cfg.training, rows) == math.ceil(1.5 * 7)  # a last half step counts


def test_hours_are_counted_flops_over_the_stated_throughput_by_hand():
    from transformers import AutoModelForCausalLM

    from peftbench.costs.flops import train_step_flops
    from peftbench.deni.members import training_cost
    from peftbench.modeling import load_tokenizer, resolve_model
    from peftbench.tasks.prompts import encode_example
    from peftbench.tiny import tiny_model_dir

    grid = {**GRID, "methods": [{"name": "lora"}, {"name": "lora", "label": "lora-deni",
                                                  "mitigation": {"strategy": "deni", "ni_single_steps": 2,
                                                                 "ni_multi_steps": 2}}],
            "training": {**GRID["training"], "max_steps": 20}}
    cfg = validate_config(grid)
    plan = plan_runs(cfg)
    found = estimate_training(cfg, plan, tflops=2.0)
    task = plan[0].task_spec
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.model)
    from peftbench.runner.run import cut_task_data

    sample = cut_task_data(task, cfg).train[:200]
    length = round(sum(len(encode_example(task, r, tokenizer, 128)["input_ids"]) for r in sample) / len(sample))
    model = plan[0].method.apply(  # real weights, not meta; eager attention, as every FLOP count of ours
        AutoModelForCausalLM.from_pretrained(tiny_model_dir(), attn_implementation="eager"))
    flops = train_step_flops(model, batch_size=6, seq_len=length, vocab_size=model.config.vocab_size)
    deni = training_cost(plan[1].training.mitigation, 20)
    assert deni > 1
    assert found.hours == pytest.approx(20 * flops * (1 + deni) / 2e12 / 3600, rel=1e-12)
    assert found.runs == 2 and found.unknown == [] and f"{length} (qs_sentiment" in found.lengths["qs_sentiment"]


def test_dry_run_estimates_before_any_run_and_writes_nothing(tmp_path):
    result = run_cli("quickstart", "--dry-run", "--out", str(tmp_path / "q"))
    assert re.search(r"≈ [\d.]+ run-(seconds|minutes|hours) of training for the 54 pending runs without finished "
                     r"runs, from counted training FLOPs", " ".join(result.stdout.split()))  # the unit that reads best
    assert not (tmp_path / "q").exists()


def test_few_shot_and_multitask_runs_are_priced_by_their_own_rows():
    """TPV study runs: a few-shot run trains on its first `shots` rows, a multitask run on its task's
    rows and those it mixes in, a 0-shot run trains nothing. Steps by hand (batch 3, accumulation 2,
    1.5 epochs): 37 rows → 13 batches → 7 steps an epoch → 11; 8 shots → 3 batches → 2 → 3;
    37 + 37 mixed rows → 25 batches → 13 → 20."""
    import dataclasses

    cfg = validate_config({**GRID, "tasks": ["qs_sentiment", "qs_topic"]})
    plain, topic = (r for r in plan_runs(cfg) if r.seed == 0)
    assert plain.task == "qs_sentiment" and topic.task == "qs_topic"
    base = estimate_training(cfg, [plain], tflops=1.0)
    per_step = base.hours / 11
    shots = estimate_training(cfg, [dataclasses.replace(plain, shots=8)], tflops=1.0)
    mixed = estimate_training(cfg, [dataclasses.replace(plain, mixed_tasks=(topic.task_spec,))], tflops=1.0)
    zero = estimate_training(cfg, [dataclasses.replace(plain, shots=0)], tflops=1.0)
    assert shots.hours == pytest.approx(3 * per_step, rel=1e-12)
    assert mixed.hours == pytest.approx(20 * per_step, rel=1e-12)
    assert zero.hours == 0.0 and zero.runs == 1


def test_the_estimate_prices_runs_where_the_executor_places_them():
    """A dry run on a login node without a GPU, for Slurm jobs that each get one, assumes a GPU's
    rate (it divided by the login node's CPU matmul rate: thousands of times too many hours)."""
    from peftbench.runner.estimate import runs_on_gpu

    def cfg(**keys):
        return validate_config({"methods": ["lora"], "tasks": ["qs_sentiment"], **keys})

    assert runs_on_gpu(cfg(executor={"kind": "slurm"}))  # one GPU per job by default
    assert not runs_on_gpu(cfg(executor={"kind": "slurm", "slurm": {"gpus_per_job": 0}}))
    assert runs_on_gpu(cfg(executor={"kind": "ray", "ray": {"num_gpus": 1}}))
    assert not runs_on_gpu(cfg(executor={"kind": "ray"}))
    assert not runs_on_gpu(cfg(executor={"kind": "slurm"}, runtime={"device": "cpu"}))
    import torch

    assert runs_on_gpu(cfg()) == torch.cuda.is_available()
