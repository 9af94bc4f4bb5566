"""Frame sources: camera, video file, image folder/glob, frames .npz, network stream or GStreamer pipeline.

File sources yield every frame in order. Live sources (camera, URL, pipeline) are read by a capture
thread that keeps only the newest frame, so latency never builds up; frames replaced before the runtime
took them are counted as dropped. A live source that fails mid-run is reopened with backoff, counted and
logged; only a source that cannot be opened at start is an error.
"""

from __future__ import annotations

import collections
import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from marsseg.core.frames import DataError, Dataset, load_frames

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp"}


class SourceError(RuntimeError):
    """A source that cannot be opened at all; the message says what was tried."""


@dataclass
class Frame:
    key: str  # output file stem: input file stem, or a zero-padded frame number
    index: int
    timestamp: float  # capture time, seconds since the epoch
    image: np.ndarray | None  # None when the frame could not be read (counted, skipped)
    error: str = ""
    truth: np.ndarray | None = None  # ground-truth mask, when the source carries one (frames .npz)
    recorded: float | None = None  # when a recording says the frame was taken (ROS 2 .mcap header stamps)

    @property
    def stamp(self) -> float:
        """The time outputs carry: the recorded time of a replayed frame, else the capture time."""
        return self.recorded if self.recorded is not None else self.timestamp


@dataclass
class SourceStats:
    captured: int = 0
    dropped: int = 0  # live sources: frames replaced by a newer one before being processed
    reconnects: int = 0
    read_errors: int = 0
    extra: dict = field(default_factory=dict)


def to_gray(image: np.ndarray, scale: float = 1.0, size: tuple[int, int] | None = None, bits: int = 16) -> np.ndarray:
    """Any 8/16-bit gray, BGR or BGRA image -> uint8 gray at the model's ground scale. A 16-bit image keeps its
    top 8 of `bits` significant bits (a 12-bit camera's words hold 0-4095: read as 16-bit they would be black).

    Raises ValueError naming the problem for anything else (the runtime counts and skips such frames).
    """
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise ValueError("empty or missing image")
    if image.dtype == np.uint16:
        image = np.minimum(image >> (bits - 8), 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}, expected uint8 or uint16")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY if image.shape[2] == 3 else cv2.COLOR_BGRA2GRAY)
    if image.ndim != 2:
        raise ValueError(f"unsupported image shape {image.shape}, expected (H, W) or (H, W, 1|3|4)")
    new = work_size(image.shape, scale, size)
    if new != (image.shape[1], image.shape[0]):
        shrink = new[0] * new[1] < image.shape[0] * image.shape[1]
        image = cv2.resize(image, new, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return image


def work_size(shape: tuple[int, ...], scale: float = 1.0, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(W, H) a frame of `shape` (H, W, ...) is segmented at: `size` if given, else scaled by `scale`."""
    if size is not None:
        return size
    h, w = shape[:2]
    return (max(1, round(w * scale)), max(1, round(h * scale)))


WIDEST_FOV = 90.0  # degrees: the widest lens `fine_frame_warning` assumes an unannounced camera has


def ground_scale(width: int, fov: float, deg_per_pixel: float) -> float:
    """Resize factor bringing a frame `width` pixels across `fov` degrees to the model's `deg_per_pixel`.

    A 1024-px MSL navcam frame (45°) for a model of 45°/128 px: 45 / 1024 / 0.3516 = 0.125, the 8× downsampling
    that made the training frames. Resizing by field of view rather than by a fixed factor keeps the ground scale
    right whatever resolution the camera is set to.
    """
    return fov / width / deg_per_pixel


FLIPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {  # --input-flip: jetson-inference's and GStreamer's names
    "none": lambda a: a,
    "clockwise": lambda a: cv2.rotate(a, cv2.ROTATE_90_CLOCKWISE),
    "counterclockwise": lambda a: cv2.rotate(a, cv2.ROTATE_90_COUNTERCLOCKWISE),
    "rotate-180": lambda a: cv2.rotate(a, cv2.ROTATE_180),
    "horizontal": lambda a: cv2.flip(a, 1),
    "vertical": lambda a: cv2.flip(a, 0),
    "upper-left-diagonal": cv2.transpose,
    "upper-right-diagonal": lambda a: cv2.rotate(cv2.transpose(a), cv2.ROTATE_180),
}
TURNS = ("clockwise", "counterclockwise", "upper-left-diagonal", "upper-right-diagonal")  # swap width and height
LOW_BITS = 12  # a 16-bit frame whose values all fit in this many bits is most likely a 10- or 12-bit camera's


def bit_depth_warning(peak: int, bits: int) -> str | None:
    """A warning when a 16-bit frame's brightest value `peak` does not fit `bits`-bit reading: all in the low
    `LOW_BITS` bits of a 16-bit reading (most likely a 10- or 12-bit camera's words: they would segment near black),
    or beyond `bits` bits (the frame saturates white)."""
    if bits > LOW_BITS and peak < 1 << LOW_BITS:
        return (f"16-bit frames read as {bits}-bit hold values only up to {peak} ({LOW_BITS} bits or fewer), so they "
                "segment near black: if the camera delivers 10- or 12-bit data, pass --bit-depth 12 (or 10)")
    if peak >= 1 << bits:
        return (f"16-bit frames hold values up to {peak}, beyond --bit-depth {bits} ({(1 << bits) - 1}): they "
                "saturate; pass the camera's bit depth (16 when its values fill the word)")
    return None


def fine_frame_warning(width: int, deg_per_pixel: float) -> str | None:
    """A warning when a frame run at 1:1 is far finer than the model's ground scale, whatever the camera's lens:
    even across `WIDEST_FOV` its pixels would be under half the model's."""
    if not deg_per_pixel or WIDEST_FOV / width >= deg_per_pixel / 2:
        return None
    return (f"frames {width} px wide run at 1:1 are far finer than the model's ground scale ({deg_per_pixel:.3f}° "
            f"per pixel) with any lens up to {WIDEST_FOV:g}°: pass --fov DEG (the camera's horizontal field of view), "
            "or --scale/--resize")


class Prefetch:
    """The next `depth` frames of a file source, read by a thread while the current one is processed: decoding a
    1 MB PNG (~5 ms) then overlaps inference instead of preceding it. Order is kept; a reading error is raised
    where the frame would have been; `close` stops the reader (and closes its generator: a video file is released).
    """

    def __init__(self, frames: Iterator[Frame], depth: int = 2) -> None:
        self._frames, self.depth = frames, depth
        self._queue: collections.deque[Frame] = collections.deque()
        self._cond = threading.Condition()
        self._done = self._stop = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="file-source", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._frames:
                with self._cond:
                    self._cond.wait_for(lambda: len(self._queue) < self.depth or self._stop)
                    if self._stop:
                        return
                    self._queue.append(frame)
                    self._cond.notify_all()
        except BaseException as e:  # handed to the consumer, raised where the frame would have been
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()
            close = getattr(self._frames, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Frame:
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._done)
            if self._queue:
                frame = self._queue.popleft()
                self._cond.notify_all()
                return frame
        if self._error is not None:
            raise self._error
        raise StopIteration

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()


class FileSource:
    """Every frame of an image folder/glob, a video file or a frames .npz, in order (read one frame ahead by a
    thread once iterated: `Prefetch`)."""

    live = False

    def __init__(self, spec: str, topic: str | None = None) -> None:
        self.spec = spec
        self.stats = SourceStats()
        self.inputs: list[Path] = []  # files read (outputs must never overwrite one)
        self._prefetch: Prefetch | None = None
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            self._iter, kind = self._images(files), "folder"
            if not files:
                raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {p}")
        elif any(ch in spec for ch in "*?["):
            files = sorted(Path(f) for f in glob.glob(spec) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise SourceError(f"glob {spec!r} matches no images")
            self._iter, kind = self._images(files), "glob"
        elif p.suffix == ".npz":
            self._iter, kind = self._npz(p), "frames file"
            self.inputs = [p]
        elif p.suffix == ".mcap" and p.is_file():
            from marsseg.edge.recording import read_frames  # the optional `ros` extra, only for recordings

            self._iter, kind = read_frames(p, topic), "ROS 2 recording"
            self.inputs = [p]
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:  # one image: keyed by its stem, like a folder's
            self._iter, kind = self._images([p]), "image"
        elif p.is_file():
            self._iter, kind = self._video(p), "video"
            self.inputs = [p]
        else:
            raise SourceError(f"source not found: {spec} (expected a folder, glob, video, .npz, URL or camera)")
        log.info("source: %s %s", kind, spec)

    def __iter__(self) -> Iterator[Frame]:
        if self._prefetch is None:
            self._prefetch = Prefetch(self._iter)
        return self._prefetch

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()

    def _images(self, files: list[Path]) -> Iterator[Frame]:
        self.inputs = files  # set now: the caller checks outputs against them before the first frame
        return self._read_images(files, unique_keys(files))

    def _read_images(self, files: list[Path], keys: list[str]) -> Iterator[Frame]:
        for i, (f, key) in enumerate(zip(files, keys, strict=True)):
            image = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
            self.stats.captured += 1
            yield Frame(key, i, time.time(), image, "" if image is not None else f"cannot decode {f.name}")

    def _npz(self, path: Path) -> Iterator[Frame]:
        """Loaded and checked now (`marsseg.core.frames`, masks optional), before the first frame."""
        try:
            ds = load_frames(path, labelled=False)
        except DataError as e:
            raise SourceError(str(e)) from e
        return self._read_npz(ds)

    def _read_npz(self, ds: Dataset) -> Iterator[Frame]:
        for i in range(len(ds)):
            self.stats.captured += 1
            yield Frame(ds.names[i], i, time.time(), ds.frames[i], truth=None if ds.masks is None else ds.masks[i])

    def _video(self, path: Path) -> Iterator[Frame]:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise SourceError(f"cannot open video file {path} (unsupported codec or not a video)")
        try:
            i = 0
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                self.stats.captured += 1
                yield Frame(f"{path.stem}-{i:06d}", i, time.time(), image)
                i += 1
        finally:
            cap.release()


class LiveSource:
    """Camera / URL / pipeline read by a thread that keeps only the newest frame."""

    live = True

    def __init__(self, target: int | str, api: int = cv2.CAP_ANY, backoff: tuple[float, float] = (0.5, 10.0),
                 open_timeout: float = 5.0) -> None:
        self.target, self.api, self.backoff = target, api, backoff
        self.stats = SourceStats()
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._stop = threading.Event()
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"cannot open camera/stream {target!r}: no such device or stream "
                              "(check the index with `v4l2-ctl --list-devices`, the URL, or the pipeline)")
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _open(self):
        cap = cv2.VideoCapture(self.target, self.api)
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _run(self) -> None:
        index, delay = 0, self.backoff[0]
        while not self._stop.is_set():
            ok, image = (False, None) if self._cap is None else self._cap.read()
            if not ok:
                self.stats.read_errors += 1
                log.warning("capture from %r failed; reopening in %.1f s", self.target, delay)
                if self._cap is not None:
                    self._cap.release()
                if self._stop.wait(delay):
                    break
                self._cap = self._open()
                self.stats.reconnects += 1
                delay = min(delay * 2, self.backoff[1])
                continue
            delay = self.backoff[0]
            self.stats.captured += 1
            with self._cond:
                if self._latest is not None:
                    self.stats.dropped += 1
                self._latest = Frame(f"{index:08d}", index, time.time(), image)
                self._cond.notify()
            index += 1
        if self._cap is not None:
            self._cap.release()

    def __iter__(self) -> Iterator[Frame]:
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._latest is not None or self._stop.is_set(), timeout=0.5)
                frame, self._latest = self._latest, None
            if frame is not None:
                yield frame

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets an event; iteration ends within half a second."""
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=2)


def unique_keys(files: list[Path]) -> list[str]:
    """Output stems: each file's stem, unless stems collide (`x.png` and `x.jpg`, or `a/x.png` and `b/x.png`);
    then those files are keyed by their path below the common folder, with `/` and `.` made `_`."""
    stems = [f.stem for f in files]
    clash = {s for s in stems if stems.count(s) > 1}
    if not clash:
        return stems
    root = Path(os.path.commonpath([f.parent for f in files])) if len(files) > 1 else files[0].parent
    keys = [re.sub(r"[/\\.]", "_", str(f.relative_to(root))) if f.stem in clash else f.stem for f in files]
    log.warning("%d input files share a stem with another (e.g. %s); their outputs are keyed by name and "
                "extension (e.g. %s)", sum(f.stem in clash for f in files), sorted(clash)[0],
                next(k for f, k in zip(files, keys, strict=True) if f.stem in clash))
    return keys


def open_source(camera: str | None, source: str | None, topic: str | None = None) -> FileSource | LiveSource:
    """`--camera N|/dev/videoN` or `--source PATH|GLOB|URL|PIPELINE` (`topic`: the image topic of an .mcap
    recording) -> a frame source."""
    if camera is not None:
        m = re.fullmatch(r"(?:/dev/video)?(\d+)", camera)
        if not m:
            raise SourceError(f"--camera expects an index or /dev/videoN, got {camera!r}")
        if camera.startswith("/dev/") and not os.path.exists(camera):
            raise SourceError(f"camera device {camera} does not exist (is the camera plugged in?)")
        api = cv2.CAP_V4L2 if os.name == "posix" and os.path.exists("/dev") else cv2.CAP_ANY
        return LiveSource(int(m.group(1)), api)
    if source is None:
        raise SourceError("no input: pass --camera N or --source PATH (folder, glob, video, .npz, URL, pipeline)")
    if re.match(r"^(rtsp|rtmp|http|https|udp|tcp)://", source):
        return LiveSource(source, cv2.CAP_FFMPEG)
    if "!" in source:  # GStreamer pipeline string
        return LiveSource(source, cv2.CAP_GSTREAMER)
    return FileSource(source, topic)
