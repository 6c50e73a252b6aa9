"""Costing methods from a model's configuration alone: no weights, no GPU, seconds on a laptop.

The model is built on the `meta` device (parameters have shapes, no storage), each method is
applied with its default arguments, and forward FLOPs are counted under fake tensors. Two known
discrepancies with PEFT-Bench's published counts are reproduced as *variants*, computed by peft
rather than typed in: IA3 with `down_proj` not recognised as feed-forward, and P-tuning with the
LSTM prompt encoder of the paper's FLOPs-profiling config.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from peftbench.config import CostsConfig
from peftbench.costs.flops import count_parameters, forward_flops
from peftbench.costs.run import Count, CountCache, count_now, counting_code, voted_extra
from peftbench.errors import PeftbenchError
from peftbench.hub import hub_reachable
from peftbench.methods import resolve_method
from peftbench.utils import cache_key, cache_root, library_versions

NAMED_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama3-8b": ("llama", {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
        "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
    }),
}

VARIANTS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ia3": [("paper's count: down_proj outputs scaled", {"feedforward_modules": []})],
    "p_tuning": [("paper's count: LSTM encoder", {"encoder_reparameterization_type": "LSTM"})],
}


ROW = ("method", "trainable_params", "total_params", "base_tflops", "extra_tflops", "extra_tflops_unmerged")


def load_model_config(name_or_path: str, *, trust_remote_code: bool = False) -> Any:
    """A transformers config from a named architecture, a config.json, a model directory or a hub id."""
    from transformers import AutoConfig

    if name_or_path in NAMED_CONFIGS:
        model_type, kwargs = NAMED_CONFIGS[name_or_path]
        return AutoConfig.for_model(model_type, **kwargs)
    path = Path(name_or_path).expanduser()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            return AutoConfig.for_model(data.pop("model_type"), **data)
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise PeftbenchError(f"--model-config {path}: not a transformers config.json ({exc})") from None
    if path.is_dir():
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    try:
        return AutoConfig.from_pretrained(name_or_path, local_files_only=not hub_reachable(),
                                          trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        known = ", ".join(NAMED_CONFIGS)
        raise PeftbenchError(f"--model-config {name_or_path!r}: not a named config ({known}), a config.json, a "
                             f"model directory, or a hub id available offline") from None


def skeleton(config: Any) -> nn.Module:
    """The model with shapes only (meta device): building an 8B model allocates nothing."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()


def by_depth(full: nn.Module, config: Any, build: Callable[[Any], nn.Module],
             count: Callable[[nn.Module], tuple[int, ...]]) -> tuple[int, ...]:
    """`count(full)`, for `full = build(config)`, from copies of 1, 2 and 3 decoder layers.

    Counting an 8B model layer by layer under fake tensors takes seconds per count. Where every
    decoder layer is built alike, a count is affine in depth, F(L) = F(1) + (L − 1)·(F(2) − F(1)),
    which the copies give for a tenth of the work. Used only where that is so: the full model's
    layers (adapters included) have the same modules, parameter shapes and trainable flags, the
    config names one layer type, and the three copies agree (F(3) − F(2) = F(2) − F(1)); anything
    else is counted on the full model. A test compares both paths on every method."""
    depth = getattr(config, "num_hidden_layers", None)
    if not isinstance(depth, int) or depth <= 3 or not _alike_layers(full, config, depth):
        return count(full)
    one, two, three = (count(build(_with_depth(config, n))) for n in (1, 2, 3))
    if any(b - a != c - b for a, b, c in zip(one, two, three, strict=True)):
        return count(full)
    return tuple(a + (depth - 1) * (b - a) for a, b in zip(one, two, strict=True))


def _with_depth(config: Any, depth: int) -> Any:
    shallow = copy.deepcopy(config)
    shallow.num_hidden_layers = depth
    if isinstance(getattr(shallow, "layer_types", None), list):
        shallow.layer_types = shallow.layer_types[:depth]
    return shallow


def _alike_layers(model: nn.Module, config: Any, depth: int) -> bool:
    """Whether the model has one stack of `depth` layers, all built alike, of one declared type."""
    if len(set(getattr(config, "layer_types", None) or [])) > 1:
        return False
    stacks = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth]
    if len(stacks) != 1:
        return False

    def signature(layer: nn.Module) -> list[Any]:
        """Every submodule: its name and type, its own parameters (shape, dtype, trainable), its buffers."""
        out = []
        for name, m in layer.named_modules():
            params = [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m.named_parameters(recurse=False)]
            buffers = [(n, tuple(b.shape)) for n, b in m.named_buffers(recurse=False)]
            out.append((name, type(m), params, buffers))
        return out

    first = signature(stacks[0][0])
    return all(signature(layer) == first for layer in stacks[0][1:])


def cost_from_config(config: Any, methods: Sequence[str | tuple[str, dict[str, Any]]], *,
                     batch_size: int | None = None, seq_len: int | None = None,
                     count: Count = count_now, variants: bool = True) -> list[dict]:
    """Per method (a name, or a name and its arguments as a grid's config gives them): trainable/total
    parameters and base/extra forward TFLOPs (merged where mergeable), for a forward of batch_size ×
    seq_len tokens (default: the cost protocol's, `CostsConfig`); a method that cannot be applied to
    this architecture gets a row with its `error` instead. With `variants`, a method with its default
    arguments also gets the paper's variants. `count` may answer a method's row (or the base count)
    from a cache (`config_counts`)."""
    protocol = CostsConfig()
    batch_size, seq_len = batch_size or protocol.flops_batch_size, seq_len or protocol.flops_seq_len
    vocab = config.vocab_size

    def forward(model: nn.Module) -> int:
        return forward_flops(model, batch_size=batch_size, seq_len=seq_len, vocab_size=vocab)

    def base_count() -> int:
        return by_depth(skeleton(config), config, skeleton, lambda model: (forward(model),))[0]

    base = int(count("base", base_count))

    def row(name: str, args: dict[str, Any]) -> dict[str, Any]:
        method = resolve_method(name, args)
        key = f"{name} {json.dumps(method.args, sort_keys=True, default=str)}"
        try:
            counted = count(key, lambda: _cost_one(method, config, forward, base))
        except PeftbenchError as exc:  # not applicable to this architecture: the other methods still cost
            return {"method": method.name, "error": str(exc)}
        return {k: counted[k] for k in ROW}  # in this order, whichever order a cache kept

    out = []
    for entry in methods:
        name, args = (entry, {}) if isinstance(entry, str) else entry
        extra = [] if args or not variants else [{"description": text, "args": a, **row(name, a)}
                                                 for text, a in VARIANTS.get(name, [])]
        out.append({**row(name, args), **({"args": args} if args else {}), "variants": extra})
    return out


def voted_row(row: dict[str, Any], votes: int) -> dict[str, Any]:
    """A row's figures as a voting strategy's run stores them (`runner.run.mitigation_costs`): K
    models' parameters and forwards; nothing to change for one model or an error row."""
    if votes == 1 or "error" in row:
        return {}
    base = row["base_tflops"]
    return {"vote_members": votes, "trainable_params": row["trainable_params"] * votes,
            "extra_tflops": voted_extra(base, base + row["extra_tflops"], votes),
            "extra_tflops_unmerged": voted_extra(base, base + row["extra_tflops_unmerged"], votes)}


def config_counts(config: Any, *, batch_size: int | None = None, seq_len: int | None = None) -> CountCache:
    """The cache of `cost_from_config`'s counts for this configuration and forward shape, in
    `<cache>/counts/`, keyed by everything a count depends on besides the method: the architecture,
    the shape, the library versions and the code that builds and counts (`counting_code` and this
    module)."""
    protocol = CostsConfig()
    what = {"architecture": config.to_json_string(use_diff=False),
            "shape": [batch_size or protocol.flops_batch_size, seq_len or protocol.flops_seq_len],
            "versions": library_versions(), "code": counting_code("costs/from_config.py")}
    return CountCache(cache_root() / "counts" / f"config-{cache_key(what)}.json")


def _cost_one(method: Any, config: Any, forward: Callable[[nn.Module], int], base: int) -> dict[str, Any]:
    def build(config: Any) -> nn.Module:
        return method.apply(skeleton(config))

    def counts(model: nn.Module) -> tuple[int, int]:
        adapted = forward(model)
        if not method.mergeable:  # deployed as trained: a second count of the same graph would only repeat it
            return adapted, adapted
        with method.merged(model):
            return adapted, forward(model)

    model = build(config)
    trainable, total = count_parameters(model)
    adapted, merged = by_depth(model, config, build, counts)
    return dict(zip(ROW, (method.name, trainable, total, base / 1e12, (merged - base) / 1e12, (adapted - base) / 1e12),
                    strict=True))
