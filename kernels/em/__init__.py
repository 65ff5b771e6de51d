"""EM routing (Hinton et al. 2018) as fused Triton kernels: forward and exact backward.

Shapes: votes [N, I, J, D] (rows n: samples, or (sample, window) pairs with ``child_index`` [P, I]; children i;
parents j; pose size D), child activations [N, I], beta_u and beta_a [J]; results poses [N, J, D], activations
[N, J] and assignments [N, I, J].

Modules: ``schedule`` (the inverse temperatures lambda_t, shared with the PyTorch reference; no triton), ``tiles``
(the @triton.jit helpers both passes use), ``forward`` and ``backward`` (the kernels, each with the math of its
pass), ``op`` (launchers, torch.library registration, autograd Function and the public ``em_routing``). This
package imports nothing: ``import kernels.em`` never imports triton.
"""
