"""The shape of the code: no import cycle among peftbench's modules, and a short call chain from the
command line to one run (a pooled run used to be 11 calls deep through 8 verbs for "run")."""

from __future__ import annotations

import ast
import inspect
import queue
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FRAMES = 6


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    """Module → the modules of `package` it imports: at module level and inside functions, relative
    imports resolved, and importing a submodule imports its parent packages too."""
    files = {}
    for path in (src / package).rglob("*.py"):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                imported = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            else:
                continue
            for target in imported:
                parts = target.split(".")
                for parent in (".".join(parts[:i]) for i in range(2, len(parts))):
                    if not name.startswith(parent + "."):  # a package is imported before its own modules
                        graph[name].add(parent)
                graph[name].add(target)
        graph[name] = {t for t in graph[name] if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph(SRC, "peftbench")
    assert "peftbench.runner.driver" in graph["peftbench.runner.grid"]  # the graph is read at all
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_cycle_check_sees_lazy_relative_and_parent_package_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    import pkg.sub.c\n")
    (pkg / "sub" / "c.py").write_text("")
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.a", "pkg.b", "pkg.sub", "pkg.a"]


GRID = """
name: frames
methods: [base]
tasks: [qs_sentiment]
seeds: [0]
evaluation: {max_samples: 4}
costs: {latency: false, memory_steps: 0}
"""


def record_execute_run(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[tuple[list, str]]:
    """Replace `module.execute_run` with one that records its call stack and the run's status."""
    calls = []
    real = module.execute_run

    def execute_run(*args, **kwargs):
        stack = inspect.stack(0)
        outcome = real(*args, **kwargs)
        calls.append((stack, outcome.status))
        return outcome

    monkeypatch.setattr(module, "execute_run", execute_run)
    return calls


def our_frames(stack: list[inspect.FrameInfo], command: str | None = None) -> list[str]:
    """The frames of peftbench code, outermost first, from the CLI command function `command` (or,
    without one, from the first peftbench frame) to `execute_run`, both included. `stack[0]` is the
    recording replacement of `execute_run`: it stands for execute_run's own frame."""
    chain = ["peftbench.runner.run.execute_run"]
    for info in stack[1:]:
        module = info.frame.f_globals.get("__name__", "")
        if module.startswith("peftbench."):
            chain.insert(0, f"{module}.{info.function}")
            if module == "peftbench.cli" and info.function == command:
                break
    return chain


def test_the_cli_reaches_execute_run_within_six_frames_of_ours(tmp_path, monkeypatch, capsys):
    """`peftbench run` on one worker runs in this process: command → grid → driver → backend → batch → run."""
    from peftbench.cli import main
    from peftbench.runner import worker

    calls = record_execute_run(monkeypatch, worker)
    config = tmp_path / "grid.yaml"
    config.write_text(GRID)
    monkeypatch.setattr(sys, "argv", ["peftbench", "run", str(config), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 0, capsys.readouterr().err
    ((stack, status),) = calls
    chain = our_frames(stack, "run")
    assert status == "done" and chain[0] == "peftbench.cli.run"
    assert len(chain) <= MAX_FRAMES, chain


@pytest.mark.parametrize("backend", ["pool", "ray", "slurm"])
def test_a_worker_reaches_execute_run_within_six_frames_of_ours(backend, tmp_path, monkeypatch):
    """From the function a pool process, a Ray task or a Slurm job is given (the first frame of ours there)."""
    from peftbench.config import validate_config
    from peftbench.modeling import resolve_model
    from peftbench.plan import plan_runs
    from peftbench.runner import worker
    from peftbench.runner.backends import local, processes, ray, slurm

    cfg = validate_config(yaml.safe_load(GRID))
    source, out = resolve_model(cfg.model), tmp_path / "out"
    (spec,) = plan_runs(cfg)
    calls = record_execute_run(monkeypatch, worker)
    if backend == "pool":
        monkeypatch.setitem(processes.MESSAGES, "queue", queue.Queue())
        local._pool_job(cfg, source, out, spec)
    elif backend == "ray":  # a task asks Ray only for its runtime context
        runtime = SimpleNamespace(get_node_id=lambda: "node", get_task_id=lambda: "task")
        monkeypatch.setitem(sys.modules, "ray", SimpleNamespace(get_runtime_context=lambda: runtime))
        ray._ray_task((cfg, source, out), [spec])
    else:
        slurm._slurm_job(cfg, source, out, [spec], tmp_path / "outcomes")
    ((stack, status),) = calls
    chain = our_frames(stack)
    entry = {"pool": local._pool_job, "ray": ray._ray_task, "slurm": slurm._slurm_job}[backend]
    assert status == "done" and chain[0] == f"{entry.__module__}.{entry.__name__}"
    assert len(chain) <= MAX_FRAMES, chain
