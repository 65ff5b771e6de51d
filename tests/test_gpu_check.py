"""The GPU check (`python -m experiments.gpu_check`), run in its --smoke mode: tiny shapes on the CPU under the
Triton interpreter, so the script a first GPU session runs is known to work before a GPU is lent."""

import math

import pandas as pd
import pytest
import torch

from experiments.gpu_check import main as gpu_check
from experiments.gpu_check.main import main
from experiments.gpu_check.report import Report
from kernels.utils import interpreter_enabled

needs_interpreter = pytest.mark.skipif(not interpreter_enabled(),
                                       reason="--smoke runs the kernels under TRITON_INTERPRET=1")


@needs_interpreter
@pytest.mark.parametrize("section", ["dynamic", "em", "fused"])
def test_gpu_check_smoke_passes_every_check(section, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(gpu_check, "RESULTS_CSV", tmp_path / "gpu_check.csv")
    assert main(["--smoke", "--only", section]) == 0
    printed = capsys.readouterr().out
    assert "checks passed" in printed and "FAILED" not in printed
    assert not (tmp_path / "gpu_check.csv").exists()  # --smoke writes no results
    if section == "fused":
        check_fused_section_output(printed)


def check_fused_section_output(printed: str) -> None:
    """The fused section checks the router's transforms path against the PyTorch backend and times the four
    providers; the printed table is the throughput table's pivot."""
    for layer in ("dynamic", "em"):
        assert f"[ok] fused {layer}" in printed
        assert f"fused {layer}" in printed and "the router's transforms path runs the fused kernels" in printed
    for column in ("torch forward", "triton-unfused forward+backward", "triton-fused forward",
                   "triton-fused forward+backward", "torch-compile forward"):
        assert column in printed


def test_timing_rows_have_the_throughput_tables_columns():
    report = Report(torch.device("cpu"), smoke=True)
    label = dict(case="capsule-linear", routing="dynamic", provider="triton-fused", dtype="float32", iterations=3,
                 batch=4, shape="poses [4, 6, 8] -> [4, 10, 16]")
    median = report.time(lambda: torch.ones(3).sum(), mode="forward", bytes_moved=4_000_000, **label)
    report.skip("needs CUDA", mode="forward+backward", **label)
    ok, skipped = report.timings
    assert ok["status"] == "ok" and ok["median"] == median and ok["x_name"] == "batch" and ok["x_value"] == 4
    assert ok["samples_per_s"] == pytest.approx(4 / median * 1e3) and ok["gb_per_s"] == pytest.approx(4 / median)
    assert skipped["status"] == "skipped" and skipped["note"] == "needs CUDA" and math.isnan(skipped["median"])
    from experiments.throughput.sweep import COLUMNS

    assert set(ok) <= set(COLUMNS) and set(gpu_check.KEY) - {"device"} <= set(ok)
    assert "skipped [1]" in gpu_check.pivot_markdown(pd.DataFrame(report.timings))
