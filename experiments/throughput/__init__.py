"""The main job: routing throughput on every case, provider and mode, upserted into experiments/results/.

    python -m experiments.throughput --help       # = capsule-throughput (sweep.py)
    python -m experiments.throughput.bench_cpu    # a small standalone CPU benchmark of the PyTorch backends

sweep.py (the sweep, the command line) <- cases.py (what is timed: workloads, the CPU targets), naive.py (the target
layers written the public way: the same-run baselines), timing.py (timing, peak memory, the machine's speed),
report.py (markdown tables, the targets, the plot).
"""
