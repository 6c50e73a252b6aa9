"""How long a grid will train before any of its runs has finished: counted FLOPs over a throughput.

Per method, the FLOPs of one training step (forward and backward of batch × tokens per example)
are counted with `FlopCounterMode` on the model built from its configuration on the meta device (no
weights); per task, the steps follow from its training rows, epochs and batch (or `max_steps`), and a
mitigation strategy multiplies them by the models it trains. Time is that count over a throughput
that is stated, not guessed: `--tflops`, or on CPU this machine's measured matmul rate. Evaluation and
cost measurement are not included; once runs finish, `--dry-run` estimates from their measured times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from peftbench.config import BenchConfig, TrainingConfig
from peftbench.deni.members import training_cost
from peftbench.errors import PeftbenchError
from peftbench.hub import cache_only
from peftbench.plan import RunSpec
from peftbench.runner.run import cut_task_data
from peftbench.tasks.prompts import encode_example
from peftbench.tasks.spec import TaskSpec

GPU_TFLOPS = 400.0
"""Assumed sustained bf16 throughput of one GPU (about 40 % of an H100's dense peak), as docs/cluster.md."""
SAMPLE_ROWS = 200
"""Training rows tokenised per task to measure the mean tokens per example."""


@dataclass
class Estimate:
    hours: float = 0.0
    runs: int = 0  # pending runs the estimate covers
    tflops: float = 0.0  # the throughput it divides by
    throughput: str = ""  # where that throughput comes from
    unknown: list[str] = field(default_factory=list)  # tasks whose steps could not be known here
    lengths: dict[str, str] = field(default_factory=dict)  # task → tokens per example and where from


def cpu_tflops(threads: int, size: int = 768, repeats: int = 6) -> float:
    """This machine's float32 matmul rate with the runs' thread count (the best of a few tries)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        return 2 * size**3 / best / 1e12
    finally:
        torch.set_num_threads(previous)


def runs_on_gpu(cfg: BenchConfig) -> bool:
    """Whether the runs train on a GPU: where the executor places them (a Slurm job or Ray task that
    asks for GPUs, whatever the machine planning them has), else this machine's device."""
    if cfg.runtime.device == "cpu":
        return False
    if cfg.executor.kind == "slurm":
        return cfg.executor.slurm.gpus_per_job > 0
    if cfg.executor.kind == "ray":
        return cfg.executor.ray.num_gpus > 0
    return cfg.runtime.device == "cuda" or torch.cuda.is_available()


def estimate_training(cfg: BenchConfig, pending: list[RunSpec], tflops: float | None = None) -> Estimate | None:
    """Training hours of `pending` runs, or None where the model's configuration is not available here."""
    from peftbench.modeling import ModelUnavailable, load_tokenizer, resolve_model

    try:
        source = resolve_model(cfg.model)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(source.location, revision=source.revision,
                                            trust_remote_code=cfg.model.trust_remote_code)
    except (ModelUnavailable, OSError, ValueError):
        return None
    gpu = runs_on_gpu(cfg)
    rate = tflops or (GPU_TFLOPS if gpu else cpu_tflops(cfg.runtime.threads))
    how = ("--tflops" if tflops else f"assumed for one GPU ({GPU_TFLOPS:g} TFLOP/s ≈ 40 % of an H100's bf16 peak)"
           if gpu else f"measured float32 matmul rate of this machine with {cfg.runtime.threads} thread(s)")
    result = Estimate(tflops=rate, throughput=how)
    tokenizer = load_tokenizer(source, cfg.model) if source.is_local else None
    data: dict[str, tuple[int | None, int]] = {}
    step_flops: dict[tuple[str, int, int], float] = {}
    for spec in pending:
        training = spec.training or cfg.training
        for task in (spec.task_spec, *spec.mixed_tasks):
            if task.name not in data:
                rows, length, result.lengths[task.name] = _rows_and_length(cfg, task, tokenizer)
                data[task.name] = (rows, length)
        if spec.shots == 0 or not spec.method.trains:  # a zero-shot start or `base`: nothing trains
            result.runs += 1
            continue
        own_rows, length = data[spec.task_spec.name]
        mixed = [data[t.name][0] for t in spec.mixed_tasks]
        rows = None if own_rows is None or None in mixed else \
            (min(spec.shots, own_rows) if spec.shots is not None else own_rows) + sum(mixed)  # type: ignore[arg-type]
        n_steps = training_steps(training, rows)
        if n_steps is None:
            result.unknown += [t for t in (spec.task, *(m.name for m in spec.mixed_tasks)) if t not in result.unknown]
            continue
        batch = training.batch_size * training.gradient_accumulation_steps
        key = (spec.method_id, length, batch)
        if key not in step_flops:
            step_flops[key] = _step_flops(spec.method, config, batch, length)
        models = training_cost(training.mitigation, n_steps)
        result.hours += n_steps * models * step_flops[key] / (rate * 1e12) / 3600
        result.runs += 1
    return result


def _step_flops(method: Any, config: Any, batch: int, length: int) -> int:
    """FLOPs of one training step of the method on the weightless model (from shallow copies where its
    layers are built alike: `by_depth`)."""
    from peftbench.costs.flops import train_step_flops
    from peftbench.costs.from_config import by_depth

    def build(shape: Any) -> torch.nn.Module:
        return _on_meta(method, shape)

    def count(model: torch.nn.Module) -> tuple[int]:
        return (train_step_flops(model, batch_size=batch, seq_len=length, vocab_size=config.vocab_size),)

    (flops,) = by_depth(build(config), config, build, count)
    return flops


def _on_meta(method: Any, config: Any) -> torch.nn.Module:
    """The method applied to the weightless model; an initialisation that reads weights (a prompt
    from a TPV origin or a file) is left out: it changes values, not the shapes FLOPs count."""
    from peftbench.costs.from_config import skeleton
    from peftbench.methods import resolve_method

    own = getattr(method, "own_args", {})
    if any(method.args.get(k) is not None for k in own):
        method = resolve_method(method.name, {k: v for k, v in method.args.items() if k not in own})
    return method.apply(skeleton(config))


def training_steps(training: TrainingConfig, rows: int | None) -> int | None:
    """Optimiser steps of one run on `rows` training rows (None: not known here), as the Trainer counts
    them: `max_steps`, or epochs × the batches of an epoch per accumulated step."""
    if training.max_steps:
        return training.max_steps
    if rows is None:
        return None
    per_epoch = max(math.ceil(math.ceil(rows / training.batch_size) / training.gradient_accumulation_steps), 1)
    return math.ceil(per_epoch * training.epochs)


def _rows_and_length(cfg: BenchConfig, task: TaskSpec, tokenizer: Any) -> tuple[int | None, int, str]:
    """(training rows where the data is here — after the task's split rule, as a run cuts them —, tokens
    per example, where that length comes from)."""
    length, where = cfg.training.cutoff_len, f"{cfg.training.cutoff_len} ({task.name}: cutoff_len, an upper bound)"
    try:
        with cache_only():  # a dry run reads what is local or cached, and downloads nothing
            rows = cut_task_data(task, cfg).train
    except PeftbenchError:  # missing, or a hub dataset that is not cached: steps unknown here
        return None, length, where
    if tokenizer is not None and rows:
        sample = rows[:SAMPLE_ROWS]
        tokens = sum(len(encode_example(task, r, tokenizer, cfg.training.cutoff_len)["input_ids"]) for r in sample)
        length = max(1, round(tokens / len(sample)))
        where = f"{length} ({task.name}, mean of {len(sample)} training rows)"
    return len(rows), length, where
