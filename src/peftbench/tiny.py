"""The embedded default model: a tiny Llama (with biases) and a byte-level BPE tokenizer, built in code.

Both are trained from scratch on text generated in code (`pretraining_corpus`),
so the quickstart needs no download. The result is cached under the peftbench cache directory,
keyed by a hash of the recipe; a build writes to a temporary directory and renames it into
place, so concurrent or interrupted builds never leave a half-written model behind.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from peftbench.tasks import TASKS
from peftbench.tasks.prompts import PLAIN_TEMPLATE
from peftbench.tasks.quickstart import ARITH_FORMS, ARITH_PAIRS, TOPICS, sentiment_rows, topic_rows
from peftbench.utils import cache_root, pinned_threads

RECIPE = {
    "version": 3,
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
    "corpus_docs": 6000,
    "seq_len": 64,
    "batch_size": 32,
    "steps": 500,
    "lr": 3e-3,
    "seed": 0,
}
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]


QUICKSTART_TASKS = ("qs_sentiment", "qs_topic", "qs_arith")  # in this order: the corpus draws from it


def pretraining_corpus(n_docs: int, seed: int) -> list[str]:
    """Plain text for the tiny model's pretraining: the tasks' sentences, every sum as a fact, and
    unanswered task prompts (so the prompt format's tokens are known, but not the answers)."""
    tasks = [TASKS.get(name) for name in QUICKSTART_TASKS]
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        kind = rng.randrange(5)
        if kind == 4:
            task = rng.choice(tasks)
            row = task.source.generate("pretrain", 1, rng.randrange(1 << 30))[0]
            docs.append(PLAIN_TEMPLATE.format(instruction=task.instruction, input=task.render_input(row)))
        elif kind == 0:
            row = sentiment_rows("pretrain", 1, rng.randrange(1 << 30))[0]
            mood = "positive" if row["label"] else "negative"
            docs.append(f"{row['text']} it was {mood}.")
        elif kind == 1:
            row = topic_rows("pretrain", 1, rng.randrange(1 << 30))[0]
            docs.append(f"{row['text']} this is about {list(TOPICS)[row['label']]}.")
        else:
            a, b = rng.choice(ARITH_PAIRS)
            question = rng.choice(ARITH_FORMS).format(a=a, b=b)
            docs.append(rng.choice([f"{a} + {b} = {a + b}.", f"{a} plus {b} is {a + b}.", f"{question} {a + b}."]))
    return docs


@lru_cache(maxsize=1)
def recipe_digest() -> str:
    """Identifies the built model (recipe and generated corpus): part of every run id, so a changed
    recipe or task text never reuses an old model or old results."""
    corpus = pretraining_corpus(RECIPE["corpus_docs"], RECIPE["seed"])
    blob = json.dumps({"recipe": RECIPE, "corpus": corpus}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tiny_model_dir() -> Path:
    """Directory of the built tiny model (config, safetensors weights, tokenizer); built on first use."""
    target = cache_root() / f"tiny-llama-{recipe_digest()}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build_tiny_model(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tokenizer(corpus: list[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `corpus`, wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=1024
    )


def build_tiny_model(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    r = RECIPE
    corpus = pretraining_corpus(r["corpus_docs"], r["seed"])
    tokenizer = build_tokenizer(corpus, r["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=r["hidden_size"],
        intermediate_size=r["intermediate_size"],
        num_hidden_layers=r["num_hidden_layers"],
        num_attention_heads=r["num_attention_heads"],
        num_key_value_heads=r["num_key_value_heads"],
        max_position_embeddings=r["max_position_embeddings"],
        attention_bias=True,
        mlp_bias=True,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with pinned_threads(1):
        torch.manual_seed(r["seed"])
        model = LlamaForCausalLM(config)
        _pretrain(model, tokenizer, corpus)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def _pretrain(model: torch.nn.Module, tokenizer, corpus: list[str]) -> None:
    """Next-token prediction on the concatenated corpus, cosine-decayed AdamW."""
    r = RECIPE
    ids: list[int] = []
    for doc in corpus:
        ids.extend(tokenizer(doc).input_ids + [tokenizer.eos_token_id])
    n_chunks = len(ids) // r["seq_len"]
    data = torch.tensor(ids[: n_chunks * r["seq_len"]]).view(n_chunks, r["seq_len"])
    gen = torch.Generator().manual_seed(r["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=0.01)
    model.train()
    for step in range(r["steps"]):
        for group in opt.param_groups:
            group["lr"] = r["lr"] * 0.5 * (1 + math.cos(math.pi * step / r["steps"]))
        batch = data[torch.randint(0, n_chunks, (r["batch_size"],), generator=gen)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
