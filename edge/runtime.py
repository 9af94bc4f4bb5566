"""The capture -> process -> publish loop, with per-stage timings, fault counting and clean shutdown."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
from marsseg.edge.metrics import confusion_matrix, scores
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.publishers import Publisher, Result
from marsseg.edge.sources import FileSource, Frame, LiveSource, fine_frame_warning, ground_scale, to_gray
from marsseg.edge.terrain import CostTable, terrain_grid

log = logging.getLogger("marsseg.edge")
STAGES = ("capture", "preprocess", "tile", "invoke", "merge", "map", "publish")
WATCHDOG_EXIT = 3


@dataclass
class RunStats:
    frames: int = 0
    bad_frames: int = 0
    publish_errors: int = 0
    started: float = field(default_factory=time.monotonic)
    latencies: deque = field(default_factory=lambda: deque(maxlen=10000))
    stage_totals: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    class_counts: np.ndarray | None = None
    confusion: np.ndarray | None = None

    def fps(self) -> float:
        return self.frames / max(time.monotonic() - self.started, 1e-9)


class Runtime:
    def __init__(self, source: FileSource | LiveSource, segmenter: Segmenter, publishers: list[Publisher],
                 table: CostTable, cell: int, scale: float | None = None, size: tuple[int, int] | None = None,
                 log_interval: float = 5.0, watchdog_s: float = 0.0, max_frames: int = 0,
                 fov: float | None = None) -> None:
        """Frames are resized to `size` (WxH), else by `scale`, else by the camera's `fov` to the model's ground
        scale (its metadata's `deg_per_pixel`), else run as they come."""
        self.source, self.segmenter, self.publishers = source, segmenter, publishers
        self.table, self.cell, self.scale, self.size, self.fov = table, cell, scale, size, fov
        self.deg_per_pixel = segmenter.model.meta.deg_per_pixel
        if fov is not None and scale is None and size is None and not self.deg_per_pixel:
            raise ValueError(f"--fov needs the model's ground scale, and {segmenter.model.path.name}'s metadata does "
                             "not record one (exported before it was); pass --scale or --resize instead")
        self._warned_fine = False
        self.log_interval, self.watchdog_s, self.max_frames = log_interval, watchdog_s, max_frames
        self.num_classes = segmenter.model.meta.num_classes
        self.stats = RunStats(class_counts=np.zeros(self.num_classes, np.int64))
        self.stop = threading.Event()
        self._last_progress = time.monotonic()

    def status(self) -> dict:
        """Counters for heartbeats."""
        return {"fps": self.stats.fps(), "frames": self.stats.frames, "dropped": self.source.stats.dropped,
                "errors": self.stats.bad_frames + self.stats.publish_errors}

    def _on_signal(self, signum: int, _frame) -> None:
        log.info("received %s: finishing the frame in flight and shutting down", signal.Signals(signum).name)
        self.stop.set()
        if isinstance(self.source, LiveSource):
            self.source.request_stop()

    def _watchdog(self) -> None:
        while not self.stop.wait(min(1.0, self.watchdog_s / 4)):
            idle = time.monotonic() - self._last_progress
            if idle > self.watchdog_s:
                log.critical("watchdog: no frame processed for %.1f s (limit %.1f s); exiting for a restart",
                             idle, self.watchdog_s)
                logging.shutdown()
                os._exit(WATCHDOG_EXIT)

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        if self.watchdog_s > 0:
            threading.Thread(target=self._watchdog, name="watchdog", daemon=True).start()
        next_log = time.monotonic() + self.log_interval
        t_wait = time.perf_counter()
        try:
            for frame in self.source:
                waited = time.perf_counter() - t_wait
                self._process(frame, waited)
                if self.stop.is_set() or (self.max_frames and self.stats.frames >= self.max_frames):
                    break
                if time.monotonic() >= next_log:
                    self._log_interval()
                    next_log = time.monotonic() + self.log_interval
                t_wait = time.perf_counter()
        finally:
            self.stop.set()
            if isinstance(self.source, LiveSource):
                self.source.close()
            for p in self.publishers:
                try:
                    p.close()
                except (OSError, RuntimeError) as e:
                    log.error("closing %s failed: %s", type(p).__name__, e)
        return 0

    def _process(self, frame: Frame, waited: float) -> None:
        st = self.stats
        t0 = time.perf_counter()
        if frame.image is None:
            self._bad(frame, frame.error or "unreadable frame")
            return
        try:
            gray = to_gray(frame.image)
            scale = self._scale(gray.shape[1])
            work = to_gray(gray, scale, self.size) if (scale != 1.0 or self.size) else gray
        except (ValueError, cv2.error) as e:
            self._bad(frame, str(e))
            return
        t1 = time.perf_counter()
        try:
            seg = self.segmenter(work)
        except (ValueError, RuntimeError) as e:  # an interpreter fault on one frame must not end the run
            self._bad(frame, f"segmentation failed: {e}")
            return
        mask, conf = seg.mask, seg.confidence
        if work.shape != gray.shape:
            size = (gray.shape[1], gray.shape[0])
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
            conf = cv2.resize(conf, size, interpolation=cv2.INTER_LINEAR)
        t2 = time.perf_counter()
        grid = terrain_grid(mask, conf, (self.cell, self.cell), self.table)
        t3 = time.perf_counter()
        result = Result(gray, mask, conf, grid, time.time() - frame.timestamp if self.source.live else t3 - t0)
        for p in self.publishers:
            try:
                p.publish(frame, result)
            except (OSError, RuntimeError, ValueError, cv2.error) as e:
                st.publish_errors += 1
                log.error("publisher %s failed on frame %s: %s", type(p).__name__, frame.key, e)
        t4 = time.perf_counter()
        st.frames += 1
        self._last_progress = time.monotonic()
        st.latencies.append(result.latency)
        tile, invoke = seg.timings["tile"], seg.timings["invoke"]
        for name, dt in (("capture", waited), ("preprocess", t1 - t0), ("tile", tile), ("invoke", invoke),
                         ("merge", t2 - t1 - tile - invoke), ("map", t3 - t2), ("publish", t4 - t3)):
            st.stage_totals[name] += dt
        st.class_counts += np.bincount(mask.ravel(), minlength=self.num_classes)[: self.num_classes]
        if frame.truth is not None and frame.truth.shape == mask.shape:
            cm = confusion_matrix(frame.truth, mask, self.num_classes)
            st.confusion = cm if st.confusion is None else st.confusion + cm

    def _scale(self, width: int) -> float:
        if self.scale is not None or self.size is not None:
            return self.scale or 1.0
        if self.fov is not None:
            return ground_scale(width, self.fov, self.deg_per_pixel)
        if not self._warned_fine:
            self._warned_fine = True
            warning = fine_frame_warning(width, self.deg_per_pixel)
            if warning:
                log.warning(warning)
        return 1.0

    def _bad(self, frame: Frame, why: str) -> None:
        self.stats.bad_frames += 1
        log.warning("skipping frame %s: %s", frame.key, why)

    def _log_interval(self) -> None:
        st = self.stats
        n = max(st.frames, 1)
        log.info("%d frames, %.2f fps, dropped %d, bad %d | ms/frame %s", st.frames, st.fps(),
                 self.source.stats.dropped, st.bad_frames,
                 " ".join(f"{k} {v / n * 1000:.1f}" for k, v in st.stage_totals.items()))

    def summary(self, class_names: tuple[str, ...]) -> dict:
        st = self.stats
        n = max(st.frames, 1)
        lat = np.array(st.latencies) * 1000 if st.latencies else np.zeros(1)
        total = max(int(st.class_counts.sum()), 1)
        inside = st.stage_totals["invoke"]
        processing = sum(v for k, v in st.stage_totals.items() if k != "capture")
        out = {
            "frames": st.frames, "bad_frames": st.bad_frames, "publish_errors": st.publish_errors,
            "dropped": self.source.stats.dropped, "reconnects": self.source.stats.reconnects,
            "fps": round(st.fps(), 3), "latency_ms_mean": round(float(lat.mean()), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
            "stage_ms_mean": {k: round(v / n * 1000, 3) for k, v in st.stage_totals.items()},
            "outside_invoke_share": round(1 - inside / processing, 4) if processing else None,
            "class_histogram": {c: round(int(k) / total, 4)
                                for c, k in zip(class_names, st.class_counts, strict=False)},
        }
        if st.confusion is not None:
            s = scores(st.confusion, class_names)
            out["mean_iou"] = round(s.mean_iou, 4)
            out["per_class_iou"] = {k: round(v, 4) for k, v in s.per_class_iou.items()}
        return out
