"""The paper's seven methods as one grid, as a user runs it: `peftbench run` as a whole process.

    python benchmarks/seven_methods.py [--repeats 3] [--workers 2] [--methods lora,ia3,...] [--peer "COMMAND"]

The grid is the quickstart's settings for PEFT-Bench's seven methods (LoRA, IA3, prompt tuning,
prefix tuning, P-tuning, LayerNorm tuning, BitFit) on qs_sentiment, one seed, the built-in tiny
model: seven runs, each trained, evaluated and costed, and the report written. One warm-up run
first (it builds the model where it is not cached and fills the FLOP-count cache, as any earlier
grid on this machine would have), then `--repeats` timed runs into fresh output directories.
`--methods` keeps only some of the seven, to match a peer that cannot run them all.

Another stack's runner (the issue that asked for this compares against PEFT-Factory) is not part
of this repository; `benchmarks/peftfactory_peer.py` writes this grid as PEFT-Factory runs. `--peer`
times a shell command of the user's choosing in the same series, alternating with peftbench's grid
after a warm-up of its own, so that both sides see the same load. The last line is
`seven methods: <median seconds>`, or with `--peer`, `peer/peftbench: <ratio of the medians>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from importlib import resources
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid_overhead import timed  # noqa: E402

from peftbench.methods import paper_methods  # noqa: E402


def seven_method_config(workers: int, methods: list[str] | None = None) -> dict:
    """The quickstart's config, cut to the paper's methods (or those of them named), qs_sentiment and seed 0."""
    config = yaml.safe_load(resources.files("peftbench.configs").joinpath("quickstart.yaml").read_text())
    paper = set(paper_methods())
    wanted = set(methods or paper)
    if not wanted <= paper:
        raise SystemExit(f"--methods: {sorted(wanted - paper)} are not among the paper's methods {sorted(paper)}")
    config["methods"] = [m for m in config["methods"] if isinstance(m, dict) and m["name"] in wanted]
    if len(config["methods"]) != len(wanted):
        raise SystemExit(f"the quickstart config no longer configures the paper's methods {sorted(wanted)}")
    config.update(name="seven-methods", tasks=["qs_sentiment"], seeds=[0])
    config["runtime"]["workers"] = workers
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", type=lambda s: s.split(","), help="a comma-separated subset of the seven")
    parser.add_argument("--peer", help="a shell command to time in the same series (another stack's runner)")
    args = parser.parse_args()
    peftbench = str(Path(sys.executable).with_name("peftbench"))
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "seven-methods.yaml"
        config.write_text(yaml.safe_dump(seven_method_config(args.workers, args.methods), sort_keys=False))
        times: dict[str, list[float]] = {"peftbench": [], **({"peer": []} if args.peer else {})}
        for repeat in range(args.repeats + 1):
            seconds = timed([peftbench, "run", str(config), "-q", "--out", str(Path(tmp) / f"out-{repeat}")])
            peer = timed(["bash", "-c", args.peer]) if args.peer else None
            if repeat:  # the first round is the warm-up
                times["peftbench"].append(seconds)
                if peer is not None:
                    times["peer"].append(peer)
    medians = {name: statistics.median(values) for name, values in times.items()}
    names = ",".join(args.methods) if args.methods else "the paper's 7 methods"
    print(f"{names} x qs_sentiment x 1 seed, built-in tiny model, {args.workers} worker(s); "
          f"whole processes, medians of {args.repeats}{', interleaved with the peer' if args.peer else ''}")
    for name, values in times.items():
        print(f"{name:10s} {medians[name]:6.2f} s  ({', '.join(f'{s:.2f}' for s in values)})")
    if args.peer:
        print(f"peer/peftbench: {medians['peer'] / medians['peftbench']:.2f}")
    else:
        print(f"seven methods: {medians['peftbench']:.2f}")


if __name__ == "__main__":
    main()
