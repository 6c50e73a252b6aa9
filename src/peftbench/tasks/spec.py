"""A task is data: where rows come from, how a row becomes a prompt and a target, how outputs score.

The quickstart tasks (generated in code) and the PEFT-Bench datasets (hub or local files) use
this one interface, so training and evaluation never special-case a dataset. Python appears
only where the data needs real processing (`prepare`, `gold`, `parse`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from peftbench.errors import PeftbenchError
from peftbench.metrics import METRICS

Row = dict[str, Any]
Kind = Literal["classification", "numeric", "regression", "span", "code"]
KINDS: tuple[str, ...] = ("classification", "numeric", "regression", "span", "code")


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
    """`str.format` template over the (prepared) row's fields; it names every input field."""
    kind: Kind
    metrics: tuple[str, ...]
    primary_metric: str
    max_new_tokens: int
    labels: tuple[str, ...] = ()
    """Classification verbaliser: class index → the exact text the model must produce."""
    label_field: str = "label"
    target: Callable[[Row], str] | None = None
    """Training target of a prepared row; default: the verbalised label, else `str(gold(row))`."""
    gold: Callable[[Row], Any] | None = None
    """Gold answer of a prepared row for scoring (numeric: a number; span: answer strings; code: reference)."""
    parse: Callable[[str], Any] | None = None
    """Cleaned model output → comparable answer (None when it holds none: counted invalid)."""
    group: Callable[[Row], Hashable] | None = None
    """Rows scored together (MultiRC: the options of one question)."""
    value_range: tuple[float, float] | None = None
    """Regression: predictions are clipped to this range."""
    usable: Callable[[Row], bool] | None = None
    """Training rows must pass this (e.g. APPS problems that have a reference solution)."""
    train_split: str = "train"
    eval_split: str = "validation"
    prepare: Callable[[Row], Row] | None = None
    """Row hook for data that needs real processing (marking WSC's spans, mapping letter answers)."""

    def __post_init__(self) -> None:
        """A task that cannot be scored fails when it is defined, not after its runs trained."""
        if self.kind not in KINDS:
            raise PeftbenchError(f"task {self.name!r}: unknown kind {self.kind!r} (expected: {', '.join(KINDS)})")
        for name in self.metrics:
            try:
                metric = METRICS.get(name)
            except PeftbenchError as exc:
                raise PeftbenchError(f"task {self.name!r}: metrics: {exc}") from None
            if self.kind not in metric.kinds:
                raise PeftbenchError(f"task {self.name!r}: metric {name!r} scores {'/'.join(sorted(metric.kinds))} "
                                     f"tasks, not {self.kind}")
            if metric.granularity == "grouped" and self.group is None:
                raise PeftbenchError(f"task {self.name!r}: metric {name!r} needs rows grouped (a group hook)")
        if self.primary_metric not in self.metrics:
            raise PeftbenchError(f"task {self.name!r}: primary_metric {self.primary_metric!r} is not one of its "
                                 f"metrics ({', '.join(self.metrics)})")
        if (self.kind == "classification") != bool(self.labels):
            raise PeftbenchError(f"task {self.name!r}: labels are required for, and only for, classification")

    def prepared(self, row: Row) -> Row:
        return self.prepare(row) if self.prepare else row

    def render_input(self, row: Row) -> str:
        return self.template.format(**self.prepared(row))

    def gold_of(self, row: Row) -> Any:
        row = self.prepared(row)
        if self.gold is not None:
            return self.gold(row)
        return int(row[self.label_field])

    def render_target(self, row: Row) -> str:
        prepared = self.prepared(row)
        if self.target is not None:
            return self.target(prepared)
        if self.kind == "classification":
            return self.labels[int(prepared[self.label_field])]
        return str(self.gold_of(row))

    @property
    def splits(self) -> tuple[str, str]:
        return (self.train_split, self.eval_split)


LABEL_TOKENS = 8  # room for the longest verbaliser ("not_entailment") under any tokenizer, plus EOS


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
    group: Callable[[Row], Hashable] | None = None,
    train_split: str = "train",
    primary: str | None = None,
) -> TaskSpec:
    """A classification task in PEFT-Bench's form: "Classify the following … into N classes: …"."""
    primary = primary or ("f1" if len(labels) == 2 else "macro_f1")
    metrics = tuple(dict.fromkeys((primary, "accuracy", *extra_metrics)))
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
        metrics=metrics,
        primary_metric=primary,
        max_new_tokens=LABEL_TOKENS,
        train_split=train_split,
        eval_split=eval_split,
        prepare=prepare,
        group=group,
    )
