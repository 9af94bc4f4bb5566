"""Ground cost map: the class mask projected onto the ground ahead of the rover, in metres.

Flat-ground model. The rover frame has x forward, y to the left, z up, its origin on the ground below the
camera; the camera sits `height` metres up, looks forward, pitched `pitch` degrees below the horizon and rolled
`roll` degrees about its optical axis (positive: the image turns clockwise), with a horizontal field of view of
`hfov` degrees and square pixels. One homography per geometry and image size (`ground_homography`) maps ground
points (x, y) to pixels; every pixel's ground cell is computed once from its inverse (`GroundProjector`), so a
frame costs one `bincount`. A cell no pixel lands in (far away, where a pixel spans more than a cell) takes the
pixel its centre projects to. Cells above the horizon, behind the camera or outside the field of view are
unknown, as are cells whose model confidence is low (`CostTable.min_confidence`).

The grid: cell (i, j) covers x in [near + i·cell, near + (i+1)·cell) and y in [-width/2 + j·cell, ...): rows go
away from the rover, columns from its right to its left (row-major like `nav_msgs/OccupancyGrid` in the rover
frame, with `origin` = (near, -width/2)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from marsseg.edge.terrain import CostTable, cell_counts, cells_from_counts


@dataclass(frozen=True)
class CameraGeometry:
    hfov: float  # degrees, horizontal field of view
    height: float  # metres above the ground
    pitch: float  # degrees below the horizon
    roll: float = 0.0  # degrees about the optical axis

    def __post_init__(self) -> None:
        if not 0 < self.hfov < 180:
            raise ValueError(f"camera field of view must be in (0, 180) degrees, got {self.hfov}")
        if not (self.height > 0 and math.isfinite(self.height)):
            raise ValueError(f"camera height must be above the ground (> 0 m), got {self.height}")
        if not 0 < self.pitch <= 90:
            raise ValueError(f"camera pitch must look below the horizon, in (0, 90] degrees down, got {self.pitch} "
                             "(the flat-ground model needs the ground ahead in view)")
        if not -90 < self.roll < 90:
            raise ValueError(f"camera roll must be in (-90, 90) degrees, got {self.roll}")

    def rotation(self) -> np.ndarray:
        """Rover frame -> camera frame (OpenCV: x right, y down, z along the optical axis)."""
        level = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])  # looking along x, no pitch or roll
        p, r = math.radians(self.pitch), math.radians(self.roll)
        pitch = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
        roll = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
        return roll @ pitch @ level

    def turned(self, width: int, height: int) -> CameraGeometry:
        """This camera for frames turned a quarter (`--input-flip clockwise`, …) to `width`×`height`: `hfov` spanned
        the delivered width, now `height`; the focal length stays, so `width` spans 2·atan(tan(hfov/2)·width/height)."""
        half = math.atan(math.tan(math.radians(self.hfov) / 2) * width / height)
        return replace(self, hfov=math.degrees(2 * half))

    def intrinsics(self, width: int, height: int) -> np.ndarray:
        f = width / 2 / math.tan(math.radians(self.hfov) / 2)
        return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]])


def ground_homography(geometry: CameraGeometry, width: int, height: int) -> np.ndarray:
    """H with (u, v, 1) ~ H (x, y, 1) for ground points, pixel coordinates at pixel corners (centres at +0.5)."""
    r = geometry.rotation()
    t = -r @ np.array([0.0, 0.0, geometry.height])
    return geometry.intrinsics(width, height) @ np.column_stack([r[:, 0], r[:, 1], t])


@dataclass(frozen=True)
class GroundLayout:
    cell: float = 0.1  # metres
    near: float = 0.0  # metres ahead of the camera where the grid starts
    depth: float = 10.0  # metres of ground the grid covers ahead
    width: float = 10.0  # metres across, centred on the rover

    def __post_init__(self) -> None:
        if not (self.cell > 0 and self.depth >= self.cell and self.width >= self.cell and self.near >= 0):
            raise ValueError(f"ground grid: cell must be > 0 m and depth/width at least one cell, near >= 0; got "
                             f"cell {self.cell}, depth {self.depth}, width {self.width}, near {self.near}")
        if self.rows * self.cols > 4_000_000:
            raise ValueError(f"ground grid of {self.rows}x{self.cols} cells is too large; use a larger cell")

    @property
    def rows(self) -> int:
        return round(self.depth / self.cell)

    @property
    def cols(self) -> int:
        return round(self.width / self.cell)

    @property
    def origin(self) -> tuple[float, float]:
        return self.near, -self.width / 2


@dataclass
class GroundGrid:
    """The terrain grid's per-cell products (`terrain.cells_from_counts`), on the ground in metres."""

    cell: float  # metres
    origin: tuple[float, float]  # (x, y) in metres of cell (0, 0)'s corner, rover frame
    classes: np.ndarray  # uint8 (rows, cols) majority class (0 where nothing is known)
    fractions: np.ndarray  # float32 (rows, cols, C)
    confidence: np.ndarray  # float32 (rows, cols) mean model confidence
    cost: np.ndarray  # float32 (rows, cols); nan unknown (not seen, low confidence), inf lethal
    seen: np.ndarray  # bool (rows, cols): in the camera's view

    def coarsened(self, k: int, table: CostTable) -> GroundGrid:
        """k x k cells pooled into one (a link too slow for the full map): class fractions and confidence averaged
        over the seen cells, cost by the same rule; the far and left edges padded with unseen cells."""
        rows, cols = -(-self.classes.shape[0] // k), -(-self.classes.shape[1] // k)

        def pool(a: np.ndarray) -> np.ndarray:
            pad = [(0, rows * k - a.shape[0]), (0, cols * k - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
            a = np.pad(a, pad)
            return a.reshape(rows, k, cols, k, *a.shape[2:]).sum((1, 3))

        seen = self.seen.astype(np.float32)
        counts = pool(self.fractions * seen[..., None])
        counts = np.concatenate([counts, np.zeros((rows, cols, 1), counts.dtype)], -1)
        cells = cells_from_counts(counts, pool(self.confidence * seen), table)
        return GroundGrid(self.cell * k, self.origin, *cells, pool(seen) > 0)


class GroundProjector:
    """Mask + confidence at one image size -> `GroundGrid`; the geometry work is done once, at construction."""

    def __init__(self, geometry: CameraGeometry, layout: GroundLayout, image_size: tuple[int, int]) -> None:
        w, h = image_size
        self.geometry, self.layout, self.image_size = geometry, layout, (w, h)
        self.homography = ground_homography(geometry, w, h)
        rows, cols = layout.rows, layout.cols
        # pixel -> ground: the ray through each pixel centre, where it meets the ground ahead
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        q = np.linalg.inv(self.homography) @ np.stack([u.ravel(), v.ravel(), np.ones(u.size)])
        with np.errstate(divide="ignore", invalid="ignore"):
            x, y = q[0] / q[2], q[1] / q[2]
        ahead = self._in_front(x, y)
        i = np.floor((x - layout.near) / layout.cell)
        j = np.floor((y + layout.width / 2) / layout.cell)
        inside = ahead & (i >= 0) & (i < rows) & (j >= 0) & (j < cols)
        self.pixel_cell = np.where(inside, np.nan_to_num(i) * cols + np.nan_to_num(j), -1).astype(np.int64)
        # ground -> pixel for the cell centres, to fill cells no pixel centre landed in
        ci, cj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cx = layout.near + (ci.ravel() + 0.5) * layout.cell
        cy = -layout.width / 2 + (cj.ravel() + 0.5) * layout.cell
        p = self.homography @ np.stack([cx, cy, np.ones(cx.size)])
        with np.errstate(divide="ignore", invalid="ignore"):
            pu, pv = np.floor(p[0] / p[2]), np.floor(p[1] / p[2])
        visible = self._in_front(cx, cy) & (pu >= 0) & (pu < w) & (pv >= 0) & (pv < h)
        cell_pixel = np.where(visible, np.nan_to_num(pv) * w + np.nan_to_num(pu), -1).astype(np.int64)
        hit = np.bincount(self.pixel_cell[inside], minlength=rows * cols) > 0
        self.seen = (hit | visible).reshape(rows, cols)
        # what a frame is sampled at, fixed by the geometry: every landing pixel for its cell, and for each cell in
        # view that no pixel centre lands in, the pixel its centre falls on
        between = np.flatnonzero(visible & ~hit)
        self._cells = np.concatenate([self.pixel_cell[inside], between])
        self._pixels = np.concatenate([np.flatnonzero(inside), cell_pixel[between]])

    def _in_front(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Ground points in front of the camera (a ray above the horizon meets the plane behind it)."""
        r = self.geometry.rotation()
        with np.errstate(invalid="ignore"):
            depth = r[2, 0] * x + r[2, 1] * y - r[2, 2] * self.geometry.height
            return np.isfinite(x) & np.isfinite(y) & (depth > 0)

    def __call__(self, mask: np.ndarray, confidence: np.ndarray, table: CostTable) -> GroundGrid:
        w, h = self.image_size
        if mask.shape != (h, w):
            raise ValueError(f"mask {mask.shape} does not match the projector's image size {h}x{w}")
        rows, cols, n = self.layout.rows, self.layout.cols, len(table.costs)
        counts, conf_sum = cell_counts(self._cells, mask.ravel()[self._pixels], confidence.ravel()[self._pixels],
                                       rows * cols, n)
        cells = cells_from_counts(counts.reshape(rows, cols, n + 1), conf_sum.reshape(rows, cols), table)
        return GroundGrid(self.layout.cell, self.layout.origin, *cells, self.seen)
