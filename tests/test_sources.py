"""Frame sources: conversion to gray, live capture (newest wins, reconnect) and the watchdog."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from marsseg.edge import sources as S

from tests.conftest import REPO, TINY_MODEL


def test_to_gray_variants():
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[..., 2] = 255  # red
    assert S.to_gray(bgr).shape == (4, 6) and S.to_gray(bgr)[0, 0] == 76
    assert S.to_gray(np.full((4, 6, 4), 10, np.uint8)).shape == (4, 6)
    assert S.to_gray(np.full((4, 6), 65535, np.uint16))[0, 0] == 255
    assert S.to_gray(np.zeros((100, 200), np.uint8), scale=0.5).shape == (50, 100)
    assert S.to_gray(np.zeros((100, 200), np.uint8), size=(64, 32)).shape == (32, 64)
    for bad, msg in [(np.zeros((4, 6), np.float32), "pixel type"), (np.zeros((4, 6, 2), np.uint8), "shape"),
                     (np.zeros((0,), np.uint8), "empty")]:
        with pytest.raises(ValueError, match=msg):
            S.to_gray(bad)


def test_to_gray_keeps_the_top_8_of_the_cameras_bits():
    twelve = np.array([[0, 16, 2048, 4095]], np.uint16)  # a 12-bit camera's values in 16-bit words
    assert S.to_gray(twelve, bits=12).tolist() == [[0, 1, 128, 255]]
    assert S.to_gray(twelve).max() == 15  # read as 16-bit: near black
    assert S.to_gray(np.array([[8191, 65535]], np.uint16), bits=12).tolist() == [[255, 255]]  # over range: clipped
    assert S.to_gray(np.array([[1023]], np.uint16), bits=10)[0, 0] == 255


def test_bit_depth_warning_names_the_flag_only_when_the_frame_does_not_fit():
    assert S.bit_depth_warning(65535, 16) is None and S.bit_depth_warning(4096, 16) is None
    assert S.bit_depth_warning(4095, 12) is None and S.bit_depth_warning(1023, 10) is None
    low = S.bit_depth_warning(4095, 16)  # a 12-bit camera read as 16-bit
    assert low and "--bit-depth 12" in low and "\n" not in low
    high = S.bit_depth_warning(5000, 12)  # 16-bit data read as 12-bit
    assert high and "saturate" in high and "4095" in high


def test_input_flips_are_the_turns_and_mirrors_they_name():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    expected = {"none": a, "clockwise": np.rot90(a, -1), "counterclockwise": np.rot90(a), "rotate-180": a[::-1, ::-1],
                "horizontal": a[:, ::-1], "vertical": a[::-1], "upper-left-diagonal": a.T,
                "upper-right-diagonal": a[::-1, ::-1].T}
    assert set(expected) == set(S.FLIPS)
    for name, want in expected.items():
        np.testing.assert_array_equal(S.FLIPS[name](a), want, err_msg=name)
    assert {name for name, f in S.FLIPS.items() if f(a).shape != a.shape} == set(S.TURNS)


class FakeCapture:
    """A camera that delivers frames, loses the device after a few, refuses one reopen, then comes back."""

    opens = 0
    lock = threading.Lock()

    def __init__(self, target, api=None):
        with FakeCapture.lock:
            FakeCapture.opens += 1
            self.n = FakeCapture.opens
        self.reads = 0

    def isOpened(self):
        return self.n != 2  # the first reopen after the loss fails

    def read(self):
        self.reads += 1
        if self.n == 1 and self.reads > 5:
            return False, None  # unplugged
        return True, np.full((64, 128), self.reads % 256, np.uint8)

    def release(self):
        pass


def test_live_source_newest_wins_and_reconnects(monkeypatch):
    FakeCapture.opens = 0
    monkeypatch.setattr(S.cv2, "VideoCapture", FakeCapture)
    src = S.LiveSource(0, backoff=(0.01, 0.02))
    got = []
    try:
        for frame in src:
            got.append(frame)
            if len(got) >= 20 and src.stats.reconnects >= 2:
                break
            time.sleep(0.005)  # a slow consumer: the capture thread must replace frames it has not taken
    finally:
        src.close()
    assert src.stats.read_errors >= 1 and src.stats.reconnects >= 2  # lost, failed reopen, reopened
    assert src.stats.dropped > 0  # the capture thread outruns the consumer: older frames replaced
    assert [f.index for f in got] == sorted(f.index for f in got)


def test_camera_argument_validation():
    with pytest.raises(S.SourceError, match="index or /dev/videoN"):
        S.open_source("front", None)
    with pytest.raises(S.SourceError, match="does not exist"):
        S.open_source("/dev/video97", None)
    with pytest.raises(S.SourceError, match="source not found"):
        S.open_source(None, "/nonexistent/folder")


WATCHDOG_SCRIPT = """
import threading, logging, time
import numpy as np
from marsseg.edge.model import TileModel
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.config import EdgeConfig
from marsseg.edge.runtime import Runtime, Watchdog
from marsseg.edge.sources import Frame, SourceStats
from marsseg.edge.terrain import CostTable

class Stuck:
    live = False
    stats = SourceStats()
    def __iter__(self):
        threading.Event().wait()  # a camera driver hung in read()
        yield

class Slow(Segmenter):
    def __call__(self, gray):
        time.sleep(2)  # a first frame that outlasts the watchdog on its own
        return super().__call__(gray)

def frames():
    while True:
        yield Frame("f", 0, time.time(), np.zeros((64, 128), np.uint8))

class Endless:
    live = False
    stats = SourceStats()
    def __iter__(self):
        return frames()

logging.basicConfig(level=logging.INFO)
model = TileModel(MODEL)
source, segmenter = (Stuck(), Segmenter(model)) if CASE == "stuck" else (Endless(), Slow(model))
Runtime(source, segmenter, [], CostTable((1.0,) * 5), EdgeConfig(cell=16), watchdog=Watchdog(0.5)).run()
"""


@pytest.mark.parametrize(("case", "code", "line"), [
    ("stuck", 3, "watchdog: no frame processed"),  # a hung camera: exit for a restart
    ("slow", 2, "raise --watchdog above one frame's processing time"),  # a restart could never help
])
def test_watchdog(case, code, line):
    script = f"MODEL = {str(TINY_MODEL)!r}\nCASE = {case!r}\n" + WATCHDOG_SCRIPT
    r = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == code, r.stderr
    assert line in r.stderr


def test_prefetch_keeps_order_raises_where_the_frame_was_and_stops_its_reader():
    import threading

    from marsseg.edge.sources import Frame, Prefetch

    closed = threading.Event()

    def frames(fail_at: int):
        try:
            for i in range(10):
                if i == fail_at:
                    raise OSError("disk went away")
                yield Frame(f"f{i}", i, 0.0, None)
        finally:
            closed.set()  # a video file would be released here

    assert [f.index for f in Prefetch(frames(-1))] == list(range(10))
    got = []
    with pytest.raises(OSError, match="disk went away"):
        for f in Prefetch(frames(4)):
            got.append(f.index)
    assert got == [0, 1, 2, 3]  # every frame read before the fault, in order
    closed.clear()
    early = Prefetch(frames(-1), depth=2)
    assert next(early).index == 0
    early.close()  # the consumer stops early (max frames, SIGTERM): the reader ends and closes its generator
    assert closed.is_set()
