"""Log-likelihood scoring: batched forwards agree with a slow reference loop, and for single-token
labels pick what greedy generation picks whenever generation yields a valid label."""

from __future__ import annotations

import pytest
import torch
from conftest import METHOD_CASES, adapted

from peftbench.evaluation import generate, label_logprobs
from peftbench.scoring import parse_label
from peftbench.tasks.prompts import encode_prompt
from peftbench.tasks.quickstart import sentiment_rows, topic_rows


def reference(model, tokenizer, prompt: str, label: str) -> float:
    """One unpadded forward per (prompt, label): the definition, without batching."""
    prompt_ids = encode_prompt(prompt, tokenizer)
    label_ids = tokenizer(label, add_special_tokens=False).input_ids
    ids = torch.tensor([prompt_ids + label_ids])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -ids.shape[1] :]
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(logprobs[len(prompt_ids) - 1 + j, t]) for j, t in enumerate(label_ids))


PROMPTS = ["the movie was great. it was", "short", "we talked about the rain and the wind all day. this is"]
# labels of 1 and several tokens; labels sharing their leading tokens, more of them than 2 × a batch of
# 1 (one prompt, all its labels, per cache)
LABEL_SETS = [("negative", "positive", "not_entailment"), ("very good", "very bad", "not", "not_entailment")]


@pytest.mark.parametrize("name,args", METHOD_CASES, ids=[n for n, _ in METHOD_CASES])
@pytest.mark.parametrize("batch_size", [1, 8])
@pytest.mark.parametrize("labels", LABEL_SETS, ids=["three", "shared-prefixes"])
def test_batched_equals_the_reference_loop(tokenizer, name, args, batch_size, labels):
    model = adapted(tokenizer, name, args)
    batched = label_logprobs(model, tokenizer, PROMPTS, labels, batch_size=batch_size)
    for p, prompt in enumerate(PROMPTS):
        for k, label in enumerate(labels):
            assert batched[p][k] == pytest.approx(reference(model, tokenizer, prompt, label), abs=1e-4)


def test_the_labels_of_the_second_set_share_leading_tokens(tokenizer):
    ids = [tokenizer(label, add_special_tokens=False).input_ids for label in LABEL_SETS[1]]
    assert ids[0][:5] == ids[1][:5] and ids[0][5] != ids[1][5] and ids[3][: len(ids[2])] == ids[2] != ids[3]


@pytest.mark.parametrize("name,args", [c for c in METHOD_CASES if c[0] in ("lora", "prefix_tuning", "p_tuning")])
def test_the_one_sequence_per_label_path_equals_the_reference_loop(tokenizer, name, args):
    """`_pair_logprobs`, the path for models only the reference decoder can feed, on right-padded
    batches that mix prompts and labels of different lengths."""
    from peftbench.evaluation import _pair_logprobs

    model = adapted(tokenizer, name, args)
    with torch.no_grad():
        paired = _pair_logprobs(model, tokenizer, PROMPTS, LABEL_SETS[1], batch_size=5)
    for p, prompt in enumerate(PROMPTS):
        for k, label in enumerate(LABEL_SETS[1]):
            assert paired[p][k] == pytest.approx(reference(model, tokenizer, prompt, label), abs=1e-4)


@pytest.mark.parametrize("rows,suffix,labels", [
    (sentiment_rows("validation", 40, 7), " it was", ("negative", "positive")),
    (topic_rows("validation", 40, 7), " this is about", ("sports", "food", "weather")),
])
def test_single_token_labels_agree_with_greedy_generation(builtin_model_dir, rows, suffix, labels):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(builtin_model_dir)
    model = AutoModelForCausalLM.from_pretrained(builtin_model_dir).eval()
    assert all(len(tokenizer(label, add_special_tokens=False).input_ids) == 1 for label in labels)
    prompts = [r["text"] + suffix for r in rows]
    generated = generate(model, tokenizer, prompts, batch_size=8, max_new_tokens=3)
    scores = label_logprobs(model, tokenizer, prompts, labels, batch_size=8)
    compared = 0
    for text, lp in zip(generated, scores, strict=True):
        picked = parse_label(text.split(".")[0], labels)
        if picked >= 0:
            compared += 1
            assert max(range(len(labels)), key=lp.__getitem__) == picked
    assert compared >= len(rows) // 2, "the pretrained model should state a label for most of these"


def test_the_run_time_loglik_check_passes_the_batched_path_and_catches_a_wrong_one(tokenizer, monkeypatch):
    from peftbench import evaluation
    from peftbench.decoding import DecodingMismatch
    from peftbench.evaluation import check_label_logprobs

    model = adapted(tokenizer, "prefix_tuning", {})
    prompts, labels = ["short", "the movie was great. it was"], ("negative", "not_entailment")
    checked = check_label_logprobs(model, tokenizer, prompts, labels, tolerance=1e-4)
    assert checked["checked_prompts"] == 2 and checked["max_gap_per_token"] < 1e-5
    right = evaluation.label_logprobs

    def shifted(*args, **kwargs):  # one label's score off by half a nat: a padding or position bug
        scores = right(*args, **kwargs)
        scores[1][1] += 0.5
        return scores

    monkeypatch.setattr(evaluation, "label_logprobs", shifted)
    with pytest.raises(DecodingMismatch, match="checked prompt 2, label 'not_entailment'"):
        check_label_logprobs(model, tokenizer, prompts, labels, tolerance=1e-4)
