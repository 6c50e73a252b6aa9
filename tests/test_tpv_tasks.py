"""Task Prompt Vectors' nine datasets as tasks, and the paper's split rule (`split_rows`): golden splits on
both sides of the 10k threshold, the default rule equal to the runner's old code, and every task loading
its offline slice (../shared/data-more) through the normal loader."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from conftest import SHARED_DATA

from peftbench.errors import PeftbenchError
from peftbench.scoring import score
from peftbench.tasks import TASKS, get_task, load_rows, read_task_file
from peftbench.tasks.data import TPV_LARGE, TPV_VALIDATION, split_rows
from peftbench.tasks.hooks import has_gold_label, yahoo_row

DATA_MORE = SHARED_DATA.parent / "data-more"
TPV = ["ag_news", "dbpedia_14", "imdb", "scitail", "snli", "sst5", "trec", "yahoo_answers_topics", "yelp_polarity"]


def rows(n: int, start: int = 0) -> list[dict[str, int]]:
    return [{"id": i} for i in range(start, start + n)]


def ids(part: list[dict[str, int]]) -> list[int]:
    return [r["id"] for r in part]


def todays_fraction_split(train, eval_rows, val_fraction, seed, max_train=None, max_eval=None):
    """RunContext.task_data's split before split_rows existed, written out again."""
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    if max_train:
        shuffled = shuffled[:max_train]
    n_val = max(1, round(len(shuffled) * val_fraction)) if len(shuffled) > 1 else 0
    test = eval_rows[:max_eval] if max_eval else list(eval_rows)
    return shuffled[n_val:], shuffled[:n_val], test


# --- split_rows -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_train", [0, 1, 2, 3, 10, 97, 1000, TPV_LARGE + 5])
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.parametrize("caps", [(None, None), (50, 3), (0, 0)])
def test_the_fraction_rule_is_todays_split(n_train, seed, caps):
    train, evaluation = rows(n_train), rows(9, start=100_000)
    max_train, max_eval = caps
    got = split_rows("fraction", train, evaluation, val_fraction=0.1, seed=seed, max_train=max_train, max_eval=max_eval)
    assert got == todays_fraction_split(train, evaluation, 0.1, seed, max_train, max_eval)


def test_fraction_rule_golden():
    train, val, test = split_rows("fraction", rows(10), rows(3, start=50), val_fraction=0.2, seed=0)
    assert ids(val) == [7, 8] and ids(train) == [1, 5, 3, 4, 2, 0, 9, 6] and ids(test) == [50, 51, 52]


def test_tpv_large_takes_1000_train_rows_as_validation():
    train_in, eval_in = rows(TPV_LARGE + 1), rows(300, start=100_000)
    train, val, test = split_rows("tpv", train_in, eval_in, val_fraction=0.1, seed=0)
    assert (len(train), len(val), len(test)) == (TPV_LARGE + 1 - TPV_VALIDATION, TPV_VALIDATION, 300)
    assert test == eval_in  # the original validation (or test) is the test split, unchanged
    assert set(ids(train)).isdisjoint(ids(val)) and sorted(ids(train) + ids(val)) == ids(train_in)
    assert split_rows("tpv", train_in, eval_in, val_fraction=0.1, seed=0) == (train, val, test)
    assert ids(split_rows("tpv", train_in, eval_in, val_fraction=0.1, seed=1)[1]) != ids(val)
    assert train_in == rows(TPV_LARGE + 1) and eval_in == rows(300, start=100_000)  # inputs untouched


@pytest.mark.parametrize("n_eval,n_val", [(0, 0), (1, 0), (2, 1), (7, 3), (500, 250), (1101, 550)])
def test_tpv_small_halves_the_eval_split(n_eval, n_val):
    train_in, eval_in = rows(TPV_LARGE), rows(n_eval, start=100_000)  # exactly 10k: the small side
    train, val, test = split_rows("tpv", train_in, eval_in, val_fraction=0.1, seed=0)
    assert train == train_in  # train unchanged, in its order
    assert (len(val), len(test)) == (n_val, n_eval - n_val)
    assert set(ids(val)).isdisjoint(ids(test)) and sorted(ids(val) + ids(test)) == ids(eval_in)
    assert set(ids(train)).isdisjoint(ids(val) + ids(test))
    assert split_rows("tpv", train_in, eval_in, val_fraction=0.5, seed=0) == (train, val, test)  # fraction unused


def test_tpv_small_golden():
    train, val, test = split_rows("tpv", rows(5), rows(7, start=10), val_fraction=0.1, seed=0)
    assert ids(train) == [0, 1, 2, 3, 4] and ids(val) == [14, 12, 11] and ids(test) == [10, 15, 13, 16]


def test_tpv_caps_training_and_test_rows_never_the_papers_validation():
    train, val, test = split_rows("tpv", rows(TPV_LARGE + 1), rows(40, start=100_000), val_fraction=0.1, seed=0,
                                  max_train=64, max_eval=8)
    assert (len(train), len(val), len(test)) == (64, TPV_VALIDATION, 8)
    assert set(ids(train)).isdisjoint(ids(val))
    train, val, test = split_rows("tpv", rows(300), rows(40, start=100_000), val_fraction=0.1, seed=0,
                                  max_train=64, max_eval=8)
    assert (len(train), len(val), len(test)) == (64, 20, 8)
    assert ids(train) != list(range(64)) and set(ids(train)) <= set(range(300))  # drawn with the seed, not a prefix
    assert split_rows("tpv", rows(300), rows(4), val_fraction=0.1, seed=0, max_train=300)[0] == rows(300)


def test_an_unknown_rule_is_an_error():
    with pytest.raises(PeftbenchError, match="unknown split rule 'paper'"):
        split_rows("paper", rows(3), rows(3), val_fraction=0.1, seed=0)


# --- the task files --------------------------------------------------------------------------------------


def test_the_nine_tasks_are_registered_with_the_papers_rule():
    assert sorted(n for n in TASKS if "tpv" in TASKS.get(n).tags) == TPV
    for name in TPV:
        task = get_task(name)
        assert task.split_rule == "tpv" and task.category == "tpv" and "peft-bench" not in task.tags
        assert task.kind == "classification" and task.primary_metric == "accuracy"
        assert task.metrics[1] == ("f1" if len(task.labels) == 2 else "macro_f1")
        assert len(task.source.revision) == 40, "pinned to a commit"
        folded = [label.casefold() for label in task.labels]
        assert len(set(folded)) == len(folded)  # outputs are matched case-insensitively
    assert {n: TASKS.get(n).split_rule for n in TASKS if n not in TPV} == dict.fromkeys(
        [n for n in TASKS if n not in TPV], "fraction")


def test_split_rule_is_read_from_a_task_file_and_checked(tmp_path):
    (tmp_path / "train.jsonl").write_text(json.dumps({"text": "fine", "label": 1}) + "\n")
    path = tmp_path / "mine.yaml"
    body = """include: peftbench:_classification.yaml
name: mine
source: {local: {train: train.jsonl, validation: train.jsonl}}
subject: sentence
template: 'Sentence: {text}'
labels: [bad, good]
metrics: [accuracy]
"""
    path.write_text(body)
    assert read_task_file(path).split_rule == "fraction"
    path.write_text(body + "split_rule: tpv\n")
    assert read_task_file(path).split_rule == "tpv"
    path.write_text(body + "split_rule: paper\n")
    with pytest.raises(PeftbenchError, match=r"split_rule: Input should be 'fraction', 'tpv' or 'deni'"):
        read_task_file(path)


# The slices' splits where they differ from the task's (train_split, eval_split): only the loading and
# rendering are tested here, so the slice's one labelled evaluation split stands in for the task's.
SLICE_SPLITS = {
    "scitail": ("test", "test"),  # the slice holds only the hub's test split (no English train/dev copy found)
    "sst5": ("train", "test"),  # the task halves the hub's validation split; the slice has train and test only
}

# Row 0 of each slice file, read by hand: its label text and a piece of its rendered prompt.
GOLDEN = {
    ("ag_news", "train"): ("business", "Article: Tokyo Stocks Rise as Techs Rally"),
    ("ag_news", "test"): ("business", "Article: Fears for T N pension after talks"),
    ("dbpedia_14", "train"): ("village", "Title: Kanni Banmauk\nContent:  Kanni is a village"),
    ("dbpedia_14", "test"): ("written work", "Title: The April Witch\nContent:  The April Witch is a fantasy"),
    ("imdb", "train"): ("positive", "Review: There is no relation at all between Fortier and Profiler"),
    ("imdb", "test"): ("positive", "Review: <br /><br />When I unsuspectedly rented A Thousand Acres"),
    ("scitail", "test"): ("neutral", "Hypothesis: If a substance has a ph value greater than 7,that"),
    ("snli", "train"): ("contradiction", "Hypothesis: Nobody is standing."),
    ("snli", "validation"): ("neutral", "Premise: Two women are embracing while holding to go packages."),
    ("sst5", "train"): ("positive", "Sentence: vereté has a whip-smart sense of narrative bluffs ."),
    ("sst5", "test"): ("negative", "Sentence: a 93-minute condensation of a 26-episode tv series"),
    ("trec", "train"): ("description", "Question: How did serfdom develop in and then leave Russia ?"),
    ("trec", "test"): ("quantity", "Question: How far is it from Denver to Aspen ?"),
    ("yahoo_answers_topics", "train"): ("entertainment", "Title: What is the name of the wolf in the cartoon"),
    ("yahoo_answers_topics", "test"): ("computers", "Content: Or is  the free version good enough?\nAnswer: "),
    ("yelp_polarity", "train"): ("negative", "Review: Unfortunately, the frustration of being Dr. Goldberg's"),
    ("yelp_polarity", "test"): ("positive", "Review: Contrary to other reviews, I have zero complaints"),
}


@pytest.mark.parametrize("name", TPV)
def test_each_task_loads_its_slice_renders_every_row_and_scores_its_gold(name):
    folder = DATA_MORE / name
    if not folder.is_dir():
        pytest.skip(f"no offline slice {folder}")
    task = get_task(name)
    train_split, eval_split = SLICE_SPLITS.get(name, task.splits)
    task = replace(task, train_split=train_split, eval_split=eval_split)
    for split in dict.fromkeys(task.splits):
        loaded = load_rows(task, split, DATA_MORE)
        for row in loaded:
            assert task.render_input(row).strip() and task.render_target(row) in task.labels
        result = score(task, loaded, [task.render_target(r) for r in loaded])
        assert result.invalid_rate == 0.0 and result.primary == pytest.approx(100.0), (name, split)
        label, prompt = GOLDEN[(name, split)]
        assert task.render_target(loaded[0]) == label and task.labels[task.gold_of(loaded[0])] == label
        assert prompt in task.render_input(loaded[0])
    for path in sorted(folder.glob("*.jsonl")):  # any other split the slice holds loads too
        assert load_rows(task, path.stem, DATA_MORE)


def test_the_small_rule_on_the_trec_slice():
    if not (DATA_MORE / "trec").is_dir():
        pytest.skip(f"no offline slice {DATA_MORE / 'trec'}")
    task = get_task("trec")
    train, evaluation = load_rows(task, task.train_split, DATA_MORE), load_rows(task, task.eval_split, DATA_MORE)
    got = split_rows(task.split_rule, train, evaluation, val_fraction=0.1, seed=0)
    assert [len(p) for p in got] == [len(train), len(evaluation) // 2, len(evaluation) - len(evaluation) // 2]


# --- hooks -----------------------------------------------------------------------------------------------

# Rows in the hub schema, made up here (not copied).
SNLI_ROWS = [{"premise": "A dog runs.", "hypothesis": "An animal moves.", "label": 0},
             {"premise": "A dog runs.", "hypothesis": "The dog is fast.", "label": -1}]


def test_snli_marks_pairs_without_a_gold_label():
    assert [has_gold_label(r) for r in SNLI_ROWS] == [True, False]
    assert get_task("snli").keep is has_gold_label


def test_snli_rows_without_a_gold_label_are_dropped_when_loaded(tmp_path):
    (tmp_path / "snli").mkdir()
    (tmp_path / "snli" / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SNLI_ROWS))
    assert load_rows(get_task("snli"), "validation", tmp_path) == SNLI_ROWS[:1]


def test_yahoo_prompt_keeps_the_answer_and_allows_a_missing_one():
    task = get_task("yahoo_answers_topics")
    hub = {"id": 1, "topic": 2, "question_title": "Why?", "question_content": "", "best_answer": "Because."}
    assert yahoo_row(hub) == hub
    assert task.render_input(hub) == "Title: Why?\nContent: \nAnswer: Because."
    assert task.render_input({**hub, "best_answer": None}).endswith("Answer: ")
