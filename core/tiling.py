"""Tile geometry (boxes from shapes alone) and merging (buffers allocated once per frame shape).

Geometry: along each axis the tiles are spread evenly from the first to the last pixel with at least the
requested overlap, so a frame larger than a tile is covered by real pixels only (no synthetic padding,
every tile looks like a training crop). An axis shorter than a tile is reflect-padded (symmetric
reflection, which also works for a 1-pixel axis) up to the tile size. Merging blends overlapping tile
predictions with a strictly positive raised-cosine window normalised by the summed weights, then crops
back to the frame exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


def axis_count(length: int, tile: int, overlap: int) -> int:
    """How many tiles cover one axis of `length` (padded up to `tile` when shorter)."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile} overlap={overlap}")
    return 1 if length <= tile else math.ceil((length - tile) / (tile - overlap)) + 1


def count_tiles(frame_shape: tuple[int, int], tile_shape: tuple[int, int], overlap: tuple[int, int]) -> int:
    """Tiles of a frame shape, by arithmetic alone: a memory check before anything is allocated."""
    return math.prod(axis_count(n, t, o) for n, t, o in zip(frame_shape, tile_shape, overlap, strict=True))


def axis_starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Start offsets of tiles along one axis of `length` (already padded to >= tile)."""
    n = axis_count(length, tile, overlap)
    if n == 1:
        return (0,)
    span = length - tile
    return tuple(round(i * span / (n - 1)) for i in range(n))


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one frame shape go; depends on shapes only, never on pixels."""

    frame_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    overlap: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if min(self.frame_shape) < 1:
            raise ValueError(f"frame shape must be at least 1x1, got {self.frame_shape}")

    @cached_property
    def padded_shape(self) -> tuple[int, int]:
        return (max(self.frame_shape[0], self.tile_shape[0]), max(self.frame_shape[1], self.tile_shape[1]))

    @cached_property
    def boxes(self) -> tuple[tuple[int, int], ...]:
        """(top, left) of every tile in the padded frame, row-major."""
        ys = axis_starts(self.padded_shape[0], self.tile_shape[0], self.overlap[0])
        xs = axis_starts(self.padded_shape[1], self.tile_shape[1], self.overlap[1])
        return tuple((y, x) for y in ys for x in xs)

    def __len__(self) -> int:
        return len(self.boxes)

    def pad(self, frame: np.ndarray) -> np.ndarray:
        """Reflect-pad a frame (H, W, ...) up to `padded_shape` (bottom/right); a view when no pad is needed."""
        ph = self.padded_shape[0] - frame.shape[0]
        pw = self.padded_shape[1] - frame.shape[1]
        if ph == 0 and pw == 0:
            return frame
        widths = [(0, ph), (0, pw)] + [(0, 0)] * (frame.ndim - 2)
        return np.pad(frame, widths, mode="symmetric")

    def extract(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """All tiles of `frame` as one batch (N, th, tw, ...), written into `out` when given."""
        if frame.shape[:2] != self.frame_shape:
            raise ValueError(f"frame shape {frame.shape[:2]} does not match grid {self.frame_shape}")
        padded = self.pad(frame)
        th, tw = self.tile_shape
        if out is None:
            out = np.empty((len(self), th, tw, *frame.shape[2:]), dtype=frame.dtype)
        for i, (y, x) in enumerate(self.boxes):
            out[i] = padded[y : y + th, x : x + tw]
        return out


def blend_window(tile_shape: tuple[int, int]) -> np.ndarray:
    """Raised-cosine (Hann-like) window, strictly positive so every pixel keeps some weight."""
    def one(n: int) -> np.ndarray:
        return np.sin(np.pi * (np.arange(n, dtype=np.float64) + 0.5) / n)

    return np.outer(one(tile_shape[0]), one(tile_shape[1])).astype(np.float32)


class Merger:
    """Blends per-tile predictions (N, th, tw, C) back into one frame, reusing its buffers.

    Allocate one per frame shape; call `reset()` (or `merge()`, which does it) for every frame. Where no two tiles
    overlap (a frame that is a whole number of tiles at overlap 0), every pixel has one tile and the blend is that
    tile: the tiles are pasted, with no weighting, no division and no clearing between frames.
    """

    def __init__(self, grid: TileGrid, channels: int) -> None:
        self.grid = grid
        self.channels = channels
        self.window = blend_window(grid.tile_shape)[..., None]
        hp, wp = grid.padded_shape
        self._acc = np.zeros((hp, wp, channels), dtype=np.float32)
        self._weights = np.zeros((hp, wp, 1), dtype=np.float32)
        covered = np.zeros((hp, wp), np.int32)
        th, tw = grid.tile_shape
        for y, x in grid.boxes:  # summed weights depend on geometry only: computed once
            self._weights[y : y + th, x : x + tw] += self.window
            covered[y : y + th, x : x + tw] += 1
        self.disjoint = bool(covered.max() == 1)
        self._weighted = np.empty((th, tw, channels), dtype=np.float32)

    @property
    def weights(self) -> np.ndarray:
        """Summed blend weight per padded pixel (H, W, 1); > 0 wherever a tile covers."""
        return self._weights

    def reset(self) -> None:
        if not self.disjoint:  # pasted tiles overwrite every pixel they own
            self._acc.fill(0.0)

    def add(self, index: int, tile: np.ndarray) -> None:
        """Accumulate tile `index`'s prediction (th, tw, C); order of calls does not matter."""
        y, x = self.grid.boxes[index]
        th, tw = self.grid.tile_shape
        if self.disjoint:
            self._acc[y : y + th, x : x + tw] = tile
            return
        np.multiply(tile, self.window, out=self._weighted)
        self._acc[y : y + th, x : x + tw] += self._weighted

    def result(self) -> np.ndarray:
        """Blended prediction cropped to the frame (H, W, C); a view into an internal buffer."""
        h, w = self.grid.frame_shape
        if not self.disjoint:
            np.divide(self._acc, self._weights, out=self._acc)
        return self._acc[:h, :w]

    def merge(self, tiles: np.ndarray) -> np.ndarray:
        """Blend a whole batch (N, th, tw, C) of one frame's tiles."""
        if tiles.shape[0] != len(self.grid):
            raise ValueError(f"expected {len(self.grid)} tiles for this grid, got {tiles.shape[0]}")
        self.reset()
        for i in range(len(self.grid)):
            self.add(i, tiles[i])
        return self.result()
