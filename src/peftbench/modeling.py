"""Resolving and loading the base model and tokenizer.

`resolve_model` runs before anything is written: it turns `model.name` into a loadable location
(the built-in tiny model, a local directory, or a hub id at a pinned revision) and says clearly
why not when it cannot. Weights are loaded from safetensors only and remote code stays off
unless the config turns it on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftbench.config import TINY_MODEL, ModelConfig
from peftbench.errors import PeftbenchError
from peftbench.hub import hub_reachable

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """Where the model loads from; `location` is a directory or a hub id."""

    name: str
    location: str
    revision: str | None
    is_local: bool


class ModelUnavailable(PeftbenchError):
    """A hub model that is neither cached nor downloadable now: `validate` can still check the rest."""


def resolve_model(cfg: ModelConfig) -> ModelSource:
    if cfg.name == TINY_MODEL:
        from peftbench.tiny import tiny_model_dir

        return ModelSource(cfg.name, str(tiny_model_dir()), None, True)
    path = Path(cfg.name).expanduser()
    if path.exists():
        _check_model_dir(path, cfg.name)
        return ModelSource(cfg.name, str(path.resolve()), None, True)
    if not _HUB_ID.match(cfg.name):
        raise PeftbenchError(f"model.name: local model path {cfg.name!r} does not exist")
    cached = _cached_snapshot(cfg.name, cfg.revision)
    if cached is not None:
        return ModelSource(cfg.name, str(cached), cfg.revision, True)
    if not hub_reachable():
        rev = f" --revision {cfg.revision}" if cfg.revision else ""
        raise ModelUnavailable(
            f"model.name: the weights of {cfg.name!r} are not available: not in the local Hugging Face cache and "
            f"the hub is unreachable (download them with `hf download {cfg.name}{rev}`, or set model.name "
            f"to a local directory)"
        )
    return ModelSource(cfg.name, cfg.name, cfg.revision, False)


def _check_model_dir(path: Path, name: str) -> None:
    if not path.is_dir() or not (path / "config.json").is_file():
        raise PeftbenchError(f"model.name: {name!r} is not a model directory (no config.json)")
    if not any(path.glob("*.safetensors")):
        raise PeftbenchError(f"model.name: {name!r} has no *.safetensors weights (peftbench loads only safetensors)")


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not cached (the hub library raises several types for that)
        return None
    return path if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else None


def pick_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise PeftbenchError("runtime.device: 'cuda' was requested but no CUDA device is available")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def pick_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """`auto`: bfloat16 on a GPU that supports it (PEFT-Bench trains in bf16), float32 otherwise."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(source: ModelSource, cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        source.location, revision=source.revision, trust_remote_code=cfg.trust_remote_code
    )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: ModelSource, cfg: ModelConfig, device: torch.device) -> Any:
    """The base model in eval mode, in the dtype for `device` but kept on the CPU: callers copy it
    to the device per run, so the weights are read from disk once per process."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.location,
            revision=source.revision,
            dtype=pick_dtype(cfg, device),
            attn_implementation=cfg.attn_implementation,
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
        )
    except (OSError, ValueError) as exc:
        raise PeftbenchError(f"model.name: cannot load {source.name!r}: {str(exc).splitlines()[0]}") from None
    # Named as the config names it (a hub id, the built-in's name, the path as written), not by the
    # directory it loaded from (a cache snapshot): peft writes this name into every adapter's config,
    # so a saved adapter, and `adapter_bytes`, would otherwise depend on where the machine keeps it.
    model.name_or_path = model.config.name_or_path = source.name
    return model.eval()


def model_revision(model: Any) -> str | None:
    """The hub commit the weights came from, when transformers recorded it."""
    return getattr(model.config, "_commit_hash", None)
