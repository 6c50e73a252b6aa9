"""Running model-written programs (APPS) in a box: a separate process per test, with limits.

Layers, each stopping what the others might miss:
- a fresh process group, killed whole at a wall-clock timeout (infinite loops, sleeping);
- rlimits: address space (memory bombs), CPU seconds, file size, core dumps off;
- a new network namespace when the kernel allows it (no route anywhere);
- a Python audit hook installed before the program runs that refuses sockets, new processes
  (fork, exec, subprocess, posix_spawn: fork bombs), ctypes, and any file access outside the
  program's temporary directory and the Python installation (no writing outside it, no reading
  the user's home);
- a scrubbed environment and a temporary working directory that is deleted afterwards.

This is defence in depth for benchmark code, not a security boundary against a determined
attacker with a kernel exploit: run untrusted benchmarks in a container or VM as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
_BOOTSTRAP = Path(__file__).with_name("_sandbox_boot.py")


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 4.0
    memory_mb: int = 1024
    cpu_s: int = 4
    file_mb: int = 16


@dataclass
class ExecResult:
    status: str  # "ok", "error" (non-zero exit), "timeout" (wall clock or CPU-time limit)
    stdout: str
    stderr: str
    returncode: int | None


def _limit(limits: Limits) -> None:
    """Runs in the child between fork and exec."""
    os.setsid()
    mem = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
    fsize = limits.file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, AttributeError):  # best effort; the audit hook blocks sockets anyway
        ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)


def run_python(program: str, *, stdin: str = "", call: dict[str, Any] | None = None,
               limits: Limits = Limits()) -> ExecResult:
    """Run `program` as __main__ (stdin mode) or call one of its functions (`call` = {fn_name, args})."""
    with tempfile.TemporaryDirectory(prefix="peftbench-sandbox-") as tmp:
        workdir = Path(tmp)
        (workdir / "program.py").write_text(program, encoding="utf-8")
        if call is not None:
            (workdir / "call.json").write_text(json.dumps(call), encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "PYTHONHASHSEED": "0", "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(_BOOTSTRAP), tmp, "call" if call is not None else "main"],
            cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=lambda: _limit(limits), close_fds=True,
        )
        try:
            out, err = proc.communicate(stdin.encode(), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            return ExecResult("timeout", out.decode(errors="replace"), err.decode(errors="replace"), None)
        finally:
            _kill_group(proc)  # anything the program left behind in its group
        if proc.returncode == 0:
            status = "ok"
        elif proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):  # the CPU-time limit stopped it
            status = "timeout"
        else:
            status = "error"
        return ExecResult(status, out.decode(errors="replace"), err.decode(errors="replace"), proc.returncode)


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def passes_tests(program: str, tests: dict[str, Any], limits: Limits = Limits()) -> bool:
    """APPS pass criterion: every test case gives the expected output (no tests: not passed)."""
    inputs, outputs = tests.get("inputs") or [], tests.get("outputs") or []
    if not inputs or len(inputs) != len(outputs):
        return False
    fn_name = tests.get("fn_name")
    for given, expected in zip(inputs, outputs, strict=True):
        if fn_name:
            result = run_python(program, call={"fn_name": fn_name, "args": given}, limits=limits)
            if result.status != "ok" or not _same_return(result.stdout, expected):
                return False
        else:
            text = given if isinstance(given, str) else "\n".join(map(str, given))
            result = run_python(program, stdin=text, limits=limits)
            want = expected if isinstance(expected, str) else "\n".join(map(str, expected))
            if result.status != "ok" or result.stdout.split() != want.split():
                return False
    return True


def _same_return(stdout: str, expected: Any) -> bool:
    """Call-based APPS outputs hold the return value, often wrapped in a one-element list."""
    try:
        value = json.loads(stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return False
    return value == expected or [value] == expected
