"""Terrain grid: the frame cut into cells, each with its majority class, class fractions, confidence and cost.

Cost per cell = the fraction-weighted mean of the class costs over the cell's known (non-background)
pixels; a cell whose lethal-class fraction reaches `lethal_fraction` is lethal (inf); a cell that is
mostly unknown (background fraction > `max_unknown`), or whose mean model confidence is below `min_confidence`,
has unknown cost (nan): the model never predicts background, so low confidence is how sky, hardware and
misclassified ground show up (lethal still wins, to stay safe). Cell (0, 0) is the top-left
corner of the frame (the origin), rows go down and columns right, in image pixels; edge cells may be partial.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CostTable:
    costs: tuple[float, ...]  # per class id; nan = unknown, inf = lethal
    lethal_fraction: float = 0.05
    max_unknown: float = 0.5
    min_confidence: float = 0.0  # 0 = off

    def __post_init__(self) -> None:
        if not 0 < self.lethal_fraction <= 1 or not 0 <= self.max_unknown <= 1 or not 0 <= self.min_confidence <= 1:
            raise ValueError(f"lethal_fraction must be in (0, 1], max_unknown and min_confidence in [0, 1]; got "
                             f"{self.lethal_fraction}, {self.max_unknown}, {self.min_confidence}")


@dataclass
class TerrainGrid:
    cell: tuple[int, int]  # (height, width) of a cell in pixels
    origin: tuple[int, int]  # pixel (row, col) of cell (0, 0)'s top-left corner
    classes: np.ndarray  # uint8 (rows, cols) majority class
    fractions: np.ndarray  # float32 (rows, cols, C) share of each class
    confidence: np.ndarray  # float32 (rows, cols) mean per-pixel confidence
    cost: np.ndarray  # float32 (rows, cols); nan unknown, inf lethal

    @property
    def shape(self) -> tuple[int, int]:
        return self.classes.shape


def terrain_grid(mask: np.ndarray, confidence: np.ndarray, cell: tuple[int, int], table: CostTable) -> TerrainGrid:
    h, w = mask.shape
    ch, cw = cell
    if ch < 1 or cw < 1:
        raise ValueError(f"cell size must be positive, got {cell}")
    rows, cols = math.ceil(h / ch), math.ceil(w / cw)
    n = len(table.costs)
    counts, conf_sum = cell_counts(_cell_index(h, w, ch, cw), mask, confidence, rows * cols, n)
    return TerrainGrid((ch, cw), (0, 0), *cells_from_counts(counts.reshape(rows, cols, n + 1),
                                                            conf_sum.reshape(rows, cols), table))


@functools.lru_cache(maxsize=16)
def _cell_index(h: int, w: int, ch: int, cw: int) -> np.ndarray:
    """Each pixel's row-major cell number; the same for every frame of a stream, so made once (read-only)."""
    cols = math.ceil(w / cw)
    index = (np.arange(h) // ch)[:, None] * cols + (np.arange(w) // cw)[None, :]
    index.flags.writeable = False
    return index


def cell_counts(cell: np.ndarray, mask: np.ndarray, confidence: np.ndarray, cells: int,
                n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels per (cell, class) (cells, n + 1; ids outside the table count as area in the last column) and summed
    confidence per cell, for pixels whose cell index is `cell`: one bincount each, no pass per class or cell."""
    counts = np.bincount((cell * (n + 1) + np.minimum(mask, n)).ravel(), minlength=cells * (n + 1))
    return counts.reshape(cells, n + 1), np.bincount(cell.ravel(), confidence.ravel(), minlength=cells)


def cells_from_counts(counts: np.ndarray, conf_sum: np.ndarray, table: CostTable) -> tuple[np.ndarray, ...]:
    """Per cell, from its pixel count per class (rows, cols, C + 1; the last: ids outside the table) and its summed
    confidence: majority class, class fractions, mean confidence, cost. The one cost rule of the image grid and
    the ground map; a cell without pixels is unknown (class 0, cost nan)."""
    n = len(table.costs)
    area = counts.sum(-1).astype(np.float32)
    empty = area == 0
    area = np.where(empty, 1, area)
    conf = (conf_sum / area).astype(np.float32)
    fractions = counts[..., :n].astype(np.float32) / area[..., None]
    costs = np.asarray(table.costs, np.float64)
    known = ~np.isnan(costs)
    finite = known & np.isfinite(costs)
    known_frac = fractions[..., known].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cost = (fractions[..., finite] * costs[finite]).sum(-1) / fractions[..., finite].sum(-1)
    lethal = fractions[..., np.isinf(costs)].sum(-1) >= table.lethal_fraction
    unknown = ((1 - known_frac) > table.max_unknown) | (conf < table.min_confidence) | empty
    cost = np.where(unknown, np.nan, cost)
    cost = np.where(lethal, np.inf, cost)
    return fractions.argmax(-1).astype(np.uint8), fractions, conf, cost.astype(np.float32)
