"""The GPU check (`python -m experiments.gpu_check`), run in its --smoke mode: tiny shapes on the CPU under the
Triton interpreter, so the script a first GPU session runs is known to work before a GPU is lent."""

import pytest

from experiments.gpu_check.main import main
from kernels.utils import interpreter_enabled


@pytest.mark.skipif(not interpreter_enabled(), reason="--smoke runs the kernels under TRITON_INTERPRET=1")
@pytest.mark.parametrize("section", ["dynamic", "em"])
def test_gpu_check_smoke_passes_every_check(section, capsys):
    assert main(["--smoke", "--only", section]) == 0
    printed = capsys.readouterr().out
    assert "checks passed" in printed and "FAILED" not in printed
