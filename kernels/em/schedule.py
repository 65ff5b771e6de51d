"""EM routing's inverse temperature schedule, shared by the PyTorch reference and the Triton kernels.

Only plain Python: importing it never imports triton.
"""

from __future__ import annotations


def inverse_temperatures(iterations: int, final_lambda: float) -> list[float]:
    """lambda_t = final_lambda (1 - 0.95^(t+1)) for t = 0..T-1 (0.0005, 0.000975, 0.00143 for 0.01, T = 3)."""
    return [final_lambda * (1 - 0.95 ** (t + 1)) for t in range(iterations)]
