"""The GPU check of the Triton kernels: correctness at real sizes, torch.compile and speed against the PyTorch
backends, one section per routing.

    python -m experiments.gpu_check [--only dynamic|em] [--smoke]

main.py (sections, the command line) <- dynamic.py, em.py (the sections) <- report.py (what they record: `Report`).
"""
