"""A 1-run grid against the hand-written loop, both as whole processes (imports and start-up included).

    python benchmarks/grid_overhead.py [--steps 100] [--eval 100] [--repeats 3] [--threads 1]

`overhead.py` compares the two inside one warm process; this is what a user waits for: the wall
time of `peftbench run CONFIG` on a config of one LoRA run (the same settings as `overhead.py`),
with and without `--no-report`, against a fresh Python process that imports what the hand loop
needs, builds the same model and data and runs `overhead.hand_run` once. One warm-up of each side
(byte-compiles, fills the FLOP-count cache as any earlier grid on this machine would have), then the
three alternate `--repeats` times; medians are printed, and as the last line
`grid/hand: <peftbench run / hand process wall-time ratio>`.

peftbench's processes end without the interpreter's final garbage collection
(`utils.end_without_collecting`; about 1.3 s with torch, transformers and peft loaded), which a
plain script pays. So that this is not mistaken for leaner run code, a second hand process that
ends the same way is timed too, and its ratio printed before the last line.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def hand_process(steps: int, batch: int, n_eval: int, threads: int) -> None:
    """The hand loop's whole process: the imports it needs, the model, the data, one run."""
    sys.path.insert(0, str(HERE))
    from overhead import benchmark_config, hand_run

    from peftbench.config import validate_config
    from peftbench.modeling import resolve_model
    from peftbench.plan import plan_runs
    from peftbench.runner.run import RunContext
    from peftbench.utils import pinned_threads, quiet_libraries

    quiet_libraries()
    cfg = validate_config(benchmark_config(steps, batch, n_eval, threads))
    with tempfile.TemporaryDirectory() as out, pinned_threads(threads):
        ctx = RunContext(cfg, resolve_model(cfg.model), Path(out))
        hand_run(ctx, plan_runs(cfg)[0], steps, batch, n_eval)


def timed(command: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--eval", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hand", action="store_true", help="be the hand process (used by this script)")
    parser.add_argument("--no-collect", action="store_true", help="(hand process) end without the final collection")
    args = parser.parse_args()
    if args.hand:
        if args.no_collect:
            from peftbench.utils import end_without_collecting

            end_without_collecting()
        hand_process(args.steps, args.batch, args.eval, args.threads)
        return
    sys.path.insert(0, str(HERE))
    from overhead import benchmark_config

    peftbench = str(Path(sys.executable).with_name("peftbench"))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "one-run.yaml"
        config.write_text(yaml.safe_dump(benchmark_config(args.steps, args.batch, args.eval, args.threads)))
        hand = [sys.executable, __file__, "--hand", "--steps", str(args.steps), "--batch", str(args.batch),
                "--eval", str(args.eval), "--threads", str(args.threads)]
        sides = {
            "hand process": hand,
            "hand, no final collection": [*hand, "--no-collect"],
            "peftbench run": [peftbench, "run", str(config), "-q"],
            "peftbench run --no-report": [peftbench, "run", str(config), "-q", "--no-report"],
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        for repeat in range(args.repeats + 1):
            for name, command in sides.items():
                out = ["--out", str(Path(tmp) / f"{name}-{repeat}")] if name.startswith("peftbench") else []
                seconds = timed(command + out)
                if repeat:  # the first round is the warm-up
                    times[name].append(seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"tiny model, LoRA, qs_sentiment: {args.steps} steps x batch {args.batch}, {args.eval} eval prompts, "
          f"{args.threads} thread(s); whole processes, medians of {args.repeats}, interleaved")
    for name, seconds in medians.items():
        print(f"{name:27s} {seconds:6.2f} s  ({', '.join(f'{s:.2f}' for s in times[name])})")
    print(f"grid --no-report/hand: {medians['peftbench run --no-report'] / medians['hand process']:.2f}")
    print(f"grid/hand with no final collection on either side: "
          f"{medians['peftbench run'] / medians['hand, no final collection']:.2f}")
    print(f"grid/hand: {medians['peftbench run'] / medians['hand process']:.2f}")


if __name__ == "__main__":
    main()
