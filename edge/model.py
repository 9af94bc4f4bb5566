"""A segmentation model as the runtime sees it: uint8 tiles in, class probabilities out."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from marsseg.core import interpreter as it
from marsseg.core.metadata import ModelMetadata, check_model, load_metadata, metadata_path


class TileModel:
    """An int8 (or float) TFLite model plus its metadata; runs one batch of tiles per call.

    The input tensor is resized only when the batch size changes, and the input/output buffers are
    reused, so a stream of same-shaped frames allocates nothing per frame.
    """

    def __init__(self, model_path: str | os.PathLike, meta: ModelMetadata | None = None,
                 num_threads: int | None = None) -> None:
        self.path, self.num_threads = Path(model_path), num_threads
        self.interp = it.make_interpreter(self.path, num_threads)
        self.meta = meta if meta is not None else load_metadata(metadata_path(self.path))
        check_model(self.meta, self.path, self.interp)
        self._batch = 0
        self._in: np.ndarray | None = None
        self._out: np.ndarray | None = None
        out = it.output_info(self.interp)
        # raw outputs -> probabilities: (q - zero_point) * scale; a float model's are probabilities already
        self.output_scale, self.output_zero_point = (out.scale, out.zero_point) if out.scale else (1.0, 0)
        self._out_index = out.index

    @property
    def tile_shape(self) -> tuple[int, int]:
        return tuple(self.meta.tile_shape)

    def _prepare(self, n: int) -> None:
        """Transactional: if resizing or allocating fails (a frame too big for memory), the interpreter is
        rebuilt before the next batch, so one failed frame never corrupts the frames after it.

        Rebuilt, not just resized back: after XNNPACK failed to reshape under a memory limit (`ulimit -v`), the
        same interpreter resized to a small batch ran, and returned garbage for every later frame.
        """
        if n == self._batch:
            return
        self._batch, self._in, self._out = 0, None, None
        try:
            if self.interp is None:
                self.interp = it.make_interpreter(self.path, self.num_threads)
            it.resize_batch(self.interp, n)
            i, o = it.input_info(self.interp), it.output_info(self.interp)
            self._in = np.empty(i.shape, i.dtype)
            self._out = np.empty(o.shape, np.float32)
        except BaseException:
            self.interp = None
            raise
        self._batch = n

    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 tiles (N, h, w) -> float32 probabilities (N, h, w, C); the result buffer is reused."""
        raw = self.run(tiles)
        np.subtract(raw, np.float32(self.output_zero_point), out=self._out, dtype=np.float32)
        self._out *= np.float32(self.output_scale)
        return self._out

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 tiles (N, h, w) -> the raw output (N, h, w, C): int8 for a full-integer model, to be read with
        `output_scale`/`output_zero_point`. Saves a dequantizing pass where only the blend needs it."""
        if tiles.dtype != np.uint8 or tiles.ndim != 3 or tiles.shape[1:] != self.tile_shape:
            raise ValueError(f"expected uint8 tiles (N, {self.tile_shape[0]}, {self.tile_shape[1]}), "
                             f"got {tiles.dtype} {tiles.shape}")
        self._prepare(len(tiles))
        q = self.meta.input_quant
        if q.dtype == "int8":
            self._quantize(tiles, q.scale, q.zero_point)
        else:
            self._in[..., 0] = tiles * np.float32(self.meta.input_scale) + np.float32(self.meta.input_offset)
        it.set_input(self.interp, self._in)
        self.interp.invoke()
        return self.interp.get_tensor(self._out_index)  # a copy, as stored

    def _quantize(self, tiles: np.ndarray, scale: float, zero_point: int) -> None:
        """pixel -> round((pixel * input_scale + input_offset) / scale) + zero_point, as int8."""
        m = self.meta
        if abs(m.input_scale / scale - 1.0) < 1e-6 and m.input_offset == 0 and -128 <= zero_point <= 127:
            # the usual case (input scale 1/255): exact integer shift, no float work
            if zero_point == -128:  # pixel - 128 as int8 is the pixel's top bit flipped: one uint8 pass
                np.bitwise_xor(tiles, np.uint8(0x80), out=self._in.view(np.uint8)[..., 0])
            else:
                np.add(tiles, zero_point, out=self._in[..., 0], dtype=np.int16, casting="unsafe")
            return
        x = tiles.astype(np.float32) * np.float32(m.input_scale / scale) + np.float32(m.input_offset / scale)
        np.clip(np.rint(x) + zero_point, -128, 127, out=x)
        self._in[..., 0] = x
