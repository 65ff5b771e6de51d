"""The kernels compile for the A100 (sm_80) and the H100 (sm_90) without a GPU (experiments.kernel_resources).

The interpreter that runs the other kernel tests never compiles; here Triton's compiler and its bundled ptxas
lower the kernels to cubins. The variants come from running the launchers with the kernels recorded
(kernels/variants.py), in a subprocess, since the kernels must be imported with TRITON_INTERPRET=0 there.

Default run: the launches with a single-value parent tile reach every routing kernel at every dtype for both
targets, and one float32 variant of two kernels (dynamic routing's forward, EM's M-step partials) compiles for both
targets without spills; the occupancy arithmetic and the ptxas report parsing are checked on known values. The
whole check (every variant, both targets: the CI step `python -m experiments.kernel_resources --check`) is the
slow test at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from experiments.kernel_resources.compile import parse_ptxas_log  # noqa: E402
from experiments.kernel_resources.occupancy import TARGETS, occupancy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPILED_ENV = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}

CAPTURE = r"""
import json, os, tempfile
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp()
import kernels.variants as kv
from experiments.kernel_resources.compile import compile_variant

KERNELS = (":dynamic_routing_forward_kernel", ":em_m_step_partials_kernel")
variants = kv.capture([launch for launch in kv.all_launches() if "one-value" in launch.name])
compiled = {}
for v in variants:  # the first float32 variant of two kernels
    if v.dtype == "fp32" and v.kernel.endswith(KERNELS) and (v.kernel, v.arch) not in compiled:
        r = compile_variant(v)
        compiled[(v.kernel, v.arch)] = [r.registers, r.spill_bytes, r.shared_bytes, v.options.get("num_warps", 4)]
print(json.dumps({"defined": sorted(kv.defined_kernels()), "uncovered": kv.uncovered(variants),
                  "compiled": [[k, a, *values] for (k, a), values in compiled.items()]}))
"""


@pytest.fixture(scope="module")
def captured() -> dict:
    done = subprocess.run([sys.executable, "-c", CAPTURE], env=COMPILED_ENV, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_routing_kernel_is_captured_for_both_targets_and_every_dtype(captured):
    """The single-value launches reach every kernel of the routing passes (kernels/<op>/forward.py and
    backward.py) for both targets and every dtype; --check makes the same check for every kernel and launch."""
    routing_kernels = [k for k in captured["defined"] if k.split(":")[0].endswith((".forward", ".backward"))]
    assert len(routing_kernels) >= 8, f"expected the dynamic and EM kernels at least, found {captured['defined']}"
    missing = [entry for entry in captured["uncovered"] if entry[0] in routing_kernels]
    assert not missing, f"kernels no declared launch reaches (add a Launch in kernels/<op>/variants.py): {missing}"


def test_kernels_compile_without_spills_for_both_targets(captured):
    compiled = {(kernel, arch): rest for kernel, arch, *rest in captured["compiled"]}
    assert {kernel.split(":")[1] for kernel, _ in compiled} == {"dynamic_routing_forward_kernel",
                                                                 "em_m_step_partials_kernel"}
    assert {(k, a) for k, _ in compiled for a in (80, 90)} == set(compiled)
    for (kernel, arch), (registers, spills, shared, warps) in compiled.items():
        target = TARGETS[arch]
        assert 0 < registers <= target.max_registers_per_thread, (kernel, arch, registers)
        assert spills == 0, f"{kernel} spills {spills} bytes on sm_{arch}"
        assert shared <= target.max_shared_per_program, (kernel, arch, shared)
        assert occupancy(target, registers, shared, warps).programs >= 1, (kernel, arch)


# ---- occupancy arithmetic and the ptxas report, on known values ----


def test_occupancy_from_registers_warps_and_shared_memory():
    h100, a100 = TARGETS[90], TARGETS[80]
    # 128 registers x 128 threads: 4096 registers a warp, 16 warps by registers -> 4 programs of 4 warps
    assert occupancy(h100, 128, 0, 4) == occupancy(h100, 128, 0, 4).__class__(4, 16, "registers")
    # 32 registers: 64 warps fit by registers; the 64-warp limit gives 16 programs of 4 warps
    fit = occupancy(h100, 32, 0, 4)
    assert (fit.programs, fit.warps) == (16, 64) and fit.fraction(h100) == 1.0
    # 33 registers round up to 40 a thread (1280 a warp): 51 warps by registers -> 12 programs of 4 warps
    assert occupancy(a100, 33, 0, 4).programs == 12
    # 100 KiB of shared memory a program (+1 KiB reserved): one program on an A100, two on an H100
    assert occupancy(a100, 32, 100 * 1024, 4).programs == 1
    assert occupancy(h100, 32, 100 * 1024, 4).programs == 2
    # beyond the per-program limits nothing can be resident
    assert occupancy(a100, 32, 164 * 1024, 4).programs == 0
    assert occupancy(h100, 256, 0, 4).limited_by == "registers per thread"
    assert occupancy(h100, 32, 0, 64).limited_by == "threads per program"


def test_the_ptxas_report_is_parsed():
    log = ("ptxas info    : 28 bytes gmem\n"
           "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    24 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
           "ptxas info    : Used 96 registers, used 1 barriers, 512 bytes smem\n")
    assert parse_ptxas_log(log) == (96, 12, 16, 24, 512)
    with pytest.raises(RuntimeError, match="could not read"):
        parse_ptxas_log("ptxas info    : 28 bytes gmem\n")


@pytest.mark.slow
def test_every_variant_compiles_for_both_targets_without_spills(tmp_path):
    """The CI step: every variant the launchers choose, both targets, no spills, shared memory within limits."""
    out = tmp_path / "kernel_resources.csv"
    done = subprocess.run([sys.executable, "-m", "experiments.kernel_resources", "--check", "--out", str(out)],
                          env=COMPILED_ENV, cwd=ROOT, capture_output=True, text=True, timeout=7200)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-6000:])
    assert out.stat().st_size > 0
