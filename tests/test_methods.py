"""Every registered method: exact trainable-parameter counts (closed form), target resolution across
architectures, BitFit's zero-initialised biases, and save → load → predict identity."""

from __future__ import annotations

import pytest
import torch
from conftest import FF, KV, H, L, gpt2, llama, qwen2

from peftbench.costs import count_parameters
from peftbench.errors import PeftbenchError
from peftbench.methods import METHODS, Shape, paper_methods, resolve_method


def n_trainable(model) -> int:
    return count_parameters(model)[0]


def test_the_paper_methods_are_tagged_in_the_papers_order():
    assert paper_methods() == ["lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "ln_tuning", "bitfit"]


def test_closed_forms_by_hand():
    """The methods' own closed forms against sums written out for the tiny Llama with biases
    (h=64, i=128, L=2, KV width 32), default arguments: the formulas are themselves checked."""
    shape = Shape.of(llama_config())
    r = 16
    by_hand = {
        "lora": L * (r * (H + KV) * 2 + r * (FF + H)),  # k_proj, v_proj: A (r×h) + B (kv×r); down_proj
        "ia3": L * (KV + KV + FF),  # k, v outputs scaled; down_proj is feed-forward: its inputs scaled
        "prompt_tuning": 100 * H,
        # prefix: embedding (32 × KV width) → Linear(KV, 512) → Tanh → Linear(512, L·2·KV)
        "prefix_tuning": 32 * KV + (KV * 512 + 512) + (512 * L * 2 * KV + L * 2 * KV),
        # P-tuning MLP encoder: embedding 100×h, Linear(h,768), Linear(768,768), Linear(768,h)
        "p_tuning": 100 * H + (H * 768 + 768) + (768 * 768 + 768) + (768 * H + H),
        "ln_tuning": (2 * L + 1) * H,  # RMSNorm weights: two per layer and the final one
        "bitfit": L * (H + KV + KV + H + FF + FF + H),  # biases of q, k, v, o, gate, up, down
        "base": 0,
    }
    for name, count in by_hand.items():
        assert resolve_method(name).closed_form_params(shape) == count, name


def llama_config(bias: bool = True):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=320, hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                       num_attention_heads=4, num_key_value_heads=2, attention_bias=bias, mlp_bias=bias,
                       tie_word_embeddings=False)


@pytest.mark.parametrize("bias", [True, False], ids=["biases", "no-biases"])
@pytest.mark.parametrize("name", METHODS.names())
def test_trainable_parameters_match_the_methods_closed_form(tokenizer, name, bias):
    """Every registered method states its parameter count in closed form; peft's count must agree."""
    model = llama(tokenizer, bias=bias)
    shape = Shape.of(model.config)
    assert shape is not None and shape.total() == count_parameters(model)[1]
    method = resolve_method(name)
    expected = method.closed_form_params(shape)
    assert expected is not None, f"{name}: a registered method must give its closed-form parameter count"
    assert n_trainable(method.apply(model)) == expected


def test_paper_defaults_are_the_method_defaults():
    assert resolve_method("lora").args == {"r": 16, "lora_alpha": 16, "lora_dropout": 0.05,
                                           "target_modules": ["k_proj", "v_proj", "down_proj"]}
    assert resolve_method("ia3").args["feedforward_modules"] == ["down_proj"]
    assert resolve_method("prompt_tuning").args == {"num_virtual_tokens": 100, "prompt_tuning_init": "SAMPLE_VOCAB"}
    assert resolve_method("prefix_tuning").args["encoder_hidden_size"] == 512
    pt = resolve_method("p_tuning").args
    assert (pt["num_virtual_tokens"], pt["encoder_hidden_size"], pt["encoder_dropout"]) == (100, 768, 0.1)
    lrs = {n: METHODS.get(n).default_lr for n in paper_methods()}
    assert lrs == {"lora": 5e-5, "ia3": 5e-5, "prompt_tuning": 3e-2, "prefix_tuning": 1e-5, "p_tuning": 1e-3,
                   "ln_tuning": 5e-5, "bitfit": 5e-5}


def test_ia3_bare_string_feedforward_is_one_name(tokenizer):
    """peft would read "down_proj" as a regex over full names and scale down_proj's outputs."""
    model = resolve_method("ia3", {"feedforward_modules": "down_proj"}).apply(llama(tokenizer))
    assert n_trainable(model) == L * (KV + KV + FF)


def test_bitfit_adds_zero_biases_to_a_model_without_any(tokenizer):
    base = llama(tokenizer, bias=False)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    before = base(input_ids=ids).logits
    model = resolve_method("bitfit").apply(base)
    assert n_trainable(model) == L * (H + KV)  # q_proj and v_proj output widths
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {f"model.layers.{i}.self_attn.{m}.bias" for i in range(L) for m in ("q_proj", "v_proj")}
    assert torch.equal(model(input_ids=ids).logits, before), "step 0 must compute exactly the base model"


def test_gpt2_targets_resolve_to_fused_modules(tokenizer):
    model = resolve_method("lora").apply(gpt2(tokenizer))
    # k_proj/v_proj → c_attn (64 → 192), down_proj → mlp.c_proj (256 → 64)
    assert n_trainable(model) == L * (16 * (H + 3 * H) + 16 * (4 * H + H))
    model = resolve_method("ia3").apply(gpt2(tokenizer))
    assert n_trainable(model) == L * (3 * H + 4 * H)
    model = resolve_method("bitfit").apply(gpt2(tokenizer))  # GPT-2 has biases: train them all
    assert n_trainable(model) == L * (H + 3 * H + H + H + 4 * H + H) + H
    model = resolve_method("ln_tuning").apply(gpt2(tokenizer))
    assert n_trainable(model) == (2 * L + 1) * 2 * H


def test_qwen2_targets_resolve(tokenizer):
    model = resolve_method("lora").apply(qwen2(tokenizer))
    assert n_trainable(model) == L * (16 * (H + KV) * 2 + 16 * (FF + H))
    model = resolve_method("bitfit").apply(qwen2(tokenizer))  # Qwen2 has q, k, v biases
    assert n_trainable(model) == L * (H + KV + KV)


def test_missing_target_is_an_error_not_a_silent_no_op(tokenizer):
    with pytest.raises(PeftbenchError, match="'q_projj' matches no module"):
        resolve_method("lora", {"target_modules": ["q_proj", "q_projj"]}).apply(llama(tokenizer))
    with pytest.raises(PeftbenchError, match="no equivalent in gpt2"):
        resolve_method("lora", {"target_modules": ["gate_proj"]}).apply(gpt2(tokenizer))


@pytest.mark.parametrize(
    "name,args,match",
    [
        ("lorra", {}, "did you mean 'lora'"),
        ("lora", {"rank": 8}, "unknown argument"),
        ("lora", {"r": "eight"}, "argument 'r'"),
        ("lora", {"r": 0}, "must be a positive integer"),
        ("bitfit", {"bias": True}, "unknown argument"),
        ("peft:NOPE", {}, "unknown peft type"),
    ],
)
def test_bad_method_config(name, args, match):
    with pytest.raises(PeftbenchError, match=match):
        resolve_method(name, args)


def test_any_peft_tuner_by_type(tokenizer):
    model = resolve_method("peft:LOHA", {"r": 8, "target_modules": ["q_proj"]}).apply(llama(tokenizer))
    # LoHa: two Hadamard factors, each (h×r + r×h) for q_proj (64 → 64)
    assert n_trainable(model) == L * 2 * (8 * H + 8 * H)


@pytest.mark.parametrize("name", METHODS.names())
def test_save_load_predict_is_identical(tokenizer, tmp_path, name):
    """Evaluation must see exactly what was trained (the reference re-initialised the prompt)."""
    from peftbench.evaluation import generate

    method = resolve_method(name)
    model = method.apply(llama(tokenizer))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    prompts = ["3 plus 4 is", "the movie was great. it was", "we talked about the rain"]
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    logits = model(input_ids=ids).logits
    outputs = generate(model, tokenizer, prompts, batch_size=2, max_new_tokens=6)
    method.save(model, tmp_path / "adapter")

    loaded = method.load(llama(tokenizer), tmp_path / "adapter")
    assert torch.equal(loaded(input_ids=ids).logits, logits)
    assert generate(loaded, tokenizer, prompts, batch_size=2, max_new_tokens=6) == outputs


def test_merged_lora_costs_no_extra_flops(tokenizer):
    from peftbench.costs import forward_flops

    base_flops = forward_flops(llama(tokenizer), batch_size=1, seq_len=64, vocab_size=len(tokenizer))
    method = resolve_method("lora")
    model = method.apply(llama(tokenizer))
    unmerged = forward_flops(model, batch_size=1, seq_len=64, vocab_size=len(tokenizer))
    with method.merged(model):
        merged = forward_flops(model, batch_size=1, seq_len=64, vocab_size=len(tokenizer))
    assert merged == base_flops
    # unmerged: x·A then ·B per adapted layer: 2·T·r·(in + out) per layer
    assert unmerged - base_flops == 2 * 64 * 16 * L * ((H + KV) * 2 + (FF + H))



@pytest.mark.parametrize("name", [n for n in METHODS.names() if not resolve_method(n).mergeable])
def test_an_unmergeable_methods_merged_forward_is_its_adapted_forward(tokenizer, name):
    """The cost measurement and `cost --model-config` take an unmergeable method's merged FLOPs to be
    its adapted FLOPs without counting again: counted under `merged()`, they are."""
    from peftbench.costs import forward_flops

    method = resolve_method(name)
    model = method.apply(llama(tokenizer))
    adapted = forward_flops(model, batch_size=1, seq_len=32, vocab_size=len(tokenizer))
    with method.merged(model):
        assert forward_flops(model, batch_size=1, seq_len=32, vocab_size=len(tokenizer)) == adapted


VERA = '''"""VeRA (Kopiczko et al., 2024): frozen random matrices shared by all layers, trained scaling vectors."""

from peft import VeraConfig

from peftbench.methods.base import PeftMethod, Shape, register


@register
class VeRA(PeftMethod):
    name = "vera"
    description = "Shared frozen random low-rank matrices on q_proj and v_proj, trained scaling vectors (r=16)"
    default_lr = 1e-3
    config_cls = VeraConfig
    target_keys = ("target_modules",)
    defaults = {"r": 16, "target_modules": ["q_proj", "v_proj"]}

    def closed_form_params(self, shape: Shape) -> int:
        """Per adapted linear: a scaling vector over the rank (d) and one over the outputs (b)."""
        linears = shape.linears()
        return shape.layers * sum(self.args["r"] + linears[t][1] for t in self.args["target_modules"])
'''


@pytest.mark.slow
def test_a_new_method_is_one_new_file_and_the_test_matrix_exercises_it(tmp_path):
    """In a copy of the package, add methods/vera.py and nothing else: the registry finds it, and the
    existing per-method tests (closed-form count, save/load/predict, decoding against the reference,
    label log-likelihoods, training) run on it and pass."""
    import os
    import re
    import shutil
    import subprocess
    import sys

    from conftest import REPO

    copy = tmp_path / "src"
    shutil.copytree(REPO / "src" / "peftbench", copy / "peftbench", ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "peftbench" / "methods" / "vera.py").write_text(VERA)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "vera", "tests/test_methods.py",
         "tests/test_decoding.py", "tests/test_loglik.py", "tests/test_training.py"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(copy)}, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:]
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    assert passed >= 9, result.stdout[-2000:]
    assert "vera" not in METHODS  # this process's registry is untouched
