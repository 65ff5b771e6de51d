"""What a compiled kernel's resources allow per streaming multiprocessor, from the targets' published limits.

The limits (NVIDIA's CUDA C++ Programming Guide, compute capability table, and the A100 / H100 tuning guides):
both targets have 65536 32-bit registers per SM, at most 255 per thread, allocated per warp in units of 256; at
most 64 resident warps, 32 resident blocks and 1024 threads per block. Shared memory: A100 (sm_80) 164 KiB per SM,
at most 163 KiB per block; H100 (sm_90) 228 KiB per SM, at most 227 KiB per block. The CUDA runtime reserves
1 KiB of each SM's shared memory per resident block.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024


@dataclass(frozen=True)
class Target:
    """One GPU architecture's per-SM limits."""

    name: str
    arch: int  # compute capability as Triton writes it: 80, 90
    registers_per_sm: int = 65536
    max_registers_per_thread: int = 255
    register_unit: int = 256  # registers are allocated per warp in multiples of this
    max_warps_per_sm: int = 64
    max_programs_per_sm: int = 32
    max_threads_per_program: int = 1024
    shared_per_sm: int = 0
    max_shared_per_program: int = 0
    reserved_shared_per_program: int = KIB


TARGETS = {
    80: Target("A100 (sm_80)", 80, shared_per_sm=164 * KIB, max_shared_per_program=163 * KIB),
    90: Target("H100 (sm_90)", 90, shared_per_sm=228 * KIB, max_shared_per_program=227 * KIB),
}


@dataclass(frozen=True)
class Occupancy:
    """Resident programs (thread blocks) and warps per SM, and which resource limits them (0 programs: the
    kernel cannot launch at all; `limited_by` then names the limit it exceeds)."""

    programs: int
    warps: int
    limited_by: str

    def fraction(self, target: Target) -> float:
        return self.warps / target.max_warps_per_sm


def occupancy(target: Target, registers: int, shared_bytes: int, num_warps: int) -> Occupancy:
    """Programs per SM for a kernel of `registers` per thread, `shared_bytes` of shared memory per program and
    `num_warps` warps per program."""
    if num_warps * 32 > target.max_threads_per_program:
        return Occupancy(0, 0, "threads per program")
    if registers > target.max_registers_per_thread:
        return Occupancy(0, 0, "registers per thread")
    if shared_bytes > target.max_shared_per_program:
        return Occupancy(0, 0, "shared memory per program")
    per_warp = -(-max(registers, 1) * 32 // target.register_unit) * target.register_unit
    limits = {
        "warps": target.max_warps_per_sm // num_warps,
        "programs": target.max_programs_per_sm,
        "registers": (target.registers_per_sm // per_warp) // num_warps,
        "shared memory": target.shared_per_sm // (shared_bytes + target.reserved_shared_per_program),
    }
    limited_by = min(limits, key=lambda name: limits[name])
    programs = limits[limited_by]
    if programs == 0:
        return Occupancy(0, 0, limited_by)
    return Occupancy(programs, programs * num_warps, limited_by)
