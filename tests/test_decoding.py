"""Differential tests of the decoder: for every registered method (and peft prompt-learning tuners
given by `peft:`), batched KV-cache decoding with left padding equals a one-sequence, no-cache,
full-forward greedy reference token by token; and the run-time check catches a decoder that does not.

Going back to `model.generate` for evaluation fails these tests with peft 0.21 + transformers 5.24
(prompt tuning, P-tuning and prefix tuning decode other tokens than the model they trained).
"""

from __future__ import annotations

import pytest
import torch
from conftest import METHOD_CASES, adapted, gpt2, qwen2

from peftbench import decoding
from peftbench.decoding import DECODER, DecodingMismatch, check_decoding, decode, decoder_name, reference_greedy
from peftbench.evaluation import generate
from peftbench.tasks.prompts import encode_prompt

PROMPTS = [
    "the movie was great. it was",
    "short",
    "we talked about the rain and the wind all day long, then went home. this is",
    "a",
    "numbers: 1 2 3 4 5",
    "the cat sat on the mat",
    "food is good and the weather is fine. it was",
    "x y z",
    "one more prompt of some middling length",
]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def references(tokenizer) -> dict[str, tuple[torch.nn.Module, list[list[int]], list[list[int]]]]:
    """Per method: the model, the encoded prompts and the reference continuations (no stop token:
    a random model rarely emits EOS, so stopping is tested separately)."""
    torch.set_num_threads(1)
    encoded = [encode_prompt(p, tokenizer) for p in PROMPTS]
    base_model = adapted(tokenizer, "base", {})
    base = [reference_greedy(base_model, e, max_new_tokens=NEW_TOKENS, eos=()) for e in encoded]

    def varied(reference: list[list[int]]) -> bool:  # outputs varied enough that a wrong decoder shows
        differ = sum(r != b for r, b in zip(reference, base, strict=True))
        return len({t for r in reference for t in r}) >= 10 and differ >= 5

    out = {"base": (base_model, encoded, base)}
    for name, args in METHOD_CASES:
        for strength in (0.7, 2.0, 5.0):  # an adapter with a small effect at init (VeRA) gets more noise
            model = adapted(tokenizer, name, args, strength=strength)
            reference = [reference_greedy(model, e, max_new_tokens=NEW_TOKENS, eos=()) for e in encoded]
            if name == "base" or varied(reference):
                break
        assert name == "base" or varied(reference), f"{name}: its outputs hardly differ from the base model's"
        out[name] = (model, encoded, reference)
    return out


@pytest.mark.parametrize("name", [n for n, _ in METHOD_CASES])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_evaluation_output_equals_the_full_forward_reference(tokenizer, references, name, batch_size):
    model, _, reference = references[name]
    texts = generate(model, tokenizer, PROMPTS, batch_size=batch_size, max_new_tokens=NEW_TOKENS)
    expected = [tokenizer.decode(_until(r, {tokenizer.eos_token_id}), skip_special_tokens=True) for r in reference]
    assert texts == expected
    assert decoder_name(model) == DECODER  # every registered method has the fast path


@pytest.mark.parametrize("name", [n for n, _ in METHOD_CASES])
def test_tokens_and_ragged_stops_equal_the_reference(tokenizer, references, name):
    """Token ids, not text: one batch of prompts of different lengths, where rows stop at different
    steps (the stop token is one the reference emits partway through some rows)."""
    model, encoded, reference = references[name]
    assert decode(model, encoded, max_new_tokens=NEW_TOKENS, eos=(), pad_id=tokenizer.pad_token_id).tokens == reference
    # the emitted token that cuts the rows at the most different lengths
    stop = max(({t} for r in reference for t in r),
               key=lambda s: (len({len(_until(r, s)) for r in reference}), -min(s)))
    expected = [_until(r, stop) for r in reference]
    assert len({len(e) for e in expected}) > 2, "rows should stop at different steps"
    got = decode(model, encoded, max_new_tokens=NEW_TOKENS, eos=stop, pad_id=tokenizer.pad_token_id).tokens
    assert got == expected == [reference_greedy(model, e, max_new_tokens=NEW_TOKENS, eos=stop) for e in encoded]


@pytest.mark.parametrize("architecture", [gpt2, qwen2], ids=["gpt2", "qwen2"])
@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning", "p_tuning", "lora"])
def test_other_architectures_decode_like_the_reference(tokenizer, architecture, name):
    """GPT-2 (learned absolute positions) and Qwen2 (RoPE, q/k/v biases) take the same layout."""
    model = adapted(tokenizer, name, {}, architecture)
    encoded = [encode_prompt(p, tokenizer) for p in PROMPTS[:4]]
    reference = [reference_greedy(model, e, max_new_tokens=NEW_TOKENS, eos=()) for e in encoded]
    assert decode(model, encoded, max_new_tokens=NEW_TOKENS, eos=(), pad_id=tokenizer.pad_token_id).tokens == reference


def _until(tokens: list[int], stop: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop:
            return tokens[: i + 1]
    return tokens


@pytest.mark.parametrize("name", ["prompt_tuning", "prefix_tuning", "p_tuning", "lora"])
def test_the_run_time_check_passes_the_decoder_and_catches_a_broken_one(tokenizer, references, name, monkeypatch):
    model, encoded, _ = references[name]
    checked = check_decoding(model, [encoded[1], encoded[2]], max_new_tokens=NEW_TOKENS, eos=(),
                             pad_id=tokenizer.pad_token_id, tolerance=1e-3)
    assert checked["decoder"] == DECODER and checked["checked_steps"] == 2 * NEW_TOKENS
    assert checked["max_total_variation"] < 1e-4
    # Broken decoders of the kinds seen upstream: virtual tokens or prefix dropped, positions shifted.
    core = model.get_base_model() if hasattr(model, "get_base_model") else model
    broken = decoding._Feed(core) if name != "lora" else decoding._Feed(model, prefix_len=3)
    monkeypatch.setattr(decoding, "_feed", lambda m: broken)
    with pytest.raises(DecodingMismatch, match="decoding check failed"):
        check_decoding(model, [encoded[1], encoded[2]], max_new_tokens=NEW_TOKENS, eos=(),
                       pad_id=tokenizer.pad_token_id, tolerance=1e-3)


def test_sampling_draws_from_the_nucleus(tokenizer):
    """top_p keeps the smallest set of most likely tokens whose mass reaches top_p; the draws follow
    the renormalised distribution."""
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.manual_seed(0)
    draws = torch.stack([decoding._sample(logprobs, decoding.Sampling(1, 1.0, 0.8)) for _ in range(4000)])
    counts = torch.bincount(draws.flatten(), minlength=4).tolist()
    assert counts[2] == counts[3] == 0  # 0.5 + 0.3 reaches 0.8: the rest is cut
    assert counts[0] / 4000 == pytest.approx(0.5 / 0.8, abs=0.03)
    assert decoding._sample(logprobs, decoding.Sampling(1, 1.0, 0.4)).item() == 0  # only the top token


GUARDED = """
name: guarded
methods: [{name: prompt_tuning, learning_rate: 0.1, args: {num_virtual_tokens: 20}}, base]
tasks: [qs_sentiment]
training: {max_steps: 20, batch_size: 4, cutoff_len: 128}
evaluation: {max_samples: 6}
costs: {latency: false, memory_steps: 0}
"""


def test_a_run_whose_decoder_disagrees_with_the_reference_fails_with_the_reason(tmp_path, monkeypatch, capsys):
    """The run-time check: a decoder that drops the virtual tokens (what the broken cached
    `generate` amounts to) stops the run before it is scored; the run that decodes right records
    which decoder it used and what was checked."""
    import sys

    from peftbench.cli import main
    from peftbench.store import Store

    real_feed = decoding._feed

    def feed_without_virtual_tokens(model):
        feed = real_feed(model)
        return decoding._Feed(feed.call) if feed is not None and feed.virtual is not None else feed

    monkeypatch.setattr(decoding, "_feed", feed_without_virtual_tokens)
    config = tmp_path / "guarded.yaml"
    config.write_text(GUARDED)
    monkeypatch.setattr(sys, "argv", ["peftbench", "run", str(config), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 1  # a run failed; the grid finished
    by = {r.method: r for r in Store.open(tmp_path / "out").records()}
    failed, base = by["prompt_tuning"], by["base"]
    assert failed.status == "failed" and failed.metrics is None
    assert failed.error.startswith("decoding check failed: the peftbench-kv/1 decoder and the full-forward reference")
    assert not Store(tmp_path / "out").predictions_path(failed.run_id).exists()
    assert base.status == "done"
    check = base.provenance["decoding"]
    assert check["mode"] == "generate" and check["decoder"] == DECODER
    assert check["check"]["checked_prompts"] == 2 and check["check"]["max_total_variation"] < 1e-4
