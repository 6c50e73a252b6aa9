"""Small shared helpers: thread pinning, seeding, atomic writes, quiet HF libraries."""

from __future__ import annotations

import atexit
import functools
import gc
import hashlib
import io
import os
import platform
import random
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from peftbench.jsonsafe import dumps_json


@contextmanager
def pinned_threads(n: int) -> Iterator[None]:
    """Run with exactly `n` intra-op threads: results on CPU depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def cache_root() -> Path:
    """Where built models and tokenised data are cached: $PEFTBENCH_CACHE, else ~/.cache/peftbench."""
    env = os.environ.get("PEFTBENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "peftbench"


def cache_key(what: dict[str, Any]) -> str:
    """A short digest of everything a cached value depends on (JSON, keys sorted)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:20]


LIBRARIES = ("peftbench", "torch", "transformers", "peft", "datasets", "accelerate", "tokenizers")


@functools.cache
def code_digest(*names: str) -> dict[str, str]:
    """SHA-256 of package modules by their path in the package: part of a cache key wherever a cached
    value is what that code computed, so another checkout's value is never reused once the code
    changed. Read once per process: the code that computes is the code loaded."""
    package = Path(__file__).resolve().parent
    return {name: hashlib.sha256((package / name).read_bytes()).hexdigest() for name in names}


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), where `platform.processor()` is empty on Linux."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    """The installed version of each library a result depends on (None: not installed)."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for pkg in LIBRARIES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


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


def end_without_collecting() -> None:
    """At this process's exit, leave its objects to the operating system instead of garbage-collecting
    them one by one: with torch, transformers and peft imported, that collection takes 1.2–1.4 s of
    a short command (or of every worker process) and frees nothing the operating system would not.
    `gc.freeze` at exit keeps the rest of the interpreter's shutdown (atexit handlers, flushing
    stdout and stderr); everything we write is closed explicitly before that."""
    atexit.register(gc.freeze)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def create_once(path: Path, fill: Callable[[Path], None]) -> None:
    """Create `path` unless another process already has: `fill` writes a private temporary file that
    is then hard-linked into place, which fails when the name exists (readers never see half a file,
    and the first writer wins where `atomic_write_text` would let the last one replace it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        fill(Path(tmp))
        with suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_once(path: Path, text: str) -> None:
    create_once(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_torch_save(path: Path, obj: Any) -> None:
    """`torch.save` that never leaves a half-written file (tensors, checkpoint state)."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(dumps_json(r, ensure_ascii=False) + "\n" for r in records))
