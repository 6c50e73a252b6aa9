"""GPU-hours of the paper's grid (27 tasks x 7 methods x 5 seeds on Llama-3-8B), from counted FLOPs.

    python benchmarks/grid_estimate.py [--seq-len 256] [--tflops 400] [--max-train-samples N]

Training FLOPs per step are *counted* (FlopCounterMode over one forward and backward of batch 4 x
seq-len tokens on the `llama3-8b` architecture, built on the meta device: no weights, no GPU).
Time is that count divided by an assumed sustained throughput (`--tflops`, default 400 TFLOP/s:
about 40 % of an H100's dense bf16 peak), so the result is an estimate to plan a cluster booking,
not a measurement; after the first finished runs, `peftbench run CONFIG --dry-run` estimates from
measured run times instead. Evaluation, checkpoint selection and cost measurement are not included.
"""

from __future__ import annotations

import argparse
import math

from peftbench.costs.flops import train_step_flops
from peftbench.costs.from_config import load_model_config, skeleton
from peftbench.methods import paper_methods, resolve_method
from peftbench.utils import quiet_libraries

METHODS = paper_methods()
# Rows of each task's training split, from the dataset cards; '≈' entries are approximate.
TRAIN_ROWS = {
    "mnli": 392_702, "qqp": 363_846, "qnli": 104_743, "sst2": 67_349, "stsb": 5_749, "mrpc": 3_668,
    "rte": 2_490, "cola": 8_551, "record": 100_730, "multirc": 27_243, "boolq": 9_427, "wic": 5_428,
    "wsc": 554, "cb": 250, "copa": 400, "mmlu": 99_842, "piqa": 16_113, "siqa": 33_410, "hellaswag": 39_905,
    "winogrande": 40_398, "openbookqa": 4_957, "math_qa": 29_837, "gsm8k": 7_473, "svamp": 700,
    "conala": 2_379, "codealpacapy": 20_000, "apps": 5_000,
}
APPROXIMATE = {"codealpacapy"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=256, help="mean tokens per training example")
    parser.add_argument("--tflops", type=float, default=400.0, help="sustained TFLOP/s per GPU")
    parser.add_argument("--max-train-samples", type=int, default=None, help="cap per task (training.max_train_samples)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    quiet_libraries()
    config = load_model_config("llama3-8b")
    batch = 4
    rows = {t: min(n, args.max_train_samples or n) for t, n in TRAIN_ROWS.items()}
    steps = sum(math.ceil(0.9 * n / batch) * args.epochs for n in rows.values())  # 10 % held out for validation
    print(f"{steps:,} optimiser steps per method and seed over {len(rows)} tasks (batch {batch}, "
          f"{args.epochs} epochs, {args.seq_len} tokens/example); {args.tflops:g} TFLOP/s sustained")
    print(f"{'method':<15}{'TFLOPs/step':>12}{'s/step':>8}{'GPU-h/seed':>12}{'GPU-h, all seeds':>18}")
    total = 0.0
    for name in METHODS:
        model = resolve_method(name, {}).apply(skeleton(config))
        tflops = train_step_flops(model, batch_size=batch, seq_len=args.seq_len, vocab_size=config.vocab_size) / 1e12
        per_step = tflops / args.tflops
        hours = steps * per_step / 3600
        total += hours * args.seeds
        print(f"{name:<15}{tflops:>12.1f}{per_step:>8.3f}{hours:>12.0f}{hours * args.seeds:>18,.0f}")
    print(f"total: {total:,.0f} GPU-hours for {len(METHODS)} methods x {len(rows)} tasks x {args.seeds} seeds "
          f"(approximate task sizes: {', '.join(sorted(APPROXIMATE))})")


if __name__ == "__main__":
    main()
