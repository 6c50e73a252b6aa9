"""Parameter counts and FLOPs.

FLOPs follow PEFT-Bench's protocol: one forward pass of batch 1 × 512 tokens, counted by
`torch.utils.flop_counter.FlopCounterMode`, adapted model minus base model. The counter counts
matrix products (mm, bmm, addmm, baddbmm, convolutions) and attention kernels; element-wise ops
(norms, activations, bias adds, scaling) are not counted, so IA3's rescaling and BitFit's biases
cost 0 extra FLOPs by this protocol. torch has no formula for the CPU SDPA kernel, so one is
registered here with the same count as the GPU kernels: CPU and GPU figures agree. Nor for the
fused recurrent kernels (oneDNN on CPU, cuDNN and MIOpen on GPU) that run an `nn.LSTM`, such as
P-tuning's LSTM prompt encoder: uncounted, its matrix products vanished from float32 counts while
bfloat16 (which torch decomposes into `addmm`s) counted them. Nor for grouped matrix products,
which transformers 5 runs mixture-of-experts layers through by default (`_grouped_mm`, or its own
looping fallback op on older torch and GPUs): the experts, most of such a model's compute, counted 0.
Formulas are registered for all of them, each tested against the products it stands for, and the
counter warns (`UncountedFlopsWarning`) when an op whose name says it multiplies matrices runs
without one, so that the next such kernel does not count 0 in silence.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

aten = torch.ops.aten

if aten._scaled_dot_product_flash_attention_for_cpu not in flop_registry:

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    @register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def rnn_flops(input_shape: tuple[int, ...], weight_shapes: list[tuple[int, ...]]) -> int:
    """FLOPs of a recurrent kernel's forward: every token (time step × batch row) is multiplied once
    by each 2-D weight of each layer and direction (input, recurrent and projection matrices), as
    the per-step `addmm`s torch decomposes an LSTM or GRU into are; gates are element-wise."""
    tokens = math.prod(input_shape) // input_shape[-1]  # (T, B, I), (B, T, I) or packed (ΣT, I)
    return 2 * tokens * sum(math.prod(w) for w in weight_shapes if len(w) == 2)


def _fused_rnn_forward(input: Any, weight: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """cuDNN's and MIOpen's kernels: `weight` lists every layer's and direction's tensors."""
    return rnn_flops(input, weight)


def _fused_rnn_backward(input: Any, weight: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """The gradients of the input and initial state (one forward's worth of products, computed in
    every case: the recurrence needs them) and, when `output_mask[3]` asks, of the weights."""
    weights_too = kwargs.get("output_mask", args[-1])[3]
    return (1 + int(weights_too)) * rnn_flops(input, weight)


def _onednn_rnn_forward(input: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """oneDNN's kernel (float32 LSTMs on CPU): one layer and direction per call."""
    return rnn_flops(input, [w_ih, w_hh])


def _onednn_rnn_backward(input: Any, w_ih: Any, w_hh: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """oneDNN's backward always computes the input, initial-state and weight gradients."""
    return 2 * rnn_flops(input, [w_ih, w_hh])


def grouped_mm_flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """FLOPs of a grouped matrix product, as of the per-group `mm`s it replaces. The groups split
    the rows of a 2-D `a` against a 3-D `b` (experts: (ΣM, K) × (G, K, N)), the columns of a 3-D `a`
    against a 2-D `b`, or are a batch (3-D × 3-D): each output element is a K-long dot product. Two
    2-D operands split the contraction instead ((M, ΣK) × (ΣK, N) → (G, M, N), a weight gradient)."""
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    return 2 * math.prod(out_shape) * a_shape[-1]


def _grouped_mm_formula(a: Any, b: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return grouped_mm_flops(a, b, out_shape)


def _grouped_mm_fallback_backward(input: Any, weight: Any, offs: Any, grad_output: Any, out_shape: Any = None,
                                  **kwargs: Any) -> int:
    """The input's and the experts' gradients, each one forward's worth of products."""
    return 2 * grouped_mm_flops(input, weight, grad_output)


def _register_transformers_ops() -> None:
    """transformers' looping stand-in for `_grouped_mm` is an opaque custom op (the counter sees
    none of its `mm`s); it exists once transformers' MoE integration is imported."""
    if "transformers.integrations.moe" not in sys.modules:
        return
    for name, formula in [("grouped_mm_fallback", _grouped_mm_formula),
                          ("grouped_mm_fallback_backward", _grouped_mm_fallback_backward)]:
        op = getattr(torch.ops.transformers, name, None)
        if op is not None and op not in flop_registry:
            register_flop_formula(op)(formula)


MATRIX_WORDS = {"linear", "rnn", "lstm", "gru", "attention", "attn", "sdpa"}


@functools.cache  # asked for every op a count dispatches
def multiplies_matrices(op_name: str) -> bool:
    """Whether an op's name says it multiplies matrices: one of its words ends in mm, matmul or gemm
    (not "comm"), starts with conv (not "convert"), or is linear, rnn, lstm, gru, attention, attn, sdpa."""
    return any(w.endswith(("mm", "matmul", "gemm")) and w != "comm" or w.startswith("conv") and not
               w.startswith("convert") or w in MATRIX_WORDS for w in re.split(r"[._]", op_name.lower()))


class UncountedFlopsWarning(UserWarning):
    """An op that multiplies matrices ran without a FLOP formula: the count is a lower bound."""


# Every SDPA kernel, with where its query is among its arguments (after the gradient, backward).
SDPA_OPS = {f"_scaled_dot_product_{kernel}{direction}": query_at
            for kernel in ("flash_attention_for_cpu", "efficient_attention", "flash_attention", "cudnn_attention")
            for direction, query_at in (("", 0), ("_backward", 1))}


def _grouped_query_attention(formula: Callable[..., int], query_at: int) -> Callable[..., int]:
    """torch's formula for an SDPA kernel, called with the key/value heads of grouped-query attention
    (Llama 3, Qwen, Mistral: fewer key/value heads than query heads, which transformers hands the
    kernels as they are) broadcast to the query's. Every query head still multiplies a whole key and
    value, so this is the count of the same attention with repeated key/values (eager attention's),
    and torch 2.13's own; earlier torch releases reject such shapes, and counting failed."""
    def count(*shapes: Any, out_shape: Any = None, **kwargs: Any) -> int:
        shapes = list(shapes)
        heads = shapes[query_at][1]
        for i in (query_at + 1, query_at + 2):
            if len(shapes[i]) == 4 and shapes[i][1] != heads:
                shapes[i] = torch.Size([shapes[i][0], heads, *shapes[i][2:]])
        return formula(*shapes, out_val=out_shape, **kwargs)

    return count


class _Counter(FlopCounterMode):
    """A FlopCounterMode that notes the ops it has no formula for whose names say they multiply
    matrices: the fused kernels above each counted 0 without a trace, and a library release can
    route a model through a new one at any time."""

    def __init__(self) -> None:
        ops = {getattr(aten, name, None): at for name, at in SDPA_OPS.items()}
        sdpa = {op: _grouped_query_attention(flop_registry[op], at) for op, at in ops.items() if op in flop_registry}
        super().__init__(display=False, custom_mapping=sdpa)
        self.uncounted: set[str] = set()

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet not in self.flop_registry and multiplies_matrices(str(func_packet)):
            self.uncounted.add(str(func_packet))
        return super()._count_flops(func_packet, out, args, kwargs)

    def __exit__(self, *exc: Any) -> Any:
        suppressed = super().__exit__(*exc)
        if self.uncounted:
            warnings.warn(f"FLOPs of {', '.join(sorted(self.uncounted))} are not counted (no FLOP formula): this "
                          "model's FLOP figures are lower bounds", UncountedFlopsWarning, stacklevel=2)
        return suppressed


def flop_counter() -> FlopCounterMode:
    """A FLOP counter that knows every kernel registered here and warns about ops it cannot count."""
    _register_transformers_ops()
    return _Counter()


for _name, _formula in [("_grouped_mm", _grouped_mm_formula), ("_scaled_grouped_mm", _grouped_mm_formula),
                        ("_cudnn_rnn", _fused_rnn_forward), ("_cudnn_rnn_backward", _fused_rnn_backward),
                        ("miopen_rnn", _fused_rnn_forward), ("miopen_rnn_backward", _fused_rnn_backward),
                        ("mkldnn_rnn_layer", _onednn_rnn_forward), ("mkldnn_rnn_layer_backward", _onednn_rnn_backward)]:
    _op = getattr(aten, _name, None)  # torch releases before the kernel existed lack the op
    if _op is not None and _op not in flop_registry:
        register_flop_formula(_op)(_formula)

GB = 1e9


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _token_ids(model: nn.Module, batch_size: int, seq_len: int, vocab_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen).to(device)


def _count(model: nn.Module, ids: torch.Tensor, training: bool, step: Callable[[], Any]) -> int:
    """FLOPs of `step()` with the model in train or eval mode. A model on the `meta` device (costing
    from a config, no weights) runs under fake tensors: shapes propagate, nothing is allocated, and
    transformers skips its value-dependent mask checks."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    was_training = model.training
    model.train(training)
    counter = flop_counter()
    fake = FakeTensorMode(allow_non_fake_inputs=True) if ids.device.type == "meta" else contextlib.nullcontext()
    with fake, counter:
        step()
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def forward_flops(model: nn.Module, *, batch_size: int, seq_len: int, vocab_size: int) -> int:
    """FLOPs of one forward pass over `batch_size × seq_len` token ids (eval mode, no cache)."""
    ids = _token_ids(model, batch_size, seq_len, vocab_size)
    # No attention mask: every token is real, and mask helpers inspect values that meta tensors lack.
    return _count(model, ids, False, lambda: model(input_ids=ids, use_cache=False))


@torch.no_grad()
def flops_per_generated_token(model: nn.Module, *, context_len: int, new_tokens: int, vocab_size: int) -> float:
    """FLOPs of one greedy decoding step with a KV cache, after a `context_len`-token prompt.

    Counted as (FLOPs of generating 1 + n tokens − FLOPs of generating 1) / n through
    `decoding.decode`, the decoder evaluation uses, so each method's virtual tokens or prefix
    key/values are counted as they are decoded.
    """
    from peftbench.decoding import decode

    ids = _token_ids(model, 1, context_len, vocab_size)[0].tolist()

    def count(n: int) -> int:
        counter = flop_counter()
        with counter:
            decode(model, [ids], max_new_tokens=n, eos=(), pad_id=0)
        return int(counter.get_total_flops())

    model.eval()
    return (count(1 + new_tokens) - count(1)) / new_tokens


def train_step_flops(model: nn.Module, *, batch_size: int, seq_len: int, vocab_size: int) -> int:
    """FLOPs of one training step's forward and backward (the optimiser update is element-wise)."""
    ids = _token_ids(model, batch_size, seq_len, vocab_size)
    flops = _count(model, ids, True, lambda: model(input_ids=ids, labels=ids).loss.backward())
    model.zero_grad(set_to_none=True)
    return flops
