"""The pictures themselves: each function draws one PNG from trained models and test images.

- `draw_reconstructions`: test images, up to 16 a row, each row followed by their reconstructions.
- `draw_perturbations`: one image's winning capsule, a row per pose entry, a column per shift (PERTURBATIONS).
- `draw_assignments`: one image, every routed layer of one model: the input, then a map per parent.
- `draw_comparison`: one image, one row per model (routing): the maps of each model's last routed layer.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
from torch import Tensor

from experiments.train.data import TrainingData
from experiments.visualize.assignments import RoutedLayer, recording, routed_layers
from experiments.visualize.decoding import PERTURBATIONS, decoder_of, perturbed_reconstructions, reconstruct
from experiments.visualize.figures import PanelGrid, shared_scale
from experiments.visualize.runs import Run

IMAGES_PER_ROW = 16  # reconstructions: pairs of rows of at most this many images
PARENTS_PER_ROW = 10  # assignment maps: rows of at most this many parents
DECODED = (0.0, 1.0)  # the range of the decoder's sigmoid: reconstructions are drawn on it, to compare brightness


def draw_reconstructions(run: Run, images: Tensor, labels: Tensor, indices: list[int],
                         path: str | os.PathLike[str]) -> Tensor:
    """Inputs over reconstructions of images [N, C, H, W] (test-set `indices`, true `labels`); returns the
    reconstructions [N, C, H, W]."""
    predicted, reconstructions = reconstruct(run.model, images)
    chunks = math.ceil(len(images) / IMAGES_PER_ROW)
    grid = PanelGrid(2 * chunks, min(len(images), IMAGES_PER_ROW), f"{run.label}: test images (input rows) and "
                     f"their reconstructions from the predicted class's capsule")
    for n, (image, reconstruction) in enumerate(zip(images, reconstructions, strict=True)):
        row, column = 2 * (n // IMAGES_PER_ROW), n % IMAGES_PER_ROW
        grid.image(row, column, image, f"#{indices[n]}: {int(labels[n])}")
        grid.image(row + 1, column, reconstruction, f"-> {int(predicted[n])}", scale=DECODED)
    for chunk in range(chunks):
        grid.row_label(2 * chunk, "input")
        grid.row_label(2 * chunk + 1, "reconstruction")
    grid.save(path)
    return reconstructions


def draw_perturbations(run: Run, image: Tensor, label: int, index: int, path: str | os.PathLike[str]) -> Tensor:
    """Sabour et al.'s Figure 4 for one image [C, H, W]; returns the reconstructions [D, S, C, H, W]."""
    winner, grid_images = perturbed_reconstructions(run.model, image)
    rows, columns = grid_images.shape[:2]
    grid = PanelGrid(rows, columns, f"{run.label}: test image {index} (label {label}), capsule of class {winner}: "
                     f"each pose entry shifted by {PERTURBATIONS[0]:+.2f} ... {PERTURBATIONS[-1]:+.2f}",
                     column_labels=[f"{delta:+.2f}" for delta in PERTURBATIONS.tolist()])
    for d in range(rows):
        grid.row_label(d, f"pose entry {d}")
        for s in range(columns):
            grid.image(d, s, grid_images[d, s], scale=DECODED)
    grid.save(path)
    return grid_images


@torch.no_grad()
def record_assignments(run: Run, image: Tensor) -> tuple[int, list[RoutedLayer]]:
    """(predicted class, the routed layers' assignments and maps) of one image [C, H, W]."""
    image = image.to(next(run.model.parameters()).device)
    with recording(run.model) as layers:
        predicted = int(run.model(image[None], None).activations.argmax(dim=1))
    if not layers:
        raise ValueError(f"{run.config.model} has no routed layer (no module with a routing.Router as `router`)")
    return predicted, layers


def draw_assignments(run: Run, image: Tensor, label: int, index: int, path: str | os.PathLike[str]
                     ) -> list[RoutedLayer]:
    """Every routed layer of one model on one image [C, H, W]: a block of rows per layer, the input first, then one
    map per parent on the layer's colour scale (the [parents, children] matrix where the children have no grid)."""
    predicted, layers = record_assignments(run, image)
    blocks = [math.ceil(layer.assignments.shape[-1] / PARENTS_PER_ROW) if layer.maps is not None else 1
              for layer in layers]
    widest = max(min(layer.assignments.shape[-1], PARENTS_PER_ROW) for layer in layers)
    grid = PanelGrid(sum(blocks), 1 + widest, f"{run.label}: routing assignments for test image {index} "
                     f"(label {label}, predicted {predicted})", colour_bars=True)
    row = 0
    for layer, block in zip(layers, blocks, strict=True):
        grid.image(row, 0, image, "input")
        grid.row_label(row, f"{layer.name}\n{layer.kind}\n{describe(layer)}", rows=block)
        picture = draw_layer(grid, layer, row, 1 + widest)
        grid.colour_bar(picture, row, block)
        row += block
    grid.save(path)
    return layers


def draw_layer(grid: PanelGrid, layer: RoutedLayer, row: int, stop: int):
    """One layer's maps from `row` on (PARENTS_PER_ROW a row, from column 1), or its matrix over columns
    1..stop-1; returns the last image drawn (for the colour bar)."""
    if layer.maps is None:
        matrix = layer.assignments[0].T  # [J, I]: a row per parent
        return grid.heat_map(row, 1, matrix, shared_scale(matrix), "parents x children", columns=stop - 1)
    maps = layer.maps[0]
    scale = shared_scale(maps)
    picture = None
    for j in range(len(maps)):
        picture = grid.heat_map(row + j // PARENTS_PER_ROW, 1 + j % PARENTS_PER_ROW, maps[j], scale, str(j))
    return picture


def describe(layer: RoutedLayer) -> str:
    """Its children (grid H x W x T, or count) and parents, on two lines."""
    parents = layer.assignments.shape[-1]
    if layer.grid is None:
        return f"{layer.assignments.shape[1]} children\n-> {parents} parents"
    H, W, T = layer.grid
    return f"{H}x{W}x{T} children\n-> {parents} parents"


def draw_comparison(runs: list[Run], image: Tensor, label: int, index: int, path: str | os.PathLike[str]) -> None:
    """One image through several models: a row per model, titled by its label (routing), with the input and the
    maps of its last routed layer (the class capsules), each row on its own colour scale."""
    recorded = [record_assignments(run, image) for run in runs]
    widest = max(layers[-1].assignments.shape[-1] for _, layers in recorded)
    grid = PanelGrid(len(runs), 1 + widest, f"routing assignments of the last routed layer for test image {index} "
                     f"(label {label})", column_labels=["input"] + [str(j) for j in range(widest)], colour_bars=True)
    for row, (run, (predicted, layers)) in enumerate(zip(runs, recorded, strict=True)):
        layer = layers[-1]
        grid.image(row, 0, image, f"-> {predicted}")
        grid.row_label(row, f"{run.label}\n{layer.name}")
        maps = layer.maps[0] if layer.maps is not None else None
        if maps is None:
            matrix = layer.assignments[0].T
            picture = grid.heat_map(row, 1, matrix, shared_scale(matrix), columns=widest)
        else:
            scale = shared_scale(maps)
            for j in range(len(maps)):
                picture = grid.heat_map(row, 1 + j, maps[j], scale)
        grid.colour_bar(picture, row)
    grid.save(path)


def folder_name(label: str) -> str:
    """A run's label as a folder name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-") or "run"


def write_pictures(runs: list[Run], data: TrainingData, indices: list[int], out: str | os.PathLike[str]
                   ) -> tuple[list[Path], list[str]]:
    """All pictures of `runs` for the test images at `indices`, under `out` (one run: in `out`; several: a folder
    per run plus the comparisons in `out`). Returns (the files written, notes on what was skipped and why)."""
    out = Path(out)
    written: list[Path] = []
    notes: list[str] = []
    images, labels = data.test_images[indices], data.test_labels[indices]
    for run in runs:
        folder = out if len(runs) == 1 else out / folder_name(run.label)
        device = next(run.model.parameters()).device
        run_images = images.to(device)
        if decoder_of(run.model) is None:
            notes.append(f"{run.label} ({run.checkpoint}): {run.config.model} has no reconstruction decoder; "
                         f"reconstructions and pose perturbations skipped")
        else:
            draw_reconstructions(run, run_images, labels, indices, folder / "reconstructions.png")
            written.append(folder / "reconstructions.png")
            for n, index in enumerate(indices):
                path = folder / f"perturbations-image{index}.png"
                draw_perturbations(run, run_images[n], int(labels[n]), index, path)
                written.append(path)
        if not routed_layers(run.model):
            notes.append(f"{run.label} ({run.checkpoint}): {run.config.model} has no routed layer; assignment maps "
                         f"skipped")
            continue
        for n, index in enumerate(indices):
            path = folder / f"assignments-image{index}.png"
            draw_assignments(run, run_images[n], int(labels[n]), index, path)
            written.append(path)
    routed = [run for run in runs if routed_layers(run.model)]
    if len(runs) > 1 and routed:
        for n, index in enumerate(indices):
            path = out / f"assignments-compared-image{index}.png"
            draw_comparison(routed, images[n], int(labels[n]), index, path)
            written.append(path)
    return written, notes
