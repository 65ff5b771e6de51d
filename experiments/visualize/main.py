"""Draw pictures of trained capsule networks from their capsule-train run folders.

    python -m experiments.visualize --checkpoint runs/capsnet-dynamic-mnist-seed0/checkpoint.pt --out pictures
    python -m experiments.visualize --checkpoint runs/compact-dynamic-mnist-seed0 runs/compact-em-mnist-seed0 \\
        --out pictures/compared --index 0 7 42

For each test image chosen (the first --images, or those at --index) it writes PNGs:
- reconstructions.png: the images over their reconstructions (models with a decoder, such as capsnet);
- perturbations-image<i>.png: each pose entry of the winning class capsule shifted by -0.25 ... +0.25 in steps of
  0.05, decoded (Sabour et al. 2017, Figure 4; a row per entry, a column per shift; models with a decoder);
- assignments-image<i>.png: every routed layer's routing assignments, a map per parent over the children's
  grid (averaged over the children's capsule types), for any model.
Given several checkpoints (say one per routing algorithm, trained on the same dataset), each gets a folder named by
its routing, and assignments-compared-image<i>.png shows the last routed layer's maps of every model for the same
image, a row per routing. A model is rebuilt from the config.json beside its checkpoint.
"""

from __future__ import annotations

import argparse
import sys

from experiments.visualize.pictures import write_pictures
from experiments.visualize.runs import Run, device_from, load_run, load_test_images, read_config, unique_labels
from experiments.visualize.runs import checkpoint_file as find_checkpoint

PROGRAM = "python -m experiments.visualize"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="PATH",
                        help="checkpoint.pt of a capsule-train run, or its run folder; several to compare them")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if needed)")
    parser.add_argument("--images", type=int, default=4, metavar="N",
                        help="draw the first N test images (default: 4)")
    parser.add_argument("--index", type=int, nargs="+", metavar="I",
                        help="draw the test images at these positions in the test set instead")
    parser.add_argument("--dataset-root", metavar="DIR",
                        help="folder with the dataset's files (default: the run's own --data-root, else "
                             "$CAPSULES_DATA/<dataset>)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    return parser.parse_args(argv)


def chosen_indices(args: argparse.Namespace) -> list[int]:
    """The test-set positions to draw; ValueError for counts < 1 or negative positions."""
    if args.index is not None:
        negative = [i for i in args.index if i < 0]
        if negative:
            raise ValueError(f"--index takes positions in the test set (>= 0), got {negative}")
        return list(dict.fromkeys(args.index))
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    return list(range(args.images))


def visualize(args: argparse.Namespace) -> int:
    indices = chosen_indices(args)
    device = device_from(args.device)
    checkpoints = [find_checkpoint(path) for path in args.checkpoint]
    configs = [read_config(path) for path in checkpoints]
    datasets = {(config.dataset, config.smallnorb_view, config.canvas) for config in configs}
    if len(datasets) > 1:
        described = ", ".join(f"{path} ({config.dataset}, view {config.smallnorb_view}, canvas {config.canvas})"
                              for path, config in zip(checkpoints, configs, strict=True))
        raise ValueError(f"the checkpoints compared must come from one dataset (same view and canvas); got "
                         f"{described}")
    data = load_test_images(configs[0], args.dataset_root, max(indices) + 1)
    if max(indices) >= len(data.test_labels):
        raise ValueError(f"--index {max(indices)} is outside the test set, which has {len(data.test_labels)} images")
    runs: list[Run] = [load_run(path, data, device) for path in checkpoints]
    unique_labels(runs)
    written, notes = write_pictures(runs, data, indices, args.out)
    for note in notes:
        print(f"note: {note}")
    for path in written:
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return visualize(args)
    except (ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"{PROGRAM}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
