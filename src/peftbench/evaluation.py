"""Evaluation: batched greedy generation (scoring the outputs is `scoring.score`).

Prompts are sorted by length before batching (left padding, less padding, same batches every
time), so predictions are deterministic for a given evaluation batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftbench.tasks.prompts import encode_prompt


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (decoded new tokens only), in the input order."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    eos = {tokenizer.eos_token_id}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(model_eos if isinstance(model_eos, list) else [model_eos] if model_eos is not None else [])
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(e for e in eos if e is not None),
    )
    tokenizer.padding_side = "left"
    outputs: list[str] = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
        out = model.generate(**batch, generation_config=gen_config)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        for i, text in zip(idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True):
            outputs[i] = text
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return outputs
