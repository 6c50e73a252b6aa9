"""Evaluation decoding speed: peftbench's KV-cache decoder against transformers' `generate` and
against the uncached full-forward reference, as ratios measured in this process.

    python benchmarks/decoding_speed.py [--threads 1] [--prompts 64] [--batch 16] [--new-tokens 8 48]

Per method on the built-in tiny model, and per generation length: seconds of `decode` over the
prompts (batched, left padding), and how many times slower `generate` (where it is correct: not
for prompt, prefix and P-tuning with peft 0.21 + transformers 5.24) and the reference (one full
forward per new token, one prompt at a time) are. Absolute seconds depend on the machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from peftbench.config import ModelConfig
from peftbench.decoding import decode, reference_greedy
from peftbench.methods import resolve_method
from peftbench.modeling import load_model, load_tokenizer, resolve_model
from peftbench.tasks import get_task
from peftbench.tasks.prompts import encode_prompt, render_prompt
from peftbench.utils import quiet_libraries

METHODS = ("lora", "prompt_tuning", "prefix_tuning", "p_tuning")


def timed(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ratios(model: torch.nn.Module, prompts: list[list[int]], batch: int, new: int, pad_id: int) -> tuple[float, ...]:
    """(decode seconds, generate / decode, reference / decode) for one model and generation length."""
    from transformers import GenerationConfig

    batches = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
    ours = timed(lambda: [decode(model, b, max_new_tokens=new, eos=(), pad_id=pad_id) for b in batches])
    config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=pad_id)

    def hf() -> None:
        for b in batches:
            width = max(len(p) for p in b)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in b])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in b])
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    reference = timed(lambda: [reference_greedy(model, p, max_new_tokens=new, eos=()) for p in prompts], 1)
    return ours, timed(hf) / ours, reference / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[8, 48])
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    source = resolve_model(cfg)
    tokenizer = load_tokenizer(source, cfg)
    task = get_task("qs_sentiment")
    rows = task.source.generate("validation", args.prompts, 0)
    prompts = [encode_prompt(render_prompt(task, r, tokenizer), tokenizer) for r in rows]
    print(f"{'method':15s} {'new tokens':>10s} {'decode s':>9s} {'generate ×':>11s} {'reference ×':>12s}")
    for name in METHODS:
        model = resolve_method(name, {"num_virtual_tokens": 20} if "tuning" in name else {}).apply(
            load_model(source, cfg, torch.device("cpu"))).eval()
        for new in args.new_tokens:
            ours, hf, reference = ratios(model, prompts, args.batch, new, tokenizer.pad_token_id)
            print(f"{name:15s} {new:10d} {ours:9.3f} {hf:11.2f} {reference:12.2f}")


if __name__ == "__main__":
    main()
