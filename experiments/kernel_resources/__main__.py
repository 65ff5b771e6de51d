"""`python -m experiments.kernel_resources [--check]`: compile every kernel variant for the GPU targets."""

import sys

from experiments.kernel_resources.main import main

if __name__ == "__main__":
    sys.argv[0] = "python -m experiments.kernel_resources"  # what --help and errors name, instead of __main__.py
    sys.exit(main())
