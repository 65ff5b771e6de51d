"""Suite-wide set-up.

Triton kernels are checked on the CPU under Triton's interpreter. `triton.jit` decides at decoration time whether
a kernel is interpreted, so TRITON_INTERPRET must be set before any kernel module is imported: here, before the
test modules load. On a machine with CUDA the environment is left as it is (kernels compile for the GPU).
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
