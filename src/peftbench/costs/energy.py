"""GPU energy of a phase via NVML, when the driver library and `nvidia-ml-py` are present."""

from __future__ import annotations

from typing import Any

import torch


class EnergyMeter:
    """Total energy counter difference (millijoules → joules) over a `with` block; None if unsupported.

    The counter is the whole GPU's (every process on it). The GPU is found by its UUID: NVML numbers
    all GPUs of the machine, torch only the visible ones, so under `CUDA_VISIBLE_DEVICES=3` (a Slurm
    job's GPU) torch's cuda:0 is NVML's device 3, and an index would read another job's GPU."""

    def __init__(self, device: torch.device) -> None:
        self.joules: float | None = None
        self._handle: Any = None
        self._start = 0
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            uuid = str(torch.cuda.get_device_properties(index).uuid).removeprefix("GPU-")  # NVML writes "GPU-<uuid>"
            self._handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception:  # no pynvml, no driver library, a GPU without the counter, a MIG slice
            self._handle = None

    def __enter__(self) -> EnergyMeter:
        if self._handle is not None:
            import pynvml

            self._start = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            import pynvml

            self.joules = (pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start) / 1000.0
