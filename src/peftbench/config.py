"""Typed, validated benchmark configuration: one YAML file → `BenchConfig`.

Every default lives here (not in `cfg.get(key, default)` calls elsewhere), unknown keys are
rejected, and a validation failure becomes one line naming the key and what was expected. This
module checks shapes and values only and imports no registry: method and task names are resolved
once, by the plan (`plan.resolve`), which every command goes through.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from peftbench.deni.schedule import Schedule
from peftbench.errors import PeftbenchError

TINY_MODEL = "builtin:tiny-llama"
PEFT_TUNER_LR = 1e-4  # the learning rate of a `peft:<TYPE>` tuner, which has no PEFT-Bench setting


def require_unique(values: list[Any], what: str) -> None:
    """One message for every list whose entries must differ (tasks, seeds, strategies)."""
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must be unique")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(StrictModel):
    """Which base model to fine-tune. `name` is a hub id, a local directory or `builtin:tiny-llama`."""

    name: str = TINY_MODEL
    revision: str | None = Field(default=None, description="hub commit to pin (recorded in provenance)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] = "sdpa"
    trust_remote_code: bool = False


class MitigationConfig(StrictModel):
    """Against fine-tuning instability (docs/stability.md): DENI (Pecher et al., 2024), its ablations and
    baselines, as a training option of any method. The paper's parameters are the defaults."""

    strategy: Literal["default", "de", "ni", "deni", "weight_noise", "ensemble", "swa", "ema"] = Field(
        default="default", description="default: plain training; de: delayed ensemble (K models vote); ni: noisy "
        "interpolation (one model); deni: both; weight_noise: NI's schedule, noise on the one model, no copies; "
        "ensemble: K independently seeded trainings vote; swa / ema: averaged iterates")
    # the schedule's defaults are the pure library's (`deni.schedule.Schedule`), written once
    members: Annotated[int, Field(ge=2)] = Field(default=Schedule.members,
                                                 description="K: the main model and K−1 noisy copies")
    sigma2: NonNegativeFloat = Field(default=0.15, description="noise variance, in units of each tensor's variance")
    ni_start: Annotated[float, Field(ge=0, le=1)] = Schedule.ni_start
    ni_end: Annotated[float, Field(ge=0, le=1)] = Schedule.ni_end
    de_start: Annotated[float, Field(ge=0, le=1)] = Schedule.de_start
    ni_single_steps: NonNegativeInt = Field(default=Schedule.ni_single_steps,
                                            description="single-model steps before each NI copy phase")
    ni_multi_steps: PositiveInt = Field(default=Schedule.ni_multi_steps,
                                        description="steps the K models train before they are averaged")
    swa_start: Annotated[float, Field(ge=0, lt=1)] = Field(default=0.25, description="SWA averages the iterates "
                                                           "from this share of the steps on")
    ema_decay: Annotated[float, Field(gt=0, lt=1)] = 0.999
    noise_on: str | None = Field(
        default=None, description="regular expression (re.search) over trainable parameter names: the tensors "
        "that get noise; default: every trainable tensor, or only the LM head (output embedding) when every "
        "parameter trains (full fine-tuning; the paper noises the classifier head only)")

    @model_validator(mode="after")
    def _ordered(self) -> MitigationConfig:
        if not self.ni_start <= self.ni_end <= self.de_start:
            raise ValueError(f"expected ni_start ≤ ni_end ≤ de_start (got {self.ni_start}, {self.ni_end}, "
                             f"{self.de_start})")
        if self.noise_on is not None:
            try:
                re.compile(self.noise_on)
            except re.error as exc:
                raise ValueError(f"noise_on: {self.noise_on!r} is not a regular expression ({exc})") from None
        return self

    @property
    def votes(self) -> int:
        """Models that are stored and vote at inference: K for the ensembles (DE, DENI, Ensemble), 1 else."""
        return self.members if self.strategy in ("de", "deni", "ensemble") else 1

    def identity(self) -> dict[str, Any]:
        """The keys that change this strategy's results (an ensemble does not depend on the NI schedule),
        so that a strategy's runs keep their ids whatever the unused keys say."""
        keys = _STRATEGY_KEYS[self.strategy]
        if self.noise_on is not None and self.strategy in _NOISY:
            keys += ("noise_on",)
        revision = {"revision": NOISY_REVISION} if self.strategy in _NOISY else {}
        return {"strategy": self.strategy, **{k: getattr(self, k) for k in keys}, **revision}


_NI_KEYS = ("sigma2", "ni_start", "ni_end", "ni_single_steps", "ni_multi_steps")
_NOISY = frozenset({"de", "ni", "deni", "weight_noise"})
NOISY_REVISION = 2
"""How the noisy strategies train, in their runs' ids. 2: the copies step with the learning rate of
the main model's step and its weight decay per tensor (before: the next step's rate, and decay on
biases and norms too), and no NI cycle makes copies at or after ni_end·T (before: a cycle whose
single-model steps began earlier still did)."""
_STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "default": (), "ensemble": ("members",), "swa": ("swa_start",), "ema": ("ema_decay",),
    "weight_noise": _NI_KEYS, "ni": ("members", *_NI_KEYS), "de": ("members", "sigma2", "de_start"),
    "deni": ("members", *_NI_KEYS, "de_start"),
}


class MethodConfig(StrictModel):
    """One method of the grid: a registry name (or `peft:<TYPE>`) with optional overrides."""

    name: str
    label: str | None = Field(default=None, description="id in the store and reports (default: name)")
    learning_rate: PositiveFloat | None = Field(
        default=None, description=f"default: the method's own (a peft:<TYPE> tuner: {PEFT_TUNER_LR:g})")
    args: dict[str, Any] = Field(default_factory=dict)
    mitigation: MitigationConfig | None = Field(
        default=None, description="this method's instability mitigation instead of training.mitigation, so one grid "
        "compares strategies (give each a label)")

    @property
    def id(self) -> str:
        return self.label or self.name


AUTO_SPLIT = "auto"


class TaskConfig(StrictModel):
    """One task of the grid: a task name (the package's, or one in `tasks_dir`) with optional data
    overrides (local files may name their splits differently; a hub revision can be pinned per task).
    Names are looked up once, by the plan (`plan.resolve`)."""

    name: str
    train_split: str | None = Field(default=None, description="the split to train on instead of the task's own; "
                                    "auto: the task's own, or carved from the eval split where it is missing")
    eval_split: str | None = Field(default=None, description="the split to test on instead of the task's own; "
                                   "auto: the task's own, or carved from the train split where it is missing")
    revision: str | None = Field(default=None, description="hub revision (commit) instead of the task's own")
    split_rule: Literal["fraction", "tpv", "deni"] | None = Field(
        default=None, description="how train/validation/test are cut instead of the task's own (docs/tasks.md)")

    @model_validator(mode="after")
    def _one_auto(self) -> TaskConfig:
        if self.train_split == AUTO_SPLIT and self.eval_split == AUTO_SPLIT:
            raise ValueError("train_split and eval_split cannot both be auto (one split must exist to carve from)")
        return self


class FixedSeeds(StrictModel):
    """Pin a source of randomness so that the run seed varies only the others (DENI's protocol varies
    initialisation, data order and model randomness one at a time). None: the run's seed."""

    init: int | None = Field(default=None, description="the method's initialisation (LoRA's A, a soft prompt)")
    data_order: int | None = Field(default=None, description="the order of the training batches")
    model: int | None = Field(default=None, description="dropout and other randomness while training")

    def pinned(self) -> bool:
        return any(v is not None for v in (self.init, self.data_order, self.model))


class TrainingConfig(StrictModel):
    """Shared fine-tuning protocol; PEFT-Bench's settings are the defaults."""

    epochs: PositiveFloat = 10
    max_steps: PositiveInt | None = Field(default=None, description="overrides epochs when set")
    batch_size: PositiveInt = 4
    gradient_accumulation_steps: PositiveInt = 1
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    weight_decay: NonNegativeFloat = 1e-5
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    max_grad_norm: PositiveFloat = 1.0
    cutoff_len: PositiveInt = 2048
    max_train_samples: PositiveInt | None = None
    checkpoint_steps: PositiveInt | None = Field(
        default=None, description="save a resumable checkpoint every N steps (under <output>/checkpoints/); "
        "an interrupted run resumes from it. Not part of a run's identity: it does not change results")
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.1
    eval_steps: PositiveInt | None = Field(default=None, description="validation interval; default per epoch")
    select_best: bool = Field(default=True, description="restore the weights of lowest validation loss")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    fixed_seeds: FixedSeeds = Field(default_factory=FixedSeeds, description="sources of randomness kept fixed "
                                    "across the grid's seeds (docs/stability.md)")
    mitigation: MitigationConfig = Field(default_factory=MitigationConfig, description="instability mitigation "
                                         "(DENI and its ablations); a run with one keeps its final weights")
    report_to: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="the Trainer's loggers, off by default: tensorboard writes under "
        "<output>/logs/tensorboard/<run> (an ensemble's other members in <run>/member-<k>); wandb runs offline "
        "unless WANDB_MODE says otherwise. Not part of a run's identity")


class EvaluationConfig(StrictModel):
    mode: Literal["generate", "loglik"] = Field(
        default="generate",
        description="loglik: classification and multiple-choice tasks pick the label of highest summed "
        "log-probability (no invalid outputs); other tasks still generate",
    )
    batch_size: PositiveInt = 16
    max_new_tokens: PositiveInt | None = Field(default=None, description="default: the task's own")
    max_samples: PositiveInt | None = Field(
        default=None, description="evaluate the first N test rows (all of them: none); a task scored by group "
        "(MultiRC) keeps every row of the questions those N rows belong to")
    code_samples: PositiveInt = Field(
        default=1, description="execution-scored code tasks (APPS): sampled programs per problem on top of the "
        "greedy one, for pass@k (k = 1, 5, 10, ... up to this); 1: greedy pass@1 only, as PEFT-Bench")
    temperature: PositiveFloat = Field(default=0.8, description="sampling temperature for code_samples")
    top_p: Annotated[float, Field(gt=0, le=1)] = Field(default=0.95, description="nucleus sampling for code_samples")
    decode_check: NonNegativeInt = Field(
        default=2, description="eval prompts (shortest and longest first) decoded by the fast path and by a "
        "full-forward reference before a run is scored; a disagreement fails the run (0: off)")
    decode_check_tolerance: PositiveFloat | None = Field(
        default=None, description="largest total-variation distance between the two next-token distributions "
        "(loglik: nats per label token); default 1e-4 for float32, 0.2 for bf16/fp16 models")


class CostsConfig(StrictModel):
    """The cost protocol (docs/costs.md). FLOPs: one forward pass of batch × seq_len tokens
    (PEFT-Bench's 1 × 512). Memory: a fixed AdamW measurement on batch × memory_seq_len tokens."""

    flops_batch_size: PositiveInt = 1
    flops_seq_len: PositiveInt = 512
    decode_tokens: PositiveInt = Field(default=8, description="generated tokens for FLOPs/latency per token")
    memory_batch_size: PositiveInt | None = Field(default=None, description="default: training.batch_size")
    memory_seq_len: PositiveInt = 512
    memory_steps: NonNegativeInt = Field(default=3, description="optimiser steps measured (0: skip)")
    latency: bool = True
    latency_repeats: PositiveInt = 3


class PSCPConfig(StrictModel):
    """Constants of the PSCP score (PEFT-Bench; β = 2 is the current default, v1 of the paper used 1)."""

    c_p: PositiveFloat = 5e8
    c_f: PositiveFloat = 10.0
    c_m: PositiveFloat = 94.0
    beta_p: NonNegativeFloat = 2.0
    beta_f: NonNegativeFloat = 2.0
    beta_m: NonNegativeFloat = 2.0


class RuntimeConfig(StrictModel):
    """Where and how a run executes; recorded as provenance, not part of a run's identity."""

    threads: PositiveInt = Field(default=1, description="torch threads per run (results depend on it)")
    workers: PositiveInt = Field(default=1, description="local worker processes running runs in parallel")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class RayConfig(StrictModel):
    """Each run is one Ray task with these resources (docs/cluster.md)."""

    address: str | None = Field(default=None, description="cluster to join ('auto', 'ray://host:10001'); "
                                "none: start a local Ray on this machine")
    local_cpus: PositiveInt | None = Field(default=None, description="CPUs of a locally started Ray "
                                           "(default: all of this machine's)")
    num_cpus: PositiveFloat = Field(default=1, description="CPUs per run")
    num_gpus: NonNegativeFloat = Field(default=0, description="GPUs per run")
    memory_gb: PositiveFloat | None = Field(default=None, description="host memory reserved per run")


class SlurmConfig(StrictModel):
    """submitit job arrays; where `sbatch` is missing, submitit's local executor runs the same jobs."""

    folder: Path | None = Field(default=None, description="submitit logs and job files (default: <output>/slurm)")
    partition: str | None = None
    time_min: PositiveInt = Field(default=24 * 60, description="wall-clock limit per job, minutes")
    gpus_per_job: NonNegativeInt = 1
    cpus_per_job: PositiveInt = 8
    mem_gb: PositiveFloat | None = None
    array_parallelism: PositiveInt = Field(default=32, description="jobs of the array running at once")
    runs_per_job: PositiveInt = Field(default=1, description="runs one job executes on one loaded model")
    setup: list[str] = Field(default_factory=list, description="shell lines run first in each job "
                             "(module load, source .venv/bin/activate)")
    sbatch: dict[str, Any] = Field(default_factory=dict, description="extra sbatch options, e.g. {account: x}")


class ExecutorConfig(StrictModel):
    """Where runs execute. The driver process alone writes the store, whatever the executor."""

    kind: Literal["local", "ray", "slurm"] = "local"
    max_retries: NonNegativeInt = Field(default=2, description="resubmissions of a run whose worker died")
    claim_timeout_s: PositiveInt = Field(default=600, description="a claim not renewed for this long is "
                                         "taken over by another peftbench process")
    ray: RayConfig = Field(default_factory=RayConfig)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)

    @model_validator(mode="before")
    @classmethod
    def _kind_shorthand(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


LAMBDA_GRID = tuple(round(0.05 * i, 2) for i in range(21))
FEW_SHOTS = (0, 5, 10, 25, 50, 100, 250, 500, 750, 1000)


class TPVGroup(StrictModel):
    """Few-shot transfer: TPVs of the `sources` (trained on their full data) start prompt tuning on
    each of the `targets` with a few shots."""

    sources: list[str] = Field(min_length=2, max_length=2)
    targets: list[str] = Field(min_length=1)


class TPVFewShotConfig(StrictModel):
    """Few-shot initialisation (the paper's section 5.4): the four starts of prompt tuning on a target."""

    groups: list[TPVGroup] = Field(min_length=1)
    shots: list[NonNegativeInt] = Field(default_factory=lambda: list(FEW_SHOTS), min_length=1)
    steps: PositiveInt = Field(default=1000, description="optimisation steps of every few-shot run")
    origins: PositiveInt = Field(default=3, description="the first N origins of the study")
    starts: list[Literal["random", "single", "sum", "multitask"]] = Field(
        default_factory=lambda: ["random", "single", "sum", "multitask"], min_length=1,
        description="random: θ₀; single: θ₀ + τ_A; sum: θ₀ + τ_A + τ_B; multitask: a prompt trained on A ∪ B")
    batch_sizes: list[tuple[NonNegativeInt, PositiveInt]] = Field(
        default_factory=lambda: [(25, 2), (250, 8), (1_000_000_000, 16)],
        description="(up to this many shots, batch size) pairs, in increasing order of shots")

    def batch_size(self, shots: int) -> int:
        return next((b for limit, b in self.batch_sizes if shots <= limit), self.batch_sizes[-1][1])


class TPVConfig(StrictModel):
    """Task Prompt Vector studies (docs/tpv.md): prompt tuning from each origin on each task keeps a
    TPV; the studies combine, transplant, compare and reuse them."""

    tasks: list[str] = Field(min_length=1, description="tasks (from `tasks:`) that get a TPV from every origin")
    origins: PositiveInt = Field(default=10, description="origins 0 … N−1")
    tokens: PositiveInt = Field(default=100, description="virtual tokens of every prompt")
    learning_rate: PositiveFloat = 0.3
    seeds: list[int] | None = Field(default=None, description="default: the config's seeds")
    combinations: list[list[str]] = Field(default_factory=list, description="task sets whose TPVs are summed")
    lambdas: list[Annotated[float, Field(ge=0)]] = Field(default_factory=lambda: list(LAMBDA_GRID), min_length=1)
    cross_origin: bool = Field(default=True, description="TPVs of origin j on origin i's prompt, all pairs")
    similarity: bool = Field(default=True, description="cosine of prompts and of TPVs across origins and tasks")
    metric: str = Field(default="accuracy", description="the metric λ is chosen by and the studies report (the "
                        "paper: exact match on the label); a task without it uses its primary metric")
    few_shot: TPVFewShotConfig | None = None

    @model_validator(mode="after")
    def _known_tasks(self) -> TPVConfig:
        named = [("combinations", c) for c in self.combinations]
        if self.few_shot:
            named += [(f"few_shot.groups[{i}].sources", g.sources) for i, g in enumerate(self.few_shot.groups)]
        for where, names in named:
            unknown = [n for n in names if n not in self.tasks]
            if unknown:
                raise ValueError(f"{where}: {', '.join(unknown)} not in tpv.tasks (a TPV is needed for each)")
            if len(set(names)) != len(names) or len(names) < 2:
                raise ValueError(f"{where}: expected two or more distinct tasks, got {names}")
        require_unique(self.tasks, "tpv.tasks")
        if self.few_shot and self.few_shot.origins > self.origins:
            raise ValueError(f"few_shot.origins ({self.few_shot.origins}) exceeds origins ({self.origins})")
        return self


STRATEGIES = get_args(MitigationConfig.model_fields["strategy"].annotation)
VARIED = ("all", "init", "data_order", "model")


class StabilityConfig(StrictModel):
    """A stability study in two keys (docs/stability.md): every method of the grid once per strategy
    (labels `<method>-<strategy>`, the plain one keeps its label; the strategies' parameters come from
    `training.mitigation`), and which source of randomness the seeds vary (the others pinned to the
    first seed, as `training.fixed_seeds`)."""

    strategies: list[Literal[STRATEGIES]] = Field(min_length=1)  # type: ignore[valid-type]
    vary: Literal[VARIED] = Field(default="all", description="all: each seed changes initialisation, "  # type: ignore[valid-type]
                                  "data order and model randomness together; else only the named one")

    @field_validator("strategies")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        require_unique(value, "strategies")
        return value


def as_entry(item: Any) -> Any:
    """A method or task given by name alone (`lora`) as the mapping it stands for (`{name: lora}`)."""
    return {"name": item} if isinstance(item, str) else item


def expand_stability(data: dict[str, Any], study: StabilityConfig) -> dict[str, Any]:
    """The config with its `stability:` section written out as method labels and fixed seeds — the
    same runs (and run ids) as the hand-written grid. Raw data in, raw data out (the section emptied),
    so that a dumped config validates again unchanged."""
    raw = data.get("methods") or []
    if not isinstance(raw, list) or not all(isinstance(m, (str, dict)) for m in raw):
        return data  # the methods' own validation reports what is wrong with them
    methods = [as_entry(m) for m in raw]
    own = [i for i, m in enumerate(methods) if m.get("mitigation") is not None]
    if own:
        raise ValueError(f"key 'methods[{own[0]}].mitigation': the stability section gives every method its "
                         "strategies; remove one of the two")
    training = dict(data.get("training") or {})
    shared = dict(training.get("mitigation") or {})
    if shared.pop("strategy", "default") != "default":
        raise ValueError("key 'training.mitigation.strategy': the stability section sets the strategies; keep only "
                         "their shared parameters under training.mitigation")
    expanded = []
    for m in methods:
        base = m.get("label") or m.get("name")
        for strategy in study.strategies:
            if strategy == "default":
                expanded.append(m)
            else:
                expanded.append({**m, "label": f"{base}-{strategy}", "mitigation": {**shared, "strategy": strategy}})
    if study.vary != "all":
        if training.get("fixed_seeds"):
            raise ValueError("key 'stability.vary': training.fixed_seeds is set too; use one of the two")
        first = (data.get("seeds") or [0])[0]
        training["fixed_seeds"] = {k: first for k in ("init", "data_order", "model") if k != study.vary}
    return {**data, "stability": None, "methods": expanded, **({"training": training} if training else {})}


class BenchConfig(StrictModel):
    name: str = "peftbench"
    model: ModelConfig = Field(default_factory=ModelConfig)
    methods: list[MethodConfig] = Field(default_factory=list, description="at least one, unless tpv is set")
    tasks: list[TaskConfig] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    data_dir: Path | None = Field(default=None, description="a local mirror of hub tasks: "
                                  "<data_dir>/<task>/<split>.jsonl in the hub's row schema")
    tasks_dir: list[Path] = Field(default_factory=list, description="directories of your own task files (*.yaml)")
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    pscp: PSCPConfig = Field(default_factory=PSCPConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    output_dir: Path = Path("runs/peftbench")
    save_adapters: bool = True
    report: bool = Field(default=True, description="write the report files when a grid has run (`--no-report`)")
    tpv: TPVConfig | None = None
    stability: StabilityConfig | None = Field(default=None, description="every method once per mitigation "
                                              "strategy (docs/stability.md); written out into methods")
    _written_methods: list[int] | None = PrivateAttr(default=None)  # methods[i] → its index as written

    @model_validator(mode="wrap")
    @classmethod
    def _stability_section(cls, value: Any, handler: ModelWrapValidatorHandler[BenchConfig]) -> BenchConfig:
        if not isinstance(value, dict) or value.get("stability") is None:
            return handler(value)
        try:
            study = StabilityConfig.model_validate(value["stability"])
            for method in value.get("methods") or []:
                MethodConfig.model_validate(as_entry(method))
        except ValidationError:
            return handler(value)  # the fields' own validation reports it, under the keys as written
        cfg = handler(expand_stability(value, study))
        cfg._written_methods = [i for i in range(len(value["methods"])) for _ in study.strategies]
        return cfg

    def method_key(self, i: int) -> str:
        """The config key of `methods[i]` as the user wrote it: a stability section writes each method
        out once per strategy, and an error about a copy names the method written."""
        return f"methods[{self._written_methods[i] if self._written_methods else i}]"

    @model_validator(mode="after")
    def _something_to_run(self) -> BenchConfig:
        if not self.methods and self.tpv is None:
            raise ValueError("key 'methods': required key is missing (at least one method, unless the config "
                             "has a tpv: section)")
        if self.tpv is not None:
            names = [t.name for t in self.tasks]
            groups = self.tpv.few_shot.groups if self.tpv.few_shot else []
            used = [("tpv.tasks", n) for n in self.tpv.tasks] + [
                (f"tpv.few_shot.groups[{i}].targets", n) for i, g in enumerate(groups) for n in g.targets]
            for where, name in used:
                if name not in names:
                    raise ValueError(f"{where}: {name!r} is not one of the config's tasks ({', '.join(names)})")
        return self

    @field_validator("methods", mode="before")
    @classmethod
    def _names_to_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [as_entry(v) for v in value]
        return value

    @field_validator("methods")
    @classmethod
    def _unique_labels(cls, value: list[MethodConfig]) -> list[MethodConfig]:
        ids = [m.id for m in value]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"method ids must be unique, repeated: {', '.join(dupes)} (set a distinct label)")
        return value

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_names_to_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [as_entry(v) for v in value]
        return value

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, value: list[TaskConfig]) -> list[TaskConfig]:
        require_unique([t.name for t in value], "tasks")
        return value

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        require_unique(value, "seeds")
        return value

    @field_validator("tasks_dir", mode="before")
    @classmethod
    def _one_dir(cls, value: Any) -> Any:
        return [value] if isinstance(value, (str, Path)) else value


# --- loading -------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` as a float (YAML 1.1 insists on `1.0e-5`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_yaml(text: str, *, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PeftbenchError(f"{source}: invalid YAML{where}: {problem}") from None


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b.c=value` in place; the value is parsed as YAML (numbers, lists, booleans)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise PeftbenchError(f"--set {assignment!r}: expected key=value, e.g. training.max_steps=100")
    parts = key.split(".")
    if not all(part.strip() for part in parts):
        raise PeftbenchError(f"--set {assignment!r}: the key has an empty part; expected a dotted key like "
                             f"training.max_steps")
    value = parse_yaml(raw, source=f"--set {key}") if raw.strip() else None
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise PeftbenchError(f"--set {key}: '{where}' must be an index below {len(node)}")
            idx = int(part)
            if isinstance(node[idx], str) and not last:
                node[idx] = {"name": node[idx]}
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise PeftbenchError(f"--set {key}: '{'.'.join(parts[:i])}' is not a mapping or list")


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> BenchConfig:
    """Read, override and validate a config; raises `PeftbenchError` with a one-line message."""
    data: Any = {}
    source = "config"
    if path is not None:
        p = Path(path)
        source = str(p)
        if not p.is_file():
            raise PeftbenchError(f"config file {p} does not exist")
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PeftbenchError(f"config file {p}: cannot be read as UTF-8 text ({exc})") from None
        data = parse_yaml(text, source=source)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PeftbenchError(f"{source}: the top level must be a mapping of keys, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment)
    return validate_config(data, source=source)


def validate_config(data: dict[str, Any], *, source: str = "config") -> BenchConfig:
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise PeftbenchError(f"{source}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The first error as `key 'a.b[0].c': what was expected (got …)`, plus a count of the others."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = tuple(first["loc"])
    key = _dotted(loc)
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(BenchConfig, loc[:-1])
        what = f"unknown key (expected one of: {', '.join(allowed)})" if allowed else "unknown key"
    elif kind == "missing":
        what = "required key is missing"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        got = first.get("input")
        shown = "" if isinstance(got, (dict, list)) or kind == "value_error" else f" (got {got!r})"
        what = f"{msg}{shown}"
    more = f" [and {len(errors) - 1} more error(s)]" if len(errors) > 1 else ""
    return f"key '{key}': {what}{more}" if loc else f"{what}{more}"


_VALIDATOR_STEP = re.compile(r"function-(after|before|wrap|plain)\[")


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _VALIDATOR_STEP.match(str(part)):  # pydantic's name for a validator, not a key of the user's
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        current = _inner_model(current.model_fields[part].annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    """The BaseModel inside `X`, `list[X]`, `X | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, Union) or type(annotation).__name__ == "UnionType":
        for arg in get_args(annotation):
            found = _inner_model(arg)
            if found is not None:
                return found
    return None
