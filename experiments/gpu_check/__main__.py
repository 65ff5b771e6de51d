"""`python -m experiments.gpu_check [--only SECTION] [--smoke]`: the GPU check of the Triton kernels."""

import sys

from experiments.gpu_check.main import main

if __name__ == "__main__":
    sys.argv[0] = "python -m experiments.gpu_check"  # what --help and errors name, instead of __main__.py
    sys.exit(main())
