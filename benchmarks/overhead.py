"""What peftbench's run path costs over a hand-written loop doing the same work, in one process.

    python benchmarks/overhead.py [--steps 100] [--eval 100] [--repeats 5] [--threads 1]

The hand loop is the limit: the same built-in model and LoRA adapter, the same training rows
tokenised to the same ids (`RunContext.encoded`), AdamW with the same cosine schedule and gradient
clipping for the same steps and batches, then greedy generation over the same eval prompts with
`model.generate` (right for LoRA). peftbench's side is `execute_run` on one planned run of the same
settings (the Trainer, validation, the decode check, scoring, costs). The two alternate (A/B
interleaved) `--repeats` times after one warm-up of each; medians are printed per phase. A run's
cost measurement is cached per method and grid, so peftbench's first run measures it ("cold") and the
later ones reuse it ("warm", what every other run of a grid pays). The last line is
`overhead: <peftbench warm / hand wall-time ratio>`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import get_cosine_schedule_with_warmup

from peftbench.config import validate_config
from peftbench.modeling import resolve_model
from peftbench.plan import plan_runs
from peftbench.runner.run import RunContext, execute_run
from peftbench.tasks.prompts import IGNORE_INDEX, encode_prompt, render_prompt
from peftbench.utils import pinned_threads, quiet_libraries, seed_everything


def benchmark_config(steps: int, batch: int, n_eval: int, threads: int) -> dict:
    """The one LoRA run both sides do (also what `grid_overhead.py` runs as whole processes)."""
    return {
        "model": {"name": "builtin:tiny-llama"}, "methods": [{"name": "lora", "learning_rate": 5e-3}],
        "tasks": ["qs_sentiment"], "seeds": [0],
        "training": {"max_steps": steps, "batch_size": batch, "cutoff_len": 128, "eval_steps": steps},
        "evaluation": {"batch_size": 32, "max_samples": n_eval}, "runtime": {"threads": threads},
    }


def hand_run(ctx: RunContext, spec, steps: int, batch: int, n_eval: int) -> dict[str, float]:
    """Load, train, evaluate: the least a run has to do, written out."""
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    seed_everything(spec.seed)
    model = spec.method.apply(ctx.fresh_model())
    data = ctx.task_data(spec.task_spec)
    examples = ctx.encoded(spec.task_spec, data.train)
    phases["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=1e-5)
    schedule = get_cosine_schedule_with_warmup(optimizer, math.ceil(0.1 * steps), steps)
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(spec.seed)).tolist()
    pad = ctx.tokenizer.pad_token_id
    model.train()
    for step in range(steps):
        rows = [examples[order[(step * batch + i) % len(order)]] for i in range(batch)]
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.tensor([r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in rows])
        labels = torch.tensor([r["labels"] + [IGNORE_INDEX] * (width - len(r["labels"])) for r in rows])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    phases["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.eval()
    ctx.tokenizer.padding_side = "left"
    prompts = [encode_prompt(render_prompt(spec.task_spec, r, ctx.tokenizer), ctx.tokenizer)
               for r in data.eval[:n_eval]]
    with torch.no_grad():
        for start in range(0, len(prompts), 32):
            chunk = prompts[start:start + 32]
            padded = ctx.tokenizer.pad({"input_ids": chunk}, return_tensors="pt")
            model.generate(**padded, max_new_tokens=spec.task_spec.max_new_tokens, do_sample=False,
                           pad_token_id=pad)
    phases["eval"] = time.perf_counter() - t0
    phases["total"] = sum(phases.values())
    return phases


def peftbench_run(ctx: RunContext, spec) -> dict[str, float]:
    t0 = time.perf_counter()
    outcome = execute_run(spec, ctx)
    assert outcome.status == "done", outcome.error
    timings = outcome.timings
    phases = {"train": timings.get("train_s", 0.0), "eval": timings.get("eval_s", 0.0),
              "costs": timings.get("costs_s", 0.0)}
    phases["total"] = time.perf_counter() - t0
    phases["load+rest"] = phases["total"] - phases["train"] - phases["eval"] - phases["costs"]
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet_libraries()
    cfg = validate_config(benchmark_config(args.steps, args.batch, args.eval, args.threads))
    spec = plan_runs(cfg)[0]
    with tempfile.TemporaryDirectory() as out, pinned_threads(args.threads):
        ctx = RunContext(cfg, resolve_model(cfg.model), Path(out))
        cold = peftbench_run(ctx, spec)  # warm-up of both, and the run that measures the method's costs
        hand_run(ctx, spec, args.steps, args.batch, args.eval)
        hand: list[dict[str, float]] = []
        ours: list[dict[str, float]] = []
        for _ in range(args.repeats):
            ours.append(peftbench_run(ctx, spec))
            hand.append(hand_run(ctx, spec, args.steps, args.batch, args.eval))

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(f"tiny model, LoRA, qs_sentiment: {args.steps} steps x batch {args.batch}, {args.eval} eval prompts, "
          f"{args.threads} thread(s); medians of {args.repeats}, A/B interleaved")
    print(f"hand loop:        load {median(hand, 'load'):.2f} s, train {median(hand, 'train'):.2f} s, "
          f"eval {median(hand, 'eval'):.2f} s, total {median(hand, 'total'):.2f} s")
    print(f"peftbench (warm): train {median(ours, 'train'):.2f} s, eval {median(ours, 'eval'):.2f} s, "
          f"costs {median(ours, 'costs'):.2f} s, load and the rest {median(ours, 'load+rest'):.2f} s, "
          f"total {median(ours, 'total'):.2f} s")
    print(f"peftbench (cold, measures the method's costs): costs {cold['costs']:.2f} s, total {cold['total']:.2f} s")
    print(f"training: {median(ours, 'train') / median(hand, 'train'):.2f}x the hand loop")
    print(f"overhead: {median(ours, 'total') / median(hand, 'total'):.2f}")


if __name__ == "__main__":
    main()
