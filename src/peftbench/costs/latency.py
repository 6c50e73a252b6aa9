"""Inference latency: prefill time and time per generated token, measured in-process.

Timings are medians over repeats after a warm-up, synchronised on CUDA. They are only comparable
between models measured in the same process on the same device (adapted vs base), never across
machines; benchmarks/ scripts report ratios for that reason.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_latency(
    model: nn.Module, *, prefill_len: int, new_tokens: int, repeats: int, vocab_size: int
) -> dict[str, float]:
    """{'prefill_s': one forward of 1 × prefill_len, 'per_token_s': each further greedy token of
    `decoding.decode`, the decoder evaluation uses}."""
    from peftbench.decoding import decode

    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (1, prefill_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    model.eval()

    def timed(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def generate(n: int):
        return lambda: decode(model, ids.tolist(), max_new_tokens=n, eos=(), pad_id=0)

    prefill = timed(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False))
    one, many = timed(generate(1)), timed(generate(1 + new_tokens))
    return {"prefill_s": prefill, "per_token_s": max(many - one, 0.0) / new_tokens}
