"""Shared fixtures: tiny models built in code (random weights), pinned threads and seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from peftbench.methods import METHODS, resolve_method

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# One fixed architecture for closed-form parameter counts: h=64, i=128, L=2, 4 heads, 2 KV heads.
H, FF, L, HEADS, KV_HEADS = 64, 128, 2, 4, 2
KV = H // HEADS * KV_HEADS


@pytest.fixture(autouse=True)
def _pinned():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tokenizer():
    from peftbench.tiny import build_tokenizer, pretraining_corpus

    return build_tokenizer(pretraining_corpus(300, 0), 320)


def llama(tokenizer, *, bias: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
        attention_bias=bias, mlp_bias=bias, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config).eval()


# Every registered method with its own defaults, plus prompt-learning tuners configured only by peft.
PEFT_TUNERS = {
    "peft:PREFIX_TUNING": {"num_virtual_tokens": 6},  # no reparameterisation: peft's plain prefix
    "peft:PROMPT_TUNING": {"num_virtual_tokens": 7, "prompt_tuning_init": "RANDOM"},
}
METHOD_CASES = [(name, {}) for name in METHODS.names()] + list(PEFT_TUNERS.items())


def adapted(tokenizer, name: str, args: dict, architecture=None, strength: float = 0.7) -> torch.nn.Module:
    """The method on a tiny random model (Llama unless given), its trainable weights moved off their
    (often identity) initialisation so that the adapter changes the outputs."""
    model = resolve_method(name, args).apply((architecture or llama)(tokenizer))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # noise on the tensor's own scale (spread or size; zeros get 0.01)
                scale = max(float(p.std()) if p.numel() > 1 else 0.0, float(p.abs().mean()), 0.01)
                p.add_(torch.randn_like(p) * strength * scale)
    return model.eval()


def gpt2(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=H, n_layer=L, n_head=HEADS, n_positions=1024,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return GPT2LMHeadModel(config).eval()


def qwen2(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=H, intermediate_size=FF, num_hidden_layers=L,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config).eval()


@pytest.fixture
def no_hub_lookup(monkeypatch):
    """Fail the test if peft asks the hub about the base model while saving (its embedding check)."""
    import peft.utils.save_and_load

    def lookup(*args, **kwargs):
        raise AssertionError(f"the hub was consulted while saving: {args}")

    monkeypatch.setattr(peft.utils.save_and_load, "check_file_exists_on_hf_hub", lookup)


@pytest.fixture(scope="session")
def builtin_model_dir() -> Path:
    """The real embedded model (pretrained in code; built once and cached)."""
    from peftbench.tiny import tiny_model_dir

    return tiny_model_dir()


@pytest.fixture(scope="session")
def quickstart_dir(tmp_path_factory) -> Path:
    """The real quickstart, run once per test session through the CLI."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("quickstart") / "qs"
    result = subprocess.run([sys.executable, "-m", "peftbench.cli", "quickstart", "--out", str(out)],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def hand_store(path: Path, rows, costs=None):
    """A store built by hand: rows of (method, task, seed, status, score); costs (trainable
    parameters, extra TFLOPs, peak memory GB) per method, or per (method, task, seed) for one run."""
    from peftbench.store import Store
    from peftbench.tasks import TASKS

    store = Store.create(path)
    for i, (method, task, seed, status, score) in enumerate(rows):
        run_id = f"run{i:03d}"
        store.register([(run_id, method, task, seed, {"method": {"id": method}, "task": {
            "name": task, "category": TASKS.get(task).category if task in TASKS else "other"}})])
        store.claim(run_id)
        params, tflops, mem = (costs or {}).get((method, task, seed)) or (costs or {}).get(method, (1000, 0.0, 1.0))
        done = status == "done"
        store.finish(run_id, status,
                     metrics={"score": score, "invalid_rate": 0.0, "primary_metric": "f1"} if done else None,
                     costs={"trainable_params": params, "extra_tflops": tflops, "peak_train_mem_gb": mem}
                     if done else None,
                     error=None if done else "boom")
    return store


# A grid of 6 short runs (3 methods x 1 task x 2 seeds, ~10 s) for fault and executor tests.
SMALL = """
name: small
methods: [{name: lora, learning_rate: 5.0e-3}, {name: bitfit, learning_rate: 1.0e-2}, base]
tasks: [qs_sentiment]
seeds: [0, 1]
training: {max_steps: 30, batch_size: 4, cutoff_len: 128}
evaluation: {batch_size: 32, max_samples: 24}
costs: {latency: false, memory_steps: 1}
"""
# Figures that measure this machine at this moment rather than the run's result.
MEASURED = ("peak_train_mem_gb", "peak_train_mem_one_model_gb", "peak_train_mem_source", "train_run_peak_mem_gb",
            "train_run_peak_mem_source", "energy_j")


def run_cli(*args: str, env: dict[str, str] | None = None, check: bool = True):
    """`python -m peftbench.cli ARGS` in a subprocess."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "peftbench.cli", *args], capture_output=True, text=True,
                            timeout=1200, env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def stored_results(out: Path) -> dict[str, tuple]:
    """Per run: status, metrics, costs without measured figures, and the predictions file."""
    from peftbench.store import Store

    view = {}
    for r in Store.open(out).records():
        costs = {k: v for k, v in (r.costs or {}).items() if k not in MEASURED}
        predictions = Store(out).predictions_path(r.run_id)
        view[r.run_id] = (r.status, r.metrics, costs, predictions.read_text() if predictions.is_file() else None)
    return view


@pytest.fixture(scope="session")
def small_grid(tmp_path_factory) -> tuple[Path, dict[str, tuple]]:
    """The small config and the results of one uninterrupted local run of it."""
    root = tmp_path_factory.mktemp("small")
    config = root / "small.yaml"
    config.write_text(SMALL)
    run_cli("run", str(config), "--out", str(root / "reference"))
    return config, stored_results(root / "reference")


TPV_STUDY = """
name: tpv-test
model: {name: builtin:tiny-llama}
methods: []
tasks: [qs_sentiment, qs_feedback, qs_topic]
seeds: [0]
training: {max_steps: 30, batch_size: 4, cutoff_len: 128, max_train_samples: 120, eval_steps: 30}
evaluation: {batch_size: 32, max_samples: 16}
costs: {latency: false, memory_steps: 1}
runtime: {threads: 1, workers: 1}
tpv:
  tasks: [qs_sentiment, qs_feedback, qs_topic]
  origins: 2
  tokens: 8
  learning_rate: 0.05
  combinations: [[qs_sentiment, qs_feedback]]
  lambdas: [0.0, 0.5, 1.0]
  few_shot:
    groups: [{sources: [qs_sentiment, qs_topic], targets: [qs_feedback]}]
    shots: [0, 4]
    steps: 6
    origins: 2
"""


@pytest.fixture(scope="session")
def tpv_study(tmp_path_factory) -> tuple[Path, Path]:
    """A small TPV study (every study kind, 2 origins, 3 tasks) run once through the CLI: (config, output)."""
    root = tmp_path_factory.mktemp("tpv")
    config = root / "tpv.yaml"
    config.write_text(TPV_STUDY)
    run_cli("run", str(config), "--out", str(root / "reference"))
    return config, root / "reference"


def interruptible() -> None:
    """`preexec_fn` of a child the test will Ctrl-C: SIGINT back to its default, since a shell
    starts background jobs (`pytest &`, CI runners) with SIGINT ignored and children inherit that."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_traced(config: Path, out: Path, trace: Path, *extra: str, stop_at: str | None = None):
    """`peftbench run CONFIG --out OUT` in the background, writing its phase markers to `trace`;
    with `stop_at` ("method:phase:step"), the process that reaches that mark stops there (SIGSTOP)."""
    import subprocess
    import sys

    env = {**os.environ, "PEFTBENCH_TRACE": str(trace), **({"PEFTBENCH_TRACE_STOP": stop_at} if stop_at else {})}
    return subprocess.Popen([sys.executable, "-m", "peftbench.cli", "run", str(config), "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_mark(proc, trace: Path, wanted, timeout: float = 300) -> dict:
    """The first phase marker in `trace` for which `wanted(mark)` holds, polled while `proc` runs
    (acting at a point the run reports, never after a sleep of a guessed length)."""
    import json
    import time

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        lines = trace.read_text().splitlines() if trace.is_file() else []
        for mark in (json.loads(line) for line in lines if line.endswith("}")):
            if wanted(mark):
                return mark
        time.sleep(0.02)
