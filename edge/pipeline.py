"""Frame -> class mask + confidence: tile, one batched invoke, blend, argmax. Buffers reused per frame shape."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from marsseg.core.spec import lift_exposure
from marsseg.core.tiling import Merger, TileGrid
from marsseg.edge.model import TileModel


@dataclass
class Segmentation:
    mask: np.ndarray  # uint8 (H, W) class ids
    confidence: np.ndarray  # float32 (H, W) blended probability of the chosen class
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class _ShapeState:
    """Everything that depends only on the frame shape: grid, tile batch, merger, output buffers."""

    def __init__(self, grid: TileGrid, channels: int, flip: bool) -> None:
        self.grid = grid
        self.tiles = np.empty((len(grid), *grid.tile_shape), np.uint8)
        self.mirrored = np.empty_like(self.tiles) if flip else None
        self.pair: np.ndarray | None = None  # the two answers summed (flip only; its dtype follows the model's)
        self.merger = Merger(grid, channels)
        self.mask = np.empty(grid.frame_shape, np.uint8)
        self.confidence = np.empty(grid.frame_shape, np.float32)


class Segmenter:
    """One frame in, one decided mask out. With `flip` every tile is also segmented mirrored left-right and the two
    answers are averaged (test-time augmentation: the model learnt both orientations, and their errors differ), for
    twice the invoke time; the two run as two invokes of the usual batch, so the interpreter's memory is unchanged.
    A frame darker than `exposure_floor` DN (default: the model's metadata) is first lifted to it
    (`spec.lift_exposure`); 0 turns that off.
    """

    def __init__(self, model: TileModel, overlap: float = 0.25, flip: bool = False,
                 exposure_floor: float | None = None) -> None:
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be a fraction in [0, 1), got {overlap}")
        self.model, self.flip = model, flip
        self.exposure_floor = model.meta.exposure_floor if exposure_floor is None else exposure_floor
        self.lifted = 0  # frames brightened to the floor: an operator's sign of an under-exposing camera
        if not 0 <= self.exposure_floor <= 255:
            raise ValueError(f"exposure floor must be a mean grey level in 0..255 DN (0 = off), "
                             f"got {self.exposure_floor}")
        th, tw = model.tile_shape
        self.overlap = (int(th * overlap), int(tw * overlap))
        self._states: dict[tuple[int, int], _ShapeState] = {}

    def _state(self, shape: tuple[int, int]) -> _ShapeState:
        st = self._states.get(shape)
        if st is None:
            if len(self._states) >= 8:  # a camera changing mode now and then; never grow without bound
                self._states.clear()
            st = _ShapeState(TileGrid(shape, self.model.tile_shape, self.overlap), self.model.meta.num_classes,
                             self.flip)
            self._states[shape] = st
        return st

    def __call__(self, gray: np.ndarray) -> Segmentation:
        """Segment one uint8 grayscale frame. The returned arrays are reused by the next same-shaped frame."""
        if gray.dtype != np.uint8 or gray.ndim != 2:
            raise ValueError(f"expected a uint8 (H, W) frame, got {gray.dtype} {gray.shape}")
        t0 = time.perf_counter()
        st = self._state(gray.shape)
        work = lift_exposure(gray, self.exposure_floor)
        self.lifted += work is not gray
        st.grid.extract(work, out=st.tiles)
        t1 = time.perf_counter()
        raw = self.model.run(st.tiles)
        scale, zero_point = self.model.output_scale, self.model.output_zero_point
        if st.mirrored is not None:
            np.copyto(st.mirrored, st.tiles[:, :, ::-1])
            back = self.model.run(st.mirrored)[:, :, ::-1]
            if st.pair is None:  # int8 answers sum exactly in int16; the sum is read at half the scale
                st.pair = np.empty(raw.shape, np.int16 if raw.dtype.kind == "i" else np.float32)
            raw = np.add(raw, back, out=st.pair, dtype=st.pair.dtype)
            scale, zero_point = scale / 2, zero_point * 2
        t2 = time.perf_counter()
        st.merger.accumulate(raw)
        st.merger.decide(st.mask, st.confidence, scale, zero_point)
        t3 = time.perf_counter()
        return Segmentation(st.mask, st.confidence, {"tile": t1 - t0, "invoke": t2 - t1, "merge": t3 - t2})
