"""One run, top to bottom: fresh base → apply method → train → save → evaluate → cost.

`execute_run` computes and returns a `RunOutcome`; it never touches the store: the worker that
ran it hands the outcome to the driver, the store's only writer. `RunContext` holds what is shared by
all runs of one process: the model source, tokenizer, task data, base-model FLOPs, provenance.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import random
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import torch

from peftbench.config import BenchConfig
from peftbench.costs import peak_memory
from peftbench.costs.energy import EnergyMeter
from peftbench.costs.flops import GB
from peftbench.costs.run import (
    BaseFigures,
    CountCache,
    counting_code,
    measure_base,
    measure_method_costs,
    run_costs,
    voted_extra,
)
from peftbench.decoding import Sampling, check_decoding, decoder_name, default_tolerance, scorer_name
from peftbench.evaluation import check_label_logprobs, generate, label_logprobs, stop_tokens
from peftbench.modeling import ModelSource, load_model, load_tokenizer, model_revision, pick_device
from peftbench.plan import RunSpec, task_fingerprint
from peftbench.scoring import Scores, pass_at_ks, score
from peftbench.tasks import Row, TaskSpec
from peftbench.tasks.data import load_splits, split_rows
from peftbench.tasks.prompts import encode_example, encode_prompt, render_prompt
from peftbench.tpv.runs import keep_task_vector
from peftbench.training import train
from peftbench.utils import (
    atomic_torch_save,
    cache_key,
    cache_root,
    code_digest,
    cpu_name,
    library_versions,
    pinned_threads,
    seed_everything,
    write_once,
)


class PhaseFn(Protocol):
    """Where a run is: phase name, units done of total, and (training) that step's loss."""

    def __call__(self, name: str, done: int, total: int, loss: float | None = None) -> None: ...


DATA_SPLIT_SEED = 0


@dataclass
class TaskData:
    train: list[Row]
    val: list[Row]
    eval: list[Row]
    policy: str | None = None  # how the splits were made when the task's own were missing (`load_splits`)


@dataclass
class RunOutcome:
    status: str
    metrics: dict[str, Any] | None = None
    costs: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    error: str | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)  # the run's own (decoding); the worker adds the process's


def shot_rows(train: list[Row], shots: int) -> list[Row]:
    """A few-shot run's training rows: the first `shots` of the training rows shuffled with the fixed
    data seed, so that k shots are the first k of k' > k and every start sees the same rows. (They were
    the first rows as split, and the `tpv` split keeps a small task's train split in its file order: a
    file sorted by class gave few-shot runs one class.)"""
    rows = list(train)
    random.Random(DATA_SPLIT_SEED).shuffle(rows)
    return rows[:shots]


def cut_task_data(task: TaskSpec, cfg: BenchConfig) -> TaskData:
    """A task's rows loaded (a missing split carved where the config allows it) and cut into train,
    validation and eval under its split rule, with the fixed data seed."""
    rows, eval_rows, policy = load_splits(task, cfg.data_dir, DATA_SPLIT_SEED)
    rows = [r for r in rows if task.usable(task.prepared(r))] if task.usable else list(rows)
    train, val, test = split_rows(
        task.split_rule, rows, eval_rows, val_fraction=cfg.training.val_fraction, seed=DATA_SPLIT_SEED,
        max_train=cfg.training.max_train_samples, max_eval=cfg.evaluation.max_samples,
        label_of=task.gold_of if task.kind == "classification" else None,
        group_of=task.group_of if task.group else None)
    return TaskData(train=train, val=val, eval=test, policy=policy)


class RunContext:
    """Per-process state shared by the runs of one grid."""

    def __init__(self, cfg: BenchConfig, source: ModelSource, out_dir: Path) -> None:
        self.cfg = cfg
        self.source = source
        self.out_dir = out_dir
        self.device = pick_device(cfg.runtime.device)
        self._tasks: dict[str, TaskData] = {}
        self._encoded: dict[str, list[dict[str, list[int]]]] = {}
        self._base: BaseFigures | None = None
        self._method_costs: dict[str, dict[str, Any]] = {}
        self._pristine: torch.nn.Module | None = None

    @cached_property
    def tokenizer(self) -> Any:
        return load_tokenizer(self.source, self.cfg.model)

    def fresh_model(self) -> torch.nn.Module:
        """A pristine base model for one run: weights are read from disk once per process and
        every run gets its own copy (methods change the model they are applied to)."""
        if self._pristine is None:
            self._pristine = load_model(self.source, self.cfg.model, self.device)
        return copy.deepcopy(self._pristine).to(self.device)

    def task_data(self, task: TaskSpec) -> TaskData:
        """Train/validation/eval rows under the task's split rule (`split_rows`), the same for every seed."""
        if task.name not in self._tasks:
            self._tasks[task.name] = cut_task_data(task, self.cfg)
        return self._tasks[task.name]

    def encoded(self, task: TaskSpec, rows: list[Row]) -> list[dict[str, list[int]]]:
        """Token ids for training, computed once per (task, tokenizer, template, rows, cutoff, the code
        that renders and encodes them, library versions).

        Cached by content hash in memory and on disk (`<cache>/tokenized/`), so a grid of methods
        and seeds tokenises each task once, and a resumed grid not at all.
        """
        cutoff = self.cfg.training.cutoff_len
        code = code_digest("tasks/prompts.py", "tasks/spec.py")  # how rows become text and text ids
        key = hashlib.sha256(json.dumps(
            [tokenizer_fingerprint(self.tokenizer), task_fingerprint(task), cutoff, rows, code,
             self.provenance["versions"]], sort_keys=True, default=str
        ).encode()).hexdigest()[:24]
        if key not in self._encoded:
            path = cache_root() / "tokenized" / f"{key}.pt"
            if path.is_file():
                self._encoded[key] = torch.load(path)
            else:
                examples = [encode_example(task, r, self.tokenizer, cutoff) for r in rows]
                atomic_torch_save(path, examples)
                self._encoded[key] = examples
        return self._encoded[key]

    def training_examples(self, spec: RunSpec) -> tuple[list[dict[str, list[int]]], list[dict[str, list[int]]]]:
        """Encoded training and validation examples of a run: its task's (`shot_rows` of a few-shot
        run), followed by those of the tasks it mixes in (a multi-task prompt)."""
        train: list[dict[str, list[int]]] = []
        val: list[dict[str, list[int]]] = []
        for task in (spec.task_spec, *spec.mixed_tasks):
            data = self.task_data(task)
            rows = data.train if spec.shots is None else shot_rows(data.train, spec.shots)
            train += self.encoded(task, rows)
            val += self.encoded(task, data.val)
        return train, val

    def method_costs(self, spec: RunSpec, model: torch.nn.Module, memory_batch_size: int) -> dict[str, Any]:
        """What the run's method costs on this model under the cost protocol, measured once per grid:
        kept in memory and in `<output>/costs/<key>.json` (a cache keyed by everything the measures
        depend on — the model, the method and its arguments, the protocol, the device and threads —
        so a resumed grid or another worker reuses it, unless the measuring code changed meanwhile;
        the store itself stays the driver's). Its FLOP counts come from the user cache when another
        grid counted them (`counts`)."""
        method = {k: v for k, v in spec.identity["method"].items() if k in ("name", "args")}
        what = {"model": spec.identity["model"], "method": method,
                "costs": spec.identity["costs"], "memory_batch_size": memory_batch_size,
                "device": [self.provenance["device"], self.provenance["device_name"]],
                "threads": self.cfg.runtime.threads,
                "versions": self.provenance["versions"],
                "code": counting_code("costs/memory.py", "costs/latency.py")}
        key = cache_key(what)
        path = self.out_dir / "costs" / f"{key}.json"
        if key not in self._method_costs and not path.is_file():
            counts = self.counts({"method": method, "memory_batch_size": memory_batch_size})
            costs = measure_method_costs(model, spec.method, base=self.base_figures, cfg=self.cfg.costs,
                                         memory_batch_size=memory_batch_size, device=self.device, count=counts)
            counts.save()
            write_once(path, json.dumps({"what": what, "costs": costs}, default=str))
        if key not in self._method_costs:  # the first measurement written wins: every worker uses the same
            self._method_costs[key] = json.loads(path.read_text())["costs"]
        return dict(self._method_costs[key])

    def counts(self, what: dict[str, Any]) -> CountCache:
        """FLOP counts of the base model, or with `what` of a method on it, kept across grids in
        `<cache>/counts/`: keyed by the model's architecture and attention implementation (eager and
        SDPA count a training step's backward differently), the cost protocol, the device and its
        name (kernels differ by GPU), the library versions and the code a count depends on
        (`counting_code`: the counter, the decoder it counts through, the methods). The trained
        values, the task and the seed do not change a count."""
        model = self.fresh_model() if self._pristine is None else self._pristine
        key = cache_key({**what, "architecture": model.config.to_json_string(use_diff=False),
                       "attention": getattr(model.config, "_attn_implementation", None),
                       "costs": self.cfg.costs.model_dump(mode="json"),
                       "device": [self.device.type, self.provenance["device_name"]],
                       "versions": self.provenance["versions"], "counting": counting_code()})
        return CountCache(cache_root() / "counts" / f"{key}.json")

    def base_figures(self) -> BaseFigures:
        """FLOPs, FLOPs per token and latency of a fresh base model, measured once per process."""
        if self._base is None:
            with pinned_threads(self.cfg.runtime.threads):
                model = self.fresh_model()
                counts = self.counts({"method": None})
                self._base = measure_base(model, self.cfg.costs, model.get_input_embeddings().num_embeddings, counts)
                counts.save()
        return self._base

    @cached_property
    def provenance(self) -> dict[str, Any]:
        return {
            "versions": library_versions(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "git_commit": _git_commit(),
            "device": self.device.type,
            "device_name": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else cpu_name(),
            "threads": self.cfg.runtime.threads,
            "model_location": self.source.location,
        }


def _no_phase(name: str, done: int, total: int, loss: float | None = None) -> None:
    """Where nobody follows a run's phases."""


def execute_run(spec: RunSpec, ctx: RunContext, phase: PhaseFn | None = None) -> RunOutcome:
    """Train and evaluate one run. Exceptions propagate: the worker turns them into a failed outcome."""
    phase = phase or _no_phase
    if spec.study is not None:
        return spec.study.execute(spec, ctx, phase)
    t_start = time.perf_counter()
    cfg = ctx.cfg
    training = spec.training or cfg.training
    fixed = training.fixed_seeds
    with pinned_threads(cfg.runtime.threads):
        seed_everything(spec.seed if fixed.init is None else fixed.init)  # the method's initialisation
        task = spec.task_spec
        data = ctx.task_data(task)
        method = spec.method
        phase("load", 0, 1)
        model = method.apply(ctx.fresh_model())
        outcome = RunOutcome(status="done")
        peak = energy = None
        voters: list[dict[str, torch.Tensor]] = []  # a delayed ensemble's copies (docs/stability.md)
        if method.trains and spec.shots != 0:
            tok = ctx.tokenizer
            train_ex, val_ex = ctx.training_examples(spec)
            resumable = training.checkpoint_steps and training.mitigation.strategy == "default"  # docs/stability.md
            checkpoints = checkpoint_dir(ctx.out_dir, spec.run_id) if resumable else None
            with tempfile.TemporaryDirectory(prefix="peftbench-trainer-") as workdir, \
                    peak_memory(ctx.device, model) as peak, EnergyMeter(ctx.device) as energy:
                t0 = time.perf_counter()  # after the measurements' set-up (the heap returned, counters read)
                result = train(
                    model, tok, train_ex, val_ex, training, learning_rate=spec.learning_rate,
                    seed=spec.seed if fixed.model is None else fixed.model, device=ctx.device,
                    data_seed=spec.seed if fixed.data_order is None else fixed.data_order,
                    workdir=checkpoints or Path(workdir),
                    progress=lambda done, total_, loss: phase("train", done, total_, loss), voters=voters,
                    log_dir=tensorboard_dir(ctx.out_dir, spec.run_id),
                )
                if training.mitigation.strategy == "ensemble":
                    voters += train_ensemble(spec, ctx, training, train_ex, val_ex, Path(workdir), result)
            outcome.timings["train_s"] = time.perf_counter() - t0
            outcome.timings["train_tokens_per_s"] = (
                result.train_tokens * training.epochs / outcome.timings["train_s"]
                if not training.max_steps else None
            )
            outcome.training = asdict(result)
            if result.diverged:
                outcome.status = "diverged"
                outcome.error = (
                    f"non-finite loss or gradient at step {result.diverged_step} "
                    f"(last finite loss {result.last_finite_loss})"
                )
                outcome.timings["total_s"] = time.perf_counter() - t_start
                return outcome

        phase("save", 0, 1)
        adapter_bytes = _save_adapter(method, model, ctx.out_dir / "adapters" / spec.run_id, cfg.save_adapters)
        # every voting member is kept, so the voted score can be re-evaluated; not K whole models when
        # every parameter trains (full fine-tuning: K × the model's size on disk)
        if voters and cfg.save_adapters and not all(p.requires_grad for p in model.parameters()):
            from peftbench.deni.members import member_weights

            for k, member in enumerate(voters, start=1):
                with member_weights(model, member):
                    _save_adapter(method, model, ctx.out_dir / "adapters" / spec.run_id / f"member-{k}", True)
        keep_task_vector(method, model, spec, ctx.out_dir)

        t0 = time.perf_counter()
        scores, decoding = evaluate_members(model, task, data.eval, ctx, phase, voters) if voters else \
            evaluate(model, task, data.eval, ctx, phase)
        outcome.timings["eval_s"] = time.perf_counter() - t0
        outcome.provenance["decoding"] = decoding
        if data.policy:
            outcome.provenance["data_policy"] = data.policy

        if spec.measure_costs:
            phase("costs", 0, 1)
            t0 = time.perf_counter()
            outcome.costs = run_costs(ctx.method_costs(spec, model, cfg.costs.memory_batch_size or training.batch_size),
                                      adapter_bytes=adapter_bytes, train_peak=peak, energy=energy)
            outcome.costs["model_revision"] = model_revision(model) or ctx.source.revision
            if training.mitigation.strategy != "default":
                outcome.costs.update(mitigation_costs(outcome.costs, training.mitigation, votes=1 + len(voters)))
            outcome.timings["costs_s"] = time.perf_counter() - t0
        outcome.metrics = {
            "score": scores.primary,
            "primary_metric": task.primary_metric,
            **scores.metrics,
            "invalid_rate": scores.invalid_rate,
            "n_eval": scores.n,
            "eval_mode": decoding["mode"],
        }
        outcome.predictions = scores.records
        outcome.timings["total_s"] = time.perf_counter() - t_start
        if not math.isfinite(scores.primary):
            outcome.status, outcome.error = "failed", f"the primary metric {task.primary_metric} is not a number"
        return outcome


def tensorboard_dir(out_dir: Path, run_id: str) -> Path:
    """Where a run's TensorBoard logs go (`training.report_to`); an ensemble's other members below it."""
    return out_dir / "logs" / "tensorboard" / run_id


def checkpoint_dir(out_dir: Path, run_id: str) -> Path:
    """Where a run's resumable training checkpoints live until the run is recorded."""
    return out_dir / "checkpoints" / run_id


def evaluate(model: torch.nn.Module, task: TaskSpec, rows: list[Row], ctx: RunContext,
             phase: PhaseFn, *, check: bool = True) -> tuple[Scores, dict[str, Any]]:
    """Score the model on the eval rows: label log-likelihoods (loglik mode, classification) or greedy
    generation; first (unless `check` is off: a model already checked), the fast path is checked
    against the full-forward reference on a few prompts. Returns the scores and how they were
    decoded (for provenance)."""
    cfg = ctx.cfg.evaluation
    phase("eval", 0, len(rows))
    prompts = [render_prompt(task, r, ctx.tokenizer) for r in rows]
    checked = _check_prompts(prompts, cfg.decode_check if check else 0)
    tolerance = cfg.decode_check_tolerance or default_tolerance(model)
    if cfg.mode == "loglik" and task.kind == "classification":
        check = (check_label_logprobs(model, ctx.tokenizer, checked, task.labels, tolerance=tolerance)
                 if checked else None)
        logprobs = label_logprobs(model, ctx.tokenizer, prompts, task.labels, batch_size=cfg.batch_size)
        outputs = [task.labels[max(range(len(lp)), key=lp.__getitem__)] for lp in logprobs]
        return score(task, rows, outputs), {"mode": "loglik", "decoder": scorer_name(model), "check": check}
    max_new_tokens = cfg.max_new_tokens or task.max_new_tokens
    check = check_decoding(
        model, [encode_prompt(p, ctx.tokenizer) for p in checked], max_new_tokens=min(max_new_tokens, CHECK_TOKENS),
        eos=stop_tokens(model, ctx.tokenizer), pad_id=ctx.tokenizer.pad_token_id, tolerance=tolerance,
    ) if checked else None
    outputs = generate(
        model, ctx.tokenizer, prompts, batch_size=cfg.batch_size, max_new_tokens=max_new_tokens,
        progress=lambda done, total: phase("eval", done, total),
    )
    scores = score(task, rows, outputs)
    if cfg.code_samples > 1 and "pass_at_1" in task.metrics:  # pass@k from sampled programs, beside greedy pass@1
        samples = generate(
            model, ctx.tokenizer, prompts, batch_size=cfg.batch_size, max_new_tokens=max_new_tokens,
            progress=lambda done, total: phase("sample", done, total),
            sampling=Sampling(cfg.code_samples, cfg.temperature, cfg.top_p),
        )
        sampled, passed = pass_at_ks(task, rows, samples)
        scores.metrics.update(sampled)
        for record, outs, c in zip(scores.records, samples, passed, strict=True):
            record.update(samples=outs, samples_passed=c)
    return scores, {"mode": "generate", "decoder": decoder_name(model), "check": check}


ENSEMBLE_SEED_STRIDE = 1_000_003  # member k of an ensemble trains with seed + k × this


def train_ensemble(spec: RunSpec, ctx: RunContext, training: Any, train_ex: list[dict[str, list[int]]],
                   val_ex: list[dict[str, list[int]]], workdir: Path, result: Any) -> list[dict[str, torch.Tensor]]:
    """The ensemble baseline's other K−1 members: the run's method trained again from a fresh base model
    with other seeds (initialisation, data order and dropout all change); their trainable tensors for
    the vote. `result` (the main model's) is updated to count every member's steps.

    Member k's seed of each source of randomness is the main model's plus k × a stride, the main
    model's being the pinned one where `training.fixed_seeds` pins it: in a study that varies one
    source, the members' other sources stay the same from one run seed to the next, as the main
    model's do."""
    members = []
    fixed = training.fixed_seeds

    def seed_of(pinned: int | None, k: int) -> int:
        return (spec.seed if pinned is None else pinned) + ENSEMBLE_SEED_STRIDE * k

    for k in range(1, training.mitigation.members):
        seed_everything(seed_of(fixed.init, k))
        other = spec.method.apply(ctx.fresh_model())
        done = train(other, ctx.tokenizer, train_ex, val_ex, training, learning_rate=spec.learning_rate,
                     seed=seed_of(fixed.model, k), data_seed=seed_of(fixed.data_order, k),
                     device=ctx.device, workdir=workdir / f"member-{k}",
                     log_dir=tensorboard_dir(ctx.out_dir, spec.run_id) / f"member-{k}")
        result.model_steps += done.steps
        members.append({n: p.detach().to("cpu", copy=True) for n, p in other.named_parameters() if p.requires_grad})
    result.members = training.mitigation.members
    result.step_equivalents = result.model_steps / max(result.steps, 1)
    return members


def evaluate_members(model: torch.nn.Module, task: TaskSpec, rows: list[Row], ctx: RunContext, phase: PhaseFn,
                     voters: list[dict[str, torch.Tensor]]) -> tuple[Scores, dict[str, Any]]:
    """A delayed ensemble's prediction: every member (the main model, then each copy) evaluated with its
    own weights, then the vote per row — majority over normalised outputs with ties to the main model
    (regression: the mean of the parsed values) — scored like any output; per-member scores beside it,
    and each row's member outputs (`members`, main model first) in its predictions record."""
    from peftbench.deni.members import member_weights
    from peftbench.deni.vote import mean_vote, vote_rows

    per_member: list[Scores] = []
    decoding: dict[str, Any] = {}
    for index, member in enumerate([None, *voters]):
        with member_weights(model, member):
            scores, used = evaluate(model, task, rows, ctx, phase, check=index == 0)
        per_member.append(scores)
        decoding = decoding or used
    outputs = [[record["prediction"] for record in s.records] for s in per_member]
    if task.kind == "regression":
        voted = []
        for i in range(len(rows)):
            mean = mean_vote([s.records[i]["parsed"] if isinstance(s.records[i]["parsed"], (int, float)) else None
                              for s in per_member])
            voted.append(outputs[0][i] if mean is None else f"{mean:.6g}")
    else:
        voted = vote_rows(outputs)
    final = score(task, rows, voted)
    for i, record in enumerate(final.records):  # the vote can be recounted from the predictions file
        record["members"] = [member[i] for member in outputs]
    final.metrics["member_scores"] = [s.primary for s in per_member]
    final.metrics["member_invalid_rates"] = [s.invalid_rate for s in per_member]
    return final, {**decoding, "vote": {"members": len(per_member), "rule": "mean" if task.kind == "regression"
                                        else "majority of normalised outputs, ties to the main model"}}


def mitigation_costs(costs: dict[str, Any], mitigation: Any, *, votes: int) -> dict[str, Any]:
    """What a mitigation strategy adds to one model's costs (docs/stability.md): `votes` models are
    stored and run at inference (parameters, adapter bytes, extra FLOPs ×K), and K−1 copies of the
    trainable tensors with their gradients and AdamW states are held while training."""
    trainable = costs["trainable_params"]
    bytes_per = 4  # copies are float32 like the trainable tensors they copy
    # held while training, in units of the trainable tensors: K−1 copies with gradients and two AdamW
    # states (DENI's phases), one running average (SWA, EMA); an ensemble trains its members one by one
    copies = {"de": 4 * (mitigation.members - 1), "ni": 4 * (mitigation.members - 1),
              "deni": 4 * (mitigation.members - 1), "swa": 1, "ema": 1}.get(mitigation.strategy, 0)
    return {
        "vote_members": votes,
        "trainable_params_per_member": trainable,
        "trainable_params": trainable * votes,
        "adapter_bytes": costs["adapter_bytes"] * votes,
        "extra_tflops": voted_extra(costs["base_flops"], costs["merged_flops"], votes) / 1e12,
        "extra_tflops_unmerged": voted_extra(costs["base_flops"], costs["adapted_flops"], votes) / 1e12,
        "flops_per_token": costs["flops_per_token"] * votes,
        "peak_train_mem_one_model_gb": costs["peak_train_mem_gb"],
        "peak_train_mem_gb": costs["peak_train_mem_gb"] + copies * trainable * bytes_per / GB,
    }


# New tokens compared per checked prompt: decoding faults show in the first tokens, and the
# reference's per-step distributions are kept in memory ([tokens, vocab] each).
CHECK_TOKENS = 32


def _check_prompts(prompts: list[str], n: int) -> list[str]:
    """`n` distinct prompts spread over the length range, shortest and longest first, so the check
    runs with padding as evaluation does."""
    if n == 0 or not prompts:
        return []
    by_length = sorted(dict.fromkeys(prompts), key=lambda p: (len(p), p))
    picks = [0, len(by_length) - 1] + [round(i * (len(by_length) - 1) / (n - 1)) for i in range(1, n - 1)]
    return [by_length[i] for i in dict.fromkeys(picks)][:n]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identifies what a tokenizer does: its serialised model, chat template and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    extra = [getattr(tokenizer, "chat_template", None), tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256((body + json.dumps(extra, default=str)).encode()).hexdigest()[:16]


MODEL_CARD = "README.md"


def _save_adapter(method: Any, model: torch.nn.Module, target: Path, keep: bool) -> int:
    """Save what was trained and return its size, a cost: the files loading it reads (weights and
    config), not the model card peft writes beside them (about 5 KB of text, more than IA3's whole
    adapter on a small model, and absent for methods peft does not save). Kept under adapters/ if
    configured, card included."""
    with tempfile.TemporaryDirectory(prefix="peftbench-adapter-") as tmp:
        path = Path(tmp) / "adapter"
        method.save(model, path)
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != MODEL_CARD)
        if keep:
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
    return size


def _git_commit() -> str | None:
    """The peftbench checkout's commit, when it runs from a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
