"""`python -m experiments.train` and `torchrun ... -m experiments.train`: the training command line (capsule-train)."""

import sys

from experiments.train.run import main

if __name__ == "__main__":
    sys.argv[0] = "python -m experiments.train"  # what --help and errors name, instead of __main__.py
    sys.exit(main())
