"""The CLI contract: bad input → one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from peftbench.cli import main

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `peftbench ARGS` in-process through the real entry point (exit code and streams included)."""

    def invoke(*args: str) -> Result:
        monkeypatch.setattr(sys, "argv", ["peftbench", *args])
        with pytest.raises(SystemExit) as exited:
            main()
        captured = capsys.readouterr()
        return Result(exited.value.code or 0, captured.out, captured.err)

    return invoke


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bench.yaml"
    path.write_text(body + f"\noutput_dir: {tmp_path / 'out'}\n")
    return path


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "body,needles",
    [
        ("methods: [lorra]\ntasks: [qs_arith]", ("unknown method 'lorra'", "did you mean 'lora'")),
        ("methods: [lora]\ntasks: [qs_arithmetic]", ("unknown task 'qs_arithmetic'",)),
        ("methods: [lora]\ntasks: [qs_arith]\ntraining: {epoch: 3}", ("training.epoch", "unknown key")),
        ("methods: [{name: lora, learning_rate: -0.001}]\ntasks: [qs_arith]",
         ("methods[0].learning_rate", "greater than 0")),
        ("methods: [lora]\ntasks: [qs_arith]\nmodel: {name: ./no/such/model}", ("does not exist",)),
        ("methods: [{name: lora, args: {target_modules: [nope_proj]}}]\ntasks: [qs_arith]",
         ("nope_proj", "matches no module")),
    ],
    ids=["method", "task", "key", "negative-lr", "model-path", "target"],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, body, needles):
    result = cli("run", str(write_config(tmp_path, body)))
    assert_user_error(result, *needles)
    assert not (tmp_path / "out").exists()


def test_set_override_errors_too(cli, tmp_path):
    config = write_config(tmp_path, "methods: [lora]\ntasks: [qs_arith]")
    assert_user_error(cli("validate", str(config), "--set", "training.max_steps=-5"), "training.max_steps")


def test_paper_config_validates_and_fails_only_for_missing_weights(cli, tmp_path):
    config = REPO / "configs" / "peftbench-llama3-8b.yaml"
    ok = cli("validate", str(config))
    assert ok.returncode == 0 and "7 methods" in ok.stdout and "945 runs" in ok.stdout
    on_slurm = cli("validate", str(config), "--set", "executor.kind=slurm", "--set", "executor.slurm.partition=gpu")
    assert "Slurm via submitit (partition gpu, per job: 1 run(s), 1 GPU" in on_slurm.stdout.replace("\n", " ")
    # the installed console script, as a user runs it
    result = subprocess.run(["peftbench", "run", str(config), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=300, env={**_env(), "HF_HUB_OFFLINE": "1"})
    assert_user_error(Result(result.returncode, result.stdout, result.stderr),
                      "Meta-Llama-3-8B-Instruct", "not available", "hub is unreachable")
    assert not (tmp_path / "out").exists()


def _env() -> dict[str, str]:
    import os

    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def test_list_and_usage_errors(cli):
    tasks = json.loads(cli("list", "tasks", "--format", "json").stdout)
    assert {"qs_sentiment", "qs_topic", "qs_arith", "mnli", "copa"} <= {t["name"] for t in tasks}
    methods = json.loads(cli("list", "methods", "--format", "json").stdout)
    assert {m["name"] for m in methods} >= {"lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning",
                                            "ln_tuning", "bitfit", "full", "base"}
    assert_user_error(cli("pscp", "--score", "80"), "--params")
    assert_user_error(cli("report", "--out", "/nonexistent/dir"), "no peftbench results")


def test_score_predictions_from_another_stack(cli, tmp_path):
    from conftest import SHARED_DATA

    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"index": 0, "prediction": "( 6.0 - 2.0 ) = 4.0"}\n{"index": 1, "prediction": "(1 + 1) = 2"}\n')
    # 2 of the split's 64 rows: an error by default, never a score over a silently smaller subset
    assert_user_error(cli("score", "svamp", str(preds), "--data-dir", str(SHARED_DATA)),
                      "62 of 64 rows", "no prediction", "--missing-as-wrong")
    rows = tmp_path / "rows.jsonl"
    result = cli("score", "svamp", str(preds), "--data-dir", str(SHARED_DATA), "--missing-as-wrong", "--records",
                 str(rows))
    assert result.returncode == 0, result.stderr
    written = [json.loads(line) for line in rows.read_text().splitlines()]  # as a run's predictions file
    assert len(written) == 64 and written[0]["parsed"] == 4.0 and written[1]["prediction"] == "(1 + 1) = 2"
    assert sum(r["correct"] for r in written) == 1 and all("reference" in r for r in written)
    assert "62 of 64 rows have no prediction and are scored as wrong" in result.stderr
    scored = json.loads(result.stdout)
    assert (scored["n"], scored["n_predicted"], scored["n_missing"]) == (64, 2, 62)
    assert scored["score"] == pytest.approx(100 / 64) and scored["invalid_rate"] == pytest.approx(62 / 64)
    assert scored["metrics"]["equation_consistency"] == pytest.approx(200 / 64)
    for body, message in [("", "no predictions"), ("\n\n", "no predictions"),
                          ('{"index": true, "prediction": "4"}\n', "'index' must be an integer")]:
        preds.write_text(body)
        assert_user_error(cli("score", "svamp", str(preds), "--data-dir", str(SHARED_DATA)), message)
    preds.write_text('{"index": 0, "prediction": "x"}\n{"index": 0, "prediction": "y"}\n')
    assert_user_error(cli("score", "svamp", str(preds), "--data-dir", str(SHARED_DATA)), "line 2", "appears twice")
    preds.write_text('{"index": 999, "prediction": "x"}\n')
    assert_user_error(cli("score", "svamp", str(preds), "--data-dir", str(SHARED_DATA)), "'index' must be")


def test_show_task(cli):
    from conftest import SHARED_DATA

    result = cli("show-task", "copa", "--data-dir", str(SHARED_DATA), "--index", "2")
    assert result.returncode == 0
    assert "### Instruction:" in result.stdout and "choice1:" in result.stdout and "--- target" in result.stdout
    assert_user_error(cli("show-task", "copa", "--data-dir", str(SHARED_DATA), "--index", "9999"), "--index")


def test_cost_from_a_config_file(cli, tmp_path, monkeypatch):
    """Counted once, the rows come from the cache: the same output without counting; another shape
    (or architecture) is counted anew."""
    from peftbench.costs import from_config

    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
                                  "vocab_size": 300}))
    result = cli("cost", "--model-config", str(config), "--methods", "lora,prompt_tuning", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert set(rows["lora"]) >= {"method", "trainable_params", "base_tflops", "extra_tflops"}
    assert rows["lora"]["trainable_params"] == 2 * 16 * ((128 + 128) * 2 + (256 + 128))
    assert rows["prompt_tuning"]["extra_tflops"] > 0
    counted = []
    monkeypatch.setattr(from_config, "forward_flops", lambda *a, **k: counted.append(1) or 0)
    again = cli("cost", "--model-config", str(config), "--methods", "lora,prompt_tuning", "--format", "json")
    assert again.stdout == result.stdout and not counted
    other = cli("cost", "--model-config", str(config), "--methods", "lora", "--format", "json", "--seq-len", "64")
    assert other.returncode == 0 and counted
    (other_lora,) = json.loads(other.stdout)
    assert_user_error(cli("cost", "--model-config", "no-such-config"), "--model-config")
    assert_user_error(cli("cost", "--model-config", str(config), "--methods", "lorax"), "unknown method")
    assert_user_error(cli("cost", "--model-config", str(config), "--methods", ","), "--methods")
    # a grid's methods with their arguments and labels, under its cost protocol's shape
    grid = tmp_path / "grid.yaml"
    grid.write_text("methods: [{name: prompt_tuning, label: pt8, args: {num_virtual_tokens: 8}}, lora,\n"
                    "  {name: lora, label: lora-deni, mitigation: {strategy: deni, members: 3}}]\n"
                    "tasks: [no_such_task]\ncosts: {flops_seq_len: 64}\n")  # tasks are not costed
    rows = json.loads(cli("cost", "--model-config", str(config), "--config", str(grid), "--format", "json").stdout)
    assert [r["method"] for r in rows] == ["pt8", "lora", "lora-deni"] and rows[0]["trainable_params"] == 8 * 128
    assert rows[0]["args"] == {"num_virtual_tokens": 8} and rows[1]["extra_tflops"] == other_lora["extra_tflops"]
    assert all(r["variants"] == [] for r in rows)  # the grid's methods, not the paper's variants
    # three voting models, as the run stores them: 3 × the parameters, 3 adapted forwards against one base
    lora, voted, base = rows[1], rows[2], rows[1]["base_tflops"]
    assert voted["vote_members"] == 3 and voted["trainable_params"] == 3 * lora["trainable_params"]
    assert voted["extra_tflops_unmerged"] == pytest.approx(3 * (base + lora["extra_tflops_unmerged"]) - base)
    assert voted["extra_tflops"] == pytest.approx(2 * base)  # merged LoRA costs nothing, but runs 3 times
    assert_user_error(cli("cost", "--model-config", str(config), "--config", str(grid), "--methods", "lora"),
                      "--methods and --config")
    md = cli("cost", "--model-config", str(config), "--config", str(grid), "--format", "md").stdout
    assert "| method | trainable params |" in md and "| pt8 | 1,024 |" in md


def test_cost_gives_a_row_to_each_method_that_applies(cli, tmp_path, monkeypatch):
    """A Mixtral's experts are fused parameters, not linear modules: LoRA's down_proj finds nothing
    to adapt. Its row says why, the other methods are costed; with no method that applies, the
    command fails with that reason."""
    monkeypatch.setenv("PEFTBENCH_CACHE", str(tmp_path / "cache"))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "mixtral", "hidden_size": 64, "intermediate_size": 128,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                  "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 300}))
    result = cli("cost", "--model-config", str(config), "--methods", "lora,bitfit", "--format", "json")
    assert result.returncode == 0, result.stderr
    rows = {r["method"]: r for r in json.loads(result.stdout)}
    assert "down_proj" in rows["lora"]["error"] and "trainable_params" not in rows["lora"]
    assert rows["bitfit"]["trainable_params"] == 2 * (64 + 32)  # zero biases added to q_proj and v_proj
    table = cli("cost", "--model-config", str(config), "--methods", "lora,bitfit")
    assert table.returncode == 0 and "not applicable: method 'lora'" in table.stdout
    assert_user_error(cli("cost", "--model-config", str(config), "--methods", "lora"), "down_proj", "mixtral")


def test_compare_on_the_command_line(cli, tmp_path):
    """The table's numbers in markdown and JSON, the notes on stderr (JSON on stdout stays parseable)."""
    from conftest import hand_store

    hand_store(tmp_path / "a", [("m", "t", 0, "done", 80.0), ("m", "t", 1, "done", 82.0), ("x", "t", 0, "done", 1.0)])
    hand_store(tmp_path / "b", [("m", "t", 0, "done", 90.0), ("m", "t", 1, "done", 91.0)])
    md = cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "md")
    assert md.returncode == 0 and "note: methods only in A, not compared: x" in md.stderr
    # B − A = 9.5; Welch's p of (80, 82) against (90, 91) on ~1.7 df; one tested cell: Holm's p is p
    from scipy import stats

    p = stats.ttest_ind([90, 91], [80, 82], equal_var=False).pvalue
    assert f"| m | t | 81.0 | 90.5 | 9.50 | 2/2 | {p:.4f} | {p:.4f} | {'yes' if p < 0.05 else 'no'} |" in md.stdout
    assert "|---|---|---:|" in md.stdout
    (row,) = json.loads(cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json").stdout)
    assert row["diff"] == pytest.approx(9.5) and row["p_value"] == pytest.approx(p, rel=1e-12) == row["p_holm"]


def test_plan_durations_read_in_the_unit_that_fits():
    """The dry run's times, by hand: a tiny model's 2.3 s run is not "0.0 min" (it printed that)."""
    from peftbench.cli import _duration, _run_time

    assert [_duration(s) for s in (2.3, 59.94, 90, 3599, 7200)] == ["2.3 s", "59.9 s", "1.5 min", "60.0 min", "2.00 h"]
    assert [_run_time(s) for s in (0.5, 120, 5400)] == ["0.5 run-seconds", "2.0 run-minutes", "1.50 run-hours"]
