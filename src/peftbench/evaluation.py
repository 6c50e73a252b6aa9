"""Evaluation: batched greedy (or sampled) generation (scoring the outputs is `scoring.score`).

Prompts are sorted by length before batching (left padding, less padding, same batches every
time), so predictions are deterministic for a given evaluation batch size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftbench.tasks.prompts import encode_prompt


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    batch_size: int,
    max_new_tokens: int,
    progress: Callable[[int, int], None] | None = None,
    sampling: Sampling | None = None,
) -> list[str] | list[list[str]]:
    """Greedy continuations of `prompts` (decoded new tokens only), in the input order; with
    `sampling`, `sampling.n` sampled continuations per prompt (the run's seed makes them reproducible)."""
    from transformers import GenerationConfig

    device = next(model.parameters()).device
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    eos = {tokenizer.eos_token_id}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(model_eos if isinstance(model_eos, list) else [model_eos] if model_eos is not None else [])
    decoding = ({"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0,
                 "num_return_sequences": sampling.n} if sampling else {"do_sample": False})
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(e for e in eos if e is not None),
        **decoding,
    )
    n = sampling.n if sampling else 1
    tokenizer.padding_side = "left"
    outputs: list[list[str]] = [[] for _ in prompts]
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(device)
        out = model.generate(**batch, generation_config=gen_config)
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for j, i in enumerate(idx):  # generate returns each prompt's n sequences together
            outputs[i] = texts[j * n : (j + 1) * n]
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return outputs if sampling else [o[0] for o in outputs]


@torch.no_grad()
def label_logprobs(
    model: nn.Module, tokenizer: Any, prompts: list[str], labels: tuple[str, ...], *, batch_size: int
) -> list[list[float]]:
    """Summed log-probability of each label's tokens after each prompt, in batched forwards.

    The label tokens are exactly the training targets' (without EOS). Sequences are right-padded,
    so every real token keeps its position; methods that prepend virtual tokens (prompt tuning,
    P-tuning) return longer logits, whose extra leading positions are dropped.
    """
    device = next(model.parameters()).device
    label_ids = [tokenizer(label, add_special_tokens=False).input_ids for label in labels]
    pairs = []  # (prompt index, label index, token ids, length of the prompt part)
    for p, prompt in enumerate(prompts):
        prompt_ids = encode_prompt(prompt, tokenizer)
        for k, ids in enumerate(label_ids):
            pairs.append((p, k, prompt_ids + ids, len(prompt_ids)))
    order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][2]), i))
    scores = [[0.0] * len(labels) for _ in prompts]
    model.eval()
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        batch = [pairs[i] for i in order[start : start + batch_size]]
        width = max(len(ids) for _, _, ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logits = logits[:, logits.shape[1] - width :]  # drop virtual-token positions
        logprobs = torch.log_softmax(logits, dim=-1).cpu()
        for row, (p, k, ids, n_prompt) in enumerate(batch):
            positions = torch.arange(n_prompt - 1, len(ids) - 1)
            targets = torch.tensor(ids[n_prompt:])
            scores[p][k] = float(logprobs[row, positions, targets].sum())
    return scores
