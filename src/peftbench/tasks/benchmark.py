"""PEFT-Bench's datasets as declarative task specs (hub id, pinned revision, template, verbaliser, metrics).

Every task loads from the hub at the pinned revision or from `<data_dir>/<task>/<split>.jsonl`
in the hub's row schema. Binary F1 uses label index 1 as the positive class; accuracy is always
reported beside the primary metric.
"""

from __future__ import annotations

from peftbench.tasks.spec import HubSource, Row, classification

GLUE = "nyu-mll/glue"
GLUE_REVISION = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"
SUPER_GLUE = "aps/super_glue"
SUPER_GLUE_REVISION = "5234c61e804e85e5994b14b002fa9ec34487bcfb"
def glue(config: str) -> HubSource:
    return HubSource(GLUE, config, GLUE_REVISION)


def super_glue(config: str) -> HubSource:
    return HubSource(SUPER_GLUE, config, SUPER_GLUE_REVISION)


def mark_wsc_spans(row: Row) -> Row:
    """Mark the candidate noun with *…* and the pronoun with #…# at their word indices."""
    words = row["text"].split(" ")
    spans = [(row["span1_index"], row["span1_text"], "*"), (row["span2_index"], row["span2_text"], "#")]
    for index, text, mark in sorted(spans, reverse=True):
        n = len(text.split(" "))
        words[index : index + n] = [mark + " ".join(words[index : index + n]) + mark]
    return {**row, "marked_text": " ".join(words)}


BENCHMARK_TASKS = (
    classification("mnli", "glue", glue("mnli"), "premise and hypothesis pair",
                   "Premise: {premise}\nHypothesis: {hypothesis}", ("entailment", "neutral", "contradiction"),
                   description="MultiNLI, evaluated on validation_mismatched", eval_split="validation_mismatched"),
    classification("qqp", "glue", glue("qqp"), "question pair", "Question 1: {question1}\nQuestion 2: {question2}",
                   ("not_duplicate", "duplicate"), description="Quora Question Pairs paraphrase detection"),
    classification("qnli", "glue", glue("qnli"), "question and sentence pair",
                   "Question: {question}\nSentence: {sentence}", ("entailment", "not_entailment"),
                   description="Question-answering NLI from SQuAD"),
    classification("sst2", "glue", glue("sst2"), "sentence", "Sentence: {sentence}", ("negative", "positive"),
                   description="Stanford Sentiment Treebank, binary"),
    classification("mrpc", "glue", glue("mrpc"), "sentence pair", "Sentence 1: {sentence1}\nSentence 2: {sentence2}",
                   ("not_equivalent", "equivalent"), description="Microsoft Research Paraphrase Corpus"),
    classification("rte", "glue", glue("rte"), "sentence pair", "Sentence 1: {sentence1}\nSentence 2: {sentence2}",
                   ("entailment", "not_entailment"), description="Recognising Textual Entailment"),
    classification("cola", "glue", glue("cola"), "sentence by grammatical acceptability", "Sentence: {sentence}",
                   ("unacceptable", "acceptable"), description="Corpus of Linguistic Acceptability (MCC too)",
                   extra_metrics=("mcc",)),
    classification("boolq", "superglue", super_glue("boolq"), "passage and yes/no question",
                   "Passage: {passage}\nQuestion: {question}", ("false", "true"),
                   description="BoolQ yes/no questions"),
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
