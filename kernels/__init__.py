"""Triton kernels for capsule routing, one package per op, laid out alike.

    kernels.utils     availability and device checks, dtypes, block sizes, the largest parent tile (shared facts)
    kernels.checks    input checks shared with the PyTorch reference in routing/ (imports only torch)
    kernels.linear_votes  a dense layer's votes formed inside the kernels (the jit tiles both fused ops use, their
                      input checks, the backward's matrix products)
    kernels.dynamic   dynamic routing (Sabour et al. 2017): tiles, forward, backward, op
    kernels.em        EM routing (Hinton et al. 2018): schedule, tiles, forward, backward, op

In each op package, ``tiles`` holds the @triton.jit helpers both passes use, ``forward`` / ``backward`` the
kernels, and ``op`` the launchers, the ``torch.library`` registration, the autograd Function and the public
function. ``votes_forward`` / ``votes_op`` are the same for ``router(poses, activations, transforms=W)``: the
forward kernel that forms the votes from W and the poses, and its op (whose backward reuses the unfused backward
kernels). The op packages never import each other. Importing a package (this one included) imports nothing, and
kernels.checks and kernels.em.schedule work without triton; ``tiles``, ``forward``, ``backward`` and ``op`` need it.
"""
