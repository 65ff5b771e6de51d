"""Training and the accuracy comparison of routings.

    python -m experiments.train --help                     # = capsule-train (run.py: the loop and its command line)
    torchrun --nproc-per-node 2 -m experiments.train ...   # DistributedDataParallel
    python -m experiments.train.compare_accuracy --help    # = capsule-compare-accuracy

run.py (the loop, main) <- config.py (TrainConfig, PRESETS, the command line), schedule.py (learning rate, spread
margin), data.py (in-memory datasets, sharded batches), checkpoint.py (atomic checkpoints, random states),
distributed.py (torchrun set-up); compare_accuracy.py trains one architecture with each routing in turn.
"""
