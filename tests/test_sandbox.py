"""The APPS sandbox: correct programs pass; hostile ones are stopped, scored as failures, and the
benchmark process is unharmed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from peftbench.sandbox import Limits, passes_tests, run_python

FAST = Limits(timeout_s=3.0, cpu_s=3)
DOUBLE = {"inputs": ["3\n", "10\n"], "outputs": ["6\n", "20\n"]}


def test_correct_solutions_pass():
    assert passes_tests("n = int(input())\nprint(n * 2)", DOUBLE, FAST)
    assert passes_tests("import sys\nprint(2 * int(sys.stdin.read()))", DOUBLE, FAST)
    assert passes_tests("def f(a, b):\n    return a + b", {"fn_name": "f", "inputs": [[1, 2]], "outputs": [[3]]}, FAST)
    starter = "class Solution:\n    def twice(self, x):\n        return 2 * x"
    assert passes_tests(starter, {"fn_name": "twice", "inputs": [[4]], "outputs": [8]}, FAST)


def test_wrong_or_missing_tests_fail():
    assert not passes_tests("print(7)", DOUBLE, FAST)
    assert not passes_tests("print(int(input()) * 2)", {}, FAST)


@pytest.mark.parametrize(
    "program,status",
    [
        ("while True:\n    pass", "timeout"),
        ("import time\ntime.sleep(60)", "timeout"),
        ("x = bytearray(8 * 1024 ** 3)", "error"),
        ("x = []\nwhile True:\n    x.append(' ' * 10 ** 7)", "error"),
        ("import os\nwhile True:\n    os.fork()", "error"),
        ("import subprocess\nsubprocess.run(['sh', '-c', 'echo hi'])", "error"),
        ("import os\nos.system('echo hi')", "error"),
        ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)", "error"),
        ("import ctypes\nctypes.CDLL(None)", "error"),
    ],
    ids=["busy-loop", "sleep", "allocation", "growing-list", "fork-bomb", "subprocess", "os-system", "socket",
         "ctypes"],
)
def test_hostile_programs_are_stopped(program, status):
    result = run_python(program, limits=FAST)
    assert result.status == status, result.stderr[-500:]
    assert not passes_tests(program, DOUBLE, FAST)


def test_no_writes_outside_its_directory_and_no_reading_home(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')", limits=FAST)
    assert result.status == "error" and "not allowed" in result.stderr
    assert not target.exists()
    secret = Path.home() / ".peftbench-sandbox-test-secret"
    secret.write_text("token")
    try:
        result = run_python(f"print(open({str(secret)!r}).read())", limits=FAST)
        assert result.status == "error" and "token" not in result.stdout
    finally:
        secret.unlink()
    result = run_python("import os\nos.remove('/tmp')", limits=FAST)
    assert result.status == "error"


def test_own_directory_is_usable_and_removed():
    result = run_python("import os\nopen('a.txt', 'w').write('ok')\nprint(open('a.txt').read(), os.getcwd())",
                        limits=FAST)
    assert result.status == "ok" and result.stdout.startswith("ok ")
    assert not os.path.exists(result.stdout.split()[1])


def test_the_benchmark_process_is_unharmed():
    before = os.getpid(), os.getcwd()
    run_python("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", limits=FAST)
    run_python("import os\nos.killpg(0, 9)", limits=FAST)
    assert (os.getpid(), os.getcwd()) == before


def test_pass_at_k_from_sampled_programs_runs_each_sample():
    from peftbench.scoring import pass_at_ks
    from peftbench.tasks.spec import GeneratedSource, TaskSpec

    task = TaskSpec(name="double", category="code", description="", instruction="", template="{q}", kind="code",
                    source=GeneratedSource(lambda *a: [], {"test": 1}), metrics=("pass_at_1",),
                    primary_metric="pass_at_1", max_new_tokens=64, gold=lambda row: {"code": "", "tests": DOUBLE})
    right, wrong = "print(2 * int(input()))", "print(int(input()))"
    samples = [[right, wrong, f"```python\n{right}\n```", wrong, "def ("], [wrong] * 5]
    metrics, passed = pass_at_ks(task, [{"q": "a"}, {"q": "b"}], samples)
    assert passed == [2, 0]
    assert metrics == {"pass_at_1_sampled": pytest.approx(100 * (2 / 5 + 0) / 2),
                       "pass_at_5_sampled": pytest.approx(100 * (1 + 0) / 2)}
