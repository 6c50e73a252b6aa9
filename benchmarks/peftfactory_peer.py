"""Write the seven-method grid (`benchmarks/seven_methods.py`) as PEFT-Factory runs, the peer #17 compares with.

    python benchmarks/peftfactory_peer.py DIR [--cli PATH/TO/llamafactory-cli]
    python benchmarks/seven_methods.py --peer "bash DIR/run.sh"

PEFT-Factory (the PEFT-Bench authors' runner, `pip install peftfactory`) pins transformers <= 4.57
and peft <= 0.17, so it lives in an environment of its own, for example:

    python -m venv /tmp/peer && /tmp/peer/bin/pip install torch==2.13.0 peftfactory==0.9.4.8 \
        jieba nltk rouge-chinese   # its generation metrics import these

This script writes, under DIR: the rows peftbench trains and scores qs_sentiment's runs on (its own
split: 288 training rows, without the 32 it holds out for validation, and the 100 evaluation rows),
with peftbench's rendered prompts and labels (`data/`, PEFT-Factory's alpaca format, the `empty`
template, so both stacks tokenise the same text; the EOS token ends each answer, as peftbench's
training targets do, since that template adds none); one config per method with the grid's
settings (a copy of the built-in tiny model, the quickstart's learning rates and method arguments,
3 epochs of batch 4, cosine schedule with 10 % warm-up, greedy generation of up to the task's
`max_new_tokens` in batches of 32, f1 and accuracy, seed 0, CPU); and `run.sh`, which trains and
predicts every method one after another, as a PEFT-Factory user runs a grid. peftbench does more
per run than these configs ask of PEFT-Factory: a validation pass after each epoch with the best
epoch's weights kept (PEFT-Factory's one evaluation set serves its predictions), and the costs.

Two of the seven cannot run there, and `run.sh` says so: its prompt tuning copies the initial
prompt to "cuda" (and samples token ids below 5000, over the tiny model's vocabulary), and BitFit
is not in the package (its custom methods load from a `PEFT_DIR` folder of the source repository).
Compare with `seven_methods.py --methods` set to the same five for a like-for-like ratio.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seven_methods import seven_method_config  # noqa: E402

from peftbench.config import BenchConfig, ModelConfig, validate_config  # noqa: E402
from peftbench.methods import resolve_method  # noqa: E402
from peftbench.modeling import load_tokenizer, resolve_model  # noqa: E402
from peftbench.plan import resolve_task  # noqa: E402
from peftbench.runner.run import cut_task_data  # noqa: E402
from peftbench.tasks import TASKS  # noqa: E402
from peftbench.tasks.prompts import render_prompt  # noqa: E402

#: peftbench's method name → PEFT-Factory's `finetuning_type`; None where the peer cannot run it here.
PEER_TYPES: dict[str, str | None] = {
    "lora": "lora", "ia3": "ia3", "prompt_tuning": None, "prefix_tuning": "prefix-tuning",
    "p_tuning": "p-tuning", "ln_tuning": "lntuning", "bitfit": None,
}
LORA_KEYS = {"r", "lora_alpha", "lora_dropout", "target_modules"}
UNAVAILABLE = {
    "prompt_tuning": "PEFT-Factory's prompt tuning moves its initial prompt to CUDA",
    "bitfit": "BitFit is not in the peftfactory package",
}


def method_args(name: str, method: Any) -> dict[str, Any]:
    """The method's resolved arguments in the peer's terms: its own LoRA keys, peft's config fields otherwise."""
    args = dict(method.args)
    if name == "lora":
        if set(args) - LORA_KEYS:
            raise SystemExit(f"lora: PEFT-Factory's LoRA keys cannot express {sorted(set(args) - LORA_KEYS)}")
        return {"lora_rank": args["r"], "lora_alpha": args["lora_alpha"], "lora_dropout": args["lora_dropout"],
                "lora_target": ",".join(args["target_modules"])}
    return {"task_type": "CAUSAL_LM", **args}


def write_model(out: Path) -> str:
    """A copy of the built-in model that transformers 4 reads into the same token ids: the same
    `tokenizer.json`, named by a class that version knows (transformers 5 writes its own
    `TokenizersBackend`), and its byte-level prefix space stated in the config, since transformers 4
    otherwise turns it off ("negative" would become four tokens instead of one)."""
    target = out / "model"
    shutil.copytree(resolve_model(ModelConfig()).location, target, dirs_exist_ok=True)
    config_path = target / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    pre_tokenizer = json.loads((target / "tokenizer.json").read_text())["pre_tokenizer"]
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["add_prefix_space"] = pre_tokenizer["add_prefix_space"]
    config_path.write_text(json.dumps(config, indent=2))
    return str(target)


def write_data(out: Path, cfg: BenchConfig) -> dict[str, int]:
    """The rows peftbench trains and scores the grid's task on (its own split: the training rows
    without the validation share), rendered as peftbench renders them, and PEFT-Factory's dataset
    registry for them."""
    tokenizer = load_tokenizer(resolve_model(cfg.model), cfg.model)
    task = resolve_task(cfg.tasks[0], TASKS)
    data = cut_task_data(task, cfg)
    info: dict[str, dict[str, str]] = {}
    sizes: dict[str, int] = {}
    for part, rows in (("train", data.train), ("eval", data.eval)):
        records = [{"instruction": render_prompt(task, row, tokenizer), "input": "",
                    "output": task.render_target(row) + tokenizer.eos_token} for row in rows]
        name = f"{task.name}_{part}"
        (out / "data" / f"{name}.json").write_text(json.dumps(records, indent=1))
        info[name] = {"file_name": f"{name}.json"}
        sizes[part] = len(records)
    sizes["validation (peftbench only)"] = len(data.val)
    (out / "data" / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return sizes


def peer_config(out: Path, model_path: str, cfg: BenchConfig, method: dict[str, Any]) -> dict[str, Any]:
    """One PEFT-Factory run with the grid's settings for `method`."""
    task = resolve_task(cfg.tasks[0], TASKS)
    training = cfg.training
    return {
        "model_name_or_path": model_path,
        "disable_gradient_checkpointing": True,  # peftbench does not checkpoint; peft refuses it for prefix tuning
        "stage": "sft", "do_train": True, "do_predict": True, "predict_with_generate": True,
        "compute_classification_metrics": True,
        "finetuning_type": PEER_TYPES[method["name"]],
        **method_args(method["name"], resolve_method(method["name"], method.get("args"))),
        "dataset": f"{task.name}_train", "eval_dataset": f"{task.name}_eval",
        "dataset_dir": str(out / "data"), "template": "empty", "cutoff_len": training.cutoff_len,
        "output_dir": str(out / "runs" / method["name"]), "overwrite_output_dir": True,
        "per_device_train_batch_size": training.batch_size,
        "per_device_eval_batch_size": cfg.evaluation.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "num_train_epochs": training.epochs, "learning_rate": method["learning_rate"],
        "lr_scheduler_type": training.scheduler, "warmup_ratio": training.warmup_ratio,
        "weight_decay": training.weight_decay, "max_grad_norm": training.max_grad_norm,
        "max_new_tokens": task.max_new_tokens, "do_sample": False,
        "seed": cfg.seeds[0], "use_cpu": True, "report_to": "none", "logging_steps": 50,
        "save_strategy": "no",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cli", default="llamafactory-cli", help="PEFT-Factory's command, in its own environment")
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "data").mkdir(parents=True, exist_ok=True)
    grid = seven_method_config(workers=1)
    cfg = validate_config(grid)
    model_path = write_model(out)
    sizes = write_data(out, cfg)
    lines = ["#!/usr/bin/env bash", "# PEFT-Factory runs of benchmarks/seven_methods.py's grid, one after another.",
             "set -euo pipefail"]
    for method in grid["methods"]:
        if PEER_TYPES[method["name"]] is None:
            lines.append(f"echo {shlex.quote(method['name'] + ' skipped: ' + UNAVAILABLE[method['name']])} >&2")
            continue
        config = out / f"{method['name']}.yaml"
        config.write_text(yaml.safe_dump(peer_config(out, model_path, cfg, method), sort_keys=False))
        lines.append(f"{shlex.quote(args.cli)} train {shlex.quote(str(config))} > "
                     f"{shlex.quote(str(out / (method['name'] + '.log')))} 2>&1")
    (out / "run.sh").write_text("\n".join(lines) + "\n")
    runnable = [m["name"] for m in grid["methods"] if PEER_TYPES[m["name"]]]
    print(f"{cfg.tasks[0].name} rows: {sizes}; PEFT-Factory runs: {', '.join(runnable)}")
    print(f'python benchmarks/seven_methods.py --methods {",".join(runnable)} --peer "bash {out / "run.sh"}"')


if __name__ == "__main__":
    main()
