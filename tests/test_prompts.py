"""Row → prompt → tokens: loss on the target only, truncation keeps the target, chat templates used."""

from __future__ import annotations

from peftbench.tasks import get_task
from peftbench.tasks.prompts import IGNORE_INDEX, PLAIN_TEMPLATE, encode_example, render_prompt

ROW = {"text": "the movie was great.", "label": 1}


def test_loss_covers_only_target_and_eos(tokenizer):
    task = get_task("qs_sentiment")
    ex = encode_example(task, ROW, tokenizer, cutoff_len=512)
    target = tokenizer(" positive", add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    supervised = [t for t in ex["labels"] if t != IGNORE_INDEX]
    assert supervised == target
    assert ex["input_ids"][-len(target):] == target
    assert len(ex["input_ids"]) == len(ex["labels"]) == len(ex["attention_mask"])


def test_plain_template_names_instruction_and_input(tokenizer):
    task = get_task("qs_sentiment")
    prompt = render_prompt(task, ROW, tokenizer)
    assert prompt == PLAIN_TEMPLATE.format(instruction=task.instruction, input="Review: the movie was great.")


def test_cutoff_truncates_the_prompt_start_not_the_target(tokenizer):
    task = get_task("qs_sentiment")
    full = encode_example(task, ROW, tokenizer, cutoff_len=512)
    cut = encode_example(task, ROW, tokenizer, cutoff_len=12)
    assert len(cut["input_ids"]) == 12
    assert cut["input_ids"] == full["input_ids"][-12:]
    assert [t for t in cut["labels"] if t != IGNORE_INDEX] == [t for t in full["labels"] if t != IGNORE_INDEX]


def test_chat_template_is_used_when_present(tokenizer):
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}<|assistant|>"
    prompt = render_prompt(get_task("qs_sentiment"), ROW, chat)
    assert prompt.startswith("<|user|>Classify the following review") and prompt.endswith("<|assistant|>")
