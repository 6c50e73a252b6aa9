"""What a method costs: trainable parameters, extra inference FLOPs, peak training memory.

FLOPs follow PEFT-Bench's protocol: one forward pass of batch 1 × 512 tokens, counted by
`torch.utils.flop_counter.FlopCounterMode`, adapted model minus base model. The counter counts
matrix products (mm, bmm, addmm, baddbmm, convolutions) and attention kernels; element-wise ops
(norms, activations, bias adds, scaling) are not counted, so IA3's rescaling and BitFit's biases
cost 0 extra FLOPs by this protocol. torch has no formula for the CPU SDPA kernel, so one is
registered here with the same count as the GPU kernels: CPU and GPU figures agree.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten

if aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


GB = 1e9


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


@torch.no_grad()
def forward_flops(model: nn.Module, *, batch_size: int, seq_len: int, vocab_size: int) -> int:
    """FLOPs of one forward pass over `batch_size × seq_len` token ids (eval mode, no cache)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen).to(device)
    # No attention mask: every token is real, and mask helpers inspect values that meta tensors lack.
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(input_ids=ids, use_cache=False)
    model.train(was_training)
    return int(counter.get_total_flops())


@dataclass
class MemoryPeak:
    peak_bytes: int = 0
    source: str = ""


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@contextmanager
def peak_memory(device: torch.device, model: nn.Module) -> Iterator[MemoryPeak]:
    """Peak memory of the enclosed phase, in bytes, with the measurement it comes from.

    CUDA: `max_memory_allocated` after resetting the peak stats (weights, gradients, optimiser
    state and activations: the figure PSCP's M_m means). CPU: the increase of the process's
    resident-set high-water mark (reset through /proc/self/clear_refs) plus the model's weights,
    which were resident before the phase began.
    """
    result = MemoryPeak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.peak_bytes = int(torch.cuda.max_memory_allocated(device))
        result.source = "cuda_max_allocated"
        return
    weights = resident_bytes(model)
    if sys.platform.startswith("linux") and _reset_rss_peak():
        before = (_read_status_kb("VmRSS") or 0) * 1024
        yield result
        after = (_read_status_kb("VmHWM") or 0) * 1024
        result.peak_bytes = max(after - before, 0) + weights
        result.source = "cpu_rss_hwm_delta+weights"
        return
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield result
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.peak_bytes = max(after - before, 0) + weights
    result.source = "cpu_ru_maxrss_delta+weights (peak not resettable: a lower bound)"
