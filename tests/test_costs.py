"""Cost measures against hand counts: linear stacks, attention on the CPU SDPA kernel, prompt methods."""

from __future__ import annotations

import platform
import warnings
from contextlib import contextmanager

import pytest
import torch
from conftest import FF, HEADS, KV, KV_HEADS, METHOD_CASES, H, L, gpt2, llama
from torch import nn

from peftbench.costs import count_parameters, forward_flops, peak_memory
from peftbench.costs.flops import (
    UncountedFlopsWarning,
    flop_counter,
    flops_per_generated_token,
    multiplies_matrices,
    train_step_flops,
)
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


def test_grouped_query_attention_counts_as_with_repeated_key_values(monkeypatch):
    """SDPA kernels get grouped-query attention's fewer key/value heads as they are; torch before 2.13
    rejected those shapes (counting any Llama 3 failed). Forward and backward count as the same
    attention with the key/values repeated to every query head, also under formulas that accept only
    equal heads, as those releases' did."""
    import torch.utils.flop_counter as torch_counter

    from peftbench.costs import flops

    def equal_heads_only(count):
        def strict(*shapes):
            assert len({shape[1] for shape in shapes}) == 1, "query/key/value shapes are incompatible"
            return count(*shapes)
        return strict

    for module in (torch_counter, flops):
        for name in ("sdpa_flop_count", "sdpa_backward_flop_count"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, equal_heads_only(getattr(module, name)))
    torch.manual_seed(0)
    q = torch.randn(2, 4, 8, 16, requires_grad=True)
    k, v = (torch.randn(2, 2, 8, 16, requires_grad=True) for _ in range(2))
    sdpa = nn.functional.scaled_dot_product_attention
    grouped = _forward_backward(lambda: sdpa(q, k, v, is_causal=True, enable_gqa=True))
    repeated = _forward_backward(lambda: sdpa(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True))
    assert [count for count, _ in grouped] == [count for count, _ in repeated]
    assert any("scaled_dot_product" in op for op in grouped[0][1])
    assert grouped[0][0] == 2 * (2 * 2 * 4 * 8 * 8 * 16)  # QKᵀ and AV for 2 × 4 query heads


def test_prompt_methods_cost_extra_flops(tokenizer):
    base = forward_flops(llama(tokenizer), batch_size=1, seq_len=64, vocab_size=len(tokenizer))
    for name in ("prompt_tuning", "prefix_tuning", "p_tuning"):
        model = resolve_method(name).apply(llama(tokenizer))
        assert forward_flops(model, batch_size=1, seq_len=64, vocab_size=len(tokenizer)) > base, name


def test_prompt_methods_extra_flops_by_hand(tokenizer):
    """What each prompt method adds to a forward of s tokens, by hand. Prompt tuning and P-tuning:
    n more tokens through every linear layer (the LM head included) and a (s + n)² attention;
    P-tuning's MLP encoder once over the n virtual tokens. Prefix tuning: the s queries attend
    n more keys; its MLP maps n embeddings of the key/value width to every layer's key/values."""
    s, n, d, vocab = 32, 5, H // HEADS, len(tokenizer)
    base_model = llama(tokenizer)
    linear = sum(m.in_features * m.out_features for m in base_model.modules() if isinstance(m, nn.Linear))
    kv = KV_HEADS * d

    def attention(queries: int, keys: int) -> int:
        return L * 2 * (2 * HEADS * queries * keys * d)  # QKᵀ and AV in every layer

    base = forward_flops(base_model, batch_size=1, seq_len=s, vocab_size=vocab)
    assert base == 2 * s * linear + attention(s, s)
    longer = 2 * (s + n) * linear + attention(s + n, s + n) - base
    p_tuning_mlp = 2 * n * (H * 768 + 768 * 768 + 768 * H)
    prefix_mlp = 2 * n * (kv * 512 + 512 * 2 * L * kv)
    for name, extra in [("prompt_tuning", longer), ("p_tuning", longer + p_tuning_mlp),
                        ("prefix_tuning", attention(s, s + n) - attention(s, s) + prefix_mlp)]:
        model = resolve_method(name, {"num_virtual_tokens": n}).apply(llama(tokenizer))
        assert forward_flops(model, batch_size=1, seq_len=s, vocab_size=vocab) - base == extra, name


def _counted(step) -> tuple[int, set[str]]:
    """FLOPs of `step()` and the ops that carried them."""
    counter = flop_counter()
    with counter:
        step()
    return counter.get_total_flops(), {str(op) for op in counter.get_flop_counts()["Global"]}


def test_fused_lstm_kernels_count_as_their_per_step_products():
    """float32 LSTMs on CPU run in one oneDNN kernel, which torch's counter has no formula for: they
    counted 0 FLOPs, while with oneDNN off (or in bfloat16 on CPUs without bf16 kernels) torch
    decomposes them into per-step `addmm`s, which were counted. Both must give the hand count;
    cuDNN's formula, fed the same weights, too."""
    from torch.utils.flop_counter import flop_registry

    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN kernel to check")
    steps, batch, inp, hid, proj = 5, 3, 8, 16, 4
    # 2 layers × 2 directions, each token: x·W_ihᵀ (4·hid × in) + h·W_hhᵀ (4·hid × hid); layer 2 reads 2·hid
    hand = 2 * steps * batch * 4 * hid * ((inp + hid) * 2 + (2 * hid + hid) * 2)

    def forward_and_backward(fused: bool) -> tuple[int, int, set[str]]:
        torch.manual_seed(0)
        lstm = nn.LSTM(inp, hid, num_layers=2, bidirectional=True, batch_first=True)
        x = torch.randn(batch, steps, inp, requires_grad=True)
        out = []
        with torch.backends.mkldnn.flags(enabled=fused):
            forward, ops = _counted(lambda: out.append(lstm(x)[0]))
            backward, _ = _counted(lambda: out[0].sum().backward())
        return forward, backward, ops

    fused, fused_back, fused_ops = forward_and_backward(True)
    decomposed, decomposed_back, decomposed_ops = forward_and_backward(False)
    assert fused_ops == {"aten.mkldnn_rnn_layer"} and decomposed_ops == {"aten.addmm", "aten.mm"}  # both paths ran
    assert fused == decomposed == hand
    # backward: input and weight gradients, 2× forward; oneDNN also computes the initial state's
    # gradient, which autograd skips for the decomposition's zero h₀ (one h·W_hhᵀ per layer and direction)
    assert fused_back == 2 * hand == decomposed_back + 4 * 2 * batch * 4 * hid * hid

    lstm = nn.LSTM(inp, hid, num_layers=2, bidirectional=True, proj_size=proj)  # oneDNN has no projection
    x = torch.randn(steps, batch, inp)
    forward, ops = _counted(lambda: lstm(x))
    assert "aten.mkldnn_rnn_layer" not in ops
    assert forward == 2 * steps * batch * 2 * (4 * hid * (inp + proj) + 4 * hid * (2 * proj + proj) + 2 * proj * hid)
    cudnn, cudnn_back = flop_registry[torch.ops.aten._cudnn_rnn], flop_registry[torch.ops.aten._cudnn_rnn_backward]
    w = lstm._flat_weights
    assert cudnn(x, w, 5, None, None, None, 2, hid, proj, 2, False, 0.0, False, True, [], None) == forward
    backward_args = (x, w, 5, None, None, None, None, None, None, None, 2, hid, proj, 2, False, 0.0, True, True, [],
                     None, None)
    assert cudnn_back(*backward_args, [True, False, False, True]) == 2 * forward  # weights' gradients too
    assert cudnn_back(*backward_args, output_mask=[True, True, False, False]) == forward


def test_grouped_products_count_as_the_per_group_products_they_replace():
    """`_grouped_mm` (and transformers' looping stand-in, an opaque op) had no formula: a mixture of
    experts' expert products counted 0. Forward and backward must count as a loop of `mm`s over
    the groups, counted by torch's own `mm` formula."""
    import transformers.integrations.moe  # noqa: F401 (registers transformers' stand-in op)

    torch.manual_seed(0)
    rows, k, n, offs = 12, 16, 8, [3, 3, 7, 12]  # 4 experts, the second gets no rows
    weight = torch.randn(len(offs), k, n, requires_grad=True)
    x = torch.randn(rows, k, requires_grad=True)
    offsets = torch.tensor(offs, dtype=torch.int32)

    def looped() -> torch.Tensor:
        return torch.cat([x[a:b] @ weight[g] for g, (a, b) in enumerate(zip([0, *offs[:-1]], offs, strict=True))])

    candidates = {"_grouped_mm": lambda: torch._grouped_mm(x, weight, offs=offsets),
                  "transformers' fallback": lambda: torch.ops.transformers.grouped_mm_fallback(x, weight, offsets)}
    (reference, _), (reference_back, _) = _forward_backward(looped)
    assert reference == 2 * rows * k * n and reference_back == 2 * reference
    for name, grouped in candidates.items():
        (forward, ops), (backward, _) = _forward_backward(grouped)
        assert "aten.mm" not in ops, name  # the grouped op itself was counted, not a decomposition
        assert (forward, backward) == (reference, reference_back), name
    batched = torch.randn(len(offs), 5, k)  # 3-D × 3-D: a batch of products
    forward, _ = _counted(lambda: torch._grouped_mm(batched, weight))
    assert forward == _counted(lambda: torch.bmm(batched, weight))[0]


def _forward_backward(product) -> tuple[tuple[int, set[str]], tuple[int, set[str]]]:
    """Counts of `product()`'s forward and of its backward (gradients of every input that has one)."""
    out = []
    forward = _counted(lambda: out.append(product()))
    backward = _counted(lambda: (out[0] * out[0].detach()).sum().backward())  # a grad_output with strides
    return forward, backward


def test_mixture_of_experts_layers_count_their_experts():
    """A tiny Mixtral (4 experts, top 2) in transformers' default grouped experts and in its eager
    loop, and from its config on the meta device: one count, the hand count's."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from peftbench.costs.from_config import cost_from_config

    s, experts, top, ff, vocab = 32, 4, 2, 128, 512
    config = MixtralConfig(hidden_size=H, intermediate_size=ff, num_hidden_layers=L, num_attention_heads=HEADS,
                           num_key_value_heads=KV_HEADS, vocab_size=vocab, num_local_experts=experts,
                           num_experts_per_tok=top)
    d = H // HEADS
    per_token = L * (H * H * 2 + H * KV_HEADS * d * 2 + H * experts + top * 3 * H * ff) + H * vocab
    hand = 2 * s * per_token + L * 2 * (2 * HEADS * s * s * d)
    counts = {}
    for implementation in ("grouped_mm", "eager"):
        torch.manual_seed(0)
        model = MixtralForCausalLM._from_config(config, experts_implementation=implementation).eval()
        assert model.config._experts_implementation == implementation
        counts[implementation] = (forward_flops(model, batch_size=1, seq_len=s, vocab_size=vocab),
                                  train_step_flops(model, batch_size=1, seq_len=s, vocab_size=vocab))
    assert counts["grouped_mm"] == counts["eager"] and counts["eager"][0] == hand
    config._experts_implementation = None  # the default, as a config read from disk has it
    (row,) = cost_from_config(config, ["bitfit"], seq_len=s)
    assert row["base_tflops"] * 1e12 == hand


@torch.library.custom_op("peftbench_test::fused_mm", mutates_args=())
def _fused_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A matrix product in a kernel the counter has no formula for, as a new fused kernel would be."""
    return a @ b


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_no_op_that_multiplies_matrices_runs_uncounted(tokenizer, architecture):
    """Every method (and peft's plain prompt tuners) through the forward, the training step and the
    decoder the costs count: no op whose name says it multiplies matrices runs without a formula.
    A library release that moves a model onto a new fused kernel fails here instead of counting 0;
    the guard itself must see such an op."""
    build = {"llama": llama, "gpt2": gpt2}[architecture]
    vocab = len(tokenizer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncountedFlopsWarning)
        for name, args in METHOD_CASES:
            model = resolve_method(name, args).apply(build(tokenizer))
            forward_flops(model, batch_size=1, seq_len=8, vocab_size=vocab)
            if any(p.requires_grad for p in model.parameters()):  # as the costs count it
                train_step_flops(model, batch_size=1, seq_len=8, vocab_size=vocab)
            flops_per_generated_token(model, context_len=8, new_tokens=1, vocab_size=vocab)
    with pytest.warns(UncountedFlopsWarning, match="peftbench_test.fused_mm"), flop_counter():
        torch.ops.peftbench_test.fused_mm(torch.ones(2, 3), torch.ones(3, 4))
    names = ["aten._grouped_mm", "aten.mkldnn_rnn_layer", "aten._addmm_activation", "aten._weight_int4pack_mm",
             "bitsandbytes.int8_linear_matmul", "flash_attn._flash_attn_forward", "aten.cudnn_convolution",
             "aten.cummax", "aten.cumsum", "aten.mul", "aten._convert_indices_from_coo_to_csr", "c10d.comm_split"]
    assert [multiplies_matrices(n) for n in names] == [True] * 7 + [False] * 5


def test_p_tuning_lstm_encoder_costs_the_same_in_float32_as_from_the_config(tokenizer):
    """The run path counts real float32 tensors (oneDNN's LSTM); costing from the config counts fake
    ones (decomposed): P-tuning with the paper's LSTM encoder must get one figure from both."""
    from transformers import LlamaForCausalLM

    args = {"num_virtual_tokens": 10, "encoder_hidden_size": 32, "encoder_reparameterization_type": "LSTM"}
    real = resolve_method("p_tuning", args).apply(llama(tokenizer))
    with torch.device("meta"):
        fake = resolve_method("p_tuning", args).apply(LlamaForCausalLM(llama(tokenizer).config).eval())
    counts = [forward_flops(m, batch_size=1, seq_len=32, vocab_size=len(tokenizer)) for m in (real, fake)]
    mlp = forward_flops(resolve_method("p_tuning", {**args, "encoder_reparameterization_type": "MLP"})
                        .apply(llama(tokenizer)), batch_size=1, seq_len=32, vocab_size=len(tokenizer))
    assert counts[0] == counts[1] > mlp


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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the heap behaviour reproduced is glibc's")
def test_a_runs_cpu_peak_sees_memory_the_heap_had_freed_before_it():
    """A worker measures a method's costs, then trains: the training's tensors fit in heap pages freed
    earlier, which the resident set still holds, so its high-water mark did not grow and 33 of the
    quickstart's 48 trained runs reported less than weights + gradients + AdamW state (full fine-tuning:
    the weights alone). Reproduced in a fresh process with glibc's default allocator settings: after an
    8 MiB block is freed twice (glibc raises its mmap threshold after the first, so the second stays in
    the heap), a 6 MiB tensor kept through the phase counts nothing without returning the free heap
    first (which shows the reuse happened), and 6 MiB with it."""
    import os
    import subprocess
    import sys

    code = (
        "import sys, torch; from torch import nn; from peftbench.costs import memory\n"
        "if sys.argv[1] == 'keep': memory._return_free_heap = lambda: False\n"
        "MB = 2 ** 20; model = nn.Linear(4, 4)\n"
        "for _ in range(2):\n    block = torch.ones(8 * MB // 4); del block\n"
        "with memory.peak_memory(torch.device('cpu'), model) as peak:\n    kept = torch.ones(6 * MB // 4)\n"
        "print(peak.peak_bytes, peak.source)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith(("MALLOC_", "GLIBC_"))}

    def measured(heap: str) -> tuple[int, str]:
        out = subprocess.run([sys.executable, "-c", code, heap], capture_output=True, text=True, timeout=300,
                             check=True, env=env)
        peak, source = out.stdout.split()
        return int(peak), source

    weights = 4 * 4 * 4 + 4 * 4
    assert measured("keep")[0] < 2**20
    peak, source = measured("return")
    assert 6 * 2**20 + weights <= peak < 8 * 2**20 and source == "cpu_trimmed_rss_hwm_delta+weights"


def test_energy_is_the_runs_gpus_counter_found_by_uuid(monkeypatch):
    """A Slurm job sees its GPU as cuda:0 (CUDA_VISIBLE_DEVICES=3); NVML numbers every GPU of the
    node, so reading NVML's device 0 reported another job's energy. The meter asks NVML for the GPU
    with torch's UUID and reports the counter's difference in joules; no counter, no figure."""
    import sys
    from types import SimpleNamespace

    from peftbench.costs.energy import EnergyMeter

    millijoules = iter([1_000, 2_000, 5_500, 9_000, 9_500])
    opened: list[str] = []
    nvml = SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByUUID=lambda uuid: opened.append(uuid) or uuid,
                           nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(millijoules))
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=f"uuid-of-visible-{i}"))
    with EnergyMeter(torch.device("cuda")) as meter:  # the current device: visible index 1
        pass
    assert opened == ["GPU-uuid-of-visible-1"] and meter.joules == 3.5
    assert EnergyMeter(torch.device("cuda", 0))._handle == "GPU-uuid-of-visible-0"  # index 0 is not "unset"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid="GPU-prefixed"))
    assert EnergyMeter(torch.device("cuda", 0))._handle == "GPU-prefixed"  # whichever form torch gives

    def no_counter(handle):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    monkeypatch.setattr(nvml, "nvmlDeviceGetTotalEnergyConsumption", no_counter)
    with EnergyMeter(torch.device("cuda", 0)) as meter:
        pass
    assert meter.joules is None
    with EnergyMeter(torch.device("cpu")) as meter:
        pass
    assert meter.joules is None


def test_latency_is_a_hand_computation_on_a_clock_the_forwards_move(tokenizer, monkeypatch):
    """Latency is timed, so a test cannot know its value unless it owns the clock: here each forward
    of the model moves a fake clock by 0.25 s for a prompt and 0.0625 s for one decoded token, so
    prefill_s must be 0.25 and per_token_s 0.0625, through the same decoder evaluation uses. The
    prefill's warm-up and first repeat take 1 s more: the warm-up is dropped, the median taken."""
    from types import SimpleNamespace

    from peftbench.costs import latency

    now, calls = [0.0], [0]
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    model = llama(tokenizer)

    def tick(module, args, kwargs):
        calls[0] += 1
        now[0] += (0.25 if kwargs["input_ids"].shape[1] > 1 else 0.0625) + (1.0 if calls[0] <= 2 else 0.0)

    model.register_forward_pre_hook(tick, with_kwargs=True)
    timed = latency.measure_latency(model, prefill_len=12, new_tokens=4, repeats=3, vocab_size=len(tokenizer))
    assert timed == {"prefill_s": 0.25, "per_token_s": 0.0625}


def test_adapter_bytes_are_the_saved_tensors_and_config_by_hand(tokenizer, tmp_path):
    """Each paper method's and full fine-tuning's adapter_bytes: a safetensors file of exactly the
    hand-counted float32 values (8-byte length, JSON header, 4 bytes a value) plus its config files
    (full: config.json and generation_config.json), and not peft's model card,
    which is kept on disk. The tiny Llama: hidden 64, feed-forward 128, 2 layers, key/value width 32,
    every bias present."""
    import json as _json
    import struct

    from conftest import FF, KV, adapted

    from peftbench.runner.run import MODEL_CARD, _save_adapter

    values = {
        "lora": L * 16 * ((H + KV) * 2 + (FF + H)),  # r 16 on k_proj, v_proj (in H, out KV), down_proj
        "ia3": L * (KV + KV + FF),  # k_proj and v_proj outputs, down_proj inputs
        "prompt_tuning": 100 * H,
        "prefix_tuning": 32 * L * 2 * KV,  # the prefix itself: peft saves the projection's output
        "p_tuning": 100 * H,  # likewise the encoder's output
        "ln_tuning": (2 * L + 1) * H,
        "bitfit": L * (H + KV + KV + H + FF + FF + H),  # q, k, v, o, gate, up, down biases
        "full": sum(p.numel() for p in llama(tokenizer).parameters()),  # every weight, with its config files
    }
    for name, count in values.items():
        saved = tmp_path / name
        size = _save_adapter(resolve_method(name), adapted(tokenizer, name, {}), saved, keep=True)
        (weights,) = saved.glob("*.safetensors")
        raw = weights.read_bytes()
        header = struct.unpack("<Q", raw[:8])[0]
        dtypes = {v["dtype"] for k, v in _json.loads(raw[8:8 + header]).items() if k != "__metadata__"}
        assert dtypes == {"F32"} and len(raw) == 8 + header + 4 * count, name
        configs = [p for p in saved.iterdir() if p.suffix == ".json"]
        assert size == len(raw) + sum(p.stat().st_size for p in configs), name
        assert {p.name for p in saved.iterdir()} - {weights.name, *(p.name for p in configs)} <= {MODEL_CARD}, name
    base = resolve_method("base")  # nothing trained: a one-line record of the method, nothing else
    assert _save_adapter(base, base.apply(llama(tokenizer)), tmp_path / "base", keep=False) == len('{"method": "base"}')


def test_adapter_bytes_do_not_depend_on_where_the_model_is_kept(builtin_model_dir, tmp_path, no_hub_lookup):
    """peft writes the base model's name into every adapter config. Loaded from two copies of one
    model under paths of different lengths (a cache snapshot on two machines), the same method must
    save the same bytes, naming the model as the config does, and without looking that name up on
    the hub (peft's embedding check does unless told not to)."""
    import json as _json
    import shutil

    from peftbench.config import ModelConfig
    from peftbench.modeling import ModelSource, load_model
    from peftbench.runner.run import _save_adapter

    homes = [tmp_path / "a", tmp_path / "a-much-longer-home" / "snapshots" / "0123456789abcdef"]
    # peft reads the name from different objects for the first two; transformers leaves it out of a
    # full model's config.json today, which this would catch if it changed
    for method in ("lora", "prompt_tuning", "full"):
        saved = []
        for i, home in enumerate(homes):
            if not home.exists():
                shutil.copytree(builtin_model_dir, home)
            model = load_model(ModelSource("org/model", str(home), None, True), ModelConfig(), torch.device("cpu"))
            spec = resolve_method(method)
            torch.manual_seed(0)
            target = tmp_path / f"{method}-{i}"
            size = _save_adapter(spec, spec.apply(model), target, keep=True)
            if method != "full":
                config = _json.loads((target / "adapter_config.json").read_text())
                assert config["base_model_name_or_path"] == "org/model", method
            saved.append((size, {p.name: p.read_bytes() for p in target.glob("*.json")}))
        assert saved[0] == saved[1], method


# --- costing from a config ------------------------------------------------------------------------------

from peftbench.costs.from_config import cost_from_config, load_model_config  # noqa: E402


def by_method(rows):
    return {r["method"]: r for r in rows}


def test_config_costing_matches_closed_forms_llama_and_gpt2(tmp_path):
    import json as _json

    path = tmp_path / "config.json"
    path.write_text(_json.dumps({"model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
                                 "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
                                 "vocab_size": 1000, "tie_word_embeddings": False}))
    h, ff, layers, kv = 256, 512, 3, 2 * 256 // 8
    rows = by_method(cost_from_config(load_model_config(str(path)), ["lora", "ia3", "bitfit", "prefix_tuning"],
                                      seq_len=64))
    assert rows["lora"]["trainable_params"] == layers * 16 * ((h + kv) * 2 + (ff + h))
    assert rows["ia3"]["trainable_params"] == layers * (kv + kv + ff)
    assert rows["ia3"]["variants"][0]["trainable_params"] == layers * (kv + kv + h)
    assert rows["bitfit"]["trainable_params"] == layers * (h + kv)  # zero biases added to q_proj, v_proj
    assert rows["prefix_tuning"]["trainable_params"] == 32 * kv + (kv * 512 + 512) + (512 * layers * 2 * kv
                                                                                      + layers * 2 * kv)
    assert rows["lora"]["extra_tflops"] == 0 and rows["lora"]["extra_tflops_unmerged"] > 0
    assert rows["prefix_tuning"]["extra_tflops"] > 0

    path.write_text(_json.dumps({"model_type": "gpt2", "n_embd": 128, "n_layer": 2, "n_head": 4, "vocab_size": 500}))
    rows = by_method(cost_from_config(load_model_config(str(path)), ["lora", "bitfit", "ln_tuning"], seq_len=32))
    assert rows["lora"]["trainable_params"] == 2 * (16 * (128 + 384) + 16 * (512 + 128))
    assert rows["bitfit"]["trainable_params"] == 2 * (128 + 384 + 128 + 128 + 512 + 128) + 128
    assert rows["ln_tuning"]["trainable_params"] == (2 * 2 + 1) * 2 * 128


@pytest.mark.slow
def test_llama3_8b_reconciles_with_the_paper():
    rows = by_method(cost_from_config(load_model_config("llama3-8b"), [
        "lora", "prompt_tuning", "prefix_tuning", "ln_tuning", "bitfit", "ia3", "p_tuning"]))
    exact = {"lora": 14_680_064, "prompt_tuning": 409_600, "prefix_tuning": 34_177_536, "ln_tuning": 266_240,
             "bitfit": 163_840}
    for name, count in exact.items():
        assert rows[name]["trainable_params"] == count, name
    assert rows["ia3"]["trainable_params"] == 32 * (1024 + 1024 + 14336)
    assert rows["ia3"]["variants"][0]["trainable_params"] == 196_608
    assert rows["p_tuning"]["trainable_params"] == 7_296_512
    assert rows["p_tuning"]["variants"][0]["trainable_params"] == 53_130_752
    assert rows["lora"]["total_params"] - 14_680_064 == 8_030_261_248
    assert abs(rows["lora"]["base_tflops"] / 8.38 - 1) <= 0.10
    assert abs(rows["prompt_tuning"]["extra_tflops"] / 1.67 - 1) <= 0.15
    assert rows["prefix_tuning"]["extra_tflops"] == pytest.approx(0.01, abs=0.005)
    for name in ("lora", "ln_tuning", "bitfit", "ia3"):
        assert rows[name]["extra_tflops"] == 0.0, name
    # and exactly, by hand from the shapes (2 FLOPs per multiply-add): every linear weight with the LM
    # head, 7,504,658,432; attention per layer QKᵀ and AV, 2 × 2 × 32 heads × n² × 128 for n tokens
    linear = 32 * (4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336) + 128256 * 4096
    assert linear == 7_504_658_432

    def attention(n: int, extra_keys: int = 0) -> int:
        return 32 * 2 * 2 * 32 * n * (n + extra_keys) * 128

    assert rows["lora"]["base_tflops"] * 1e12 == pytest.approx(2 * 512 * linear + attention(512), rel=1e-12)
    assert rows["prompt_tuning"]["extra_tflops"] * 1e12 == pytest.approx(  # 100 virtual tokens more
        2 * 100 * linear + attention(612) - attention(512), rel=1e-12)
    prefix_mlp = 2 * 32 * (1024 * 512 + 512 * 32 * 2 * 1024)  # 32 prefix tokens through the 2-layer MLP
    assert rows["prefix_tuning"]["extra_tflops"] * 1e12 == pytest.approx(
        attention(512, 32) - attention(512) + prefix_mlp, rel=1e-12)
    assert rows["lora"]["extra_tflops_unmerged"] * 1e12 == pytest.approx(2 * 512 * 14_680_064, rel=1e-12)


def test_counts_from_shallow_copies_are_the_full_models(tmp_path, monkeypatch):
    """`by_depth` counts a deep model from copies of 1, 2 and 3 layers where its layers are built
    alike: on a 4-layer Llama, every paper method and variant gets the full model's own forward
    counts, merged and unmerged (and a training step's, for two of them), and the copies were what it
    counted. Where the layers differ (an adapter on one layer, two layer types) it counts the full
    model. (P-tuning's LSTM variant is left out for time, 5 s a count: its encoder sits outside the
    layers as the MLP encoder checked here does.)"""
    import json as _json

    from peftbench.costs import from_config
    from peftbench.costs.from_config import VARIANTS, by_depth, skeleton
    from peftbench.methods import paper_methods, resolve_method

    dims = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 1000, "tie_word_embeddings": False}
    path = tmp_path / "config.json"
    path.write_text(_json.dumps({"model_type": "llama", **dims}))
    config = load_model_config(str(path))
    depths: list[int] = []
    shallow = from_config._with_depth
    monkeypatch.setattr(from_config, "_with_depth", lambda c, n: depths.append(n) or shallow(c, n))

    def check(method, config, shortcut: bool, step: bool = False) -> None:
        def build(shape):
            return method.apply(skeleton(shape))

        def counts(model):
            forward = [forward_flops(model, batch_size=1, seq_len=16, vocab_size=1000)]
            if method.mergeable:
                with method.merged(model):
                    forward.append(forward_flops(model, batch_size=1, seq_len=16, vocab_size=1000))
            return (*forward, *([train_step_flops(model, batch_size=2, seq_len=8, vocab_size=1000)] if step else []))

        depths.clear()
        assert by_depth(build(config), config, build, counts) == counts(build(config)), method.name
        assert depths == ([1, 2, 3] if shortcut else []), method.name

    for name in paper_methods():
        for args in [{}, *(args for _, args in VARIANTS.get(name, []) if name != "p_tuning")]:
            check(resolve_method(name, args), config, shortcut=True, step=name in ("lora", "prefix_tuning"))
    check(resolve_method("lora", {"layers_to_transform": [3]}), config, shortcut=False)
    path.write_text(_json.dumps({"model_type": "qwen2", **dims, "use_sliding_window": True, "sliding_window": 8,
                                 "layer_types": ["full_attention", "sliding_attention"] * 2}))
    check(resolve_method("lora"), load_model_config(str(path)), shortcut=False)


# --- training FLOPs, memory ------------------------------------------------------------------------------

from peftbench.costs.memory import analytic_training_memory, measure_training_memory  # noqa: E402


class LMStack(nn.Module):
    """A linear stack with a causal-LM-style loss, for hand-countable training FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.hidden = nn.Linear(16, 32, bias=False)
        self.head = nn.Linear(32, 50, bias=False)

    def forward(self, input_ids, labels=None, **kwargs):
        logits = self.head(torch.relu(self.hidden(self.embed(input_ids))))
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten()) if labels is not None else None
        return type("Out", (), {"loss": loss, "logits": logits})()


def test_train_step_flops_by_hand():
    model, tokens = LMStack(), 2 * 8
    forward = 2 * tokens * (16 * 32 + 32 * 50)
    # backward: gradients w.r.t. both weights (1× forward) and w.r.t. the inputs of both layers (1×)
    assert train_step_flops(model, batch_size=2, seq_len=8, vocab_size=50) == 3 * forward
    model.head.weight.requires_grad_(False)  # a frozen head still passes gradients through
    assert train_step_flops(model, batch_size=2, seq_len=8, vocab_size=50) == 3 * forward - 2 * tokens * 32 * 50


@pytest.mark.parametrize(("attention", "attention_factor"), [("eager", 3), ("sdpa", 3.5)])
def test_train_step_flops_of_full_fine_tuning_on_llama_by_hand(tokenizer, attention, attention_factor):
    """One step of full fine-tuning on the Llama, batch 2 × 64 tokens, from its shapes. Linear layers:
    forward 2·T·in·out each, backward twice that (gradients w.r.t. weight and input). Attention, per
    layer, two matmuls (Q·Kᵀ and A·V) of 2·B·heads·S²·head_dim each: eager backward twice the forward;
    SDPA's backward formula counts the scores recomputed as a fused kernel does, 2.5× the forward."""
    model = llama(tokenizer).train()
    model.set_attn_implementation(attention)
    batch, seq, head_dim = 2, 64, H // HEADS
    linears = L * (H * H + 2 * H * KV + H * H + 3 * H * FF) + H * len(tokenizer)
    lin = 2 * batch * seq * linears
    att = L * 2 * (2 * batch * HEADS * seq * seq * head_dim)
    flops = train_step_flops(model, batch_size=batch, seq_len=seq, vocab_size=len(tokenizer))
    assert flops == 3 * lin + attention_factor * att


def test_analytic_training_memory_by_hand():
    """The estimate's parts on the linear stack, batch 2 × 8 = 16 tokens, counted by hand. Saved for
    backward, each storage once and weights excluded: the int64 ids (the embedding's indices and the
    loss's targets are one tensor), the embedding's output (the hidden layer's input), the ReLU's
    output (its own backward and the head's input), the log-softmax output and the loss's 4-byte
    total weight."""
    model = LMStack()
    weights = 4 * (50 * 16 + 16 * 32 + 32 * 50)
    activations = 16 * 8 + 4 * 16 * 16 + 4 * 16 * 32 + 4 * 16 * 50 + 4
    assert analytic_training_memory(model, batch_size=2, seq_len=8, vocab_size=50) == {
        "weights": weights, "gradients": weights, "optimizer": 2 * weights, "activations": activations,
        "total": 4 * weights + activations}
    model.embed.weight.requires_grad_(False)  # frozen: no gradient, no AdamW state
    trainable = 4 * (16 * 32 + 32 * 50)
    estimate = analytic_training_memory(model, batch_size=2, seq_len=8, vocab_size=50)
    assert (estimate["gradients"], estimate["optimizer"]) == (trainable, 2 * trainable)
    assert estimate["total"] == weights + 3 * trainable + estimate["activations"]


def test_flops_per_generated_token(tokenizer):
    model = llama(tokenizer)
    per_token = flops_per_generated_token(model, context_len=16, new_tokens=4, vocab_size=len(tokenizer))
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    # each new token: 2·(linear weights), plus QKᵀ and AV over the cache: the i-th attends 16 + i keys
    attention = sum(L * 2 * (2 * HEADS * (H // HEADS) * (16 + i)) for i in range(1, 5)) / 4
    assert per_token == pytest.approx(2 * linear + attention)


@pytest.mark.parametrize("name,args", [("prompt_tuning", {"num_virtual_tokens": 5}),
                                       ("p_tuning", {"num_virtual_tokens": 5}),
                                       ("prefix_tuning", {"num_virtual_tokens": 5})])
def test_flops_per_generated_token_with_virtual_tokens(tokenizer, name, args):
    """Each new token attends the 5 virtual tokens (or prefix key/values) besides the prompt and
    the tokens before it; the prompt encoder or prefix MLP runs once per sequence, not per token."""
    base = llama(tokenizer)
    linear = sum(m.in_features * m.out_features for m in base.modules() if isinstance(m, nn.Linear))
    model = resolve_method(name, args).apply(base)
    per_token = flops_per_generated_token(model, context_len=16, new_tokens=4, vocab_size=len(tokenizer))
    attention = sum(L * 2 * (2 * HEADS * (H // HEADS) * (5 + 16 + i)) for i in range(1, 5)) / 4
    assert per_token == pytest.approx(2 * linear + attention)


def test_flops_per_generated_token_of_unmerged_lora(tokenizer):
    """LoRA is decoded unmerged, as the evaluation decodes it: each new token also runs both low-rank
    factors of every adapted layer, 2·r·(in + out) FLOPs per layer, 2 per adapter parameter."""
    base = llama(tokenizer)
    linear = sum(m.in_features * m.out_features for m in base.modules() if isinstance(m, nn.Linear))
    model = resolve_method("lora", {"r": 4, "target_modules": ["q_proj", "down_proj"]}).apply(base)
    per_token = flops_per_generated_token(model, context_len=16, new_tokens=4, vocab_size=len(tokenizer))
    attention = sum(L * 2 * (2 * HEADS * (H // HEADS) * (16 + i)) for i in range(1, 5)) / 4
    adapters = L * (4 * (H + H) + 4 * (FF + H))
    assert per_token == pytest.approx(2 * linear + attention + 2 * adapters)


def medium_llama(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024,
                                        num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                                        tie_word_embeddings=False))


def test_live_tensor_peak_by_hand():
    """The CPU protocol's counter: a storage counts from the op that creates it until it is freed;
    views, in-place results and outputs that share an input's storage (aten._unsafe_view declares
    no alias) allocate nothing. Plus the model's weights, resident before."""
    from peftbench.costs.memory import live_tensor_peak

    model = nn.Linear(10, 10, bias=False)  # 400 bytes
    with live_tensor_peak(model) as peak:
        a = torch.ones(1000)  # 4000 live
        b = torch.ones(500)  # 6000
        del a  # 2000
        c = b.view(10, 50)
        b.add_(1)
        d = torch.ops.aten._unsafe_view(c, [500])
        e = torch.ones(2000)  # 10000: the peak
        del b, c, d, e  # 0
        f = torch.ones(100) * 2  # 400 + 400, then 400
    assert peak.peak_bytes == 10000 + 400 and f.sum() == 200
    assert peak.source.startswith("cpu_live_tensor_peak")


def test_measured_training_memory_is_the_heaps_and_does_not_depend_on_what_ran_before(tokenizer):
    """The fixed protocol's CPU figure is the same after the process allocated and freed 256 MiB
    (the resident-set high-water mark it replaced gave 28-61 MiB for one method, by history). The
    C library's own count of bytes in use (glibc's mallinfo2, sampled after every op) is a second
    reference: tensors are nearly all a training step allocates (measured: within 1 %)."""
    import ctypes

    from torch.utils._python_dispatch import TorchDispatchMode

    from peftbench.costs import memory

    model = resolve_method("lora").apply(medium_llama(tokenizer))

    def measure() -> int:
        return measure_training_memory(model, batch_size=2, seq_len=64, steps=2, vocab_size=len(tokenizer),
                                       device=torch.device("cpu")).peak_bytes

    first = measure()
    big = torch.ones(64 * 1024 * 1024)
    big.add_(1)
    del big
    assert measure() == first

    libc = ctypes.CDLL(None)
    if not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc: no mallinfo2")

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd  # heap chunks in use + mmapped chunks

    class Sampled(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.start, self.peak = in_use(), 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.peak = max(self.peak, in_use() - self.start)
            return out

    @contextmanager
    def heap_peak(model):
        result, sampled = memory.MemoryPeak(), Sampled()
        with sampled:
            yield result
        result.peak_bytes = sampled.peak + memory.resident_bytes(model)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(memory, "live_tensor_peak", heap_peak)
        heap = measure()
    weights = memory.resident_bytes(model)  # in both figures alike: compare what the steps allocated
    assert heap - weights == pytest.approx(first - weights, rel=0.03)


def test_memory_is_positive_and_full_fine_tuning_costs_more_than_lora(tokenizer):
    """Measured and estimated memory, two independent counts, bound each other: when a later step's
    loss is computed, the weights, the AdamW state and every activation saved for backward are
    alive together (gradients not yet), so the measured peak is at least the estimate less its
    gradients."""
    figures = {}
    for name in ("full", "lora", "prefix_tuning"):
        model = resolve_method(name).apply(medium_llama(tokenizer))
        estimate = analytic_training_memory(model, batch_size=2, seq_len=64, vocab_size=len(tokenizer))
        measured = measure_training_memory(model, batch_size=2, seq_len=64, steps=2, vocab_size=len(tokenizer),
                                           device=torch.device("cpu"))
        figures[name] = (estimate, measured.peak_bytes)
        assert "fixed protocol" in measured.source
        assert measured.peak_bytes >= estimate["total"] - estimate["gradients"], name
    (full, full_measured), (lora, lora_measured) = figures["full"], figures["lora"]
    assert full["gradients"] == sum(p.numel() * 4 for p in medium_llama(tokenizer).parameters())
    assert full["optimizer"] == 2 * full["gradients"] and lora["gradients"] < full["gradients"] / 20
    assert full["total"] > lora["total"] and full_measured > lora_measured
    assert full["activations"] > 0
