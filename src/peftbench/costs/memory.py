"""Peak training memory: measured (CUDA peak allocated; on CPU, the peak of live tensor bytes for
the fixed protocol and the resident-set high-water mark for a whole run) and estimated
analytically, so the two can be cross-checked."""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import sys
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


@dataclass
class MemoryPeak:
    peak_bytes: int = 0
    source: str = ""


def _read_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _return_free_heap() -> bool:
    """Give the heap's free pages back to the system (glibc's `malloc_trim`), so that what the next
    phase allocates shows in the resident set: pages a process freed earlier stay resident, and a
    phase whose tensors fit in them would not raise the high-water mark at all (33 of the
    quickstart's 48 trained runs reported less than their weights, gradients and AdamW state).
    False where glibc's allocator is not the one in use (musl, a preloaded jemalloc or tcmalloc)."""
    trim = _glibc_malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.cache
def _glibc_malloc_trim() -> Any:
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        libc = ctypes.CDLL("libc.so.6")
        in_use = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        if in_use != ctypes.cast(libc.malloc, ctypes.c_void_p).value:  # another allocator was preloaded
            return None
        trim = libc.malloc_trim
    except (ValueError, OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def resident_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


@contextmanager
def peak_memory(device: torch.device, model: nn.Module) -> Iterator[MemoryPeak]:
    """Peak memory of the enclosed phase, in bytes, with the measurement it comes from.

    CUDA: `max_memory_allocated` after resetting the peak stats (weights, gradients, optimiser
    state and activations: the figure PSCP's M_m means). CPU: the increase of the process's
    resident-set high-water mark (free heap pages returned first, then reset through
    /proc/self/clear_refs) plus the model's weights, which were resident before the phase began.
    """
    result = MemoryPeak()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.peak_bytes = int(torch.cuda.max_memory_allocated(device))
        result.source = "cuda_max_allocated"
        return
    weights = resident_bytes(model)
    trimmed = _return_free_heap()
    if sys.platform.startswith("linux") and _reset_rss_peak():
        before = (_read_status_kb("VmRSS") or 0) * 1024
        yield result
        after = (_read_status_kb("VmHWM") or 0) * 1024
        result.peak_bytes = max(after - before, 0) + weights
        result.source = "cpu_trimmed_rss_hwm_delta+weights" if trimmed else "cpu_rss_hwm_delta+weights"
        return
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield result
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result.peak_bytes = max(after - before, 0) + weights
    result.source = "cpu_ru_maxrss_delta+weights (peak not resettable: a lower bound)"


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of the dense tensor storages that ops create while active, as long as they live, and
    the peak of that sum. An output that aliases an input (a view, an in-place or out= result)
    allocates nothing; any other output is a new storage, counted until it is freed.

    Why not the resident set: a process's heap reuses pages it freed earlier without raising the
    high-water mark, so the same measurement gave 28-61 MiB for one method on the built-in model
    depending on what the process had run before (and ranked LoRA above full fine-tuning). This
    counts the tensors a training step allocates, as CUDA's allocator statistics do, and the same
    on every call. It does not see what no op returns: a kernel's scratch space, tensors made from
    Python data or NumPy, a storage grown in place (`resize_`, an `out=` into an empty tensor) —
    none of which a training step of the protocol relies on (it agrees with glibc's count of heap
    bytes in use to 1 %, a test checks)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not any(r.alias_info is not None for r in func._schema.returns):
            given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if _dense(t)}
            made = (t.untyped_storage() for t in tree_leaves(out) if _dense(t))
            for storage in {id(s): s for s in made if s.data_ptr() not in given or not s.nbytes()}.values():
                self._created(storage)
        return out

    def _created(self, storage: torch.UntypedStorage) -> None:
        size = storage.nbytes()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, size)  # storages keep their Python object until freed

    def _freed(self, size: int) -> None:
        self.live -= size


def _dense(value: Any) -> bool:
    """A plain strided tensor, which has one storage (sparse tensors and wrapper subclasses do not)."""
    return type(value) in (torch.Tensor, nn.Parameter) and value.layout == torch.strided


@contextmanager
def live_tensor_peak(model: nn.Module) -> Iterator[MemoryPeak]:
    """Peak bytes of live tensors in the enclosed phase (ops on this thread), plus the model's
    weights, resident before it began: the CPU figure of the fixed training protocol."""
    result = MemoryPeak(source="cpu_live_tensor_peak+weights")
    weights = resident_bytes(model)
    counter = _LiveTensorBytes()
    with counter:
        yield result
    result.peak_bytes = counter.peak + weights


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _batch(model: nn.Module, batch_size: int, seq_len: int, vocab_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen).to(device)


def measure_training_memory(
    model: nn.Module, *, batch_size: int, seq_len: int, steps: int, vocab_size: int, device: torch.device
) -> MemoryPeak:
    """Peak memory of a fixed training measurement: AdamW, `steps` optimiser steps on a fixed batch.

    The protocol is independent of the dataset, so methods compare on equal terms. It starts from
    no gradients. On CUDA the peak stats are reset after one warm-up step (the optimiser state it
    allocates stays in the absolute figure); on CPU live tensors are counted from before the
    warm-up, so the optimiser state counts too. The model's trainable tensors change: measure
    after evaluation.
    """
    trainable = _trainable(model)
    if not trainable:
        return MemoryPeak(0, "no trainable parameters")
    for p in trainable:
        p.grad = None
    ids = _batch(model, batch_size, seq_len, vocab_size)
    was_training = model.training
    model.train()
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        step()
        with peak_memory(device, model) as peak:
            for _ in range(steps):
                step()
    else:
        with live_tensor_peak(model) as peak:
            for _ in range(steps + 1):
                step()
    model.train(was_training)
    peak.source += f"; fixed protocol: AdamW, batch {batch_size} x {seq_len} tokens, {steps} steps"
    return peak


def analytic_training_memory(model: nn.Module, *, batch_size: int, seq_len: int, vocab_size: int) -> dict[str, int]:
    """Bytes of weights + gradients + AdamW state (2 per trainable value) + activations saved for backward.

    Saved activations are counted with saved-tensor hooks during one forward of the fixed batch,
    each storage once (parameters and views of them excluded): what autograd keeps until backward.
    """
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[tuple[int, int]] = set()
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        if key not in seen and key[0] not in param_storages:
            seen.add(key)
            saved += storage.nbytes()
        return tensor

    ids = _batch(model, batch_size, seq_len, vocab_size)
    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(input_ids=ids, labels=ids).loss
    del loss
    model.train(was_training)
    trainable = _trainable(model)
    weights = resident_bytes(model)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    return {"weights": weights, "gradients": grads, "optimizer": 2 * grads, "activations": saved,
            "total": weights + 3 * grads + saved}
