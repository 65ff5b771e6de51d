"""Every Triton kernel variant compiled for sm_80 and sm_90 without a GPU: registers, spills, shared memory and
the occupancy they imply (experiments/results/kernel_resources.csv). See main.py."""
