"""Output cleaning, label mapping and task scoring (with the invalid-output rate)."""

from __future__ import annotations

import pytest

from peftbench.metrics import INVALID
from peftbench.scoring import clean_output, parse_label, score
from peftbench.tasks import get_task

LABELS = ("negative", "positive")


@pytest.mark.parametrize(
    "text,expected",
    [
        (" positive", 1),
        ("Positive.", 1),
        ("NEGATIVE\nbecause it was bad", 0),
        ("<think>hmm, maybe negative</think> positive", 1),
        ("```\npositive\n```", 1),
        ('"negative"', 0),
        ("positive review", INVALID),
        ("pos", INVALID),
        ("", INVALID),
        ("<think>never closed negative", INVALID),
    ],
)
def test_parse_label(text, expected):
    assert parse_label(text, LABELS) == expected


def test_clean_output():
    assert clean_output("  <think>x</think>\n```python\nprint(1)\n```  ") == "print(1)"


def test_score_classification_with_invalid_rate():
    task = get_task("qs_sentiment")
    rows = [{"text": "a", "label": 1}, {"text": "b", "label": 0}, {"text": "c", "label": 1}, {"text": "d", "label": 0}]
    result = score(task, rows, ["positive", "negative", "maybe", "positive"])
    assert result.invalid_rate == 0.25
    assert result.metrics["accuracy"] == 50.0
    # class 1: TP1 FP1 FN1 → F1 0.5
    assert result.primary == pytest.approx(50.0)
    assert [r["correct"] for r in result.records] == [True, True, False, False]


def test_score_numeric():
    task = get_task("qs_arith")
    rows = [{"question": "q", "answer": 7}, {"question": "q", "answer": 12}, {"question": "q", "answer": 3}]
    result = score(task, rows, [" 7", "twelve", "3."])
    assert result.primary == pytest.approx(200 / 3)
    assert result.invalid_rate == pytest.approx(1 / 3)


def test_sampling_gives_n_reproducible_continuations_per_prompt(tokenizer):
    import torch
    from conftest import llama

    from peftbench.evaluation import Sampling, generate

    model = llama(tokenizer)
    prompts = ["The cat sat", "Numbers: 1 2"]

    def sample(seed: int) -> list[list[str]]:
        torch.manual_seed(seed)
        return generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=6, sampling=Sampling(4, 1.0, 1.0))

    first = sample(0)
    assert [len(o) for o in first] == [4, 4] and first == sample(0)
    assert len(set(first[0])) > 1 and first != sample(1)  # samples differ from each other and across seeds
    greedy = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=6)
    assert [type(o) for o in greedy] == [str, str]
