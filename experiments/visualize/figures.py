"""PNG grids of small pictures with matplotlib (Agg, no display), laid out in whole pixels and written atomically.

Every figure is a `PanelGrid`: rows x columns of square panels (images or heat maps) with row labels on the left,
optional column labels above the first row, a title, and optional colour bars on the right. Its size in pixels
follows from the counts alone (`PanelGrid.pixels`), so a picture's size says how many rows and columns it has.
"""

from __future__ import annotations

import os
import textwrap

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import ScalarFormatter
from torch import Tensor

from experiments.common.atomic import atomic_write

DPI = 100
# Layout in pixels at DPI.
PANEL = 80  # one square panel
GAP = 10  # between panels
ROW_LABELS = 120  # left margin for the row labels
TITLE = 50  # top margin for the title
COLUMN_LABELS = 20  # above the first row, when there are column labels
COLOUR_BAR = 60  # right margin for colour bars, when there are any
MARGIN = 10  # right and bottom
MIN_WIDTH = 480  # narrow grids get room for their title (wrapped to two lines at most)
TITLE_CHARACTER = 7  # about the width of one character of the title, to wrap it


class PanelGrid:
    """A figure of `rows` x `columns` panels. ``image(r, c, picture)`` and ``heat_map(r, c, values, scale)`` draw
    into a panel (``columns=`` to span several), ``tag`` labels one inside its corner; ``row_label``,
    ``colour_bar`` and ``save``.

    The panels are images placed on one canvas Axes whose data coordinates are the area's pixels (y down): one Axes
    per panel made a 16 x 11 grid take seconds to build.
    """

    def __init__(self, rows: int, columns: int, title: str, column_labels: list[str] | None = None,
                 colour_bars: bool = False):
        if rows < 1 or columns < 1:
            raise ValueError(f"a panel grid needs at least 1 row and 1 column, got {rows} x {columns}")
        self.rows, self.columns = rows, columns
        self.top = TITLE + (COLUMN_LABELS if column_labels else 0)
        self.height, self.width = self.pixels(rows, columns, bool(column_labels), colour_bars)
        self.figure = Figure(figsize=(self.width / DPI, self.height / DPI), dpi=DPI)
        title = "\n".join(textwrap.wrap(title, self.width // TITLE_CHARACTER, max_lines=2, placeholder=" ..."))
        self.figure.text(0.5, 1 - (TITLE / 2) / self.height, title, ha="center", va="center", fontsize=10)
        for c, label in enumerate(column_labels or []):
            x = ROW_LABELS + c * (PANEL + GAP) + PANEL / 2
            self.figure.text(x / self.width, 1 - (TITLE + COLUMN_LABELS / 2) / self.height, label, ha="center",
                             va="center", fontsize=7)
        area_width, area_height = columns * (PANEL + GAP) - GAP, rows * (PANEL + GAP) - GAP
        self.canvas = self.figure.add_axes([ROW_LABELS / self.width, 1 - (self.top + area_height) / self.height,
                                            area_width / self.width, area_height / self.height])
        self.canvas.set_autoscale_on(False)
        self.canvas.set_xlim(0, area_width)
        self.canvas.set_ylim(area_height, 0)
        self.canvas.set_axis_off()

    @staticmethod
    def pixels(rows: int, columns: int, column_labels: bool = False, colour_bars: bool = False) -> tuple[int, int]:
        """(height, width) in pixels of a grid of rows x columns panels."""
        height = TITLE + (COLUMN_LABELS if column_labels else 0) + rows * (PANEL + GAP) + MARGIN
        width = ROW_LABELS + columns * (PANEL + GAP) + (COLOUR_BAR if colour_bars else 0) + MARGIN
        return height, max(width, MIN_WIDTH)

    def _extent(self, row: int, column: int, columns: int = 1) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) on the canvas of `columns` panels from (row, column)."""
        if not (0 <= row < self.rows and 0 <= column and column + columns <= self.columns):
            raise IndexError(f"panels ({row}, {column}..{column + columns - 1}) are outside the "
                             f"{self.rows} x {self.columns} grid")
        left, top = column * (PANEL + GAP), row * (PANEL + GAP)
        return left, left + columns * (PANEL + GAP) - GAP, top + PANEL, top

    def _draw(self, row: int, column: int, picture, columns: int = 1, **options):
        extent = self._extent(row, column, columns)
        image = self.canvas.imshow(picture, extent=extent, interpolation="nearest", aspect="auto", **options)
        left, right, bottom, top = extent
        self.canvas.add_patch(Rectangle((left, top), right - left, bottom - top, fill=False, linewidth=0.5))
        return image

    def image(self, row: int, column: int, image: Tensor, title: str | None = None,
              scale: tuple[float, float] | None = None) -> None:
        """Draw image [C, H, W] in a panel: grey for one channel (the first of C != 3, as a stereo pair's left
        view), colour for three; on the range `scale` (low, high), else on the picture's own range."""
        image = image.detach().float().cpu()
        low, high = scale if scale is not None else (float(image.min()), float(image.max()))
        if image.shape[0] == 3:
            picture = ((image - low) / max(high - low, 1e-12)).clamp(0, 1).permute(1, 2, 0)
            self._draw(row, column, picture.numpy())
        else:
            self._draw(row, column, image[0].numpy(), cmap="gray", vmin=low, vmax=high)
        if title:
            self.tag(row, column, title)

    def heat_map(self, row: int, column: int, values: Tensor, scale: tuple[float, float], title: str | None = None,
                 columns: int = 1):
        """Draw values [H, W] over `columns` panels on the colour scale (low, high); returns the image, for a
        colour bar."""
        low, high = scale
        image = self._draw(row, column, values.detach().float().cpu().numpy(), columns, cmap="viridis", vmin=low,
                           vmax=high)
        if title:
            self.tag(row, column, title)
        return image

    def tag(self, row: int, column: int, text: str) -> None:
        """A small label inside a panel's top-left corner (panels sit too close for titles above them)."""
        left, _, _, top = self._extent(row, column)
        self.canvas.text(left + 3, top + 3, text, ha="left", va="top", fontsize=6, color="white",
                         bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})

    def row_label(self, row: int, text: str, rows: int = 1) -> None:
        middle = self.top + row * (PANEL + GAP) + (rows * (PANEL + GAP) - GAP) / 2
        self.figure.text((ROW_LABELS - GAP) / self.width, 1 - middle / self.height, text, ha="right", va="center",
                         fontsize=7)

    def colour_bar(self, image, row: int, rows: int = 1) -> None:
        """A colour bar for `image` (a heat_map result) beside rows row..row+rows-1."""
        left = ROW_LABELS + self.columns * (PANEL + GAP) + GAP
        top = self.top + row * (PANEL + GAP)
        height = rows * (PANEL + GAP) - GAP
        axes = self.figure.add_axes([left / self.width, 1 - (top + height) / self.height, 10 / self.width,
                                     height / self.height])
        bar = self.figure.colorbar(image, cax=axes, format=ScalarFormatter(useOffset=False))
        bar.ax.tick_params(labelsize=6)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the figure as a PNG of exactly `pixels()` size, atomically."""
        with atomic_write(path, binary=True) as handle:
            self.figure.savefig(handle, format="png", dpi=DPI)


def shared_scale(values: Tensor) -> tuple[float, float]:
    """(low, high) of a colour scale for all of `values`: their range, so that small differences between
    near-uniform assignments still show; +-0.01 about it where every value is the same."""
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-6:
        return low - 0.01, high + 0.01
    return low, high
