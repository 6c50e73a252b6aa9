"""A task is data: where rows come from, how a row becomes a prompt and a target, how outputs score.

The quickstart tasks (generated in code) and the PEFT-Bench datasets (hub or local files) use
this one interface, so training and evaluation never special-case a dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Row = dict[str, Any]
Kind = Literal["classification", "numeric"]


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face dataset, pinned to a revision; also readable from `<data_dir>/<task>/<split>.jsonl`."""

    path: str
    name: str | None = None
    revision: str = "main"


@dataclass(frozen=True)
class GeneratedSource:
    """Rows generated in code from a fixed seed: `generate(split, n, seed)`."""

    generate: Callable[[str, int, int], list[Row]]
    sizes: Mapping[str, int]
    seed: int = 0


@dataclass(frozen=True)
class TaskSpec:
    name: str
    category: str
    description: str
    source: HubSource | GeneratedSource
    instruction: str
    template: str
    """`str.format` template over the row's fields; it must name every input field."""
    kind: Kind
    metrics: tuple[str, ...]
    primary_metric: str
    max_new_tokens: int
    labels: tuple[str, ...] = ()
    """Verbaliser for classification: class index → the exact text the model must produce."""
    label_field: str = "label"
    answer_field: str = "answer"
    """Numeric tasks: the row field holding the gold answer (a number, or text ending in one)."""
    target: Callable[[Row], str] | None = None
    """Training target for a row; default: the verbalised label or the answer field."""
    train_split: str = "train"
    eval_split: str = "validation"
    prepare: Callable[[Row], Row] | None = None
    """Optional row hook for data that needs real processing (e.g. marking WSC's spans)."""

    def render_input(self, row: Row) -> str:
        return self.template.format(**(self.prepare(row) if self.prepare else row))

    def render_target(self, row: Row) -> str:
        if self.target is not None:
            return self.target(row)
        if self.kind == "classification":
            return self.labels[int(row[self.label_field])]
        return str(row[self.answer_field])

    @property
    def splits(self) -> tuple[str, str]:
        return (self.train_split, self.eval_split)


LABEL_TOKENS = 5  # the longest verbaliser ("not_entailment") is a few tokens for any tokenizer


def classification(
    name: str,
    category: str,
    source: HubSource | GeneratedSource,
    what: str,
    template: str,
    labels: tuple[str, ...],
    *,
    description: str,
    eval_split: str = "validation",
    extra_metrics: tuple[str, ...] = (),
    prepare: Callable[[Row], Row] | None = None,
) -> TaskSpec:
    """A classification task in PEFT-Bench's form: "Classify the following … into N classes: …"."""
    primary = "f1" if len(labels) == 2 else "macro_f1"
    return TaskSpec(
        name=name,
        category=category,
        description=description,
        source=source,
        instruction=f"Classify the following {what} into {len(labels)} classes: {', '.join(labels)}. "
        "Respond only with the corresponding class.",
        template=template,
        kind="classification",
        labels=labels,
        metrics=(primary, "accuracy", *extra_metrics),
        primary_metric=primary,
        max_new_tokens=LABEL_TOKENS,
        eval_split=eval_split,
        prepare=prepare,
    )
