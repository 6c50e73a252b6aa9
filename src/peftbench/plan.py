"""Expanding a config into runs: methods × tasks × seeds, each with a content-addressed id.

A run's id hashes everything that can change its result (model, resolved method arguments and
learning rate, task, data location, training/evaluation/cost protocol, seed) and nothing that
cannot (output directory, thread count, PSCP constants), so re-running a config resumes it and
changing any result-relevant setting starts new runs beside the old ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from peftbench.config import TINY_MODEL, BenchConfig, MethodConfig, TaskConfig
from peftbench.methods import Method, resolve_method
from peftbench.tasks import GeneratedSource, TaskSpec

IDENTITY_VERSION = 2


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


def run_identity(cfg: BenchConfig, method_cfg: MethodConfig, task: TaskConfig, seed: int) -> dict[str, Any]:
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
        "data_dir": str(cfg.data_dir) if cfg.data_dir else None,
        "training": cfg.training.model_dump(mode="json", exclude={"checkpoint_steps"}),
        "evaluation": cfg.evaluation.model_dump(mode="json"),
        "costs": cfg.costs.model_dump(mode="json"),
        "seed": seed,
    }


def task_fingerprint(task: TaskSpec) -> str:
    """Hash of everything in a task's definition that changes its runs: data source, prompt,
    verbaliser, generation length, metrics, and the names of its row hooks."""
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    source = fields.pop("source")
    if isinstance(source, GeneratedSource):
        source = {"generate": source.generate.__qualname__, "sizes": dict(source.sizes), "seed": source.seed}
    fields = {k: (v.__qualname__ if callable(v) else v) for k, v in fields.items()}
    blob = json.dumps({"source": source, **fields}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_id(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_runs(cfg: BenchConfig) -> list[RunSpec]:
    """All runs of the grid in a stable order: method-major, then task, then seed."""
    runs = []
    for method_cfg in cfg.methods:
        for task in cfg.tasks:
            for seed in cfg.seeds:
                identity = run_identity(cfg, method_cfg, task, seed)
                runs.append(RunSpec(run_id(identity), method_cfg.id, task.name, seed, method_cfg, task, identity))
    return runs
