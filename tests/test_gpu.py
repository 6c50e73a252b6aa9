"""What only a CUDA GPU can check (skipped without one; `pytest -m gpu` where a GPU is lent): the
kernels a GPU runs instead of the CPU's (cuBLAS, fused attention, cuDNN's LSTM, grouped experts)
count what the CPU counts, the GPU-only measures (peak memory, energy) read this process's GPU, and
workers forked from the preloaded server can use CUDA."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import METHOD_CASES, llama
from torch import nn

from peftbench.costs import forward_flops, peak_memory
from peftbench.costs.energy import EnergyMeter
from peftbench.costs.flops import UncountedFlopsWarning, flop_counter, flops_per_generated_token, train_step_flops
from peftbench.methods import resolve_method

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = torch.device("cuda")


def test_every_method_counts_on_the_gpu_what_it_counts_on_the_cpu(tokenizer):
    """Forward, training step and decoding of every method: the same counts on both devices (the
    CPU SDPA formula is the GPU kernels'), and no op that multiplies matrices runs uncounted. In
    bfloat16 on the GPU, as a benchmark runs: its SDPA is the flash kernel, which recomputes QKᵀ in
    backward as the CPU's does (float32 grouped-query attention would take the math path, which
    does not; docs/costs.md)."""
    vocab = len(tokenizer)

    def counts(model: nn.Module) -> tuple[float, ...]:
        trains = any(p.requires_grad for p in model.parameters())
        return (forward_flops(model, batch_size=2, seq_len=16, vocab_size=vocab),
                train_step_flops(model, batch_size=2, seq_len=16, vocab_size=vocab) if trains else 0,
                flops_per_generated_token(model, context_len=16, new_tokens=2, vocab_size=vocab))

    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedFlopsWarning)
        for name, args in METHOD_CASES:
            cpu = counts(resolve_method(name, args).apply(llama(tokenizer)))
            gpu = counts(resolve_method(name, args).apply(llama(tokenizer)).to(CUDA, torch.bfloat16))
            assert gpu == cpu, name


def test_cudnn_lstm_counts_its_products():
    steps, batch, inp, hid = 5, 3, 8, 16
    hand = 2 * steps * batch * 4 * hid * ((inp + hid) * 2 + (2 * hid + hid) * 2)
    lstm = nn.LSTM(inp, hid, num_layers=2, bidirectional=True, batch_first=True).to(CUDA)
    x = torch.randn(batch, steps, inp, device=CUDA, requires_grad=True)
    out, forward, backward = [], flop_counter(), flop_counter()
    with forward:
        out.append(lstm(x)[0])
    with backward:
        (out[0] * out[0].detach()).sum().backward()
    assert "aten._cudnn_rnn" in {str(op) for op in forward.get_flop_counts()["Global"]}
    assert (forward.get_total_flops(), backward.get_total_flops()) == (hand, 2 * hand)


def test_grouped_experts_count_as_the_eager_loop_on_the_gpu():
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=512, num_local_experts=4, num_experts_per_tok=2)
    counts = {}
    for implementation in ("grouped_mm", "eager"):
        torch.manual_seed(0)
        model = MixtralForCausalLM._from_config(config, experts_implementation=implementation,
                                                dtype=torch.bfloat16).to(CUDA).eval()
        counts[implementation] = forward_flops(model, batch_size=1, seq_len=32, vocab_size=512)
    assert counts["grouped_mm"] == counts["eager"] > 0


def test_peak_memory_on_the_gpu_is_the_allocators_peak():
    model = nn.Linear(8, 8).to(CUDA)
    with peak_memory(CUDA, model) as peak:
        big = torch.ones(64 * 1024 * 1024 // 4, device=CUDA)  # 64 MiB
        del big
    assert peak.source == "cuda_max_allocated" and peak.peak_bytes >= 64 * 1024 * 1024


def test_energy_is_read_from_this_processes_gpu():
    pytest.importorskip("pynvml")
    meter = EnergyMeter(CUDA)
    assert meter._handle is not None, "NVML found no GPU with torch's UUID for cuda:0"
    a = torch.randn(4096, 4096, device=CUDA)
    with meter:
        for _ in range(200):
            a = a @ a / 64
        torch.cuda.synchronize()
    assert meter.joules is not None and meter.joules > 0


def test_the_cpu_memory_count_is_what_the_cuda_allocator_counts(tokenizer):
    """The CPU protocol's figure (`live_tensor_peak`: the peak of live tensor bytes) claims to be the
    quantity CUDA's statistics count. Counted over the same AdamW steps on the GPU, after a warm-up
    step (optimiser state and cuBLAS's workspace allocated before, in neither figure), the
    allocator's peak above the start holds every counted tensor (rounded up to 512-byte blocks) and
    exceeds them by no more than what kernels allocate for themselves (about 100 MiB counted here)."""
    from peftbench.costs.memory import live_tensor_peak, resident_bytes

    model = resolve_method("lora").apply(llama(tokenizer)).to(CUDA).train()
    ids = torch.randint(0, len(tokenizer), (16, 512), device=CUDA)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(CUDA)
    start = torch.cuda.memory_allocated(CUDA)
    with live_tensor_peak(model) as counted:
        for _ in range(2):
            step()
    torch.cuda.synchronize()
    allocator = torch.cuda.max_memory_allocated(CUDA) - start
    tensors = counted.peak_bytes - resident_bytes(model)
    assert 0 < tensors <= allocator <= 1.05 * tensors


def _cuda_sum() -> float:
    return torch.ones(3, device="cuda").sum().item()


def test_workers_forked_from_the_preloaded_server_can_use_cuda():
    """Local workers fork from a server that imported the run path (Linux); a child cannot use a
    CUDA its parent initialised, so this fails if importing it starts to initialise CUDA on a CUDA
    build (`test_executors` checks the same on CPU builds, by the calls it makes)."""
    from peftbench.runner.backends.processes import WorkerProcesses

    pool = WorkerProcesses(1).take()
    try:
        assert pool.submit(_cuda_sum).result(timeout=600) == 3.0
    finally:
        pool.shutdown(wait=True)
