"""Dynamic routing by agreement (Sabour et al. 2017) as Triton kernels: fused forward, exact backward.

Notation: votes u [B, I, J, D] (any strides), children's activations a [B, I] (or none), T iterations. Iteration
r routes with the logits b_r[i, j] = <u_ij, cum_r[j]>, where cum_r = v_0 + ... + v_{r-1} [B, J, D] is the sum of
the earlier iterations' poses: the paper's running logits, but summed over the tiny poses, so the [B, I, J]
logits are recomputed from the votes and never stored.

Modules: ``tiles`` (the @triton.jit helpers both passes use), ``forward`` and ``backward`` (the kernels, each with
the math of its pass), ``op`` (launchers, torch.library registration, autograd Function and the public
``dynamic_routing``). This package imports nothing: ``import kernels.dynamic`` never imports triton.

Cross-program sums: the partials are stored, then a barrier, then one thread's acq_rel atomic on the counter
(PTX: bar.sync; atom.global.gpu.acq_rel.add by thread 0; bar.sync), and the last program reads the partials
with volatile loads: the semaphore pattern of CUTLASS's serial split-K and inductor's cooperative reductions.
The counters are zeroed once per call and count up through its launches, so a launch must run exactly once:
never wrap these kernels in an autotuner that replays them.

Dtypes: float16, bfloat16 and float32 votes are routed in float32, float64 in float64 (the accumulation dtype
is that of the [T, B, J, D] buffers); outputs and gradients come back in the inputs' dtypes.
"""
