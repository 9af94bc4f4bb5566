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
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.core.tiling import count_tiles
from marsseg.edge.config import EdgeConfig
from marsseg.edge.ground import GroundProjector
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.publishers import Publisher, Result
from marsseg.edge.sources import (
    FLIPS,
    LOW_BITS,
    TURNS,
    FileSource,
    Frame,
    LiveSource,
    bit_depth_warning,
    fine_frame_warning,
    ground_scale,
    to_gray,
    work_size,
)
from marsseg.edge.terrain import CostTable

log = logging.getLogger("marsseg.edge")
STAGES = ("capture", "preprocess", "tile", "invoke", "merge", "map", "publish")
CONFIG_EXIT, WATCHDOG_EXIT, OUTPUTS_FAILED_EXIT = 2, 3, 4


class Throttle:
    """Log the first of a kind of error at once, then at most one line per `interval` with how many followed.

    A dead output or a camera sending garbage fails on every frame; 25 identical lines a second into journald
    hide everything else.
    """

    def __init__(self, interval: float = 30.0, clock=time.monotonic) -> None:
        self.interval, self.clock = interval, clock
        self._seen: dict[str, list] = {}  # kind -> [time of the last line, occurrences since]

    def __call__(self, level: int, kind: str, msg: str, *args) -> None:
        now = self.clock()
        seen = self._seen.get(kind)
        if seen is None:
            self._seen[kind] = [now, 0]
            log.log(level, msg, *args)
        elif now - seen[0] >= self.interval:
            log.log(level, msg + " (%d more like it in the last %.0f s)", *args, seen[1], now - seen[0])
            self._seen[kind] = [now, 0]
        else:
            seen[1] += 1

    def flush(self) -> None:
        """One last line for each kind that was held back since its last line."""
        for kind, (_, n) in self._seen.items():
            if n:
                log.warning("%s: %d more like it since the last line", kind, n)
        self._seen.clear()


class Watchdog:
    """Exit for a restart when nothing progresses for `limit` seconds: source start-up and every frame.

    Armed before the source opens (a frozen stream server hangs there). The first frame is timed: if processing
    it alone outlasts the limit, restarting cannot help, so it exits with the configuration code and one line.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.first_frame = False  # True while the first frame is being processed
        self._last = time.monotonic()
        self._stop = threading.Event()
        if limit > 0:
            threading.Thread(target=self._run, name="watchdog", daemon=True).start()

    def kick(self) -> None:
        self._last = time.monotonic()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.limit / 4)):
            idle = time.monotonic() - self._last
            if idle <= self.limit:
                continue
            if self.first_frame:
                log.critical("watchdog: the first frame took over %.1f s, longer than --watchdog %.1f s; raise "
                             "--watchdog above one frame's processing time (or shrink frames with --fov/--scale)",
                             idle, self.limit)
                code = CONFIG_EXIT
            else:
                log.critical("watchdog: no frame processed for %.1f s (limit %.1f s); exiting for a restart",
                             idle, self.limit)
                code = WATCHDOG_EXIT
            logging.shutdown()
            os._exit(code)


@dataclass
class RunStats:
    frames: int = 0
    bad_frames: int = 0
    publish_errors: int = 0
    started: float = field(default_factory=time.monotonic)
    latencies: deque = field(default_factory=lambda: deque(maxlen=10000))  # capture -> map (files: processing)
    end_to_end: deque = field(default_factory=lambda: deque(maxlen=10000))  # capture -> every output handed on
    stage_totals: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    class_counts: np.ndarray | None = None
    confusion: np.ndarray | None = None

    def fps(self) -> float:
        return self.frames / max(time.monotonic() - self.started, 1e-9)


class Runtime:
    def __init__(self, source: FileSource | LiveSource, segmenter: Segmenter, publishers: list[Publisher],
                 table: CostTable, cfg: EdgeConfig, watchdog: Watchdog | None = None) -> None:
        """What the loop uses of `cfg`: frames are resized to `resize` (WxH), else by `scale`, else by the
        camera's `fov` to the model's ground scale (its metadata's `deg_per_pixel`), else run as they come;
        frames needing more than `max_tiles` tiles are refused (memory budget); the terrain grid has `cell`-px
        cells; stats every `log_interval` s; `max_frames`; when every publisher has failed for `fail_after`
        seconds the run ends with OUTPUTS_FAILED_EXIT."""
        self.source, self.segmenter, self.publishers = source, segmenter, publishers
        self.table, self.cell, self.scale, self.size = table, cfg.cell, cfg.scale, cfg.frame_size()
        self.fov = cfg.hfov()
        self.deg_per_pixel = segmenter.model.meta.deg_per_pixel
        if self.fov is not None and self.scale is None and self.size is None and not self.deg_per_pixel:
            raise ValueError(f"--fov needs the model's ground scale, and {segmenter.model.path.name}'s metadata does "
                             "not record one (exported before it was); pass --scale or --resize instead")
        self._warned_fine = False
        self.bits, self.flip, self.lens = cfg.bit_depth, cfg.input_flip, cfg.lens
        if self.lens:
            log.info("lens: %s (%s, %dx%d), frames undistorted to a %.1f° pinhole view", cfg.camera_info,
                     self.lens.model or "plumb_bob", self.lens.width, self.lens.height, self.lens.hfov)
        self._check_bits = True  # 16-bit frames against --bit-depth, until one warning or proof that it fits
        self.log_interval, self.max_frames = cfg.log_interval, cfg.max_frames
        self.watchdog = watchdog or Watchdog(0)
        self.max_tiles, self.fail_after = cfg.max_tiles, cfg.fail_after
        self.ground = cfg.ground()  # (geometry, layout) of the ground cost map, or None
        self._projectors: dict[tuple[int, int], GroundProjector] = {}  # one per mask size, geometry done once
        self.num_classes = segmenter.model.meta.num_classes
        self.stats = RunStats(class_counts=np.zeros(self.num_classes, np.int64))
        self.stop = threading.Event()
        self.throttle = Throttle()
        self._failing_since: dict[int, float] = {}  # publisher index -> when its current run of failures began

    def _projector(self, shape: tuple[int, int]) -> GroundProjector:
        """The mask's pixels are the frame's, resized: the camera's field of view spans the mask's width."""
        size = (shape[1], shape[0])
        if size not in self._projectors:
            geometry, layout = self.ground
            if self.flip in TURNS:  # --fov spans the delivered width, which is now the height
                geometry = geometry.turned(*size)
            self._projectors[size] = GroundProjector(geometry, layout, size)
        return self._projectors[size]

    def status(self) -> dict:
        """Counters for heartbeats."""
        return {"fps": self.stats.fps(), "frames": self.stats.frames, "dropped": self.source.stats.dropped,
                "errors": self.stats.bad_frames + self.stats.publish_errors}

    def _on_signal(self, signum: int, _frame) -> None:
        log.info("received %s: finishing the frame in flight and shutting down", signal.Signals(signum).name)
        self.stop.set()
        if isinstance(self.source, LiveSource):
            self.source.request_stop()

    def run(self) -> int:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._on_signal)
            signal.signal(signal.SIGTERM, self._on_signal)
        next_log = time.monotonic() + self.log_interval
        t_wait = time.perf_counter()
        rc = 0
        self.watchdog.kick()  # the source is open
        try:
            for frame in self.source:
                waited = time.perf_counter() - t_wait
                self.watchdog.first_frame = self.stats.frames + self.stats.bad_frames == 0
                self._process(frame, waited)
                self.watchdog.first_frame = False
                self.watchdog.kick()
                if self._outputs_dead():
                    rc = OUTPUTS_FAILED_EXIT
                    break
                if self.stop.is_set() or (self.max_frames and self.stats.frames >= self.max_frames):
                    break
                if time.monotonic() >= next_log:
                    self._log_interval()
                    next_log = time.monotonic() + self.log_interval
                t_wait = time.perf_counter()
        finally:
            self.stop.set()
            self.watchdog.close()
            self.source.close()
            for p in self.publishers:
                try:
                    p.close()
                except (OSError, RuntimeError, ValueError, cv2.error) as e:
                    self.stats.publish_errors += 1
                    log.error("closing %s failed: %s", type(p).__name__, e)
            self.throttle.flush()
        return rc

    def _outputs_dead(self) -> bool:
        """Every publisher has failed on every frame for `fail_after` seconds: nothing reaches anyone."""
        if not self.fail_after or not self.publishers or len(self._failing_since) < len(self.publishers):
            return False
        since = max(self._failing_since.values())
        if time.monotonic() - since < self.fail_after:
            return False
        log.critical("every output has failed for %.0f s (--fail-after): exiting %d so the service manager acts; "
                     "check the disk, the output folder's permissions and the serial port",
                     time.monotonic() - since, OUTPUTS_FAILED_EXIT)
        return True

    def _process(self, frame: Frame, waited: float) -> None:
        st = self.stats
        t0 = time.perf_counter()
        if frame.image is None:
            self._bad(frame, frame.error or "unreadable frame")
            return
        try:
            gray, truth, scale = self._upright(frame)
            w, h = work_size(gray.shape, scale, self.size)
            tiles = count_tiles((h, w), self.segmenter.model.tile_shape, self.segmenter.overlap)
            if self.max_tiles and tiles > self.max_tiles:
                self._bad(frame, f"frame {gray.shape[1]}x{gray.shape[0]} segmented at {w}x{h} needs {tiles} tiles, "
                                 f"over the memory budget --max-tiles {self.max_tiles}: shrink frames with --fov or "
                                 "--scale, or raise --max-tiles")
                return
            work = to_gray(gray, scale, self.size) if (w, h) != (gray.shape[1], gray.shape[0]) else gray
        except (ValueError, cv2.error, MemoryError) as e:
            self._bad(frame, str(e) or type(e).__name__)
            return
        t1 = time.perf_counter()
        try:
            seg = self.segmenter(work)
        except (ValueError, RuntimeError, MemoryError) as e:  # one frame's fault must not end the run
            self._bad(frame, f"segmentation failed: {e or type(e).__name__}")
            return
        t2 = time.perf_counter()  # the map is made at the model's scale; outputs resize what they need themselves
        result = Result(gray, seg.mask, seg.confidence, work=work)
        result.grid = result.grid_at(self.cell, self.table)
        if self.ground is not None:
            result.ground = self._projector(seg.mask.shape)(seg.mask, seg.confidence, self.table)
        t3 = time.perf_counter()
        result.latency = time.time() - frame.timestamp if self.source.live else t3 - t0
        if any(getattr(p, "keeps_results", False) for p in self.publishers):
            result = result.detached()  # one copy of this frame's arrays for every output that keeps them
        for i, p in enumerate(self.publishers):
            try:
                p.publish(frame, result)
                down = getattr(p, "failing", False)  # queued: this result only waits; its worker's last outcome
            except (OSError, RuntimeError, ValueError, cv2.error, MemoryError) as e:
                st.publish_errors += 1
                down = True
                self.throttle(logging.ERROR, f"{type(p).__name__} failing", "publisher %s failed on frame %s: %s",
                              type(p).__name__, frame.key, e)
            if down:
                self._failing_since.setdefault(i, time.monotonic())
            else:
                self._failing_since.pop(i, None)
        t4 = time.perf_counter()
        st.frames += 1
        st.latencies.append(result.latency)
        st.end_to_end.append(time.time() - frame.timestamp)  # every source stamps its frames when it reads them
        tile, invoke = seg.timings["tile"], seg.timings["invoke"]
        for name, dt in (("capture", waited), ("preprocess", t1 - t0), ("tile", tile), ("invoke", invoke),
                         ("merge", t2 - t1 - tile - invoke), ("map", t3 - t2), ("publish", t4 - t3)):
            st.stage_totals[name] += dt
        st.class_counts += np.bincount(seg.mask.ravel(), minlength=self.num_classes)[: self.num_classes]
        if truth is not None:
            cm = confusion_matrix(truth, result.full_mask(), self.num_classes)
            st.confusion = cm if st.confusion is None else st.confusion + cm

    def _upright(self, frame: Frame) -> tuple[np.ndarray, np.ndarray | None, float]:
        """The frame as a pinhole camera held level would give it: gray at the camera's bit depth, undistorted,
        turned; its truth mask alike; and the factor that brings it to the model's ground scale."""
        if self._check_bits and getattr(frame.image, "dtype", None) == np.uint16:
            peak = int(frame.image.max())
            warned = self._warn(bit_depth_warning(peak, self.bits))
            self._check_bits = not warned and (self.bits <= LOW_BITS or peak < 1 << LOW_BITS)
        gray = to_gray(frame.image, bits=self.bits)
        scale = self._scale(gray.shape[1])  # from the delivered width: the lens's pinhole view and a turn keep it
        truth = frame.truth if frame.truth is not None and frame.truth.shape == gray.shape else None
        if self.lens:
            gray = self.lens.undistort(gray)
            truth = None if truth is None else self.lens.undistort(truth, nearest=True)
        if self.flip != "none":
            gray = FLIPS[self.flip](gray)
            truth = None if truth is None else FLIPS[self.flip](truth)
        return gray, truth, scale

    def _scale(self, width: int) -> float:
        if self.scale is not None or self.size is not None:
            return self.scale or 1.0
        if self.fov is not None:
            return ground_scale(width, self.fov, self.deg_per_pixel)
        if not self._warned_fine:
            self._warned_fine = True
            self._warn(fine_frame_warning(width, self.deg_per_pixel))
        return 1.0

    @staticmethod
    def _warn(warning: str | None) -> bool:
        """Log `warning` if there is one; whether there was."""
        if warning:
            log.warning(warning)
        return warning is not None

    def _bad(self, frame: Frame, why: str) -> None:
        """Count and log a skipped frame; the same reason again (a camera sending garbage) is throttled."""
        self.stats.bad_frames += 1
        self.throttle(logging.WARNING, why, "skipping frame %s: %s", frame.key, why)

    def _log_interval(self) -> None:
        st = self.stats
        n = max(st.frames, 1)
        log.info("%d frames, %.2f fps, dropped %d, bad %d, brightened %d | ms/frame %s", st.frames, st.fps(),
                 self.source.stats.dropped, st.bad_frames, self.segmenter.lifted,
                 " ".join(f"{k} {v / n * 1000:.1f}" for k, v in st.stage_totals.items()))

    def summary(self, class_names: tuple[str, ...]) -> dict:
        st = self.stats
        n = max(st.frames, 1)
        lat = np.array(st.latencies) * 1000 if st.latencies else np.zeros(1)
        e2e = np.array(st.end_to_end) * 1000 if st.end_to_end else np.zeros(1)
        total = max(int(st.class_counts.sum()), 1)
        inside = st.stage_totals["invoke"]
        processing = sum(v for k, v in st.stage_totals.items() if k != "capture")
        out = {
            "frames": st.frames, "bad_frames": st.bad_frames, "lifted_frames": self.segmenter.lifted,
            "publish_errors": st.publish_errors,
            "dropped": self.source.stats.dropped, "reconnects": self.source.stats.reconnects,
            "fps": round(st.fps(), 3), "latency_ms_mean": round(float(lat.mean()), 2),
            "latency_ms_p95": round(float(np.percentile(lat, 95)), 2),
            "capture_to_published_ms_mean": round(float(e2e.mean()), 2),
            "capture_to_published_ms_p95": round(float(np.percentile(e2e, 95)), 2),
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
