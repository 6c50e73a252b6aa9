"""Cost measures against hand counts: linear stacks, attention on the CPU SDPA kernel, prompt methods."""

from __future__ import annotations

import torch
from conftest import HEADS, H, L, llama
from torch import nn

from peftbench.costs import count_parameters, forward_flops, peak_memory
from peftbench.methods import resolve_method


class Stack(nn.Module):
    """A plain linear stack that accepts the causal-LM call signature."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.layers = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.layers(self.embed(input_ids))


def test_linear_stack_flops_equal_the_hand_count():
    flops = forward_flops(Stack(), batch_size=2, seq_len=10, vocab_size=50)
    tokens = 2 * 10
    assert flops == 2 * tokens * (16 * 32 + 32 * 8)  # 2 FLOPs per multiply-add; bias adds and ReLU not counted


def test_attention_is_counted_on_the_cpu_sdpa_kernel(tokenizer):
    """torch has no FLOP formula for CPU SDPA; ours must make sdpa count the same as eager attention."""
    seq = 32
    sdpa = llama(tokenizer)
    sdpa.set_attn_implementation("sdpa")
    eager = llama(tokenizer)
    eager.set_attn_implementation("eager")
    n_sdpa = forward_flops(sdpa, batch_size=1, seq_len=seq, vocab_size=len(tokenizer))
    n_eager = forward_flops(eager, batch_size=1, seq_len=seq, vocab_size=len(tokenizer))
    assert n_sdpa == n_eager
    linear_params = sum(m.in_features * m.out_features for m in sdpa.modules() if isinstance(m, nn.Linear))
    attention = L * 2 * (2 * HEADS * seq * seq * (H // HEADS))  # QKᵀ and AV per layer
    assert n_sdpa == 2 * seq * linear_params + attention


def test_prompt_methods_cost_extra_flops(tokenizer):
    base = forward_flops(llama(tokenizer), batch_size=1, seq_len=64, vocab_size=len(tokenizer))
    for name in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        model = resolve_method(name).apply(llama(tokenizer))
        assert forward_flops(model, batch_size=1, seq_len=64, vocab_size=len(tokenizer)) > base, name


def test_bitfit_and_ia3_cost_no_counted_flops(tokenizer):
    """Element-wise ops (bias adds, IA3 scaling) are outside the counted op set."""
    base = forward_flops(llama(tokenizer), batch_size=1, seq_len=16, vocab_size=len(tokenizer))
    for name in ("bitfit", "ia3", "ln_tuning"):
        model = resolve_method(name).apply(llama(tokenizer))
        assert forward_flops(model, batch_size=1, seq_len=16, vocab_size=len(tokenizer)) == base, name


def test_shared_parameters_counted_once():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    assert count_parameters(model) == (4 * 4 + 4 + 4, 4 * 4 + 4 + 4)


def test_peak_memory_sees_tensor_allocations():
    model = nn.Linear(8, 8)
    with peak_memory(torch.device("cpu"), model) as small:
        torch.ones(1000).sum()
    with peak_memory(torch.device("cpu"), model) as large:
        big = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        big.add_(1)
        del big
    assert small.peak_bytes > 0 and small.source
    assert large.peak_bytes - small.peak_bytes > 48 * 1024 * 1024
