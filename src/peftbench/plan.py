"""Expanding a config into runs: methods × tasks × seeds, each with a content-addressed id.

A run's id hashes what the run *means*: the model, the resolved method arguments and learning
rate, the task definition, the data (a hub dataset's pinned revision; local files by their
content, wherever they lie), the training/evaluation/cost protocol, the decoder version and the
seed. Re-running a config resumes it; changing any of these starts new runs beside the old ones.

It deliberately leaves out where and how a run executes: the output directory, the executor,
checkpoint frequency, the decoding check, PSCP constants, and the execution environment — device,
library versions and the torch thread count. The environment *can* change results numerically
(float reduction order differs with the thread count and the device), but not what they measure,
so a grid resumed on another machine reuses its finished runs; each run's provenance records the
environment, and the tests pin threads for exact reproducibility.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from peftbench.config import TINY_MODEL, BenchConfig, MethodConfig, TaskConfig
from peftbench.decoding import DECODER
from peftbench.methods import Method, resolve_method
from peftbench.tasks import GeneratedSource, LocalSource, TaskSpec
from peftbench.tasks.data import local_data_fingerprint

# 3: evaluation through peftbench's own decoder (runs of version 2 decoded prompt-learning methods
# with the broken cached `generate`), local data identified by content.
IDENTITY_VERSION = 3
# Settings that change how a run executes or is checked, never its result.
NOT_IDENTITY = {"training": {"checkpoint_steps"}, "evaluation": {"decode_check", "decode_check_tolerance"}}


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    method_id: str
    task: str
    seed: int
    method_cfg: MethodConfig
    task_cfg: TaskConfig
    identity: dict[str, Any]

    @property
    def learning_rate(self) -> float:
        return self.identity["method"]["learning_rate"]

    def method(self) -> Method:
        return resolve_method(self.method_cfg.name, self.method_cfg.args)


def run_identity(cfg: BenchConfig, method_cfg: MethodConfig, task: TaskConfig, seed: int,
                 data: dict[str, str | None] | None = None) -> dict[str, Any]:
    """What the run means (see the module docstring); `data` is the local files' fingerprint
    (`local_data_fingerprint`), computed here when not given."""
    method = resolve_method(method_cfg.name, method_cfg.args)
    lr = method_cfg.learning_rate if method_cfg.learning_rate is not None else method.default_lr
    model = cfg.model.model_dump(mode="json")
    if cfg.model.name == TINY_MODEL:
        from peftbench.tiny import recipe_digest

        model["recipe"] = recipe_digest()
    return {
        "version": IDENTITY_VERSION,
        "model": model,
        "method": {"id": method_cfg.id, "name": method_cfg.name, "args": method.args, "learning_rate": lr},
        "task": {"name": task.name, "fingerprint": task_fingerprint(task.spec())},
        "data": data if data is not None else local_data_fingerprint(task.spec(), cfg.data_dir),
        "training": cfg.training.model_dump(mode="json", exclude=NOT_IDENTITY["training"]),
        "evaluation": cfg.evaluation.model_dump(mode="json", exclude=NOT_IDENTITY["evaluation"]),
        "decoder": DECODER,
        "costs": cfg.costs.model_dump(mode="json"),
        "seed": seed,
    }


def task_fingerprint(task: TaskSpec) -> str:
    """Hash of everything in a task's definition that changes its runs: data source (a local
    task's splits, not its paths), prompt, verbaliser, generation length, metrics, and the names
    of its row hooks."""
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    source = fields.pop("source")
    if isinstance(source, GeneratedSource):
        source = {"generate": source.generate.__qualname__, "sizes": dict(source.sizes), "seed": source.seed}
    elif isinstance(source, LocalSource):  # the files' content is the run's `data`; where they lie is not
        source = {"local": sorted(source.files)}
    fields = {k: (v.__qualname__ if callable(v) else v) for k, v in fields.items()}
    blob = json.dumps({"source": source, **fields}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_id(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_runs(cfg: BenchConfig) -> list[RunSpec]:
    """All runs of the grid in a stable order: method-major, then task, then seed."""
    runs = []
    data = {task.name: local_data_fingerprint(task.spec(), cfg.data_dir) for task in cfg.tasks}  # files read once
    for method_cfg in cfg.methods:
        for task in cfg.tasks:
            for seed in cfg.seeds:
                identity = run_identity(cfg, method_cfg, task, seed, data[task.name])
                runs.append(RunSpec(run_id(identity), method_cfg.id, task.name, seed, method_cfg, task, identity))
    return runs
