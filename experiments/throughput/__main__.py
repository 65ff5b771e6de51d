"""`python -m experiments.throughput`: the main job (capsule-throughput)."""

import sys

from experiments.throughput.sweep import main

if __name__ == "__main__":
    sys.argv[0] = "python -m experiments.throughput"  # what --help and errors name, instead of __main__.py
    main()
