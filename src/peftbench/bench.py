"""Running a benchmark grid: check everything, then register the runs and execute what is not done.

All checks that can fail on user input (model availability, method targets on this
architecture, task data) run before the output directory is created, so bad input leaves
nothing half-written behind.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from rich.console import Console

from peftbench.config import BenchConfig
from peftbench.errors import PeftbenchError
from peftbench.executors import run_local
from peftbench.modeling import ModelSource, resolve_model
from peftbench.pipeline import RunContext
from peftbench.plan import RunSpec, plan_runs
from peftbench.report import CONFIG_FILE
from peftbench.store import FINAL, Store
from peftbench.utils import atomic_write_text


@dataclass
class GridResult:
    out_dir: Path
    total: int
    already_done: int
    counts: dict[str, int]


def quiet_libraries() -> None:
    """Silence per-file progress bars and advice warnings from the HF libraries."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message=".*[Pp]osition ids are not supported.*")
    warnings.filterwarnings("ignore", category=FutureWarning)


def check_methods(cfg: BenchConfig, source: ModelSource) -> None:
    """Apply-time checks (target modules exist, biases can be added) on a weightless copy of the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from peftbench.methods import resolve_method

    model_config = AutoConfig.from_pretrained(
        source.location, revision=source.revision, trust_remote_code=cfg.model.trust_remote_code
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=cfg.model.trust_remote_code)
    for i, m in enumerate(cfg.methods):
        try:
            resolve_method(m.name, m.args).check(skeleton)
        except PeftbenchError as exc:
            raise PeftbenchError(f"methods[{i}] ({m.id}): {exc}") from None


def run_benchmark(cfg: BenchConfig, *, out_dir: Path | None = None, console: Console | None = None) -> GridResult:
    console = console or Console(stderr=True)
    quiet_libraries()
    out_dir = Path(out_dir or cfg.output_dir)
    source = resolve_model(cfg.model)
    check_methods(cfg, source)
    ctx = RunContext(cfg, source, out_dir)
    for task in cfg.tasks:
        ctx.task_data(task.spec())
    plan = plan_runs(cfg)

    store = Store.create(out_dir)
    atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    store.register([(r.run_id, r.method_id, r.task, r.seed, r.identity) for r in plan])
    status = {r.run_id: r.status for r in store.records()}
    pending: list[RunSpec] = [r for r in plan if status.get(r.run_id) not in FINAL]
    done = len(plan) - len(pending)
    console.print(
        f"[bold]{cfg.name}[/bold]: {len(plan)} runs ({len(cfg.methods)} methods × {len(cfg.tasks)} tasks × "
        f"{len(cfg.seeds)} seeds), {done} already finished, {len(pending)} to run → {out_dir}"
    )
    counts = run_local(pending, ctx, store, console, cfg.runtime.workers) if pending else {}
    return GridResult(out_dir=out_dir, total=len(plan), already_done=done, counts=counts)
