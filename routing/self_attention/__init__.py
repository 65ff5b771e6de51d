"""Self-attention routing of Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021), registered as
"self-attention".

Laid out like every algorithm package (see routing.dynamic):
    squash.py     the paper's squash v = (1 - exp(-|s|)) s / |s| and its closed-form backward
    reference.py  the math in PyTorch, a cache-sized chunk of samples at a time, with its autograd Function
    backward.py   the closed-form backward the Function calls, with its derivation
    linear.py     the fused dense-layer path: routing from poses and transforms (CPU, routing.cpu.fusion)
    router.py     the registered router (options, the learned prior B, size checks, which path runs)
There is no Triton backend.
"""

from routing.self_attention.router import SelfAttentionRouting

__all__ = ["SelfAttentionRouting"]
