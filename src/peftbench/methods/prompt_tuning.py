"""Prompt tuning (Lester et al., 2021): 100 soft tokens initialised from vocabulary embeddings.

Two starts beyond peft's own initialisations serve Task Prompt Vectors (docs/tpv.md): `origin: i`
starts from origin θ₀ⁱ (embedding rows at a seeded permutation of token ids), `init_prompt: FILE`
from a saved prompt (θ₀ + τ_A, a multi-task prompt). A run started either way keeps its task
prompt vector θ_t − θ₀ (`peftbench.tpv.runs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peft import PromptTuningConfig
from torch import nn

from peftbench.errors import PeftbenchError
from peftbench.methods.base import PeftMethod, Shape, register
from peftbench.tpv import vectors


@register
class PromptTuning(PeftMethod):
    name = "prompt_tuning"
    description = "100 trainable virtual tokens, initialised from sampled vocabulary embeddings"
    default_lr = 3e-2
    config_cls = PromptTuningConfig
    paper = 3
    defaults = {"num_virtual_tokens": 100, "prompt_tuning_init": "SAMPLE_VOCAB"}
    own_args = {"origin": None, "init_prompt": None}

    def validate_own_args(self) -> None:
        origin, init = self.args.get("origin"), self.args.get("init_prompt")
        if origin is not None and init is not None:
            raise PeftbenchError(f"method {self.label!r}: set origin or init_prompt, not both")
        if origin is not None and (isinstance(origin, bool) or not isinstance(origin, int) or origin < 0):
            raise PeftbenchError(f"method {self.label!r}: argument 'origin' must be an origin index ≥ 0 "
                                 f"(got {origin!r})")
        if init is not None:
            vector, _ = vectors.load(Path(init))  # one-line error for a missing or foreign file
            if vector.kind != "prompt":
                raise PeftbenchError(f"method {self.label!r}: init_prompt {init} holds a task prompt vector, "
                                     f"not a prompt (add it to its origin first)")
            if vector.n_tokens != self.args["num_virtual_tokens"]:
                raise PeftbenchError(f"method {self.label!r}: init_prompt {init} has {vector.n_tokens} tokens, "
                                     f"num_virtual_tokens is {self.args['num_virtual_tokens']}")

    def identity_args(self) -> dict[str, Any]:
        """A start prompt counts by its content, wherever its file lies."""
        args = dict(self.args)
        if args.get("init_prompt") is not None:
            args["init_prompt"] = f"sha256:{vectors.file_digest(Path(args['init_prompt']))}"
        return args

    def start(self, model: nn.Module) -> tuple[vectors.PromptVector, vectors.PromptVector] | None:
        """(θ₀ of the run's origin, the prompt it starts from) for an origin or init_prompt start."""
        n = self.args["num_virtual_tokens"]
        embeddings = model.get_input_embeddings().weight
        if (index := self.args.get("origin")) is not None:
            theta0 = vectors.origin(embeddings, index, n)
            return theta0, theta0
        if (init := self.args.get("init_prompt")) is not None:
            prompt, _ = vectors.load(Path(init))
            theta0 = vectors.origin(embeddings, prompt.origin, n)
            if prompt.model != theta0.model:
                raise PeftbenchError(f"method {self.label!r}: init_prompt {init} was made for another model "
                                     f"(embeddings {prompt.model}, this model's {theta0.model})")
            return theta0, prompt
        return None

    def apply(self, model: nn.Module) -> nn.Module:
        start = self.start(model)
        peft_model = super().apply(model)
        if start is not None:
            encoder = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
            encoder.data.copy_(start[1].as_prompt_tensor().to(encoder.device, encoder.dtype))
        return peft_model

    def closed_form_params(self, shape: Shape) -> int:
        return self.args["num_virtual_tokens"] * shape.hidden


def trained_prompt(model: nn.Module) -> Any:
    """The prompt-tuning model's current virtual-token embeddings."""
    return model.prompt_encoder[model.active_adapter].embedding.weight
