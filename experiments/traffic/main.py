"""The memory-traffic model: bytes each layer moves with the Triton kernels, with the PyTorch eager backend, and
the least it must move, and the time each implies at an H100's 3.35 TB/s. A model, not a measurement.

    python -m experiments.traffic                  # every case; writes experiments/results/traffic.csv and .md
    python -m experiments.traffic --case dense --batches 2 3 4

What is counted (counter.py): "ours" is the layer on backend="triton" (for the dense layer the kernels that form
the votes inside; "votes formed first" is the same backend routing votes that PyTorch formed): every load, store
and atomic its kernels execute under the interpreter (active lanes, at the pointer's element size, repeats
included) plus the input and output bytes of the PyTorch operators around and between the kernels (forming the
votes, the shared-child sums, the gradient of the transforms). "eager" is the same layer on backend="torch": the
input and output bytes of every PyTorch operator it runs. "minimum": the forward reads the layer's inputs and
parameters once and writes its outputs once; the backward reads the outputs' gradients, the inputs and the
parameters once and writes the gradients of the inputs and parameters once; forward+backward is both.

Batch: the interpreter is slow, so each case runs at small batches, with the kernels' launch split fixed to an
H100's at the real batch (cases.launch_split). The bytes are then an affine function of the batch (a fixed part,
the parameters, plus a part per sample): the table gives the fit at the real batch, and `linear` says whether
every measured batch lies on the line through the first two exactly (with three or more batches). A batch of 1
is off the line (PyTorch turns some size-1 work into views), so the default batches are 2 and 3.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

H100_BYTES_PER_SECOND = 3.35e12
RESULTS = Path(__file__).resolve().parents[1] / "results"
MODES = ("forward", "forward+backward")
LABEL = "A model, not a measurement: bytes counted under the Triton interpreter, times = bytes / 3.35 TB/s (H100)."


def _output_tensors(outputs) -> list:
    import torch

    return [t for t in (outputs if isinstance(outputs, tuple | list) else [outputs]) if isinstance(t, torch.Tensor)]


def measure(case, backend: str, batch: int) -> dict[str, int]:
    """Bytes moved by `case` on `backend` at `batch`: forward, backward, and the minimum of each."""
    import torch

    from experiments.traffic.cases import launch_split
    from experiments.traffic.counter import counting, distinct_bytes

    layer, inputs = case.build(backend, batch)
    leaves = [t for t in inputs if t is not None] + [p for p in layer.parameters() if p.requires_grad]
    with launch_split(batch, case.real_batch):
        with counting() as forward:
            outputs = _output_tensors(layer(*inputs))
        g = torch.Generator().manual_seed(3)
        grads = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outputs]
        with counting() as backward:
            torch.autograd.backward(outputs, grads)
    read_inputs = sum(distinct_bytes(t) for t in leaves)
    written_outputs = sum(distinct_bytes(t) for t in outputs)
    return {
        "forward": forward.total,
        "backward": backward.total,
        "minimum_forward": read_inputs + written_outputs,
        "minimum_backward": sum(distinct_bytes(t) for t in grads) + 2 * read_inputs,
    }


def affine(batches: Sequence[int], values: Sequence[int], at: int) -> tuple[float, bool]:
    """The line through the first two (batch, bytes) points evaluated at `at`, and whether every point lies on it
    exactly (None when only two points were measured)."""
    (b0, v0), (b1, v1) = (batches[0], values[0]), (batches[1], values[1])
    slope = (v1 - v0) / (b1 - b0)
    exact = all(v0 * (b1 - b) + v1 * (b - b0) == v * (b1 - b0) for b, v in zip(batches, values, strict=True))
    return v0 + slope * (at - b0), (exact if len(batches) > 2 else None)


def table_rows(case, batches: Sequence[int]) -> list[dict]:
    per_backend = {backend: [measure(case, backend, b) for b in batches] for backend in case.backends}
    rows = []
    for mode in MODES:
        def bytes_of(counts, minimum=False, mode=mode):
            prefix = "minimum_" if minimum else ""
            if mode == "forward":
                return counts[prefix + "forward"]
            return counts[prefix + "forward"] + counts[prefix + "backward"]

        ours, ours_linear = affine(batches, [bytes_of(c) for c in per_backend["triton"]], case.real_batch)
        eager, eager_linear = affine(batches, [bytes_of(c) for c in per_backend["torch"]], case.real_batch)
        least, _ = affine(batches, [bytes_of(c, True) for c in per_backend["torch"]], case.real_batch)
        unfused = None
        if "triton-unfused" in per_backend:
            unfused, _ = affine(batches, [bytes_of(c) for c in per_backend["triton-unfused"]], case.real_batch)
        rows.append({
            "case": case.name, "layer": case.description, "mode": mode, "batch": case.real_batch,
            "bytes_ours": round(ours), "bytes_ours_unfused": None if unfused is None else round(unfused),
            "bytes_eager": round(eager), "bytes_minimum": round(least),
            "ours_over_minimum": round(ours / least, 2), "eager_over_ours": round(eager / ours, 2),
            "unfused_over_ours": None if unfused is None else round(unfused / ours, 2),
            "us_ours": round(ours / H100_BYTES_PER_SECOND * 1e6, 1),
            "us_eager": round(eager / H100_BYTES_PER_SECOND * 1e6, 1),
            "us_minimum": round(least / H100_BYTES_PER_SECOND * 1e6, 1),
            "measured_batches": " ".join(map(str, batches)),
            "bytes_ours_measured": " ".join(str(bytes_of(c)) for c in per_backend["triton"]),
            "bytes_eager_measured": " ".join(str(bytes_of(c)) for c in per_backend["torch"]),
            "linear": ours_linear if ours_linear is None else bool(ours_linear and eager_linear),
        })
    return rows


def markdown(frame) -> str:
    from experiments.common.tables import to_markdown

    shown = frame[["case", "mode", "batch", "bytes_ours", "bytes_ours_unfused", "bytes_eager", "bytes_minimum",
                   "ours_over_minimum", "eager_over_ours", "unfused_over_ours", "us_ours", "us_eager",
                   "us_minimum"]].copy()
    for column in ("bytes_ours", "bytes_ours_unfused", "bytes_eager", "bytes_minimum"):
        shown[column] = ["-" if value is None or value != value else f"{value / 1e6:,.1f} MB"
                         for value in shown[column]]
    shown["unfused_over_ours"] = ["-" if v is None or v != v else f"{v:g}" for v in shown["unfused_over_ours"]]
    shown.columns = ["case", "mode", "B", "ours (Triton)", "Triton, votes formed first", "eager", "minimum",
                     "ours / min", "eager / ours", "unfused / ours", "ours us", "eager us", "min us"]
    return f"{LABEL}\n\n{to_markdown(shown)}\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=None, help="only these cases (repeatable)")
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 3],
                        help="the small batches measured (at least two, increasing; default 2 3)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where traffic.csv and traffic.md go")
    args = parser.parse_args(argv)
    if len(args.batches) < 2 or any(b < 1 for b in args.batches) or sorted(set(args.batches)) != args.batches:
        parser.error(f"--batches needs two or more increasing integers >= 1, got {args.batches}")
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    from kernels.utils import interpreter_enabled

    if not interpreter_enabled():
        parser.error("the traffic model counts under Triton's interpreter: run with TRITON_INTERPRET=1")
    from experiments.common.outputs import check_output_dir
    from experiments.traffic.cases import CASES

    unknown = sorted(set(args.case or []) - set(CASES))
    if unknown:
        parser.error(f"--case {unknown[0]!r}: expected one of {', '.join(CASES)}")
    out_dir = check_output_dir(args.out_dir, "--out-dir")

    import pandas as pd
    import torch

    from experiments.common.atomic import write_text_atomic
    from experiments.common.tables import upsert_csv

    torch.set_num_threads(1)  # a count, not a timing: no need for threads
    rows = []
    for name in args.case or CASES:
        print(f"{name}: batches {' '.join(map(str, args.batches))}", file=sys.stderr, flush=True)
        rows.extend(table_rows(CASES[name], args.batches))
    print(markdown(pd.DataFrame(rows)))
    # rows of other cases from earlier runs stay: each case can be measured at its own batches
    frame = upsert_csv(out_dir / "traffic.csv", rows, key=["case", "mode"])
    write_text_atomic(out_dir / "traffic.md", markdown(frame))
    print(f"wrote {out_dir / 'traffic.csv'} and {out_dir / 'traffic.md'}", file=sys.stderr)
    return 0
