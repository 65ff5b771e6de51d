"""assert_close that says where and by how much two tensors differ."""

from __future__ import annotations

import torch
from torch import Tensor


def assert_close(actual: Tensor, expected: Tensor, *, atol: float, rtol: float, what: str = "tensor") -> None:
    """Fail with the max abs/rel error, its position, and NaN/Inf positions when |a - e| > atol + rtol |e|."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad_a, bad_e = ~torch.isfinite(a), ~torch.isfinite(e)
    if bad_a.any() or bad_e.any():
        raise AssertionError(
            f"{what}: non-finite values, actual at {bad_a.nonzero()[:5].tolist()}, "
            f"expected at {bad_e.nonzero()[:5].tolist()}"
        )
    err = (a - e).abs()
    allowed = atol + rtol * e.abs()
    if (err > allowed).any():
        worst = int((err - allowed).argmax())
        pos = list(torch.unravel_index(torch.tensor(worst), a.shape))
        rel = (err / e.abs().clamp_min(1e-30)).max()
        raise AssertionError(
            f"{what}: {(err > allowed).sum().item()} of {a.numel()} elements differ; max abs error "
            f"{err.max().item():.3e}, max rel error {rel.item():.3e}; worst at {[int(p) for p in pos]}: "
            f"actual {a.flatten()[worst].item():.6e} vs expected {e.flatten()[worst].item():.6e} "
            f"(atol={atol}, rtol={rtol})"
        )
