"""Variational Bayes routing (Ribeiro, Leontidis & Kollias, AAAI 2020), diagonal precision, registered as
"variational-bayes".

Laid out like every algorithm package (see routing.dynamic):
    reference.py   the math in PyTorch, a cache-sized chunk of rows at a time, with its autograd Function
    backward.py    the closed-form backward the Function calls, with its derivation, and the posterior formulas
                   the forward and backward share
    linear.py      the fused dense-layer path: routing from poses and transforms (CPU, routing.cpu.fusion)
    router.py      the registered router (options, beta_u and beta_a, checks, which path runs)
There is no Triton backend.
"""

from routing.variational_bayes.router import VariationalBayesRouting

__all__ = ["VariationalBayesRouting"]
