"""Task prompt vectors of finished runs: kept beside the store, listed, read back.

Every prompt-tuning run that started from an origin (or from a prompt of an origin) keeps its
trained prompt θ_t and its TPV τ_t = θ_t − θ₀ in `<output>/tpv/vectors/<run_id>[.prompt].safetensors`
(and the origin θ₀ itself in `<output>/tpv/origins/`),
whether or not adapters are saved: the TPV studies and `peftbench tpv list` read them there.
Workers write them (as they write adapters); the file is complete before the run is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from peftbench.errors import PeftbenchError
from peftbench.tpv import vectors

VECTORS_DIR = Path("tpv") / "vectors"
ORIGINS_DIR = Path("tpv") / "origins"


def origin_path(out_dir: Path, origin: vectors.PromptVector) -> Path:
    """Where an origin is kept: named by what identifies it (model fingerprint, token count, index)."""
    return Path(out_dir) / ORIGINS_DIR / f"{origin.model}-n{origin.n_tokens}-o{origin.origin}.safetensors"


def vector_path(out_dir: Path, run_id: str) -> Path:
    """A run's TPV τ_t."""
    return Path(out_dir) / VECTORS_DIR / f"{run_id}.safetensors"


def prompt_path(out_dir: Path, run_id: str) -> Path:
    """A run's trained prompt θ_t (a start for other runs, and the prompt-similarity study)."""
    return Path(out_dir) / VECTORS_DIR / f"{run_id}.prompt.safetensors"


def keep_task_vector(method: Any, model: nn.Module, spec: Any, out_dir: Path) -> None:
    """Save the run's TPV when its method started from an origin; nothing otherwise."""
    start_of = getattr(method, "start", None)
    if start_of is None:
        return
    start = start_of(model)
    if start is None:
        return
    from peftbench.methods.prompt_tuning import trained_prompt

    theta0 = start[0]
    if not origin_path(out_dir, theta0).is_file():
        vectors.save(theta0, origin_path(out_dir, theta0))
    trained = vectors.prompt_of(trained_prompt(model), theta0)
    tau = vectors.task_vector(trained, theta0)
    meta = {"run_id": spec.run_id, "task": spec.task, "seed": spec.seed, "method": spec.method_id}
    vectors.save(trained, prompt_path(out_dir, spec.run_id), **meta)
    vectors.save(tau, vector_path(out_dir, spec.run_id), **meta)


@dataclass(frozen=True)
class KeptVector:
    """One stored TPV with what `tpv list` shows about it."""

    run_id: str
    method: str
    task: str
    study: str  # source or few_shot
    shots: int | None  # a few-shot run's training rows
    origin: int
    seed: int
    metric: str
    score: float | None  # in `metric`, as the report's TPV section shows it
    norm: float
    n_tokens: int
    path: Path


def kept_vectors(out_dir: Path, *, study_metric: str) -> list[KeptVector]:
    """Every TPV of a done run of the store in `out_dir`, by task, origin and seed, scored in the
    study's metric (`report.tpv_metric`; a task without it: its primary metric), as the report's TPV
    section scores them."""
    from peftbench.store import Store

    store = Store.open(Path(out_dir))
    kept = []
    for record in store.records("done"):
        path = vector_path(store.out_dir, record.run_id)
        if not path.is_file():
            continue
        tau, meta = vectors.load(path)
        metrics, tpv = record.metrics or {}, (record.config or {}).get("tpv") or {}
        metric = study_metric if study_metric in metrics else str(metrics.get("primary_metric", "score"))
        kept.append(KeptVector(record.run_id, record.method, record.task, tpv.get("study", "source"), tpv.get("shots"),
                               tau.origin, record.seed, metric, metrics.get(metric, metrics.get("score")),
                               tau.norm(), tau.n_tokens, path))
    return sorted(kept, key=lambda k: (k.task, k.origin, k.seed, k.method))


def load_task_vector(out_dir: Path, run_id: str) -> vectors.PromptVector:
    """The TPV a run kept; a one-line error when that run kept none."""
    path = vector_path(out_dir, run_id)
    if not path.is_file():
        raise PeftbenchError(f"run {run_id} kept no task prompt vector (expected {path})")
    tau, _ = vectors.load(path)
    return tau


def combine_runs(out_dir: Path, add: list[str], negate: list[str] = (), lam: float = 1.0) -> vectors.PromptVector:
    """θ₀ + λ·(Σ τ_add − Σ τ_negate) from the TPVs stored runs kept, as a prompt (a start for
    `init_prompt`). θ₀ comes from the first run itself (θ − τ), so no model is loaded; the
    arithmetic refuses runs of different origins, models, token counts or dtypes."""
    runs = [*add, *negate]
    if not runs:
        raise PeftbenchError("name at least one run whose task prompt vector to use")
    first = prompt_path(out_dir, runs[0])
    if not first.is_file():
        raise PeftbenchError(f"run {runs[0]} kept no prompt (expected {first})")
    theta0 = vectors.subtract(vectors.load(first)[0], load_task_vector(out_dir, runs[0]))
    tpvs = [load_task_vector(out_dir, r) for r in add] + [vectors.negate(load_task_vector(out_dir, r)) for r in negate]
    return vectors.combine(theta0, tpvs, lam)
