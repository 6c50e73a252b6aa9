"""Scoring by label log-likelihood against generating the answer, on the same prompts and model.

    python benchmarks/eval_speed.py [--prompts 128] [--batch 32] [--repeats 5] [--long 64] [--threads 1]

Two cases on the built-in tiny model (a LoRA adapter applied, as a run's model): short labels
(qs_sentiment: generation up to the task's `max_new_tokens`, stopping at EOS) and generation that runs
to its limit (`--long` new tokens, no stop token: an instruction-tuned model answering in sentences).
Both time `evaluation.label_logprobs` and generation over the same prompts, A/B interleaved, medians
of `--repeats`, and print `loglik/generate: <time ratio>` per case (below 1: loglik is faster),
beside the ratio of the prompts' forward alone (one new token): no scorer that reads the prompts
can go below that, whatever it does with the labels. The predictions of the two loglik
implementations are compared by the tests, not here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from peftbench.config import ModelConfig
from peftbench.decoding import decode
from peftbench.evaluation import generate, label_logprobs
from peftbench.methods import resolve_method
from peftbench.modeling import load_model, load_tokenizer, resolve_model
from peftbench.tasks import TASKS
from peftbench.tasks.prompts import encode_prompt, render_prompt
from peftbench.utils import pinned_threads, quiet_libraries


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long", type=int, default=64, help="new tokens of the long-generation case")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_libraries()
    cfg = ModelConfig()
    source = resolve_model(cfg)
    tokenizer = load_tokenizer(source, cfg)
    model = resolve_method("lora", {}).apply(load_model(source, cfg, torch.device("cpu"))).eval()
    task = TASKS.get("qs_sentiment")
    rows = task.source.generate("validation", args.prompts, 0)
    prompts = [render_prompt(task, r, tokenizer) for r in rows]
    ids = [encode_prompt(p, tokenizer) for p in prompts]
    labels = tuple(task.labels)

    def loglik() -> None:
        label_logprobs(model, tokenizer, prompts, labels, batch_size=args.batch)

    def short() -> None:
        generate(model, tokenizer, prompts, batch_size=args.batch, max_new_tokens=task.max_new_tokens)

    def long() -> None:
        for start in range(0, len(ids), args.batch):
            decode(model, ids[start:start + args.batch], max_new_tokens=args.long, eos=(),
                   pad_id=tokenizer.pad_token_id)

    def prompts_only() -> None:  # one new token: the prompts' forward and nothing else
        for start in range(0, len(ids), args.batch):
            decode(model, ids[start:start + args.batch], max_new_tokens=1, eos=(), pad_id=tokenizer.pad_token_id)

    cases = {"short labels": short, f"generation to its limit ({args.long} tokens)": long}
    with pinned_threads(args.threads):
        loglik(), prompts_only(), short(), long()  # warm-up
        times: dict[str, list[float]] = {"loglik": [], "prompts": [], **{name: [] for name in cases}}
        for _ in range(args.repeats):
            times["loglik"].append(timed(loglik))
            times["prompts"].append(timed(prompts_only))
            for name, fn in cases.items():
                times[name].append(timed(fn))
    ll, floor = statistics.median(times["loglik"]), statistics.median(times["prompts"])
    print(f"tiny model + LoRA, {args.prompts} qs_sentiment prompts, labels {', '.join(labels)}, batch {args.batch}, "
          f"{args.threads} thread(s); medians of {args.repeats}, interleaved")
    print(f"loglik: {ll:.3f} s; the prompts' forward alone: {floor:.3f} s (what any scorer of these prompts pays)")
    for name in cases:
        gen = statistics.median(times[name])
        print(f"{name}: generate {gen:.3f} s — loglik/generate: {ll / gen:.2f} (a scorer that only reads the "
              f"prompts: {floor / gen:.2f})")


if __name__ == "__main__":
    main()
