"""All cost measures of one run, with the protocol each number comes from.

The base model's figures (FLOPs, FLOPs per token, latency) are measured once per process on a
fresh base model and reused, so adapted and base are always compared in the same process. FLOP
counts go through a `Count` (see `CountCache`): they are deterministic, so a cache may answer them;
latency and memory are measured every time they are asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench.config import CostsConfig
from peftbench.costs.energy import EnergyMeter
from peftbench.costs.flops import GB, count_parameters, flops_per_generated_token, forward_flops, train_step_flops
from peftbench.costs.latency import measure_latency
from peftbench.costs.memory import MemoryPeak, analytic_training_memory, measure_training_memory
from peftbench.utils import atomic_write_text, code_digest

Count = Callable[[str, Callable[[], Any]], Any]
"""(name, count) → the count's value: `count()` itself, or what a cache holds under that name."""


def count_now(name: str, count: Callable[[], Any]) -> Any:
    return count()


def counting_code(*more: str) -> dict[str, str]:
    """Digests of the code a FLOP count depends on (`utils.code_digest`): the counter, what asks it
    for which passes (this module), the decoder it counts through, and every method module (how an
    adapter is built and merged), plus `more`. Part of every count cache's key, so that a count
    cached by another checkout is never reused once that code has changed."""
    package = Path(__file__).resolve().parents[1]
    methods = sorted(p.relative_to(package).as_posix() for p in (package / "methods").glob("*.py"))
    return code_digest("costs/flops.py", "costs/run.py", "decoding.py", *methods, *more)


class CountCache:
    """Deterministic counts (FLOPs) kept in a JSON file whose name is a digest of everything they
    depend on: counting runs a forward pass under FlopCounterMode for each figure, and the same
    model architecture, method, protocol and library versions always give the same count. A value
    is anything JSON holds (a number, or a method's row of counts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        self.counted = False

    def __call__(self, name: str, count: Callable[[], Any]) -> Any:
        if name not in self.known:
            self.known[name] = count()
            self.counted = True
        return self.known[name]

    def save(self) -> None:
        if self.counted:
            atomic_write_text(self.path, json.dumps(self.known, sort_keys=True))


@dataclass
class BaseFigures:
    flops: int
    flops_per_token: float
    latency: dict[str, float] | None


def voted_extra(base: float, adapted: float, votes: int) -> float:
    """What `votes` adapted models cost beyond one base model: K adapted forwards against the base's
    one (a voting strategy runs every member, docs/stability.md)."""
    return votes * adapted - base


def measure_base(model: nn.Module, cfg: CostsConfig, vocab_size: int, count: Count = count_now) -> BaseFigures:
    return BaseFigures(
        flops=int(count("base_flops", lambda: forward_flops(model, batch_size=cfg.flops_batch_size,
                                                            seq_len=cfg.flops_seq_len, vocab_size=vocab_size))),
        flops_per_token=count("base_flops_per_token", lambda: flops_per_generated_token(
            model, context_len=cfg.flops_seq_len, new_tokens=cfg.decode_tokens, vocab_size=vocab_size)),
        latency=_latency(model, cfg, vocab_size) if cfg.latency else None,
    )


def _latency(model: nn.Module, cfg: CostsConfig, vocab_size: int) -> dict[str, float]:
    return measure_latency(model, prefill_len=cfg.flops_seq_len, new_tokens=cfg.decode_tokens,
                           repeats=cfg.latency_repeats, vocab_size=vocab_size)


def run_costs(method_costs: dict[str, Any], *, adapter_bytes: int, train_peak: MemoryPeak | None,
              energy: EnergyMeter | None) -> dict[str, Any]:
    """One run's costs: its method's (`measure_method_costs`, the same for every task and seed) and
    what only this run has — its saved adapter, its own training peak and energy."""
    return {**method_costs, "adapter_bytes": adapter_bytes,
            "train_run_peak_mem_gb": train_peak.peak_bytes / GB if train_peak else None,
            "train_run_peak_mem_source": train_peak.source if train_peak else None,
            "energy_j": energy.joules if energy else None}


def measure_method_costs(
    model: nn.Module,
    method: Any,
    *,
    base: Callable[[], BaseFigures],
    cfg: CostsConfig,
    memory_batch_size: int,
    device: torch.device,
    count: Count = count_now,
) -> dict[str, Any]:
    """The measures of docs/costs.md that depend on the method, the model and the protocol only — not
    on the task, the seed or the trained values — for a trained (or zero-shot) model. Run after
    evaluation: the memory measurement takes optimiser steps on the trainable tensors."""
    vocab = model.get_input_embeddings().num_embeddings
    trainable, total = count_parameters(model)
    b = base()

    def forward() -> int:
        return forward_flops(model, batch_size=cfg.flops_batch_size, seq_len=cfg.flops_seq_len, vocab_size=vocab)

    def merged_forward() -> int:
        with method.merged(model):
            return forward()

    adapted = int(count("adapted_flops", forward))
    # `merged` leaves an unmergeable method's model as it is: its deployed forward is the adapted one
    merged = int(count("merged_flops", merged_forward)) if method.mergeable else adapted
    per_token = count("flops_per_token", lambda: flops_per_generated_token(
        model, context_len=cfg.flops_seq_len, new_tokens=cfg.decode_tokens, vocab_size=vocab))
    costs: dict[str, Any] = {
        "trainable_params": trainable,
        "total_params": total,
        "base_flops": b.flops,
        "adapted_flops": adapted,
        "merged_flops": merged,
        "extra_tflops": (merged - b.flops) / 1e12,
        "extra_tflops_unmerged": (adapted - b.flops) / 1e12,
        "flops_protocol": f"FlopCounterMode, forward of {cfg.flops_batch_size} x {cfg.flops_seq_len} tokens; "
        "matmul and attention ops counted, element-wise ops not; extra_tflops is the merged figure for "
        "mergeable methods",
        "flops_per_token": per_token,
        "base_flops_per_token": b.flops_per_token,
        "train_step_flops": int(count("train_step_flops", lambda: train_step_flops(
            model, batch_size=memory_batch_size, seq_len=cfg.memory_seq_len, vocab_size=vocab))) if trainable else 0,
    }
    if cfg.latency:
        latency = _latency(model, cfg, vocab)
        costs |= {"prefill_s": latency["prefill_s"], "per_token_s": latency["per_token_s"],
                  "base_prefill_s": b.latency["prefill_s"], "base_per_token_s": b.latency["per_token_s"]}
    estimate = analytic_training_memory(model, batch_size=memory_batch_size, seq_len=cfg.memory_seq_len,
                                        vocab_size=vocab)
    # nothing trains, nothing to hold for it: the parts are zero with their total, not the weights alone
    costs["est_train_mem_gb"] = estimate["total"] / GB if trainable else 0.0
    costs["est_train_mem_parts_gb"] = {k: v / GB if trainable else 0.0 for k, v in estimate.items() if k != "total"}
    if trainable and cfg.memory_steps:
        peak = measure_training_memory(model, batch_size=memory_batch_size, seq_len=cfg.memory_seq_len,
                                       steps=cfg.memory_steps, vocab_size=vocab, device=device)
        costs["peak_train_mem_gb"], costs["peak_train_mem_source"] = peak.peak_bytes / GB, peak.source
    else:
        costs["peak_train_mem_gb"], costs["peak_train_mem_source"] = 0.0, "no training"
    return costs
