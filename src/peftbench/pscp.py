"""PSCP, PEFT-Bench's cost-aware score.

PSCP = P · (1 + M_p/C_p)^−β_p · (1 + M_f/C_f)^−β_f · (1 + M_m/C_m)^−β_m

P is the mean primary score over tasks (0–100), M_p the trainable parameters, M_f the extra
inference TFLOPs over the base model, M_m the peak training memory in GB. The constants scale
each cost to the point where it halves (β = 1) the score: 500 M parameters, 10 TFLOPs, 94 GB.
"""

from __future__ import annotations

from peftbench.config import PSCPConfig


def pscp(score: float, params: float, tflops: float, mem_gb: float, k: PSCPConfig | None = None) -> float:
    """Penalise a quality score by parameter, FLOP and memory cost (constants: `PSCPConfig`)."""
    k = k or PSCPConfig()
    if min(params, tflops, mem_gb) < 0:
        raise ValueError("costs must be non-negative")
    return (
        score
        * (1 + params / k.c_p) ** -k.beta_p
        * (1 + tflops / k.c_f) ** -k.beta_f
        * (1 + mem_gb / k.c_m) ** -k.beta_m
    )
