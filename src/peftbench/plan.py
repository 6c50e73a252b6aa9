"""Expanding a config into runs: the config's method and task names are resolved here, once, and
every run (methods × tasks × seeds) carries the resolved method, task and learning rate with a
content-addressed id.

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

from peftbench.config import AUTO_SPLIT, TINY_MODEL, BenchConfig, TaskConfig, TrainingConfig
from peftbench.decoding import DECODER, LOGLIK_SCORER
from peftbench.errors import PeftbenchError
from peftbench.methods import Method, resolve_method
from peftbench.registry import Registry
from peftbench.store import IDENTITY_VERSION
from peftbench.tasks import GeneratedSource, HubSource, LocalSource, TaskSpec, catalog
from peftbench.tasks.data import check_splits, local_data_fingerprint
from peftbench.tasks.hooks import hook_identity

# Task fields added after run-id version 3: left out of a task's fingerprint while they hold their
# default, so the runs of tasks that do not use them keep their ids.
LATER_FIELDS = frozenset({"keep", "split_rule", "carve"})
# Settings that change how a run executes or is checked, never its result.
NOT_IDENTITY = {"training": {"checkpoint_steps", "report_to"}, "evaluation": {"decode_check", "decode_check_tolerance"}}


@dataclass(frozen=True)
class RunSpec:
    """One run, resolved: what every stage downstream needs, nothing to look up again."""

    run_id: str
    method_id: str
    task: str
    seed: int
    method: Method
    task_spec: TaskSpec
    learning_rate: float
    identity: dict[str, Any]
    training: TrainingConfig | None = None
    """This run's training protocol when it is not the config's (few-shot runs of a TPV study)."""
    shots: int | None = None
    """Train on the first `shots` training rows only (0: evaluate the starting point untrained)."""
    mixed_tasks: tuple[TaskSpec, ...] = ()
    """Tasks whose training and validation rows are mixed into this run's (a multi-task prompt)."""
    measure_costs: bool = True
    study: Any = None
    """A study unit (`tpv.study`) that evaluates stored prompts instead of training: it executes itself."""


@dataclass(frozen=True)
class Resolved:
    """The config's names looked up once: methods by id (with their arguments and learning rate)
    and tasks by name (with the entry's overrides)."""

    methods: dict[str, tuple[Method, float]]
    tasks: dict[str, TaskSpec]
    training: dict[str, TrainingConfig]
    """Per method id, its training protocol (the config's, with the method's own mitigation if it has one)."""


def resolve_methods(cfg: BenchConfig) -> tuple[dict[str, tuple[Method, float]], dict[str, TrainingConfig]]:
    """Per method id, the method with its learning rate, and its training protocol; a bad name or
    argument is a one-line error naming the config key."""
    methods, training = {}, {}
    for i, m in enumerate(cfg.methods):
        try:
            method = resolve_method(m.name, m.args)
        except PeftbenchError as exc:
            raise PeftbenchError(f"{cfg.method_key(i)}: {exc}") from None
        methods[m.id] = (method, m.learning_rate if m.learning_rate is not None else method.default_lr)
        training[m.id] = cfg.training.model_copy(update={"mitigation": m.mitigation}) if m.mitigation else cfg.training
    return methods, training


def resolve(cfg: BenchConfig) -> Resolved:
    """Every method and task of the config, or a one-line error naming the config key."""
    methods, training = resolve_methods(cfg)
    try:
        known = catalog(cfg.tasks_dir)
    except PeftbenchError as exc:
        raise PeftbenchError(f"tasks_dir: {exc}") from None
    tasks = {}
    for i, t in enumerate(cfg.tasks):
        try:
            tasks[t.name] = resolve_task(t, known)
        except PeftbenchError as exc:
            raise PeftbenchError(f"tasks[{i}].name: {exc}") from None
    return Resolved(methods, tasks, training)


def grid_size(cfg: BenchConfig) -> str:
    """"2 methods × 1 task × 5 seeds", in words that agree with their numbers."""
    parts = ((len(cfg.methods), "method"), (len(cfg.tasks), "task"), (len(cfg.seeds), "seed"))
    return " × ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in parts)


def check_data(cfg: BenchConfig, *, unchecked_note: bool = True) -> list[str]:
    """Every task's splits, looked up where its runs will read them, before anything runs: one error
    listing every missing split with the config key that fixes it, or the notes to show (splits
    carved under `auto`; with `unchecked_note`, the hub datasets that cannot be checked offline — a
    run need not say so, as loading them fails next with what to do)."""
    tasks = resolve(cfg).tasks
    keyed = [(f"tasks[{i}]", tasks[t.name]) for i, t in enumerate(cfg.tasks)]
    problems, notes, unchecked = check_splits(keyed, cfg.data_dir)
    if unchecked and unchecked_note:
        notes.append(f"splits not checked for {len(unchecked)} hub dataset(s) that are not cached while the hub is "
                     f"unreachable ({', '.join(unchecked)}); set data_dir to local copies to check them")
    if problems:
        raise PeftbenchError(f"data: {len(problems)} problem(s) with the tasks' splits: {'; '.join(problems)}")
    return notes


def resolve_task(entry: TaskConfig, known: Registry[TaskSpec]) -> TaskSpec:
    """The named task with the config entry's overrides (splits, hub revision) applied."""
    task = known.get(entry.name)
    if entry.revision and not isinstance(task.source, HubSource):
        raise PeftbenchError(f"task {entry.name!r} is not a hub dataset: it has no hub revision")
    changes: dict[str, Any] = {}
    carve = tuple(role for role, split in (("train", entry.train_split), ("eval", entry.eval_split))
                  if split == AUTO_SPLIT)
    if carve:
        changes["carve"] = carve
    if entry.train_split and entry.train_split != AUTO_SPLIT:
        changes["train_split"] = entry.train_split
    if entry.eval_split and entry.eval_split != AUTO_SPLIT:
        changes["eval_split"] = entry.eval_split
    if entry.split_rule:
        changes["split_rule"] = entry.split_rule
    if entry.revision:
        changes["source"] = dataclasses.replace(task.source, revision=entry.revision)
    return dataclasses.replace(task, **changes) if changes else task


def run_identity(cfg: BenchConfig, method_id: str, method: Method, learning_rate: float, task: TaskSpec, seed: int,
                 data: dict[str, str | None] | None, training: TrainingConfig | None = None) -> dict[str, Any]:
    """What the run means (see the module docstring); `data` is the local files' fingerprint."""
    model = cfg.model.model_dump(mode="json")
    if cfg.model.name == TINY_MODEL:
        from peftbench.tiny import recipe_digest

        model["recipe"] = recipe_digest()
    return {
        "version": IDENTITY_VERSION,
        "model": model,
        "method": {"id": method_id, "name": method.name, "args": method.identity_args(),
                   "learning_rate": learning_rate},
        "task": {"name": task.name, "category": task.category, "fingerprint": task_fingerprint(task)},
        "data": data,
        "training": training_identity(training or cfg.training),
        "evaluation": evaluation_identity(cfg, task),
        "decoder": DECODER if cfg.evaluation.mode == "generate" else f"{DECODER}+{LOGLIK_SCORER}",
        "costs": cfg.costs.model_dump(mode="json"),
        "seed": seed,
    }


def evaluation_identity(cfg: BenchConfig, task: TaskSpec) -> dict[str, Any]:
    """The evaluation protocol as it enters a run's identity. A task scored by group, capped by
    `max_samples`, is marked as capped by whole groups: before, the cap could cut a MultiRC question
    in two, and such runs must not be resumed as if they had the current rows. (Marked whenever the
    cap is set, even one above the rows' count: a re-run at worst, never a wrong resume.)"""
    dumped = cfg.evaluation.model_dump(mode="json", exclude=NOT_IDENTITY["evaluation"])
    if task.group is not None and cfg.evaluation.max_samples:
        dumped["max_samples_by"] = "group"
    return dumped


def training_identity(training: TrainingConfig) -> dict[str, Any]:
    """The training protocol as it enters a run's identity: the settings that change results, with
    the mitigation strategy and fixed seeds only when set (runs without them keep their ids)."""
    dumped = training.model_dump(mode="json", exclude=NOT_IDENTITY["training"])
    if training.mitigation.strategy == "default":
        dumped.pop("mitigation")
    else:
        dumped["mitigation"] = training.mitigation.identity()
    if not training.fixed_seeds.pinned():
        dumped.pop("fixed_seeds")
    elif training.mitigation.strategy == "ensemble":  # runs before this varied every source of the members
        dumped["mitigation"]["member_seeds"] = "fixed_seeds"
    return dumped


def task_fingerprint(task: TaskSpec) -> str:
    """Hash of everything in a task's definition that changes its runs: data source (a local
    task's splits, not its paths), prompt, verbaliser, generation length, metrics, and the names
    of its row hooks with their revisions (`tasks.hooks.REVISIONS`)."""
    fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
              if f.name not in LATER_FIELDS or getattr(task, f.name) != f.default}
    source = fields.pop("source")
    if isinstance(source, GeneratedSource):
        source = {"generate": hook_identity(source.generate), "sizes": dict(source.sizes), "seed": source.seed}
    elif isinstance(source, LocalSource):  # the files' content is the run's `data`; where they lie is not
        source = {"local": sorted(source.files)}
    fields = {k: (hook_identity(v) if callable(v) else v) for k, v in fields.items()}
    blob = json.dumps({"source": source, **fields}, sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_id(identity: dict[str, Any]) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan_runs(cfg: BenchConfig) -> list[RunSpec]:
    """All runs of the grid in a stable order (method-major, then task, then seed), resolved once."""
    resolved = resolve(cfg)
    data = {name: local_data_fingerprint(task, cfg.data_dir) for name, task in resolved.tasks.items()}  # read once
    runs = []
    for method_id, (method, lr) in resolved.methods.items():
        for name, task in resolved.tasks.items():
            training = resolved.training[method_id]
            for seed in cfg.seeds:
                identity = run_identity(cfg, method_id, method, lr, task, seed, data[name], training)
                runs.append(RunSpec(run_id(identity), method_id, name, seed, method, task, lr, identity,
                                    training=None if training is cfg.training else training))
    return runs
