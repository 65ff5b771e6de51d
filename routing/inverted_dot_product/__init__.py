"""Inverted dot-product attention routing (Tsai, Srivastava, Goh & Salakhutdinov, ICLR 2020), registered as
"inverted-dot-product".

Laid out like every algorithm package (see routing.dynamic), with the modules it needs:
    reference.py       the math in PyTorch, a cache-sized chunk of samples at a time, with its autograd Function
    backward.py        the closed-form backward the Function calls
    layer_norm.py      the LayerNorm over the pose dimension and its backward, written out (see its docstring)
    linear.py          the fused dense-layer path: routing from poses and transforms (CPU, routing.cpu.fusion)
    router.py          the registered router (options, the learned LayerNorm and activation head, checks)
There is no Triton backend (triton_backend.py) yet.
"""

from routing.inverted_dot_product.router import InvertedDotProductRouting

__all__ = ["InvertedDotProductRouting"]
