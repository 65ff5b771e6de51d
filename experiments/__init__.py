"""Experiment scripts on top of the library (kernels <- routing <- capsules <- experiments), one subpackage a job.

    common/       atomic file writes, provenance (commit, device, versions), result tables (CSV upserts, markdown)
    throughput/   the main job: routing throughput on every case, provider and mode (python -m experiments.throughput)
    train/        training (python -m experiments.train) and the accuracy comparison of routings
    gpu_check/    correctness, torch.compile and speed of the Triton kernels on a GPU (python -m experiments.gpu_check)
    study/        the routing study (capsule-study)
    results/      the committed result tables and plots (data files)

Experiments import from capsules, routing, kernels and from themselves only.
"""
