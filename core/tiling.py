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
    """Blends per-tile predictions (N, th, tw, C) back into one frame and decides each pixel, reusing its buffers.

    Allocate one per frame shape. Predictions are accumulated as class planes (C, H, W), so the per-pixel decision
    reads whole contiguous planes (NumPy reduces a short last axis several times slower). Tiles may be raw
    quantized outputs: blending is linear and the weights positive, so blending raw values and dequantizing the
    one confidence plane at the end equals blending probabilities, without a pass over every tile to dequantize.
    Where no two tiles overlap (a frame that is a whole number of tiles at overlap 0), every pixel has one tile
    and the blend is that tile: the tiles are pasted, with no weighting, no division and no clearing between frames.
    """

    def __init__(self, grid: TileGrid, channels: int) -> None:
        self.grid = grid
        self.channels = channels
        self.window = blend_window(grid.tile_shape)
        hp, wp = grid.padded_shape
        h, w = grid.frame_shape
        th, tw = grid.tile_shape
        self._acc = np.zeros((channels, hp, wp), dtype=np.float32)
        self._weights = np.zeros((hp, wp), dtype=np.float32)
        covered = np.zeros((hp, wp), np.int32)
        for y, x in grid.boxes:  # summed weights depend on geometry only: computed once
            self._weights[y : y + th, x : x + tw] += self.window
            covered[y : y + th, x : x + tw] += 1
        self.disjoint = bool(covered.max() == 1)
        self._inverse = (1.0 / self._weights[:h, :w]).astype(np.float32)
        self._weighted = np.empty((channels, th, tw), dtype=np.float32)
        self._found = np.empty((h, w), bool)
        self._equal = np.empty((h, w), bool)
        self._blend: np.ndarray | None = None  # normalized blend, only for `result()`

    @property
    def weights(self) -> np.ndarray:
        """Summed blend weight per padded pixel (H, W); > 0 wherever a tile covers."""
        return self._weights

    def reset(self) -> None:
        if not self.disjoint:  # pasted tiles overwrite every pixel they own
            self._acc.fill(0.0)

    def add(self, index: int, tile: np.ndarray) -> None:
        """Accumulate tile `index`'s prediction (th, tw, C); order of calls does not matter."""
        y, x = self.grid.boxes[index]
        th, tw = self.grid.tile_shape
        planes = tile.transpose(2, 0, 1)  # (C, th, tw) view
        if self.disjoint:
            self._acc[:, y : y + th, x : x + tw] = planes
            return
        np.multiply(planes, self.window, out=self._weighted, dtype=np.float32)
        self._acc[:, y : y + th, x : x + tw] += self._weighted

    def accumulate(self, tiles: np.ndarray) -> None:
        """Blend a whole batch (N, th, tw, C) of one frame's tiles, ready for `decide` or `result`."""
        if tiles.shape[0] != len(self.grid):
            raise ValueError(f"expected {len(self.grid)} tiles for this grid, got {tiles.shape[0]}")
        self.reset()
        for i in range(len(self.grid)):
            self.add(i, tiles[i])

    def decide(self, mask: np.ndarray, confidence: np.ndarray, scale: float = 1.0, zero_point: float = 0.0) -> None:
        """Each frame pixel's first most likely class into `mask` (uint8 H, W; `argmax`'s rule for ties) and its
        blended value, dequantized as (v - zero_point) * scale, into `confidence` (float32 H, W).

        The class is counted rather than searched: the number of leading planes before the first one that holds
        the maximum, a few whole-plane comparisons instead of NumPy's per-pixel argmax over a short axis.
        """
        h, w = self.grid.frame_shape
        acc = self._acc[:, :h, :w]
        best, found, equal = confidence, self._found, self._equal
        np.max(acc, axis=0, out=best)
        np.equal(acc[0], best, out=found)
        mask.fill(0)
        for c in range(1, self.channels):
            np.logical_not(found, out=equal)
            np.add(mask, equal, out=mask, casting="unsafe")
            np.equal(acc[c], best, out=equal)
            found |= equal
        if not self.disjoint:
            best *= self._inverse
        if scale != 1.0 or zero_point != 0.0:
            best -= np.float32(zero_point)
            best *= np.float32(scale)

    def result(self) -> np.ndarray:
        """Blended prediction cropped to the frame (H, W, C), in the tiles' own units; a view into a reused buffer."""
        h, w = self.grid.frame_shape
        if self._blend is None:
            self._blend = np.empty_like(self._acc[:, :h, :w])
        np.copyto(self._blend, self._acc[:, :h, :w])
        if not self.disjoint:
            self._blend *= self._inverse
        return np.moveaxis(self._blend, 0, -1)

    def merge(self, tiles: np.ndarray) -> np.ndarray:
        """Blend a whole batch (N, th, tw, C) of one frame's tiles: `accumulate`, then `result`."""
        self.accumulate(tiles)
        return self.result()
