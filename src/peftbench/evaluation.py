"""Evaluation: batched greedy (or sampled) generation through `decoding.decode`, and label
log-likelihoods (scoring the outputs is `scoring.score`).

Prompts are sorted by length before batching (left padding, less padding, same batches every
time); the decoder makes each row's output independent of its batch anyway (tested against a
one-sequence full-forward reference for every method).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from peftbench.decoding import (
    LOGLIK_SCORER,
    DecodingMismatch,
    Sampling,
    continuation_logprobs,
    decode,
    full_logprobs,
    scorer_name,
)
from peftbench.tasks.prompts import encode_prompt


def stop_tokens(model: nn.Module, tokenizer: Any) -> set[int]:
    """End-of-sequence ids: the tokenizer's and the model's generation config's (Llama-3 has several)."""
    eos = {tokenizer.eos_token_id}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(model_eos if isinstance(model_eos, list) else [model_eos] if model_eos is not None else [])
    return {e for e in eos if e is not None}


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
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    eos = stop_tokens(model, tokenizer)
    n = sampling.n if sampling else 1
    outputs: list[list[str]] = [[] for _ in prompts]
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        decoded = decode(model, [encoded[i] for i in idx], max_new_tokens=max_new_tokens, eos=eos,
                         pad_id=tokenizer.pad_token_id, sampling=sampling)
        texts = tokenizer.batch_decode(decoded.tokens, skip_special_tokens=True)
        for j, i in enumerate(idx):  # each prompt's n sequences are consecutive rows
            outputs[i] = texts[j * n : (j + 1) * n]
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return outputs if sampling else [o[0] for o in outputs]


@torch.no_grad()
def label_logprobs(
    model: nn.Module, tokenizer: Any, prompts: list[str], labels: tuple[str, ...], *, batch_size: int
) -> list[list[float]]:
    """Summed log-probability of each label's tokens after each prompt.

    The label tokens are exactly the training targets' (without EOS). Each prompt goes through the
    model once, and all its labels are scored from its cache in one more forward
    (`decoding.continuation_logprobs`), in batches of similar length (prompts sorted by length) of
    `batch_size` prompts — fewer with many labels, so that the repeated cache holds about
    2 × `batch_size` rows (AG News' 4 labels: batch_size / 2 prompts; never fewer than one prompt,
    with all its labels). A model only the reference decoder can feed is scored one (prompt, label)
    sequence per row instead (`_pair_logprobs`).
    """
    if scorer_name(model) != LOGLIK_SCORER:
        return _pair_logprobs(model, tokenizer, prompts, labels, batch_size=batch_size)
    label_ids = [tokenizer(label, add_special_tokens=False).input_ids for label in labels]
    encoded = [encode_prompt(prompt, tokenizer) for prompt in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), i))
    per_batch = max(1, min(batch_size, 2 * batch_size // len(labels)))
    model.eval()
    scores: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(order), per_batch):
        chunk = order[start:start + per_batch]
        found = continuation_logprobs(model, [encoded[i] for i in chunk], label_ids, pad_id=tokenizer.pad_token_id)
        for i, row in zip(chunk, found, strict=True):
            scores[i] = row
    return scores


def _pair_logprobs(
    model: nn.Module, tokenizer: Any, prompts: list[str], labels: tuple[str, ...], *, batch_size: int
) -> list[list[float]]:
    """`label_logprobs` as one right-padded (prompt + label) sequence per row, for models whose extra
    inputs only the reference can feed: every real token keeps its position; methods that prepend
    virtual tokens return longer logits, whose extra leading positions are dropped."""
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


@torch.no_grad()
def check_label_logprobs(model: nn.Module, tokenizer: Any, prompts: list[str], labels: tuple[str, ...], *,
                         tolerance: float) -> dict[str, Any]:
    """`label_logprobs` of `prompts` in one padded batch against one unpadded full forward per
    (prompt, label); raises `DecodingMismatch` when a sum differs by more than `tolerance` nats per
    label token. Returns what was checked, for provenance."""
    batched = label_logprobs(model, tokenizer, prompts, labels, batch_size=len(prompts) * len(labels))
    label_ids = [tokenizer(label, add_special_tokens=False).input_ids for label in labels]
    worst = 0.0
    for p, prompt in enumerate(prompts):
        prompt_ids = encode_prompt(prompt, tokenizer)
        for k, ids in enumerate(label_ids):
            logprobs = full_logprobs(model, prompt_ids + ids, len(ids) + 1)  # the positions that predict the label
            reference = float(sum(logprobs[j, t] for j, t in enumerate(ids)))
            gap = abs(batched[p][k] - reference) / max(len(ids), 1)
            worst = max(worst, gap)
            if gap > tolerance:
                raise DecodingMismatch(
                    f"log-likelihood check failed: batched and one-sequence forwards disagree on checked prompt "
                    f"{p + 1}, label {labels[k]!r} ({batched[p][k]:.4f} vs {reference:.4f} nats); the run is not scored"
                )
    return {"checked_prompts": len(prompts), "checked_labels": len(labels), "max_gap_per_token": worst,
            "tolerance": tolerance}
