"""`python -m experiments.traffic`: the memory-traffic table (a model, not a measurement)."""

import sys

from experiments.traffic.main import main

if __name__ == "__main__":
    sys.argv[0] = "python -m experiments.traffic"  # what --help and errors name, instead of __main__.py
    sys.exit(main())
