"""SuperGLUE tasks (aps/super_glue at a pinned commit), evaluated on validation."""

from __future__ import annotations

from peftbench.tasks.spec import HubSource, Row, TaskSpec, classification

SUPER_GLUE_REVISION = "5234c61e804e85e5994b14b002fa9ec34487bcfb"


def super_glue(config: str) -> HubSource:
    return HubSource("aps/super_glue", config, SUPER_GLUE_REVISION)


def mark_wsc_spans(row: Row) -> Row:
    """Mark the candidate noun with *…* and the pronoun with #…# at their word indices."""
    words = row["text"].split(" ")
    spans = [(row["span1_index"], row["span1_text"], "*"), (row["span2_index"], row["span2_text"], "#")]
    for index, text, mark in sorted(spans, reverse=True):
        n = len(text.split(" "))
        words[index : index + n] = [mark + " ".join(words[index : index + n]) + mark]
    return {**row, "marked_text": " ".join(words)}


def record_passage(row: Row) -> Row:
    """ReCoRD passages separate their highlights with `@highlight` lines; show them as a list."""
    return {**row, "passage_text": row["passage"].replace("@highlight\n", "- ")}


def _question_key(row: Row) -> tuple[int, int]:
    return (row["idx"]["paragraph"], row["idx"]["question"])


TASKS = (
    TaskSpec(
        name="record",
        category="superglue",
        description="ReCoRD cloze questions; EM and F1 per query (max over its answers), averaged over queries",
        source=super_glue("record"),
        instruction="Read the passage and answer the query: give the entity that replaces @placeholder. "
        "Respond only with the entity.",
        template="Passage: {passage_text}\nQuery: {query}",
        kind="span",
        prepare=record_passage,
        gold=lambda row: list(row["answers"]),
        target=lambda row: row["answers"][0],  # one training target per query
        metrics=("record_f1", "record_em"),
        primary_metric="record_f1",
        max_new_tokens=24,
    ),
    classification("multirc", "superglue", super_glue("multirc"), "paragraph, question and candidate answer by "
                   "whether the answer is correct", "Paragraph: {paragraph}\nQuestion: {question}\nAnswer: {answer}",
                   ("false", "true"), description="MultiRC; F1a over all answer options and exact match per question",
                   extra_metrics=("multirc_em",), group=_question_key),
    classification("boolq", "superglue", super_glue("boolq"), "passage and yes/no question",
                   "Passage: {passage}\nQuestion: {question}", ("false", "true"), description="BoolQ yes/no questions"),
    classification("wic", "superglue", super_glue("wic"), "word and sentence pair by whether the word has the "
                   "same meaning in both sentences", "Word: {word}\nSentence 1: {sentence1}\nSentence 2: {sentence2}",
                   ("false", "true"), description="Word-in-Context"),
    classification("wsc", "superglue", super_glue("wsc.fixed"), "text by whether the pronoun marked #…# refers to "
                   "the noun marked *…*", "Text: {marked_text}\nNoun: {span1_text}\nPronoun: {span2_text}",
                   ("false", "true"), description="Winograd Schema Challenge (wsc.fixed), spans marked in the text",
                   prepare=mark_wsc_spans),
    classification("cb", "superglue", super_glue("cb"), "premise and hypothesis pair",
                   "Premise: {premise}\nHypothesis: {hypothesis}", ("entailment", "contradiction", "neutral"),
                   description="CommitmentBank"),
    classification("copa", "superglue", super_glue("copa"), "premise and two alternatives by which one is the "
                   "more plausible cause or effect",
                   "Premise: {premise}\nWhich is the {question}?\nchoice1: {choice1}\nchoice2: {choice2}",
                   ("choice1", "choice2"), description="Choice of Plausible Alternatives"),
)
