"""Task registry and data: the 27 PEFT-Bench tasks load from hub-schema files, render every input
field, score their own gold targets perfectly, and reject broken rows with a precise message."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA

from peftbench.config import validate_config
from peftbench.errors import PeftbenchError
from peftbench.jsonsafe import dumps_json
from peftbench.scoring import score
from peftbench.tasks import TASKS, get_task, load_rows

PEFT_BENCH = [n for n in TASKS if "peft-bench" in TASKS.get(n).tags]
SHARED = sorted(p.parent.name for p in SHARED_DATA.glob("*/*.jsonl"))


def test_the_27_tasks_are_registered():
    assert len(PEFT_BENCH) == 27
    assert {TASKS.get(n).category for n in PEFT_BENCH} == {"glue", "superglue", "other", "math", "code"}
    for name in PEFT_BENCH:
        task = get_task(name)
        assert task.instruction and task.max_new_tokens <= 768
        if task.kind == "classification":
            assert task.max_new_tokens <= 8, "label tasks generate a few tokens, never a blanket 1024"


@pytest.mark.parametrize("name", sorted(set(SHARED)))
def test_shared_slices_load_and_gold_targets_score_perfectly(name):
    task = get_task(name)
    for path in sorted((SHARED_DATA / name).glob("*.jsonl")):
        rows = load_rows(task, path.stem, SHARED_DATA)
        result = score(task, rows, [task.render_target(r) for r in rows])
        assert result.invalid_rate == 0.0, path
        if task.kind == "code":
            assert result.primary > 90, path  # CodeBLEU of a reference against itself (short snippets < 100)
        else:
            assert result.primary == pytest.approx(100.0), (path, result.metrics)


@pytest.mark.parametrize("name", [n for n in TASKS.names() if TASKS.get(n).labels])
def test_every_label_is_read_back_from_an_output_that_states_it(name):
    """As generated, quoted, with a full stop, upper-cased or on a first line of several: each label
    parses to its own index (a label that no output could state was once accepted, and then scored
    as invalid even under loglik, which states the label it picks)."""
    from peftbench.scoring import parse_label

    labels = get_task(name).labels
    for i, label in enumerate(labels):
        for output in (label, f'"{label}."', label.upper(), f"{label}\nbecause of the second sentence"):
            assert parse_label(output, labels) == i, (name, output)


def test_every_input_field_is_in_the_template():
    """Each template names the fields a model needs: nothing silently left out of the prompt."""
    needed = {
        "mnli": ["premise", "hypothesis"], "qqp": ["question1", "question2"], "qnli": ["question", "sentence"],
        "stsb": ["sentence1", "sentence2"], "boolq": ["passage", "question"], "wic": ["word", "sentence1", "sentence2"],
        "copa": ["premise", "question", "choice1", "choice2"], "multirc": ["paragraph", "question", "answer"],
        "siqa": ["context", "question", "answerA", "answerB", "answerC"], "piqa": ["goal", "sol1", "sol2"],
        "winogrande": ["sentence", "option1", "option2"], "svamp": ["Body", "Question"],
        "codealpacapy": ["instruction", "input"],
    }
    for name, fields in needed.items():
        for field in fields:
            assert "{" + field + "}" in get_task(name).template, (name, field)


# Rows written here in the hub schema for the tasks the shared slices lack (made up, not copied).
HELLASWAG = {"ind": 4, "activity_label": "Cooking", "ctx_a": "A man cracks two eggs into a bowl.",
             "ctx_b": "he", "ctx": "A man cracks two eggs into a bowl. he", "endings": [
                 "whisks them with a fork.", "paints the bowl blue.", "throws the bowl at a car.", "sings to them."],
             "source_id": "x", "split": "val", "split_type": "indomain", "label": "0"}
MATH_QA = {"Problem": "what is 15 % of 40 ?", "Rationale": "0.15 * 40 = 6", "options": "a ) 4 , b ) 5 , c ) 6 , "
           "d ) 7 , e ) 8", "correct": "c", "annotated_formula": "multiply(divide(15, 100), 40)",
           "linear_formula": "divide(n0,const_100)|multiply(#0,n1)|", "category": "gain"}
APPS = {"problem_id": 1, "question": "Read n and print 2n.", "solutions": json.dumps(["print(int(input()) * 2)"]),
        "input_output": json.dumps({"inputs": ["3\n", "10\n"], "outputs": ["6\n", "20\n"]}),
        "difficulty": "introductory", "url": "x", "starter_code": ""}


@pytest.mark.parametrize("name,row,split", [("hellaswag", HELLASWAG, "validation"), ("math_qa", MATH_QA, "test"),
                                            ("apps", APPS, "test")])
def test_tasks_without_a_shared_slice(tmp_path, name, row, split):
    (tmp_path / name).mkdir()
    (tmp_path / name / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    task = get_task(name)
    rows = load_rows(task, split, tmp_path)
    result = score(task, rows, [task.render_target(r) for r in rows])
    assert result.primary == pytest.approx(100.0) and result.invalid_rate == 0.0


def test_data_quirks_of_the_reference_are_avoided():
    hs = get_task("hellaswag").render_input(HELLASWAG)
    assert "Context: A man cracks two eggs into a bowl. He" in hs  # ctx_a and ctx_b joined by a space
    assert get_task("hellaswag").render_target(HELLASWAG) == "ending1"
    wg = get_task("winogrande")
    row = {"sentence": "The cup fell off the _ .", "option1": "table", "option2": "shelf", "answer": "2"}
    assert wg.instruction and wg.render_target(row) == "option2" and "option2: shelf" in wg.render_input(row)
    mmlu = get_task("mmlu")
    mrow = {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1}
    assert mmlu.render_target(mrow) == "B" and "B. 4" in mmlu.render_input(mrow)
    wsc = get_task("wsc").render_input({"text": "Bob told Tim that he won .", "span1_index": 2, "span1_text": "Tim",
                                        "span2_index": 4, "span2_text": "he", "label": 0})
    assert "Bob told *Tim* that #he# won ." in wsc


def test_record_trains_on_one_target_per_query():
    task = get_task("record")
    row = {"passage": "A\n@highlight\nB", "query": "@placeholder won", "entities": ["A", "B"],
           "answers": ["B", "Bee"], "idx": {"passage": 0, "query": 0}}
    assert task.render_target(row) == "B" and task.gold_of(row) == ["B", "Bee"]
    assert "- B" in task.render_input(row)


@pytest.mark.parametrize(
    "content,needle",
    [
        ('{"sentence": "fine", "label": 1}\n{"sentense": "typo", "label": 0}\n', "row 2: missing field 'sentence'"),
        ('{"sentence": "fine", "label": 5}\n', "row 1: field 'label' is 5, expected 0..1"),
        ('{"sentence": "fine", "label": "one"}\n', "row 1: field 'label' is 'one', expected a class index 0..1"),
        ('{"sentence": ["a", "list"], "label": 1}\n', "row 1: field 'sentence' is list, expected text"),
        ('{"sentence": "fine", "label": 1}\n{not json}\n', "line 2 is not valid JSON"),
        ("\n", "the split is empty"),
    ],
)
def test_broken_rows_name_the_file_row_and_field(tmp_path, content, needle):
    (tmp_path / "sst2").mkdir()
    path = tmp_path / "sst2" / "train.jsonl"
    path.write_text(content)
    with pytest.raises(PeftbenchError) as info:
        load_rows(get_task("sst2"), "train", tmp_path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_non_utf8_file(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.jsonl").write_bytes(b'{"sentence": "caf\xe9", "label": 1}\n')
    with pytest.raises(PeftbenchError, match="not UTF-8"):
        load_rows(get_task("sst2"), "train", tmp_path)


def test_apps_with_sampling_reports_pass_at_k_beside_greedy_pass_at_1(tmp_path):
    from peftbench.config import validate_config
    from peftbench.runner.grid import run_grid
    from peftbench.store import Store

    (tmp_path / "apps").mkdir()
    for split in ("train", "test"):
        (tmp_path / "apps" / f"{split}.jsonl").write_text(json.dumps(APPS) + "\n")
    cfg = validate_config({"methods": ["base"], "tasks": ["apps"], "data_dir": str(tmp_path),
                           "evaluation": {"code_samples": 5, "max_new_tokens": 8},
                           "costs": {"latency": False, "memory_steps": 0}})
    run_grid(cfg, tmp_path / "out")
    (record,) = Store.open(tmp_path / "out").records()
    assert record.status == "done", record.error
    assert {"pass_at_1", "codebleu", "pass_at_1_sampled", "pass_at_5_sampled"} <= set(record.metrics)
    (prediction,) = map(json.loads, Store(tmp_path / "out").predictions_path(record.run_id).read_text().splitlines())
    assert len(prediction["samples"]) == 5 and prediction["samples_passed"] == 0  # an untrained tiny model


def _squad_normalize(text: str) -> str:
    """The SQuAD v1.1 evaluation script's normalisation, step by step as it writes it."""
    import re
    import string

    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _squad_f1(prediction: str, gold: str) -> float:
    from collections import Counter

    pred, ref = _squad_normalize(prediction).split(), _squad_normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    return 0.0 if same == 0 else 2 * (same / len(pred)) * (same / len(ref)) / (same / len(pred) + same / len(ref))


def _mixed_outputs(task, rows) -> list[str]:
    """Right, wrong, invalid and decorated outputs, in turn, of the form the task's answers take."""
    outputs = []
    for i, row in enumerate(rows):
        target, gold = task.render_target(row), task.gold_of(row)
        if task.kind == "classification":
            wrong = task.labels[(gold + 1) % len(task.labels)]
            outputs.append([target, wrong, "maybe?", f'"{target}."', wrong.upper()][i % 5])
        elif task.kind == "numeric":
            outputs.append([target, f"{gold + 1:g}", "no idea", f"The answer is {gold:,g}.", f"{gold - 1e-3}"][i % 5])
        elif task.kind == "regression":
            outputs.append([target, f"{5 - gold:.3f}", "n/a", "7", f"-1 or {gold}"][i % 5])
        elif task.kind == "span":
            answers = [gold[0], gold[-1], "", f"{gold[0].split()[0]} and more words", f"The {gold[0].upper()}!"]
            outputs.append(answers[i % 5])
        else:
            outputs.append([target, "", target[: len(target) // 2]][i % 3])
    return outputs


def _recount(task, records: list[dict]) -> dict[str, float]:
    """Every metric of a task from its predictions file alone (`reference`, `parsed`, `group`), by
    scikit-learn, numpy or the SQuAD script's definitions: none of peftbench's metric code."""
    import numpy as np
    from scipy.stats import rankdata
    from sklearn.metrics import f1_score, matthews_corrcoef

    refs, parsed = [r["reference"] for r in records], [r["parsed"] for r in records]
    out: dict[str, float] = {}
    if task.kind == "classification":
        labels = list(task.labels)
        # two labels: an invalid output is the wrong one; more: a value of its own, in no class's average
        pred = [p if p is not None else (labels[1 - labels.index(g)] if len(labels) == 2 else "<invalid>")
                for g, p in zip(refs, parsed, strict=True)]
        present = sorted({*refs, *pred} - {"<invalid>"})
        out["accuracy"] = 100 * float(np.mean([p == g for g, p in zip(refs, parsed, strict=True)]))
        if len(labels) == 2:
            out["f1"] = 100 * f1_score(refs, pred, pos_label=labels[1], average="binary", zero_division=0)
        out["macro_f1"] = 100 * f1_score(refs, pred, labels=present, average="macro", zero_division=0)
        out["mcc"] = 100 * matthews_corrcoef(refs, pred)
        questions: dict[tuple, bool] = {}
        for r in records:
            if "group" in r:
                questions[tuple(r["group"])] = questions.get(tuple(r["group"]), True) and r["parsed"] == r["reference"]
        if questions:
            out["multirc_em"] = 100 * sum(questions.values()) / len(questions)
    elif task.kind == "numeric":
        hits = [p is not None and abs(p - g) <= 1e-6 for g, p in zip(refs, parsed, strict=True)]
        out["numeric_accuracy"] = 100 * float(np.mean(hits))
    elif task.kind == "regression":
        low, high = task.value_range
        worst = [high if g - low < high - g else low for g in refs]  # an invalid output: the far end
        values = [p if p is not None else w for p, w in zip(parsed, worst, strict=True)]
        out["pearson"] = 100 * float(np.corrcoef(refs, values)[0, 1])
        out["spearman"] = 100 * float(np.corrcoef(rankdata(refs), rankdata(values))[0, 1])
    elif task.kind == "span":
        best = [(max(float(_squad_normalize(p or "") == _squad_normalize(g)) for g in golds),
                 max(_squad_f1(p or "", g) for g in golds)) for golds, p in zip(refs, parsed, strict=True)]
        out["record_em"] = 100 * float(np.mean([em for em, _ in best]))
        out["record_f1"] = 100 * float(np.mean([f1 for _, f1 in best]))
    return out


# Metrics a predictions file does not carry the inputs of: CodeBLEU is the `codebleu` package's
# parse of the programs, and SVAMP's equation check re-parses the raw `prediction`.
NOT_RECOUNTED = {"codebleu", "equation_consistency"}


@pytest.mark.parametrize("name", sorted(set(SHARED)))
def test_every_stored_metric_is_recounted_from_the_predictions_file_alone(name):
    """A reader of `OUT/predictions/<run>.jsonl` can check a run's scores: the file names what each
    row was compared with (`reference`: STS-B's unrounded score, every ReCoRD answer, GSM8K's number,
    not the training target in `gold`) and MultiRC's question (`group`)."""
    task = get_task(name)
    split = task.eval_split if (SHARED_DATA / name / f"{task.eval_split}.jsonl").is_file() else \
        sorted((SHARED_DATA / name).glob("*.jsonl"))[0].stem
    rows = load_rows(task, split, SHARED_DATA)
    result = score(task, rows, _mixed_outputs(task, rows))
    records = [json.loads(dumps_json(r)) for r in result.records]  # as the file holds them
    recounted = _recount(task, records)
    assert set(task.metrics) - NOT_RECOUNTED <= set(recounted), "a metric this test cannot recount from the file"
    for metric in set(task.metrics) - NOT_RECOUNTED:
        assert result.metrics[metric] == pytest.approx(recounted[metric], abs=1e-9), metric
    assert -100 < result.primary < 100 and result.primary != 0, result.metrics  # neither all right nor all wrong
    assert result.invalid_rate == pytest.approx(sum(r["parsed"] is None for r in records) / len(records))
    if task.kind in ("classification", "numeric", "span"):
        assert [r["correct"] for r in records] == [
            r["parsed"] is not None and (abs(r["parsed"] - r["reference"]) <= 1e-6 if task.kind == "numeric" else
                                         _squad_normalize(r["parsed"]) in map(_squad_normalize, r["reference"])
                                         if task.kind == "span" else r["parsed"] == r["reference"])
            for r in records]
    if task.kind == "code":
        assert [r["reference"] for r in records] == [r["gold"] for r in records]


def test_predictions_records_of_a_code_task_and_of_a_task_defined_in_python(tmp_path):
    """APPS's gold holds its tests: the record's reference is the program alone. A group hook of a
    task defined in Python may return anything hashable: the record holds a JSON form of it, for a
    task of any kind (a frozenset once stopped the grid as the file was written)."""
    import dataclasses

    (tmp_path / "apps").mkdir()
    (tmp_path / "apps" / "test.jsonl").write_text(json.dumps(APPS) + "\n")
    apps = get_task("apps")
    (record,) = score(apps, load_rows(apps, "test", tmp_path), ["print(2 * int(input()))"]).records
    assert record["reference"] == "print(int(input()) * 2)" and record["correct"] is True
    stsb = dataclasses.replace(get_task("stsb"), group=lambda row: frozenset({row["sentence1"]}))
    rows = load_rows(get_task("stsb"), "validation", SHARED_DATA)[:3]
    records = score(stsb, rows, ["3", "4", "x"]).records
    assert [r["group"] for r in records] == [repr(frozenset({r["sentence1"]})) for r in rows]
    assert json.loads(dumps_json(records))[0]["group"] == records[0]["group"]


def test_wsc_marks_the_span_where_its_words_stand_when_the_index_is_one_off():
    # made up, with SuperGLUE's defect: a comma glued to "home," gives the pronoun index 13, "use"
    row = {"text": "They got home, and put the key in the safe . They might use it later .",
           "span1_index": 9, "span1_text": "safe", "span2_index": 13, "span2_text": "it", "label": 0}
    assert get_task("wsc").render_input(row).count("#it#") == 1 and "*safe*" in get_task("wsc").render_input(row)
    assert "#use#" not in get_task("wsc").render_input(row)
    right = {**row, "span2_index": 14}
    assert get_task("wsc").render_input(right) == get_task("wsc").render_input(row)
    for path in sorted((SHARED_DATA / "wsc").glob("*.jsonl")):  # every real row: both marks on their words
        for r in load_rows(get_task("wsc"), path.stem, SHARED_DATA):
            text = get_task("wsc").render_input(r)
            assert f"*{r['span1_text']}" in text and f"#{r['span2_text']}" in text, (path, r["idx"])


def test_capping_the_eval_rows_keeps_whole_multirc_questions():
    from peftbench.runner.run import cut_task_data

    task = get_task("multirc")
    rows = load_rows(task, "validation", SHARED_DATA)
    cfg = validate_config({"methods": ["base"], "tasks": ["multirc"], "data_dir": str(SHARED_DATA),
                           "evaluation": {"max_samples": 10}})
    test = cut_task_data(task, cfg).eval
    question = [task.group(task.prepared(r)) for r in rows]
    kept = {task.group(task.prepared(r)) for r in test}
    assert len(test) > 10 and test == [r for r, q in zip(rows, question, strict=True) if q in kept]
    assert kept == set(question[:10]) and question[9] == question[10], "the 10th row's question goes on"
    # runs capped the old way (half a question) are not resumed as these: a capped MultiRC run has its own id
    from peftbench.plan import plan_runs

    def ids(task: str, evaluation: dict) -> str:
        return plan_runs(validate_config({"methods": ["base"], "tasks": [task], "data_dir": str(SHARED_DATA),
                                          "evaluation": evaluation}))[0].identity["evaluation"]

    assert ids("multirc", {"max_samples": 10})["max_samples_by"] == "group"
    assert "max_samples_by" not in ids("multirc", {}) and "max_samples_by" not in ids("boolq", {"max_samples": 10})


def test_a_changed_hook_gives_its_tasks_new_run_ids(monkeypatch):
    from peftbench.plan import task_fingerprint
    from peftbench.tasks import hooks

    now = {name: task_fingerprint(get_task(name)) for name in ("wsc", "multirc", "sst2")}
    monkeypatch.setattr(hooks, "REVISIONS", {})
    before = {name: task_fingerprint(get_task(name)) for name in ("wsc", "multirc", "sst2")}
    assert now["wsc"] != before["wsc"] and now["multirc"] == before["multirc"] and now["sst2"] == before["sst2"]


def test_an_unlabelled_stsb_row_is_an_error_not_a_gold_of_minus_one(tmp_path):
    (tmp_path / "stsb").mkdir()
    row = {"sentence1": "a", "sentence2": "b", "label": -1.0}  # GLUE's test split: every label -1
    (tmp_path / "stsb" / "test.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(PeftbenchError, match=r"row 1: field 'label' is -1, expected a score in 0\.\.5"):
        load_rows(get_task("stsb"), "test", tmp_path)
