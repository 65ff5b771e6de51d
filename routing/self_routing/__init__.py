"""Self-routing (Hahn, Pyeon & Kim 2019, "Self-Routing Capsule Networks"), registered as "self-routing".

Laid out like every algorithm package (see routing.dynamic); self-routing is one pass with no iteration, so plain
autograd through the chunked forward is fast enough and there is no backward.py, and no Triton backend:
    reference.py   the math on votes in PyTorch, a cache-sized chunk of samples at a time
    linear.py      the dense-layer path: routing from poses and transforms without forming the votes
    router.py      the registered router (options, the learned routing weights and biases, size checks)
"""

from routing.self_routing.router import SelfRouting

__all__ = ["SelfRouting"]
