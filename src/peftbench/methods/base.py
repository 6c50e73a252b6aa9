"""What a fine-tuning method is: make a base model trainable, save what was trained, load it back.

Two kinds exist: `PeftMethod` (a peft config with PEFT-Bench's defaults; peft does the work) and
custom methods (BitFit, full fine-tuning, zero-shot) that peft does not provide. Every method
saves to and loads from a directory, so evaluation always runs on what was actually trained.
"""

from __future__ import annotations

import dataclasses
import re
import typing
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from peftbench.errors import PeftbenchError
from peftbench.registry import Registry

# Module names are written in Llama's vocabulary; these architectures name the same roles differently.
# `None` means the architecture has no module for that role (GPT-2 fuses q, k and v into `c_attn`).
TARGET_ALIASES: dict[str, dict[str, str | None]] = {
    "gpt2": {
        "q_proj": "c_attn",
        "k_proj": "c_attn",
        "v_proj": "c_attn",
        "o_proj": "attn.c_proj",
        "up_proj": "mlp.c_fc",
        "gate_proj": None,
        "down_proj": "mlp.c_proj",
    },
}


@dataclass(frozen=True)
class Shape:
    """A Llama-architecture decoder's sizes: what closed-form parameter counts are written in."""

    hidden: int
    intermediate: int
    layers: int
    kv_width: int  # key/value projection width (num_key_value_heads × head_dim)
    vocab: int
    tied: bool
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def of(cls, config: Any) -> Shape | None:
        """The shape of a transformers config, or None for another architecture."""
        if getattr(config, "model_type", None) != "llama":
            return None
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.intermediate_size, config.num_hidden_layers,
                   config.num_key_value_heads * head_dim, config.vocab_size, bool(config.tie_word_embeddings),
                   bool(config.attention_bias), bool(getattr(config, "mlp_bias", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear module of a decoder layer."""
        h, i, kv = self.hidden, self.intermediate, self.kv_width
        return {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def biases(self) -> int:
        """Bias entries of one decoder layer."""
        out = {name: o for name, (_, o) in self.linears().items()}
        attention = sum(out[m] for m in ("q_proj", "k_proj", "v_proj", "o_proj")) if self.attention_bias else 0
        return attention + (sum(out[m] for m in ("gate_proj", "up_proj", "down_proj")) if self.mlp_bias else 0)

    def total(self) -> int:
        """Every parameter: embeddings, head (unless tied), layers (linears, biases, two norms), final norm."""
        layer = sum(i * o for i, o in self.linears().values()) + self.biases() + 2 * self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.layers * layer + self.hidden


class Method(ABC):
    """A configured method. Subclasses set the class attributes and implement apply/save/load."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_lr: ClassVar[float]
    defaults: ClassVar[Mapping[str, Any]] = {}
    trains: ClassVar[bool] = True
    mergeable: ClassVar[bool] = False
    paper: ClassVar[int] = 0
    """PEFT-Bench's seven methods: their place (1–7) in the paper's tables; 0 for the others."""

    def __init__(self, args: Mapping[str, Any] | None = None) -> None:
        self.args: dict[str, Any] = {**self.defaults, **(args or {})}
        self.validate_args()

    @property
    def label(self) -> str:
        return self.name

    def validate_args(self) -> None:
        unknown = sorted(set(self.args) - set(self.defaults))
        if unknown:
            allowed = ", ".join(sorted(self.defaults)) or "none"
            raise PeftbenchError(f"method {self.label!r}: unknown argument(s) {unknown} (expected: {allowed})")

    def identity_args(self) -> dict[str, Any]:
        """The arguments as they enter a run's identity (a method whose argument names a file
        replaces the path by the file's content hash)."""
        return dict(self.args)

    def closed_form_params(self, shape: Shape) -> int | None:
        """Trainable parameters on a Llama of this shape with this method's arguments, written out by
        hand: the independent reference for the counted figure (tests compare the two for every
        registered method). None: not known for this configuration."""
        return None

    def check(self, model: nn.Module) -> None:  # noqa: B027 - an optional hook, not abstract
        """Fail early (before any training) if the method cannot be applied to this model."""

    @abstractmethod
    def apply(self, model: nn.Module) -> nn.Module:
        """Return the model to train, with exactly the method's parameters requiring gradients."""

    @contextmanager
    def merged(self, model: nn.Module) -> Iterator[None]:
        """The model as deployed: mergeable adapters folded into the base weights (costing only)."""
        yield

    @abstractmethod
    def save(self, model: nn.Module, path: Path) -> None: ...

    @abstractmethod
    def load(self, base: nn.Module, path: Path) -> nn.Module:
        """Rebuild the trained model from a fresh base model and a directory written by `save`."""


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    METHODS.register(cls.name, cls)
    return cls


def model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", "") or ""


def resolve_targets(model: nn.Module, names: list[str] | str, *, method: str, key: str) -> list[str]:
    """Map Llama-style module names to this architecture's and check each one exists.

    peft silently skips listed names that match nothing as long as one matches; a benchmark must
    not, so every name has to match at least one module. A bare string is one name, not a regex.
    """
    wanted = [names] if isinstance(names, str) else list(names)
    module_names = [n for n, _ in model.named_modules() if n]
    aliases = TARGET_ALIASES.get(model_type(model), {})
    resolved: list[str] = []
    for name in wanted:
        candidate: str | None = name
        if not _matches(module_names, name) and name in aliases:
            candidate = aliases[name]
            if candidate is None:
                raise PeftbenchError(
                    f"method {method!r}: {key} {name!r} has no equivalent in {model_type(model)} models"
                )
        if candidate is None or not _matches(module_names, candidate):
            leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _is_linear(m)})
            raise PeftbenchError(
                f"method {method!r}: {key} {name!r} matches no module of this "
                f"{model_type(model) or 'model'} (its linear modules: {', '.join(leaves)})"
            )
        if candidate not in resolved:
            resolved.append(candidate)
    return resolved


def _matches(module_names: list[str], name: str) -> bool:
    return any(n == name or n.endswith("." + name) for n in module_names)


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


class PeftMethod(Method):
    """A method that peft implements; PEFT-Bench's defaults are merged under the user's arguments."""

    config_cls: ClassVar[type]
    target_keys: ClassVar[tuple[str, ...]] = ()
    own_args: ClassVar[Mapping[str, Any]] = {}
    """Arguments peftbench handles itself (not peft's), with their defaults; `validate_own_args` checks them."""

    def validate_args(self) -> None:
        fields = {f.name for f in dataclasses.fields(self.config_cls)} - {"task_type", "peft_type"}
        own = {key: self.args.pop(key, default) for key, default in self.own_args.items()}
        unknown = sorted(set(self.args) - fields)
        if unknown:
            raise PeftbenchError(
                f"method {self.label!r}: unknown argument(s) {unknown} for peft {self.config_cls.__name__}"
            )
        hints = typing.get_type_hints(self.config_cls)
        for key, value in self.args.items():
            self.args[key] = _check_type(self.label, key, value, hints.get(key))
        try:
            self.config_cls(task_type="CAUSAL_LM", **self.args)
        except (TypeError, ValueError) as exc:
            raise PeftbenchError(f"method {self.label!r}: invalid arguments: {_first_line(exc)}") from None
        self.args.update({key: value for key, value in own.items() if value is not None})
        self.validate_own_args()

    def validate_own_args(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Check the `own_args` (already merged into `self.args`)."""

    def peft_config(self, model: nn.Module) -> Any:
        args = {key: value for key, value in self.args.items() if key not in self.own_args}
        for key in self.target_keys:
            if args.get(key) not in (None, "all-linear"):
                args[key] = resolve_targets(model, args[key], method=self.label, key=key)
        return self.config_cls(task_type="CAUSAL_LM", **args)

    def check(self, model: nn.Module) -> None:
        self.peft_config(model)

    def apply(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        config = self.peft_config(model)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Unsupported layer type.*")
            try:
                return get_peft_model(model, config)
            except ValueError as exc:
                raise PeftbenchError(f"method {self.label!r}: peft rejected the config: {_first_line(exc)}") from None

    @contextmanager
    def merged(self, model: nn.Module) -> Iterator[None]:
        if not self.mergeable:
            yield
            return
        model.merge_adapter()
        try:
            yield
        finally:
            with warnings.catch_warnings():  # IA3's inexact unmerge: costing runs after evaluation
                warnings.filterwarnings("ignore", message=".*Unmerge result can be inaccurate.*")
                model.unmerge_adapter()

    def save(self, model: nn.Module, path: Path) -> None:
        """What was trained, never a copy of the embedding matrix: peftbench does not resize the
        vocabulary, and peft's "auto" would look the base model up by name (on the hub, for a hub
        id) on every save to find out."""
        model.save_pretrained(str(path), safe_serialization=True, save_embedding_layers=False)

    def load(self, base: nn.Module, path: Path) -> nn.Module:
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Unsupported layer type.*")
            model = PeftModel.from_pretrained(base, str(path), is_trainable=False)
        return model.eval()


# Sizes that peft accepts without complaint even when zero or negative.
POSITIVE_ARGS = frozenset({"r", "num_virtual_tokens", "encoder_hidden_size", "encoder_num_layers"})


def _check_type(method: str, key: str, value: Any, hint: Any) -> Any:
    """Validate (and lax-coerce) one argument against the peft dataclass's type hint."""
    from pydantic import TypeAdapter, ValidationError

    if hint is not None:
        try:
            adapter = TypeAdapter(hint)
        except Exception:  # an annotation pydantic cannot model (a callable, a torch type): peft checks it
            adapter = None
        if adapter is not None:
            try:
                value = adapter.validate_python(value)
            except ValidationError as exc:
                msg = exc.errors(include_url=False)[0]["msg"]
                raise PeftbenchError(f"method {method!r}: argument {key!r}: {msg} (got {value!r})") from None
    if key in POSITIVE_ARGS and isinstance(value, int) and value <= 0:
        raise PeftbenchError(f"method {method!r}: argument {key!r} must be a positive integer (got {value})")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return re.sub(r"\s+", " ", text.splitlines()[0])
