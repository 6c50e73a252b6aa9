"""Row → prompt text → token ids, identical for training and evaluation.

A tokenizer with a chat template gets the task as one user turn (the template adds its own
special tokens); one without gets a plain instruction template and its usual special tokens.
The loss covers only the target tokens and the end-of-sequence token that teaches the model to stop.
"""

from __future__ import annotations

from typing import Any

from peftbench.tasks.spec import Row, TaskSpec

PLAIN_TEMPLATE = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
IGNORE_INDEX = -100


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(task: TaskSpec, row: Row, tokenizer: Any) -> str:
    if has_chat_template(tokenizer):
        content = f"{task.instruction}\n\n{task.render_input(row)}"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_TEMPLATE.format(instruction=task.instruction, input=task.render_input(row))


def encode_prompt(prompt: str, tokenizer: Any) -> list[int]:
    return tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer)).input_ids


def encode_example(task: TaskSpec, row: Row, tokenizer: Any, cutoff_len: int) -> dict[str, list[int]]:
    """Prompt + target + EOS, loss on target and EOS only.

    Over `cutoff_len`, the prompt loses tokens from its start (the generation prompt at its end
    is what the target must follow); the target is cut only if it alone exceeds the limit.
    """
    prompt_ids = encode_prompt(render_prompt(task, row, tokenizer), tokenizer)
    target_ids = tokenizer(task.render_target(row), add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    target_ids = target_ids[:cutoff_len]
    keep = cutoff_len - len(target_ids)
    prompt_ids = prompt_ids[len(prompt_ids) - keep :] if keep > 0 else []
    input_ids = prompt_ids + target_ids
    return {
        "input_ids": input_ids,
        "attention_mask": [1] * len(input_ids),
        "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids,
    }
