"""Knowledge and commonsense multiple-choice tasks, verbalised as classification over option names.

Each row hook turns the dataset's own answer encoding (an int, "1"-based strings, letters) into a
class index, so every task scores with the same classification code.
"""

from __future__ import annotations

from peftbench.tasks.spec import HubSource, Row, classification

PARQUET = "refs/convert/parquet"  # script-era datasets: the hub's parquet conversion branch
LETTERS = ("A", "B", "C", "D")


def mmlu_row(row: Row) -> Row:
    """MMLU targets are letters: choices become A–D and the int answer a letter class."""
    return {**row, **dict(zip(LETTERS, row["choices"], strict=True)), "label": int(row["answer"])}


def siqa_row(row: Row) -> Row:
    return {**row, "label": int(row["label"]) - 1}  # "1"/"2"/"3" → 0/1/2


def hellaswag_row(row: Row) -> Row:
    """The context is ctx_a and ctx_b joined by a space (the reference ran them together)."""
    context = f"{row['ctx_a']} {row['ctx_b'].capitalize()}".strip() if row.get("ctx_b") else row["ctx_a"]
    endings = {f"ending{i + 1}": e for i, e in enumerate(row["endings"])}
    return {**row, **endings, "context": context, "label": int(row["label"])}


def winogrande_row(row: Row) -> Row:
    return {**row, "label": int(row["answer"]) - 1}  # "1"/"2" → option1/option2


def openbookqa_row(row: Row) -> Row:
    choices = dict(zip(row["choices"]["label"], row["choices"]["text"], strict=True))
    return {**row, **{k: choices[k] for k in LETTERS}, "label": LETTERS.index(row["answerKey"])}


TASKS = (
    classification("mmlu", "other", HubSource("cais/mmlu", "all", "c30699e8356da336a370243923dbaf21066bb9fe"),
                   "multiple-choice question by its correct answer",
                   "Subject: {subject}\nQuestion: {question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}", LETTERS,
                   description="MMLU (all subjects); trained on auxiliary_train, evaluated on validation (test too)",
                   train_split="auxiliary_train", prepare=mmlu_row),
    classification("piqa", "other", HubSource("ybisk/piqa", None, PARQUET),
                   "goal and two solutions by which solution achieves the goal",
                   "Goal: {goal}\nsolution1: {sol1}\nsolution2: {sol2}", ("solution1", "solution2"),
                   description="Physical Interaction QA"),
    classification("siqa", "other", HubSource("allenai/social_i_qa", None, PARQUET),
                   "context and question by the correct answer",
                   "Context: {context}\nQuestion: {question}\nA. {answerA}\nB. {answerB}\nC. {answerC}",
                   ("A", "B", "C"), description="Social IQa", prepare=siqa_row),
    classification("hellaswag", "other",
                   HubSource("Rowan/hellaswag", None, "218ec52e09a7e7462a5400043bb9a69a41d06b76"),
                   "context by its most plausible ending",
                   "Activity: {activity_label}\nContext: {context}\nending1: {ending1}\nending2: {ending2}\n"
                   "ending3: {ending3}\nending4: {ending4}", ("ending1", "ending2", "ending3", "ending4"),
                   description="HellaSwag sentence completion", prepare=hellaswag_row),
    classification("winogrande", "other", HubSource("allenai/winogrande", "winogrande_xl", PARQUET),
                   "sentence by which option fills the blank _",
                   "Sentence: {sentence}\noption1: {option1}\noption2: {option2}", ("option1", "option2"),
                   description="WinoGrande (xl)", prepare=winogrande_row),
    classification("openbookqa", "other",
                   HubSource("allenai/openbookqa", "main", "388097ea7776314e93a529163e0fea805b8a6454"),
                   "science question by its correct answer",
                   "Question: {question_stem}\nA. {A}\nB. {B}\nC. {C}\nD. {D}",
                   LETTERS, description="OpenBookQA (main)", prepare=openbookqa_row),
)
