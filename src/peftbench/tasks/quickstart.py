"""Quickstart task rows, generated in code from a fixed seed (no dataset is copied or downloaded);
the tasks themselves are task files (`files/qs_*.yaml`) naming these generators.

Three small tasks exercise the three output kinds of the benchmark: a 2-class and a 3-class
classification with verbalised labels, and an arithmetic question scored by its numeric answer.
A fourth, `qs_feedback`, is sentiment in a second domain (reviews of the topic words) with the same
forms and labels: the related pair that Task Prompt Vector studies combine (docs/tpv.md).
The same vocabulary feeds the tiny model's pretraining corpus, so the model knows the words and
sums before fine-tuning and fine-tuning has to teach the task format and the label mapping.
"""

from __future__ import annotations

import random
import zlib

from peftbench.tasks.spec import Row

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


def feedback_rows(split: str, n: int, seed: int) -> list[Row]:
    """Sentiment in a second domain: `qs_sentiment`'s sentence forms, adjectives and labels about the
    topic words (`the soup was awful.`) instead of films, food and shows — the pair that Task Prompt
    Vector studies combine, as the paper combines SST-2 with Yelp."""
    rng = _rng(split, seed + 7919)
    nouns = [w for words in TOPICS.values() for w in words]
    rows = []
    for i in range(n):
        label = rng.randrange(2)
        a, b = rng.sample(POSITIVE if label else NEGATIVE, 2)
        text = rng.choice(SENTIMENT_FORMS).format(s="the " + rng.choice(nouns), a=a, b=b)
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
