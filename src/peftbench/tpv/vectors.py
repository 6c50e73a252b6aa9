"""Soft prompts and task prompt vectors (Belanec et al., 2025) as values, and their arithmetic.

A prompt is an `[n_tokens, hidden]` matrix of virtual-token embeddings; a task prompt vector (TPV)
is τ_t = θ_t − θ₀, a trained prompt minus the origin prompt θ₀ it was trained from. Each value
carries where it belongs — the model (fingerprint of its input embeddings), the origin index, the
prompt dtype — and the operations refuse to mix values of different origins, models, token counts
or dtypes: such a sum is defined numerically but means nothing (the paper's TPVs combine only within
one origin). Moving a TPV onto another origin is the explicit `rebase`, the cross-origin study.

Values are kept in float64 whatever the prompt's dtype: the difference of two float32 (or bf16)
prompts is then exact, so θ₀ + τ casts back to exactly θ_t.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from peftbench.errors import PeftbenchError

Kind = Literal["prompt", "tpv"]
ORIGIN_ID_RANGE = 5000  # origins draw token ids from a permutation of 0…4999 (capped at the vocabulary)


@dataclass(frozen=True)
class PromptVector:
    """A prompt (`kind="prompt"`) or a task prompt vector (`kind="tpv"`) of one origin and model."""

    values: torch.Tensor  # float64, [n_tokens, hidden]
    kind: Kind
    model: str  # fingerprint of the model's input embeddings
    origin: int
    dtype: str  # the prompt's own dtype ("float32", "bfloat16", ...): what it is cast to for use

    @property
    def n_tokens(self) -> int:
        return int(self.values.shape[0])

    def norm(self) -> float:
        return float(self.values.norm())

    def as_prompt_tensor(self) -> torch.Tensor:
        """The prompt in its own dtype, ready to load into a prompt encoder."""
        if self.kind != "prompt":
            raise PeftbenchError("a task prompt vector is not a prompt: add it to an origin first (θ₀ + τ)")
        return self.values.to(getattr(torch, self.dtype))

    def describe(self) -> str:
        return f"{self.kind} of origin {self.origin} ({self.n_tokens} tokens, {self.dtype}, model {self.model})"


def model_fingerprint(embeddings: torch.Tensor) -> str:
    """Identifies a model by its input-embedding matrix: origins are rows of it, so two models with
    the same embeddings share origins and any other difference does not matter to them."""
    data = embeddings.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes() + json.dumps(list(data.shape)).encode()).hexdigest()[:16]


def origin_token_ids(index: int, n_tokens: int, vocab_size: int) -> list[int]:
    """The token ids of origin `index`: a permutation of 0…min(5000, vocab)−1 seeded by the index
    (further permutations follow when more tokens are asked for than ids exist)."""
    if index < 0:
        raise PeftbenchError(f"origin index must be ≥ 0 (got {index})")
    cap = min(ORIGIN_ID_RANGE, vocab_size)
    generator = torch.Generator().manual_seed(index)
    ids: list[int] = []
    while len(ids) < n_tokens:
        ids += torch.randperm(cap, generator=generator).tolist()
    return ids[:n_tokens]


def origin(embeddings: torch.Tensor, index: int, n_tokens: int) -> PromptVector:
    """θ₀ of origin `index`: input-embedding rows at the origin's token ids."""
    weight = embeddings.detach()
    ids = torch.tensor(origin_token_ids(index, n_tokens, weight.shape[0]), device=weight.device)
    return PromptVector(weight[ids].to("cpu", torch.float64).clone(), "prompt", model_fingerprint(weight), index,
                        str(weight.dtype).removeprefix("torch."))


def prompt_of(values: torch.Tensor, start: PromptVector) -> PromptVector:
    """A trained prompt (any dtype, any device) as a value of `start`'s origin and model."""
    if tuple(values.shape) != tuple(start.values.shape):
        raise PeftbenchError(f"a prompt of shape {list(values.shape)} cannot come from {start.describe()}")
    return replace(start, values=values.detach().to("cpu", torch.float64).clone(), kind="prompt")


def _check(a: PromptVector, b: PromptVector, op: str) -> None:
    for field, what in (("model", "models"), ("origin", "origins"), ("n_tokens", "token counts"),
                        ("dtype", "dtypes")):
        if getattr(a, field) != getattr(b, field):
            raise PeftbenchError(f"cannot {op} a {a.kind} of {field} {getattr(a, field)} and a {b.kind} of {field} "
                                 f"{getattr(b, field)}: task prompt vectors combine only within one origin (different "
                                 f"{what})")


def add(a: PromptVector, b: PromptVector) -> PromptVector:
    """τ + τ → τ; θ + τ (either order) → θ. Two prompts do not add."""
    _check(a, b, "add")
    if a.kind == b.kind == "prompt":
        raise PeftbenchError("cannot add two prompts: add task prompt vectors to a prompt (θ₀ + τ)")
    kind: Kind = "prompt" if "prompt" in (a.kind, b.kind) else "tpv"
    return replace(a, values=a.values + b.values, kind=kind)


def subtract(a: PromptVector, b: PromptVector) -> PromptVector:
    """θ − θ₀ → τ (a task prompt vector); τ − τ → τ; θ − τ → θ."""
    _check(a, b, "subtract")
    if a.kind == "tpv" and b.kind == "prompt":
        raise PeftbenchError("cannot subtract a prompt from a task prompt vector")
    kind: Kind = "tpv" if a.kind == b.kind else "prompt"
    return replace(a, values=a.values - b.values, kind=kind)


def scale(a: PromptVector, factor: float) -> PromptVector:
    """λ·τ. Scaling a prompt is refused: it would scale its origin too."""
    if a.kind != "tpv":
        raise PeftbenchError("only task prompt vectors are scaled (scale τ, then add it to θ₀)")
    return replace(a, values=a.values * float(factor))


def negate(a: PromptVector) -> PromptVector:
    """−τ: the negation the paper uses to remove a task."""
    return scale(a, -1.0)


def task_vector(trained: PromptVector, start: PromptVector) -> PromptVector:
    """τ_t = θ_t − θ₀."""
    if trained.kind != "prompt" or start.kind != "prompt":
        raise PeftbenchError("a task prompt vector is a trained prompt minus its origin prompt")
    return subtract(trained, start)


def combine(start: PromptVector, tpvs: Sequence[PromptVector], lam: float = 1.0) -> PromptVector:
    """θ = θ₀ + λ·Σ τ_i (the paper's combination; λ = 1 for a single task)."""
    if not tpvs:
        raise PeftbenchError("a combination needs at least one task prompt vector")
    total = tpvs[0]
    for tpv in tpvs[1:]:
        total = add(total, tpv)
    return add(start, scale(total, lam))


def rebase(tpv: PromptVector, start: PromptVector) -> PromptVector:
    """θ₀ⁱ + τʲ: a TPV of origin j added to another origin's prompt (the cross-origin study). Model,
    token count and dtype must still match; the result belongs to the new origin."""
    if tpv.kind != "tpv" or start.kind != "prompt":
        raise PeftbenchError("rebase adds a task prompt vector to an origin prompt")
    return add(start, replace(tpv, origin=start.origin))


def cosine(a: PromptVector, b: PromptVector) -> float:
    """Cosine similarity after averaging over the token axis (the paper's measure). Vectors of
    different origins may be compared (that is the study); different models or shapes may not."""
    if a.model != b.model or a.values.shape != b.values.shape:
        raise PeftbenchError(f"cannot compare {a.describe()} with {b.describe()}")
    x, y = a.values.mean(0), b.values.mean(0)
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0))


# --- files -------------------------------------------------------------------------------------------


def save(vector: PromptVector, path: Path, **meta: str | int | float) -> None:
    """safetensors (the float64 values; metadata in its header) plus the same metadata as JSON beside it."""
    from safetensors.torch import save_file

    header = {"kind": vector.kind, "model": vector.model, "origin": vector.origin, "dtype": vector.dtype,
              "n_tokens": vector.n_tokens, "norm": vector.norm(), **meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"values": vector.values.contiguous()}, str(tmp), metadata={k: json.dumps(v) for k, v in header.items()})
    tmp.replace(path)
    json_path = path.with_suffix(".json")
    json_tmp = json_path.with_name(json_path.name + ".tmp")
    json_tmp.write_text(json.dumps(header, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    json_tmp.replace(json_path)


def load(path: Path) -> tuple[PromptVector, dict[str, object]]:
    """A vector saved by `save`, and its metadata; a missing or foreign file is a one-line error."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise PeftbenchError(f"{path}: no such prompt file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            values = f.get_tensor("values")
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise PeftbenchError(f"{path}: not a peftbench prompt file ({str(exc).splitlines()[0]})") from None
    missing = {"kind", "model", "origin", "dtype"} - set(meta)
    if missing or meta.get("kind") not in ("prompt", "tpv"):
        raise PeftbenchError(f"{path}: not a peftbench prompt file (metadata lacks {sorted(missing) or 'kind'})")
    vector = PromptVector(values.to(torch.float64), meta["kind"], str(meta["model"]), int(meta["origin"]),
                          str(meta["dtype"]))
    return vector, meta


def file_digest(path: Path) -> str:
    """What a run started from a prompt file is identified by: a hash of the values and of what they
    belong to (not of the file's bytes: safetensors writes its metadata in no fixed order)."""
    vector, _ = load(path)
    header = json.dumps([vector.kind, vector.model, vector.origin, vector.dtype, list(vector.values.shape)])
    return hashlib.sha256(header.encode() + vector.values.contiguous().numpy().tobytes()).hexdigest()[:16]
