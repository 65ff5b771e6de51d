"""A memory-traffic model of the Triton kernels and of the PyTorch eager backend, counted under the interpreter
(a model, not a measurement). See main.py."""
