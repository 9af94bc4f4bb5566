"""Where terrain products go: files, an overlay video, JSON lines on stdout (serial lives in serial_link).

Every publisher has `publish(frame, result)` and `close()`. A publisher failure is counted and logged by
the runtime; it never stops segmentation. `Queued` runs a publisher on its own thread behind a bounded queue,
so encoding and writing happen beside the next frame's inference instead of after it.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import cv2
import numpy as np
from marsseg.core.io import write_bytes_atomic
from marsseg.edge.config import MASK_SIZES
from marsseg.edge.ground import GroundGrid
from marsseg.edge.render import overlay
from marsseg.edge.sources import Frame, to_gray
from marsseg.edge.terrain import CostTable, TerrainGrid, terrain_grid

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One processed frame: what every publisher receives. The mask and confidence stay at the scale the model ran
    at; an output that needs them at the frame's size asks once (`full_mask`), on its own thread when queued."""

    gray: np.ndarray  # uint8 frame at the input's size
    mask: np.ndarray  # uint8 class ids at the model's scale (the input's size when frames are not resized)
    confidence: np.ndarray  # float32, the mask's size
    grid: TerrainGrid | None = None  # the runtime's map (`grid_at`), cells in the input's pixels
    latency: float = 0.0  # seconds from capture to map
    ground: GroundGrid | None = None  # the ground cost map in metres (`--camera-height`), else None
    work: np.ndarray | None = None  # the frame as the model segmented it (the mask's size), when it was resized
    owned: bool = False  # the arrays are this result's own, not the segmenter's buffers reused next frame
    _full: dict = dataclasses.field(default_factory=dict, repr=False)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def detached(self) -> Result:
        """A result that outlives its frame (the segmenter reuses its buffers): made once per frame and shared by
        every output that keeps it (queues, the live view); what was already brought to the frame's size is
        kept, and each size is made once however many outputs ask, from whichever thread asks first."""
        if self.owned:
            return self
        full = {k: v for k, v in self._full.items() if v is not self.mask and v is not self.confidence}
        return dataclasses.replace(self, mask=self.mask.copy(), confidence=self.confidence.copy(), owned=True,
                                   _full=full, _lock=threading.Lock())

    def grid_at(self, cell: int, table: CostTable) -> TerrainGrid:
        """The terrain grid of `cell`-pixel cells over the frame.

        When a cell is a whole number of mask pixels (a 1024-px navcam frame segmented at 1/8: a 16-px cell is 2×2),
        the cells are counted on the mask itself: the same classes and fractions as on the mask at the frame's size
        (nearest), 64× fewer pixels. Otherwise on the frame-size mask and confidence, made once and shared with the
        outputs. Cell size and origin are in the frame's pixels either way.
        """
        (h, w), (fh, fw) = self.mask.shape, self.gray.shape[:2]
        ch, cw = cell * h / fh, cell * w / fw
        if ch.is_integer() and cw.is_integer() and ch >= 1 and cw >= 1:
            return dataclasses.replace(terrain_grid(self.mask, self.confidence, (int(ch), int(cw)), table),
                                       cell=(cell, cell))
        return terrain_grid(self.full_mask(), self.full_confidence(), (cell, cell), table)

    def work_gray(self) -> np.ndarray:
        """The frame at the mask's size: the one the model segmented, else made again as the runtime makes it."""
        if self.work is not None and self.work.shape[:2] == self.mask.shape:
            return self.work
        return to_gray(self.gray, size=(self.mask.shape[1], self.mask.shape[0]))

    def full_mask(self) -> np.ndarray:
        """The class ids at the input's size (nearest neighbour: every class id stays a class id)."""
        with self._lock:
            if "mask" not in self._full:
                self._full["mask"] = _fit(self.mask, self.gray.shape)
            return self._full["mask"]

    def full_confidence(self) -> np.ndarray:
        with self._lock:
            if "confidence" not in self._full:
                c = self.confidence
                self._full["confidence"] = c if c.shape == self.gray.shape else cv2.resize(
                    c, (self.gray.shape[1], self.gray.shape[0]), interpolation=cv2.INTER_LINEAR)
            return self._full["confidence"]


class Publisher(Protocol):
    """An output. One that holds results past its `publish` call sets `keeps_results = True`: the runtime then
    hands every output one `detached` copy of the frame's result instead of its reused buffers. One whose `publish`
    returns before the output is reached (a queue) says with `failing` whether its last attempt failed."""

    def publish(self, frame: Frame, result: Result) -> None: ...

    def close(self) -> None: ...


@dataclass
class QueueStats:
    published: int = 0
    dropped: int = 0  # results that waited in a full queue and were replaced by newer ones (drop policy)
    errors: int = 0
    blocked_s: float = 0.0  # time the frame loop waited for a full queue (block policy)
    latency_ms_mean: float = 0.0  # from the frame's capture (a file: its reading) to this output's done
    latency_ms_max: float = 0.0


class Queued:
    """A publisher on its own thread behind a queue of `depth` results: a slow consumer never stalls inference.

    When the queue is full, `block=True` (files: every frame is wanted) makes the frame loop wait for room, and
    `block=False` drops the oldest waiting result; both are counted (`stats`). A failure inside the worker is
    raised from the next `publish` call, so the runtime counts and reports it as for an inline publisher.
    `close` publishes what is queued, then closes the inner publisher. The runtime's buffers are reused for the
    next frame, so the queue keeps a `detached` result (one copy per frame, shared by every queue). `failing` says
    whether the worker's last attempt failed, so a run of failures is not mistaken for health by a `publish` that
    only queued (the runtime's `--fail-after` clock reads it).
    """

    keeps_results = True
    # Added to the worker thread's nice value (Linux schedules threads one by one): on a board whose cores the
    # interpreter keeps busy, encoding waits for the gaps between invokes instead of slowing the invoke it
    # preempts, whose other threads then wait for the preempted one. Bounded queues keep outputs from lagging
    # without limit: full, the frame loop blocks (files) or the oldest result is dropped and counted.
    NICE = 10

    def __init__(self, inner: Publisher, depth: int, block: bool, name: str = "") -> None:
        self.inner, self.depth, self.block = inner, depth, block
        self.name = name or type(inner).__name__
        self.stats = QueueStats()
        self._queue: collections.deque[tuple[Frame, Result]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = self._busy = self.failing = False
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name=f"publish-{self.name}", daemon=True)
        self._thread.start()

    def publish(self, frame: Frame, result: Result) -> None:
        result = result.detached()  # no copy when the runtime already made one for all outputs
        with self._cond:
            if self.block and len(self._queue) >= self.depth:
                t0 = time.perf_counter()
                self._cond.wait_for(lambda: len(self._queue) < self.depth or not self._thread.is_alive())
                self.stats.blocked_s += time.perf_counter() - t0
            if len(self._queue) >= self.depth:
                self._queue.popleft()
                self.stats.dropped += 1
            self._queue.append((frame, result))
            self._cond.notify_all()
            error, self._error = self._error, None
        if error is not None:
            raise error

    def join(self) -> None:
        """Wait until every queued result has been handed to the output (or failed)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._busy)

    def _run(self) -> None:
        _lower_priority(self.NICE)
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                frame, result = self._queue.popleft()
                self._busy = True
                self._cond.notify_all()
            error = None
            try:
                self.inner.publish(frame, result)
            except Exception as e:  # any failure: reported to the runtime by the next publish() or close()
                error = e
            with self._cond:
                self.failing = error is not None
                if error is None:
                    st = self.stats
                    st.published += 1
                    done = (time.time() - frame.timestamp) * 1000
                    st.latency_ms_mean += (done - st.latency_ms_mean) / st.published
                    st.latency_ms_max = max(st.latency_ms_max, done)
                else:
                    self.stats.errors += 1
                    self._error = error
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self.inner.close()
        if self._error is not None:
            raise self._error


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by `nice`; a no-op where threads share one. Never fatal: a sandbox
    that refuses it leaves the output at the frame loop's priority, which costs speed, not results."""
    if nice and sys.platform == "linux":
        tid = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid) + nice, 19))
        except OSError as e:
            log.warning("output thread keeps the frame loop's priority (setpriority refused: %s)", e)


# One fixed PNG row filter per kind of picture instead of libpng's per-row trial of all five, which is most of
# the encoding time: class masks repeat rows (more so resized up by nearest), so "up" gives the same size 3.5x
# faster (1024² mask: 3.1 vs 10.7 ms); photos predict from the left neighbour, "sub" is 1.5x faster, 2.5% bigger.
# Masks are runs of one value, which zlib's run-length strategy finds as well as its full match search: a 1024²
# mask 9.5 -> 3.3 kB in the same 1.7 ms (`docs/performance.md`). (row filter, zlib strategy):
MASK_PNG = (cv2.IMWRITE_PNG_FILTER_UP, cv2.IMWRITE_PNG_STRATEGY_RLE)
PHOTO_PNG = (cv2.IMWRITE_PNG_FILTER_SUB, cv2.IMWRITE_PNG_STRATEGY_DEFAULT)


def encode_png(image: np.ndarray, level: int = 1, kind: tuple[int, int] = MASK_PNG) -> bytes:
    """PNG bytes at zlib `level` (0 stored … 9 smallest; 1 is the fastest that compresses), `kind` as above."""
    params = [cv2.IMWRITE_PNG_COMPRESSION, level, cv2.IMWRITE_PNG_FILTER, kind[0], cv2.IMWRITE_PNG_STRATEGY, kind[1]]
    ok, buf = cv2.imencode(".png", image, params)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


class FilePublisher:
    """`NAME.png` (class ids, 8-bit), `NAME_overlay.png`, optionally `NAME_map.npz`; atomic. The mask, the
    overlay and the npz's confidence at the input's size, or with `mask_size="model"` at the scale the model ran
    at (a 1024² navcam frame: 64× fewer pixels to encode)."""

    def __init__(self, out_dir: Path, lut: np.ndarray, overlay: bool = True, npz: bool = False,
                 mask_size: str = "input", png_level: int = 1, npz_compress: bool = True) -> None:
        if mask_size not in MASK_SIZES:
            raise ValueError(f"mask size must be one of {', '.join(MASK_SIZES)}, got {mask_size!r}")
        self.out_dir, self.lut, self.overlay, self.npz = Path(out_dir), lut, overlay, npz
        self.png_level, self.savez = png_level, np.savez_compressed if npz_compress else np.savez
        self.full = mask_size == "input"
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def publish(self, frame: Frame, result: Result) -> None:
        mask = result.full_mask() if self.full else result.mask
        write_bytes_atomic(self.out_dir / f"{frame.key}.png", encode_png(mask, self.png_level))
        if self.overlay:  # at the mask's size: over the frame as the model saw it when masks stay at its scale
            rgb = overlay(result.gray if self.full else result.work_gray(), mask, self.lut)
            write_bytes_atomic(self.out_dir / f"{frame.key}_overlay.png",
                               encode_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), self.png_level, PHOTO_PNG))
        if self.npz:
            buf = io.BytesIO()
            g = result.grid
            confidence = result.full_confidence() if self.full else result.confidence
            ground = {}
            if result.ground is not None:
                gg = result.ground
                ground = {"ground_classes": gg.classes, "ground_fractions": gg.fractions,
                          "ground_confidence": gg.confidence, "ground_cost": gg.cost, "ground_seen": gg.seen,
                          "ground_cell_m": np.float32(gg.cell), "ground_origin_m": np.array(gg.origin)}
            self.savez(buf, mask=mask, confidence=confidence.astype(np.float16),
                       grid_classes=g.classes, grid_fractions=g.fractions, grid_confidence=g.confidence,
                       grid_cost=g.cost, cell=np.array(g.cell), origin=np.array(g.origin), **ground)
            write_bytes_atomic(self.out_dir / f"{frame.key}_map.npz", buf.getvalue())

    def close(self) -> None:
        pass


def _fit(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if mask.shape == shape[:2]:
        return mask
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


class VideoPublisher:
    """Overlay video; opened on the first frame (its size), written to a temp name, checked and renamed on close.

    OpenCV's writer reports no write errors, so the file is watched instead: it must keep growing while frames
    go in, and on close its index must list every frame. A video that fails either stays `.partial` beside the
    final name and the failure is raised (the runtime counts it), never published as good.
    """

    CHECK_EVERY = 32  # frames between growth checks (the encoder buffers a few frames)

    def __init__(self, path: Path, lut: np.ndarray, fps: float = 10.0) -> None:
        self.path, self.lut, self.fps = Path(path), lut, fps
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.writer: cv2.VideoWriter | None = None
        self.size: tuple[int, int] | None = None
        self.written = 0
        self._bytes_seen = -1
        self.failed = ""

    def publish(self, frame: Frame, result: Result) -> None:
        if self.failed:
            raise RuntimeError(self.failed)
        rgb = overlay(result.gray, result.full_mask(), self.lut)
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if self.writer is None:
            self.size = (bgr.shape[1], bgr.shape[0])
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
            if not self.writer.isOpened():
                raise RuntimeError(f"cannot open video writer for {self.path}")
        if (bgr.shape[1], bgr.shape[0]) != self.size:
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_NEAREST)
        self.writer.write(bgr)
        self.written += 1
        if self.written % self.CHECK_EVERY == 0:
            size = self.tmp.stat().st_size if self.tmp.exists() else 0
            if size <= self._bytes_seen:
                self.failed = (f"overlay video {self.path} stopped growing at {size} bytes after {self.written} "
                               "frames (disk full?); it stays .partial")
                raise RuntimeError(self.failed)
            self._bytes_seen = size

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        cap = cv2.VideoCapture(str(self.tmp))  # reads the container's index (written last): cheap, yet complete
        indexed = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        cap.release()
        if self.failed or indexed != self.written:
            raise RuntimeError(f"overlay video {self.path} is damaged ({indexed} of {self.written} frames in its "
                               f"index; disk full?); left as {self.tmp.name}")
        self.tmp.replace(self.path)


def _cells_json(classes: np.ndarray, cost: np.ndarray) -> dict:
    """A grid's cells for JSON: its size, class ids and costs ("inf", null for unknown)."""
    return {"rows": classes.shape[0], "cols": classes.shape[1], "classes": classes.tolist(),
            "cost": [[_json_float(float(c)) for c in r] for r in cost]}


def _json_float(x: float) -> float | str | None:
    if math.isnan(x):
        return None
    return "inf" if math.isinf(x) else round(x, 3)


class JsonLinesPublisher:
    """One JSON object per frame on stdout: stats plus the terrain grid (classes and cost)."""

    def __init__(self, stream: TextIO | None = None, class_names: tuple[str, ...] = ()) -> None:
        self.stream = stream or sys.stdout
        self.class_names = class_names

    def publish(self, frame: Frame, result: Result) -> None:
        hist = np.bincount(result.mask.ravel(), minlength=len(self.class_names)) / result.mask.size
        g = result.grid
        rec = {
            "type": "map", "key": frame.key, "index": frame.index, "timestamp": round(frame.stamp, 3),
            "latency_ms": round(result.latency * 1000, 2), "shape": list(result.gray.shape),
            "class_fractions": {n: round(float(v), 4) for n, v in zip(self.class_names, hist, strict=False)},
            "mean_confidence": round(float(result.confidence.mean()), 4),
            "grid": {"cell": list(g.cell), "origin": list(g.origin), **_cells_json(g.classes, g.cost)},
        }
        if result.ground is not None:
            gg = result.ground
            rec["ground"] = {"cell_m": gg.cell, "origin_m": list(gg.origin), **_cells_json(gg.classes, gg.cost)}
        self.stream.write(json.dumps(rec) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
