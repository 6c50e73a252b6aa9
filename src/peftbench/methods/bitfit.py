"""BitFit (Ben Zaken et al., 2022): train only bias terms.

A model with biases trains all of them. A model without any (Llama) gets **zero-initialised**
bias vectors on `add_bias_to` (q_proj and v_proj by default), so step 0 computes exactly what the
base model computes; the reference implementation cloned whole weight matrices and initialised the
new biases randomly, which perturbed the model before training. Only the biases are saved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from peftbench.errors import PeftbenchError
from peftbench.methods.base import Method, Shape, register, resolve_targets

CONFIG_FILE = "bitfit_config.json"
WEIGHTS_FILE = "bitfit_biases.safetensors"
ADDED_ATTR = "peftbench_added_biases"


@register
class BitFit(Method):
    name = "bitfit"
    description = "Train the model's biases; zero-initialised q_proj/v_proj biases when it has none"
    default_lr = 5e-5
    mergeable = True
    paper = 7
    defaults = {"add_bias_to": ["q_proj", "v_proj"]}

    def closed_form_params(self, shape: Shape) -> int:
        """The model's biases; without any, one per output feature of each `add_bias_to` module."""
        if shape.biases():
            return shape.layers * shape.biases()
        linears = shape.linears()
        return shape.layers * sum(linears[t][1] for t in self.args["add_bias_to"])

    def check(self, model: nn.Module) -> None:
        if not _has_biases(model):
            resolve_targets(model, self.args["add_bias_to"], method=self.name, key="add_bias_to")

    def apply(self, model: nn.Module) -> nn.Module:
        added: list[str] = []
        if not _has_biases(model):
            targets = resolve_targets(model, self.args["add_bias_to"], method=self.name, key="add_bias_to")
            added = _add_zero_biases(model, targets)
        for name, param in model.named_parameters():
            param.requires_grad_(_is_bias(name))
        setattr(model, ADDED_ATTR, added)
        return model

    def save(self, model: nn.Module, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        biases = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(biases, str(path / WEIGHTS_FILE))
        config = {"method": self.name, "added_bias_modules": getattr(model, ADDED_ATTR, [])}
        (path / CONFIG_FILE).write_text(json.dumps(config, indent=2))

    def load(self, base: nn.Module, path: Path) -> nn.Module:
        config = json.loads((path / CONFIG_FILE).read_text())
        modules = dict(base.named_modules())
        for name in config["added_bias_modules"]:
            _set_zero_bias(modules[name])
        params = dict(base.named_parameters())
        for name, tensor in load_file(str(path / WEIGHTS_FILE)).items():
            if name not in params:
                raise PeftbenchError(f"BitFit adapter {path}: bias {name!r} does not exist in the base model")
            with torch.no_grad():
                params[name].copy_(tensor.to(params[name].dtype))
        for p in base.parameters():
            p.requires_grad_(False)
        setattr(base, ADDED_ATTR, config["added_bias_modules"])
        return base.eval()


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def _has_biases(model: nn.Module) -> bool:
    return any(_is_bias(n) for n, _ in model.named_parameters())


def _add_zero_biases(model: nn.Module, targets: list[str]) -> list[str]:
    added = []
    for name, module in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            if not isinstance(module, nn.Linear):
                raise PeftbenchError(f"method 'bitfit': add_bias_to module {name!r} is not a linear layer")
            _set_zero_bias(module)
            added.append(name)
    return added


def _set_zero_bias(module: nn.Module) -> None:
    weight = module.weight
    module.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))
