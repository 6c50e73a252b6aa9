"""Inference and training overhead of each method, as ratios to the base model in the same process.

    python benchmarks/method_overhead.py [--threads 1] [--prefill 512] [--new-tokens 16]

Prints, per method on the built-in tiny model: prefill and per-token latency relative to the base
model, and training-step time relative to full fine-tuning, all measured in this process (absolute
seconds depend on the machine; ratios are what to compare). The base model is measured again at
the end: how far that row is from 1.00 is the noise of the measurement.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from peftbench.config import ModelConfig
from peftbench.costs.latency import measure_latency
from peftbench.methods import METHODS, resolve_method
from peftbench.modeling import load_model, resolve_model
from peftbench.utils import quiet_libraries

TRAINED = [n for n in METHODS if METHODS.get(n).trains]  # every registered method but the zero-shot base


def step_time(model: torch.nn.Module, vocab: int, batch: int, seq: int, repeats: int) -> float:
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.train()
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step allocates the optimiser state
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prefill", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig()
    source = resolve_model(cfg)

    def fresh() -> torch.nn.Module:
        return load_model(source, cfg, torch.device("cpu"))

    vocab = fresh().get_input_embeddings().num_embeddings
    latency = {"base": measure_latency(fresh(), prefill_len=args.prefill, new_tokens=args.new_tokens,
                                       repeats=args.repeats, vocab_size=vocab)}
    steps = {}
    for name in TRAINED:
        overrides = {"num_virtual_tokens": 20} if name in ("prompt_tuning", "p_tuning") else {}
        model = resolve_method(name, overrides).apply(fresh())
        latency[name] = measure_latency(model, prefill_len=args.prefill, new_tokens=args.new_tokens,
                                        repeats=args.repeats, vocab_size=vocab)
        steps[name] = step_time(model, vocab, 4, 128, args.repeats)
    latency["base (again)"] = measure_latency(fresh(), prefill_len=args.prefill, new_tokens=args.new_tokens,
                                              repeats=args.repeats, vocab_size=vocab)
    steps["base (again)"] = steps["full"]
    base = latency["base"]
    print(f"{'method':15s} {'prefill/base':>13s} {'per-token/base':>15s} {'train step/full':>16s}")
    for name in (*TRAINED, "base (again)"):  # the last row shows the measurement noise
        print(f"{name:15s} {latency[name]['prefill_s'] / base['prefill_s']:13.2f} "
              f"{latency[name]['per_token_s'] / base['per_token_s']:15.2f} {steps[name] / steps['full']:16.2f}")


if __name__ == "__main__":
    main()
