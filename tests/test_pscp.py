"""PSCP reproduces the paper's table for β = 1 and β = 2, as a function and through the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from peftbench.config import PSCPConfig
from peftbench.pscp import pscp

PAPER = [  # method, P, M_p, M_f, M_m, PSCP β=1, PSCP β=2
    ("ln_tuning", 77.8, 266_240, 0, 27.43, 60.19, 46.57),
    ("lora", 80.1, 14_680_064, 0, 27.75, 60.08, 45.06),
    ("bitfit", 75.3, 163_840, 0, 27.20, 58.38, 45.26),
    ("ia3", 74.7, 196_608, 0.31, 28.41, 55.62, 41.41),
    ("prefix_tuning", 45.9, 34_177_536, 0.01, 27.61, 33.18, 23.98),
    ("prompt_tuning", 50.0, 409_600, 1.67, 42.47, 29.49, 17.39),
    ("p_tuning", 51.7, 53_130_752, 1.68, 34.53, 29.26, 16.56),
]


@pytest.mark.parametrize("row", PAPER, ids=[r[0] for r in PAPER])
def test_paper_table(row):
    _, p, mp, mf, mm, beta1, beta2 = row
    assert pscp(p, mp, mf, mm, PSCPConfig(beta_p=1, beta_f=1, beta_m=1)) == pytest.approx(beta1, abs=0.005)
    assert pscp(p, mp, mf, mm) == pytest.approx(beta2, abs=0.005)


def test_cli_reproduces_the_table():
    for _, p, mp, mf, mm, beta1, beta2 in PAPER:
        for beta, expected in ((1, beta1), (2, beta2)):
            out = subprocess.run(
                [sys.executable, "-m", "peftbench.cli", "pscp", "--score", str(p), "--params", str(mp),
                 "--tflops", str(mf), "--mem-gb", str(mm), "--beta", str(beta)],
                capture_output=True, text=True, check=True,
            )
            assert out.stdout.strip() == f"{expected:.2f}"


def test_costs_reduce_the_score_monotonically():
    assert pscp(80, 0, 0, 0) == 80
    assert pscp(80, 1e9, 0, 0) < pscp(80, 1e8, 0, 0) < 80
    with pytest.raises(ValueError):
        pscp(80, -1, 0, 0)
