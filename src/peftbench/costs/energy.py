"""GPU energy of a phase via NVML, when the driver library and `nvidia-ml-py` are present."""

from __future__ import annotations

from typing import Any

import torch


class EnergyMeter:
    """Total energy counter difference (millijoules → joules) over a `with` block; None if unsupported."""

    def __init__(self, device: torch.device) -> None:
        self.joules: float | None = None
        self._handle: Any = None
        self._start = 0
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or torch.cuda.current_device())
            pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        except Exception:  # no pynvml, no driver library, or a GPU without the counter
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
