"""Evaluation: batched greedy generation, output cleaning, and scoring with the task's metrics.

Prompts are sorted by length before batching (left padding, less padding, same batches every
time), so predictions are deterministic for a given evaluation batch size.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from peftbench.metrics import INVALID, METRICS, parse_number
from peftbench.tasks.prompts import encode_prompt
from peftbench.tasks.spec import Row, TaskSpec

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"^```[\w+-]*\s*\n?(.*?)\n?```", re.DOTALL)


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


def clean_output(text: str) -> str:
    """Strip thinking blocks, a surrounding code fence and whitespace."""
    text = _THINK.sub("", text).strip()
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1)
    return text.strip()


def parse_label(text: str, labels: tuple[str, ...]) -> int:
    """Index of the label the output states exactly (first line, case and trailing punctuation aside)."""
    line = clean_output(text).split("\n", 1)[0].strip().strip("\"'`*").rstrip(".!;:,").strip()
    folded = line.casefold()
    for i, label in enumerate(labels):
        if folded == label.casefold():
            return i
    return INVALID


@dataclass
class Scores:
    metrics: dict[str, float]
    primary: float
    invalid_rate: float
    n: int
    records: list[dict[str, Any]] = field(default_factory=list)


def score(task: TaskSpec, rows: list[Row], outputs: list[str]) -> Scores:
    """Score outputs against the rows' gold answers; every unparsable output is wrong and counted."""
    if task.kind == "classification":
        gold = [int(r[task.label_field]) for r in rows]
        pred: list[Any] = [parse_label(o, task.labels) for o in outputs]
        invalid = [p == INVALID for p in pred]
        shown = [task.labels[p] if p != INVALID else None for p in pred]
    else:
        gold = [_gold_number(r[task.answer_field]) for r in rows]
        pred = [parse_number(clean_output(o)) for o in outputs]
        invalid = [p is None for p in pred]
        shown = pred
    metrics = {name: METRICS[name](gold, pred, len(task.labels)) for name in task.metrics}
    records = [
        {"index": i, "prediction": o, "parsed": s, "gold": task.render_target(r), "correct": _correct(g, p)}
        for i, (r, o, s, g, p) in enumerate(zip(rows, outputs, shown, gold, pred, strict=True))
    ]
    n = len(rows)
    return Scores(
        metrics=metrics,
        primary=metrics[task.primary_metric],
        invalid_rate=sum(invalid) / n if n else math.nan,
        n=n,
        records=records,
    )


def _gold_number(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    parsed = parse_number(str(value), last=True)
    if parsed is None:
        raise ValueError(f"gold answer {value!r} holds no number")
    return parsed


def _correct(gold: Any, pred: Any) -> bool:
    if pred is None or pred == INVALID:
        return False
    if isinstance(gold, float):
        return math.isclose(pred, gold, abs_tol=1e-6)
    return gold == pred
