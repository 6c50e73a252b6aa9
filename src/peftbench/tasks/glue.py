"""GLUE tasks (nyu-mll/glue at a pinned commit). The test splits have no labels: evaluation uses validation."""

from __future__ import annotations

from peftbench.tasks.spec import HubSource, TaskSpec, classification

GLUE_REVISION = "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"


def glue(config: str) -> HubSource:
    return HubSource("nyu-mll/glue", config, GLUE_REVISION)


def _score_text(value: float) -> str:
    """STS-B target: the gold score with at most two decimals (3.8, 4.25, 5)."""
    return f"{round(float(value), 2):g}"


TASKS = (
    classification("mnli", "glue", glue("mnli"), "premise and hypothesis pair",
                   "Premise: {premise}\nHypothesis: {hypothesis}", ("entailment", "neutral", "contradiction"),
                   description="MultiNLI; evaluated on validation_mismatched (validation_matched available)",
                   eval_split="validation_mismatched"),
    classification("qqp", "glue", glue("qqp"), "question pair", "Question 1: {question1}\nQuestion 2: {question2}",
                   ("not_duplicate", "duplicate"), description="Quora Question Pairs paraphrase detection"),
    classification("qnli", "glue", glue("qnli"), "question and sentence pair",
                   "Question: {question}\nSentence: {sentence}", ("entailment", "not_entailment"),
                   description="Question-answering NLI from SQuAD"),
    classification("sst2", "glue", glue("sst2"), "sentence", "Sentence: {sentence}", ("negative", "positive"),
                   description="Stanford Sentiment Treebank, binary"),
    TaskSpec(
        name="stsb",
        category="glue",
        description="Semantic Textual Similarity Benchmark, a score from 0 to 5 (Pearson; Spearman too)",
        source=glue("stsb"),
        instruction="Rate the semantic similarity of the following sentence pair on a scale from 0 to 5. "
        "Respond only with the number.",
        template="Sentence 1: {sentence1}\nSentence 2: {sentence2}",
        kind="regression",
        gold=lambda row: float(row["label"]),
        target=lambda row: _score_text(row["label"]),
        value_range=(0.0, 5.0),
        metrics=("pearson", "spearman"),
        primary_metric="pearson",
        max_new_tokens=8,
    ),
    classification("mrpc", "glue", glue("mrpc"), "sentence pair", "Sentence 1: {sentence1}\nSentence 2: {sentence2}",
                   ("not_equivalent", "equivalent"), description="Microsoft Research Paraphrase Corpus"),
    classification("rte", "glue", glue("rte"), "sentence pair", "Sentence 1: {sentence1}\nSentence 2: {sentence2}",
                   ("entailment", "not_entailment"), description="Recognising Textual Entailment"),
    classification("cola", "glue", glue("cola"), "sentence by grammatical acceptability", "Sentence: {sentence}",
                   ("unacceptable", "acceptable"), description="Corpus of Linguistic Acceptability (MCC, the GLUE "
                   "metric, beside F1)", extra_metrics=("mcc",)),
)
