"""Quickstart tasks, generated in code from a fixed seed (no dataset is copied or downloaded).

Three small tasks exercise the three output kinds of the benchmark: a 2-class and a 3-class
classification with verbalised labels, and an arithmetic question scored by its numeric answer.
The same vocabulary feeds the tiny model's pretraining corpus, so the model knows the words and
sums before fine-tuning and fine-tuning has to teach the task format and the label mapping.
"""

from __future__ import annotations

import random
import zlib

from peftbench.tasks.spec import GeneratedSource, Row, TaskSpec, classification

SUBJECTS = ["the movie", "the food", "this book", "the service", "my trip", "the game", "this phone",
            "the show", "the hotel", "the song", "the class", "the concert"]
POSITIVE = ["great", "wonderful", "excellent", "lovely", "fantastic", "amazing", "pleasant", "superb",
            "delightful", "brilliant"]
NEGATIVE = ["terrible", "awful", "boring", "horrible", "poor", "dreadful", "bad", "disappointing",
            "nasty", "weak"]
SENTIMENT_FORMS = ["{s} was {a}.", "i found {s} {a}.", "honestly, {s} felt {a} and {b}.",
                   "{s} is {a}, said my friend.", "we all agreed that {s} was {a}."]

TOPICS = {
    "sports": ["football", "goal", "team", "match", "coach", "score", "player", "race", "stadium", "ball"],
    "food": ["soup", "bread", "cheese", "dinner", "recipe", "salad", "cake", "kitchen", "pasta", "apple"],
    "weather": ["rain", "snow", "wind", "storm", "cloud", "sunshine", "forecast", "fog", "thunder", "heat"],
}
TOPIC_FORMS = ["we talked about the {w} and the {v} all day.", "the news was about the {w}.",
               "she wrote a long note on the {w} and the {v}.", "yesterday the {w} was everywhere.",
               "everyone asked about the {w} after the {v}."]

ARITH_FORMS = ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}."]
ARITH_PAIRS = [(a, b) for a in range(10) for b in range(10)]


def _rng(split: str, seed: int) -> random.Random:
    return random.Random(seed * 1_000_003 + zlib.crc32(split.encode()))


def sentiment_rows(split: str, n: int, seed: int) -> list[Row]:
    rng = _rng(split, seed)
    rows = []
    for i in range(n):
        label = rng.randrange(2)
        words = POSITIVE if label else NEGATIVE
        a, b = rng.sample(words, 2)
        text = rng.choice(SENTIMENT_FORMS).format(s=rng.choice(SUBJECTS), a=a, b=b)
        rows.append({"idx": i, "text": text, "label": label})
    return rows


def topic_rows(split: str, n: int, seed: int) -> list[Row]:
    rng = _rng(split, seed)
    names = list(TOPICS)
    rows = []
    for i in range(n):
        label = rng.randrange(len(names))
        w, v = rng.sample(TOPICS[names[label]], 2)
        rows.append({"idx": i, "text": rng.choice(TOPIC_FORMS).format(w=w, v=v), "label": label})
    return rows


def _held_out(a: int, b: int) -> bool:
    """A fixed fifth of the sums is held out, so evaluation asks sums never seen in fine-tuning."""
    return (a * 10 + b) % 5 == 2


def arith_rows(split: str, n: int, seed: int) -> list[Row]:
    rng = _rng(split, seed)
    pairs = [p for p in ARITH_PAIRS if _held_out(*p) == (split == "validation")]
    rows = []
    for i in range(n):
        a, b = rng.choice(pairs)
        rows.append({"idx": i, "question": rng.choice(ARITH_FORMS).format(a=a, b=b), "answer": a + b})
    return rows


def pretraining_corpus(n_docs: int, seed: int) -> list[str]:
    """Plain text for the tiny model's pretraining: the tasks' sentences, every sum as a fact, and
    unanswered task prompts (so the prompt format's tokens are known, but not the answers)."""
    from peftbench.tasks.prompts import PLAIN_TEMPLATE

    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        kind = rng.randrange(5)
        if kind == 4:
            task = rng.choice(QUICKSTART_TASKS)
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


QUICKSTART_TASKS = (
    classification("qs_sentiment", "quickstart", GeneratedSource(sentiment_rows, {"train": 320, "validation": 100}),
                   "review", "Review: {text}", ("negative", "positive"),
                   description="Generated 2-class sentiment of short reviews"),
    classification("qs_topic", "quickstart", GeneratedSource(topic_rows, {"train": 320, "validation": 100}),
                   "sentence by topic", "Sentence: {text}", tuple(TOPICS),
                   description="Generated 3-class topic classification"),
    TaskSpec(
        name="qs_arith",
        category="quickstart",
        description="Generated single-digit addition, scored by the numeric answer",
        source=GeneratedSource(arith_rows, {"train": 320, "validation": 60}),
        instruction="Answer the following arithmetic question. Respond only with the number.",
        template="Question: {question}",
        kind="numeric",
        gold=lambda row: float(row["answer"]),
        target=lambda row: str(row["answer"]),
        metrics=("numeric_accuracy",),
        primary_metric="numeric_accuracy",
        max_new_tokens=5,
    ),
)
