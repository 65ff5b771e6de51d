"""`python -m experiments.visualize`: pictures of trained capsule networks (see experiments.visualize.main)."""

import sys

from experiments.visualize.main import main

if __name__ == "__main__":
    sys.exit(main())
