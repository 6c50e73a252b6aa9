"""The `tpv:` section of a config as runs of the grid (docs/tpv.md), planned in two stages.

Stage 1 needs nothing stored: prompt tuning from every origin on every TPV task (each run keeps its
TPV), the multi-task (SPoT-style) prompts of the few-shot groups, and the few-shot runs that start
from a plain origin. Stage 2 is planned once stage 1 is stored, because its runs are defined by what
stage 1 produced: λ-searched combinations and cross-origin transplants (units that evaluate stored
prompts, no training), and the few-shot runs that start from θ₀ + τ_A, θ₀ + τ_A + τ_B or a
multi-task prompt (prompt files identified by their content). Every run is a row of the store with
a content-addressed id, so a killed study resumes where it stopped and redoes nothing stored.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftbench.config import BenchConfig, TPVConfig
from peftbench.decoding import DECODER
from peftbench.methods import Method, resolve_method
from peftbench.plan import RunSpec, resolve, run_id, run_identity, task_fingerprint, training_identity
from peftbench.store import IDENTITY_VERSION
from peftbench.tasks import TaskSpec
from peftbench.tasks.data import local_data_fingerprint
from peftbench.tpv import vectors
from peftbench.tpv.runs import load_task_vector, prompt_path

SOURCE, MULTITASK, FEW_SHOT = "source", "multitask", "few_shot"
COMBINATION, CROSS_ORIGIN = "combination", "cross_origin"
PROMPTS_DIR = Path("tpv") / "prompts"
SHOT_ROWS = "seeded"
"""How a few-shot run's rows are drawn, in its id: "seeded", the first k of the training rows shuffled
with the fixed data seed (`runner.run.shot_rows`); runs before took the first k rows as split."""


def study_score(metrics: dict[str, Any], task: TaskSpec, metric: str) -> float:
    """A run's score in the study's metric, or its task's primary metric where the task lacks it."""
    return metrics[metric] if metric in task.metrics else metrics[task.primary_metric]


def choose_lambda(lambdas: Sequence[float], curve: Sequence[float]) -> float:
    """The λ of the best mean validation score; ties go to the smallest λ (the least extrapolation
    from θ₀). Non-finite scores never win."""
    best = max(range(len(lambdas)), key=lambda i: (curve[i] if math.isfinite(curve[i]) else -math.inf, -lambdas[i]))
    return lambdas[best]


def study_method(tpv: TPVConfig, *, origin: int | None = None, init_prompt: Path | None = None) -> Method:
    """Prompt tuning with the study's token count, from an origin or a prompt file."""
    args: dict[str, Any] = {"num_virtual_tokens": tpv.tokens}
    if origin is not None:
        args["origin"] = origin
    else:
        args["init_prompt"] = str(init_prompt)
    return resolve_method("prompt_tuning", args)


@dataclass(frozen=True)
class _Study:
    """The config's TPV section with its tasks resolved and local data fingerprinted once."""

    cfg: BenchConfig
    tpv: TPVConfig
    tasks: dict[str, TaskSpec]
    data: dict[str, Any]
    seeds: list[int]

    @classmethod
    def of(cls, cfg: BenchConfig) -> _Study:
        assert cfg.tpv is not None
        tasks = resolve(cfg).tasks
        data = {name: local_data_fingerprint(task, cfg.data_dir) for name, task in tasks.items()}
        return cls(cfg, cfg.tpv, tasks, data, cfg.tpv.seeds or cfg.seeds)

    def training_run(self, method_id: str, method: Method, task: str, seed: int, study: dict[str, Any], *,
                     mixed: Sequence[str] = (), shots: int | None = None) -> RunSpec:
        spec = self.tasks[task]
        identity = run_identity(self.cfg, method_id, method, self.tpv.learning_rate, spec, seed, self.data[task])
        identity["tpv"] = study
        training = None
        if mixed:
            identity["mixed"] = [{"task": task_fingerprint(self.tasks[m]), "data": self.data[m]} for m in mixed]
        if shots is not None:
            fs = self.tpv.few_shot
            assert fs is not None
            training = self.cfg.training.model_copy(update={
                "max_steps": fs.steps, "batch_size": fs.batch_size(shots), "gradient_accumulation_steps": 1,
                "select_best": False, "eval_steps": fs.steps})
            identity["training"] = training_identity(training)
            identity["shots"] = shots
            identity["shot_rows"] = SHOT_ROWS
        return RunSpec(run_id(identity), method_id, task, seed, method, spec, self.tpv.learning_rate, identity,
                       training=training, shots=shots, mixed_tasks=tuple(self.tasks[m] for m in mixed),
                       measure_costs=shots is None)

    def unit(self, method_id: str, task_label: str, tasks: Sequence[str], seed: int, sources: Sequence[RunSpec],
             study: dict[str, Any], unit: Any, origin: int) -> RunSpec:
        """A stage-2 evaluation of stored prompts: identified by its sources' run ids and the tasks."""
        identity = {
            "version": IDENTITY_VERSION, "model": sources[0].identity["model"],
            "tasks": [{"task": task_fingerprint(self.tasks[t]), "data": self.data[t]} for t in tasks],
            "sources": [s.run_id for s in sources], "evaluation": sources[0].identity["evaluation"],
            "decoder": DECODER, "seed": seed, "tpv": study,
        }
        return RunSpec(run_id(identity), method_id, task_label, seed, study_method(self.tpv, origin=origin),
                       self.tasks[tasks[0]], self.tpv.learning_rate, identity, measure_costs=False, study=unit)


def plan_first_stage(cfg: BenchConfig) -> list[RunSpec]:
    """Stage 1: every run of the study that starts from nothing stored."""
    s = _Study.of(cfg)
    tpv, runs = s.tpv, []
    for origin in range(tpv.origins):
        method = study_method(tpv, origin=origin)
        for task in tpv.tasks:
            for seed in s.seeds:
                runs.append(s.training_run(f"tpv@o{origin}", method, task, seed, {"study": SOURCE, "origin": origin}))
    fs = tpv.few_shot
    for group in fs.groups if fs else []:
        for origin in range(fs.origins):
            method = study_method(tpv, origin=origin)
            for seed in s.seeds:
                if "multitask" in fs.starts:
                    a, b = group.sources
                    runs.append(s.training_run(f"tpv-multitask@o{origin}", method, a, seed,
                                               {"study": MULTITASK, "origin": origin, "tasks": [a, b]}, mixed=[b]))
                if "random" in fs.starts:
                    runs += [s.training_run(f"tpv-fewshot-random@o{origin}", method, target, seed, _few(
                        "random", origin, shots, group.sources, target), shots=shots)
                        for target in group.targets for shots in fs.shots]
    return runs


def _few(start: str, origin: int, shots: int, sources: Sequence[str], target: str) -> dict[str, Any]:
    return {"study": FEW_SHOT, "start": start, "origin": origin, "shots": shots, "sources": list(sources),
            "target": target}


@dataclass
class SecondStage:
    runs: list[RunSpec]
    waiting: int  # stage-2 runs whose stage-1 sources are not done (failed, diverged or not run)


def plan_second_stage(cfg: BenchConfig, out_dir: Path, first: list[RunSpec], status: dict[str, str]) -> SecondStage:
    """Stage 2 from the stored stage 1 (`status`: run id → status); writes the start prompts it needs."""
    s = _Study.of(cfg)
    tpv = s.tpv
    by_key = {(r.identity["tpv"]["study"], r.task, r.identity["tpv"]["origin"], r.seed): r for r in first}
    runs: list[RunSpec] = []
    waiting = 0

    def ready(*specs: RunSpec) -> bool:
        nonlocal waiting
        ok = all(status.get(r.run_id) == "done" for r in specs)
        waiting += not ok
        return ok

    for seed in s.seeds:
        for combo in tpv.combinations:
            for origin in range(tpv.origins):
                sources = [by_key[(SOURCE, t, origin, seed)] for t in combo]
                if ready(*sources):
                    study = {"study": COMBINATION, "origin": origin, "tasks": combo, "lambdas": tpv.lambdas,
                             "metric": tpv.metric}
                    unit = Combination(tuple(s.tasks[t] for t in combo), origin, tuple(r.run_id for r in sources),
                                       tuple(tpv.lambdas), tpv.metric)
                    runs.append(s.unit(f"tpv-sum@o{origin}", "+".join(combo), combo, seed, sources, study, unit,
                                       origin))
        if tpv.cross_origin:
            for task in tpv.tasks:
                for i in range(tpv.origins):
                    for j in range(tpv.origins):
                        source = by_key[(SOURCE, task, j, seed)]
                        if ready(source):
                            study = {"study": CROSS_ORIGIN, "origin": i, "source_origin": j}
                            unit = CrossOrigin(s.tasks[task], i, source.run_id)
                            runs.append(s.unit(f"tpv-cross@o{i}<o{j}", task, [task], seed, [source], study, unit, i))
        fs = tpv.few_shot
        for group in fs.groups if fs else []:
            a, b = group.sources
            for origin in range(fs.origins):
                src_a, src_b = by_key[(SOURCE, a, origin, seed)], by_key[(SOURCE, b, origin, seed)]
                starts: dict[str, tuple[RunSpec, ...]] = {}
                if "single" in fs.starts:
                    starts["single"] = (src_a,)
                if "sum" in fs.starts:
                    starts["sum"] = (src_a, src_b)
                if "multitask" in fs.starts:
                    starts["multitask"] = (by_key[(MULTITASK, a, origin, seed)],)
                for start, needs in starts.items():
                    if not ready(*needs):
                        continue
                    method = study_method(tpv, init_prompt=_start_prompt(Path(out_dir), start, needs))
                    for target in group.targets:
                        for shots in fs.shots:
                            runs.append(s.training_run(f"tpv-fewshot-{start}@o{origin}", method, target, seed,
                                                       _few(start, origin, shots, group.sources, target),
                                                       shots=shots))
    return SecondStage(runs, waiting)


def _start_prompt(out_dir: Path, start: str, needs: tuple[RunSpec, ...]) -> Path:
    """The prompt file a few-shot start reads: a stored trained prompt (θ_A, a multi-task prompt), or
    θ_A + τ_B = θ₀ + τ_A + τ_B written under tpv/prompts/ by its content."""
    first = prompt_path(out_dir, needs[0].run_id)
    if start != "sum":
        return first
    theta_a, _ = vectors.load(first)
    total = vectors.add(theta_a, load_task_vector(out_dir, needs[1].run_id))
    target = out_dir / PROMPTS_DIR / f"sum-{needs[0].run_id}-{needs[1].run_id}.safetensors"
    if not target.is_file():
        vectors.save(total, target, sources=",".join(r.run_id for r in needs))
    return target


# --- stage-2 units: evaluations of stored prompts -------------------------------------------------------


@contextmanager
def _prompt_model(spec: RunSpec, ctx: Any) -> Iterator[tuple[torch.nn.Module, vectors.PromptVector]]:
    """A fresh prompt-tuning model of the unit's origin and that origin's θ₀, with the run's threads
    pinned and its seed set."""
    from peftbench.utils import pinned_threads, seed_everything

    with pinned_threads(ctx.cfg.runtime.threads):
        seed_everything(spec.seed)
        model = spec.method.apply(ctx.fresh_model()).eval()
        yield model, spec.method.start(model)[0]


def _set_prompt(model: torch.nn.Module, prompt: vectors.PromptVector) -> None:
    from peftbench.methods.prompt_tuning import trained_prompt

    weight = trained_prompt(model)
    with torch.no_grad():
        weight.copy_(prompt.as_prompt_tensor().to(weight.device, weight.dtype))


@dataclass(frozen=True)
class Combination:
    """θ₀ + λ·Σ τ_i for every λ on each task's validation rows; the λ of the best mean score (the
    study's metric) is then scored on each task's evaluation split."""

    tasks: tuple[TaskSpec, ...]
    origin: int
    sources: tuple[str, ...]
    lambdas: tuple[float, ...]
    metric: str

    def execute(self, spec: RunSpec, ctx: Any, phase: Any) -> Any:
        from peftbench.runner.run import RunOutcome, evaluate

        t0 = time.perf_counter()
        with _prompt_model(spec, ctx) as (model, theta0):
            tpvs = [load_task_vector(ctx.out_dir, run) for run in self.sources]
            val: dict[str, list[float]] = {t.name: [] for t in self.tasks}
            for i, lam in enumerate(self.lambdas):
                _set_prompt(model, vectors.combine(theta0, tpvs, lam))
                for task in self.tasks:
                    scores, _ = evaluate(model, task, _rows(ctx, task, "val"), ctx, phase, check=i == 0)
                    val[task.name].append(study_score(scores.metrics, task, self.metric))
            curve = [statistics.fmean(v[i] for v in val.values()) for i in range(len(self.lambdas))]
            best = choose_lambda(self.lambdas, curve)
            _set_prompt(model, vectors.combine(theta0, tpvs, best))
            test, predictions, invalid = {}, [], []
            for task in self.tasks:
                scores, _ = evaluate(model, task, ctx.task_data(task).eval, ctx, phase, check=False)
                test[task.name] = study_score(scores.metrics, task, self.metric)
                invalid.append(scores.invalid_rate)
                predictions += [{"task": task.name, **r} for r in scores.records]
        metrics = {"score": statistics.fmean(test.values()), "primary_metric": f"mean {self.metric} over the tasks",
                   "lambda": best, "lambdas": list(self.lambdas), "val_curve": curve, "val_scores": val,
                   "scores": test, "invalid_rate": statistics.fmean(invalid)}
        return RunOutcome(status="done", metrics=metrics, predictions=predictions,
                          timings={"total_s": time.perf_counter() - t0})


@dataclass(frozen=True)
class CrossOrigin:
    """θ₀ⁱ + τʲ: the TPV of origin j's run transplanted onto origin i, scored on the task's evaluation split."""

    task: TaskSpec
    origin: int
    source: str

    def execute(self, spec: RunSpec, ctx: Any, phase: Any) -> Any:
        from peftbench.runner.run import RunOutcome, evaluate

        t0 = time.perf_counter()
        with _prompt_model(spec, ctx) as (model, theta0):
            _set_prompt(model, vectors.rebase(load_task_vector(ctx.out_dir, self.source), theta0))
            scores, decoding = evaluate(model, self.task, ctx.task_data(self.task).eval, ctx, phase)
        metrics = {"score": scores.primary, "primary_metric": self.task.primary_metric, **scores.metrics,
                   "invalid_rate": scores.invalid_rate, "n_eval": scores.n}
        return RunOutcome(status="done", metrics=metrics, predictions=scores.records,
                          timings={"total_s": time.perf_counter() - t0}, provenance={"decoding": decoding})


def _rows(ctx: Any, task: TaskSpec, part: str) -> list[Any]:
    rows = getattr(ctx.task_data(task), part)
    if not rows:
        from peftbench.errors import PeftbenchError

        raise PeftbenchError(f"task {task.name!r}: no validation rows to choose λ on (training.val_fraction)")
    return rows


def second_stage_size(tpv: TPVConfig, seeds: int) -> dict[str, int]:
    """How many stage-2 runs a study will add once stage 1 is stored (for `--dry-run`)."""
    fs = tpv.few_shot
    later = [s for s in (fs.starts if fs else []) if s != "random"]
    few = sum(len(g.targets) for g in fs.groups) * fs.origins * len(fs.shots) * len(later) if fs else 0
    return {"combinations": len(tpv.combinations) * tpv.origins * seeds,
            "cross-origin evaluations": len(tpv.tasks) * tpv.origins ** 2 * seeds if tpv.cross_origin else 0,
            "few-shot runs from TPVs": few * seeds}
