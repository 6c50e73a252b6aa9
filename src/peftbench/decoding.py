"""Decoding: a batched KV-cache decoder that feeds every method's extra inputs itself, the slow
full-forward reference it must equal, and the run-time check that compares the two.

Why not `model.generate`: with peft's prompt-learning methods (virtual tokens, prefix key/values)
transformers' cached generation has broken and been fixed upstream several times; with peft 0.21
and transformers 5.24 it silently decodes garbage for prompt tuning, P-tuning and prefix tuning
(issue #12). Here the layout of every batch row is explicit, and is what the training forward
(peft's, unpadded, right-padded batches) computes:

    prompt tuning, P-tuning   [pad … pad][virtual tokens][prompt]   positions 0, 1, … from the first virtual token
    prefix tuning             cache = prefix key/values (P of them); [pad … pad][prompt], positions P, P+1, …
    every other model         [pad … pad][prompt]                   positions 0, 1, …

Padding is on the left and masked, positions are counted over real tokens only, so a row decodes
the same alone or in any batch. A prompt-learning type not listed here (peft's CPT, multitask
prompt tuning, …) is decoded by the reference itself: slow, but never wrong.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from peftbench.errors import PeftbenchError

# Names the decoding path in provenance and in every run's identity: change it when decoding changes.
DECODER = "peftbench-kv/1"
REFERENCE = "full-forward/1"
# Names how `loglik` mode scores labels; in the identity of loglik runs only (generation runs keep their ids).
LOGLIK_SCORER = "prompt-cache/1"


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float


@dataclass(frozen=True)
class _Feed:
    """How to call a model step by step: the module to call and what goes before the prompt."""

    call: nn.Module
    virtual: Callable[[int], torch.Tensor] | None = None  # batch size → [B, n, hidden] embeddings
    prefix: Callable[[int], Any] | None = None  # batch size → a transformers Cache holding the prefix
    prefix_len: int = 0


def _feed(model: nn.Module) -> _Feed | None:
    """The explicit feed for `model`, or None when only the reference can decode it."""
    config = getattr(model, "active_peft_config", None)
    if config is None or not config.is_prompt_learning:
        return _Feed(model)
    from peft import PeftType

    core = model.get_base_model()
    if config.peft_type in (PeftType.PROMPT_TUNING, PeftType.P_TUNING):
        return _Feed(core, virtual=lambda b: model.get_prompt(batch_size=b))
    if config.peft_type == PeftType.PREFIX_TUNING:
        return _Feed(core, prefix=lambda b: model.get_prompt(batch_size=b, max_cache_len=-1),
                     prefix_len=config.num_virtual_tokens)
    return None


def decoder_name(model: nn.Module) -> str:
    """The decoder `decode` uses for this model (recorded in provenance)."""
    return DECODER if _feed(model) is not None else REFERENCE


def scorer_name(model: nn.Module) -> str:
    """How `loglik` mode scores this model's labels (recorded in provenance): from the prompt's cache,
    or one (prompt, label) sequence per row where only the reference can feed the model."""
    return LOGLIK_SCORER if _feed(model) is not None else "pair-forward/1"


@dataclass
class Decoded:
    tokens: list[list[int]]  # new tokens per row, up to and including the stop token
    logprobs: list[torch.Tensor] | None = None  # per row: [steps, vocab] log-probabilities (when asked)


@torch.no_grad()
def decode(
    model: nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos: Collection[int],
    pad_id: int,
    sampling: Sampling | None = None,
    keep_logprobs: bool = False,
) -> Decoded:
    """Greedy (or sampled) continuations of one batch of token-id prompts.

    A row stops after its first token in `eos` (kept in its output) or after `max_new_tokens`;
    an empty `eos` never stops early (cost measurements). With `sampling`, each prompt gives
    `sampling.n` consecutive rows; the global torch RNG draws them, so a seeded run repeats them.
    """
    if sampling:
        prompts = [p for p in prompts for _ in range(sampling.n)]
    feed = _feed(model)
    if feed is None:
        return Decoded([_reference_one(model, p, max_new_tokens, eos, sampling) for p in prompts])
    state = _prefill(model, feed, prompts, pad_id)
    logits, device, batch = state.logits[:, -1], state.mask.device, len(prompts)
    stop = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    chosen: list[torch.Tensor] = []
    kept: list[torch.Tensor] = []
    for i in range(max_new_tokens):
        logprobs = torch.log_softmax(logits, dim=-1)
        if keep_logprobs:
            kept.append(logprobs.cpu())
        token = _sample(logprobs, sampling) if sampling else logprobs.argmax(-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        chosen.append(token)
        done |= torch.isin(token, stop)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits = state.extend(token.unsqueeze(1), state.mask.new_ones((batch, 1)))[:, -1]
    table = torch.stack(chosen, dim=1).tolist() if chosen else [[] for _ in prompts]
    tokens = [_until_stop(row, eos) for row in table]
    logprobs_rows = [torch.stack(kept, dim=1)[r, : len(tokens[r])] for r in range(batch)] if keep_logprobs else None
    return Decoded(tokens, logprobs_rows)


@dataclass
class _State:
    """A batch after its prompts went through the model: the cache, the attention mask over every
    position so far (prefix, virtual tokens, left padding, prompt, what was fed since), the next
    positions, and the last forward's logits."""

    feed: _Feed
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor  # [batch, fed tokens (1 after the prefill), vocab], float32
    cache_arg: str

    def forward(self, inputs: dict[str, Any], keep: int | None) -> torch.Tensor:
        prefix_mask = self.mask.new_ones((self.mask.shape[0], self.feed.prefix_len))
        extra = {"logits_to_keep": keep} if keep is not None and _accepts(self.feed.call, "logits_to_keep") else {}
        out = self.feed.call(**inputs, attention_mask=torch.cat([prefix_mask, self.mask], dim=1),
                             position_ids=self.positions, use_cache=True, **{self.cache_arg: self.cache}, **extra)
        self.cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
        self.logits = out.logits.float()
        return self.logits

    def extend(self, tokens: torch.Tensor, mask: torch.Tensor, keep: int | None = 1) -> torch.Tensor:
        """Feed `tokens` [batch, n] after what is cached (`mask` 0 for padding after a row's end)."""
        self.mask = torch.cat([self.mask, mask], dim=1)
        self.positions = self.positions[:, -1:] + 1 + torch.arange(tokens.shape[1], device=tokens.device)
        return self.forward({"input_ids": tokens}, keep)

    def repeat(self, times: int) -> None:
        """Every row `times` times in a row (row r becomes rows r·times … r·times + times − 1)."""
        self.cache.batch_repeat_interleave(times)
        self.mask = self.mask.repeat_interleave(times, dim=0)
        self.positions = self.positions.repeat_interleave(times, dim=0)
        self.logits = self.logits.repeat_interleave(times, dim=0)


def _prefill(model: nn.Module, feed: _Feed, prompts: list[list[int]], pad_id: int) -> _State:
    """The prompts, left-padded, through the model in one forward (the layouts of the module docstring)."""
    device = next(model.parameters()).device
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[row, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    inputs: dict[str, Any] = {"input_ids": ids}
    if feed.virtual is not None:
        inputs = {"inputs_embeds": _with_virtual(model.get_input_embeddings()(ids), mask, feed.virtual(batch))}
        n_virtual = inputs["inputs_embeds"].shape[1] - width
        mask = torch.cat([mask.new_zeros((batch, n_virtual)), mask], dim=1)
        pads = (width - torch.tensor([len(p) for p in prompts], device=device)).unsqueeze(1)
        mask[torch.arange(n_virtual + width, device=device).unsqueeze(0) >= pads] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0) + feed.prefix_len
    cache = feed.prefix(batch) if feed.prefix is not None else None
    cache_arg = "cache" if _accepts(feed.call, "cache") else "past_key_values"  # renamed in transformers 5.2x
    state = _State(feed, cache, mask, positions, torch.empty(0), cache_arg)
    state.forward(inputs, keep=1)
    return state


@torch.no_grad()
def continuation_logprobs(model: nn.Module, prompts: list[list[int]], continuations: list[list[int]], *,
                          pad_id: int) -> list[list[float]]:
    """Summed log-probability of each continuation after each prompt ([prompt][continuation]): one
    prefill of the prompts, then every continuation of every prompt in one forward on the repeated
    cache (teacher-forced, right-padded). Only for models the decoder can feed (`scorer_name`)."""
    feed = _feed(model)
    if feed is None:
        raise ValueError("continuation_logprobs: only the reference can feed this model; score it by pairs")
    state = _prefill(model, feed, prompts, pad_id)
    k, longest = len(continuations), max(len(c) for c in continuations)
    first = torch.log_softmax(state.logits[:, -1], dim=-1)  # [prompts, vocab]: predicts each continuation's start
    state.repeat(k)
    device = state.mask.device
    tokens = torch.full((len(prompts) * k, longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(tokens)
    for c, ids in enumerate(continuations):
        tokens[c::k, : len(ids)] = torch.tensor(ids, dtype=torch.long, device=device)
        mask[c::k, : len(ids)] = 1
    later = torch.log_softmax(state.extend(tokens, mask, keep=None), dim=-1) if longest > 1 else None
    scores = []
    for p in range(len(prompts)):
        row = []
        for c, ids in enumerate(continuations):
            total = float(first[p, ids[0]])
            if later is not None:
                steps = torch.arange(len(ids) - 1, device=device)
                total += float(later[p * k + c, steps, torch.tensor(ids[1:], dtype=torch.long, device=device)].sum())
            row.append(total)
        scores.append(row)
    return scores


def _with_virtual(embeds: torch.Tensor, mask: torch.Tensor, virtual: torch.Tensor) -> torch.Tensor:
    """Insert each row's virtual-token embeddings between its left padding and its prompt."""
    virtual = virtual.to(embeds.dtype)
    rows = []
    for row in range(embeds.shape[0]):
        pad = int((mask[row] == 0).sum())
        rows.append(torch.cat([embeds[row, :pad], virtual[row], embeds[row, pad:]], dim=0))
    return torch.stack(rows)


def _sample(logprobs: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Temperature, then nucleus (the smallest set of tokens whose mass reaches top_p), then a draw."""
    probs = torch.softmax(logprobs / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each one
        sorted_probs[before >= sampling.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1).squeeze(1)


def _until_stop(tokens: list[int], eos: Collection[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def _accepts(module: nn.Module, name: str) -> bool:
    target = module.get_base_model() if hasattr(module, "get_base_model") else module
    return name in inspect.signature(target.forward).parameters


def full_logprobs(model: nn.Module, ids: list[int], last: int) -> torch.Tensor:
    """Log-probabilities at the `last` positions of one unpadded sequence, by the training forward
    (peft's own, which adds virtual tokens or prefixes): [last, vocab]. Only those positions'
    logits are computed where the model allows (a long prompt × a 128k vocabulary is gigabytes)."""
    device = next(model.parameters()).device
    x = torch.tensor([ids], dtype=torch.long, device=device)
    keep = {"logits_to_keep": last} if _accepts(model, "logits_to_keep") else {}
    logits = model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, **keep).logits[0, -last:]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def _reference_one(model: nn.Module, prompt: list[int], max_new_tokens: int, eos: Collection[int],
                   sampling: Sampling | None) -> list[int]:
    new: list[int] = []
    for _ in range(max_new_tokens):
        logprobs = full_logprobs(model, prompt + new, 1)
        token = int((_sample(logprobs, sampling) if sampling else logprobs.argmax(-1))[0])
        new.append(token)
        if token in eos:
            break
    return new


@torch.no_grad()
def reference_greedy(model: nn.Module, prompt: list[int], *, max_new_tokens: int, eos: Collection[int]) -> list[int]:
    """Greedy decoding by definition: one full forward of the whole sequence per new token, no
    cache, no padding, no batch. Slow (quadratic); the yardstick for `decode`."""
    model.eval()
    return _reference_one(model, prompt, max_new_tokens, eos, None)


class DecodingMismatch(PeftbenchError):
    """The fast decoding path disagrees with the full-forward reference: scoring would be wrong."""


def default_tolerance(model: nn.Module) -> float:
    """Largest total-variation distance between the decoder's and the reference's next-token
    distributions that is still rounding: float32 agrees to ~1e-6; bf16/fp16 batched vs unbatched
    differ by up to a few hundredths on an 8B model."""
    return 1e-4 if next(model.parameters()).dtype == torch.float32 else 0.2


@torch.no_grad()
def check_decoding(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int, eos: Collection[int],
                   pad_id: int, tolerance: float) -> dict[str, Any]:
    """Decode `prompts` as one left-padded batch and compare every step's next-token distribution
    with one teacher-forced full forward of the same tokens. Raises `DecodingMismatch` when they
    differ by more than `tolerance` (total variation); returns what was checked, for provenance."""
    model.eval()
    decoded = decode(model, prompts, max_new_tokens=max_new_tokens, eos=eos, pad_id=pad_id, keep_logprobs=True)
    worst, steps = 0.0, 0
    for i, (prompt, new) in enumerate(zip(prompts, decoded.tokens, strict=True)):
        if decoded.logprobs is None or not new:
            continue
        reference = full_logprobs(model, prompt + new, len(new) + 1)[:-1]  # the positions that chose `new`
        tv = 0.5 * (decoded.logprobs[i].exp() - reference.cpu().exp()).abs().sum(-1)
        steps += len(new)
        at = int(tv.argmax())
        worst = max(worst, float(tv[at]))
        if float(tv[at]) > tolerance:
            raise DecodingMismatch(
                f"decoding check failed: the {decoder_name(model)} decoder and the full-forward reference disagree "
                f"on checked prompt {i + 1} at new token {at + 1} (total variation {float(tv[at]):.3g} > "
                f"{tolerance:g}); the run is not scored"
            )
    return {"decoder": decoder_name(model), "checked_prompts": len(prompts), "checked_steps": steps,
            "max_total_variation": worst, "tolerance": tolerance}
