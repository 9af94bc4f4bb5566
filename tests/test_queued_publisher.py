"""Publishers on their own thread: a slow output never stalls the frame loop; drops and errors are counted."""

import os
import sys
import threading
import time

import numpy as np
import pytest
from marsseg.edge.publishers import Queued, Result
from marsseg.edge.sources import Frame
from marsseg.edge.terrain import CostTable, terrain_grid


class Gated:
    """An output that takes each result only when the test lets it, and records what it got."""

    def __init__(self, fail_on: int = -1) -> None:
        self.gate, self.entered = threading.Semaphore(0), threading.Event()
        self.got: list[tuple[int, int]] = []
        self.fail_on, self.closed = fail_on, False

    def publish(self, frame: Frame, result: Result) -> None:
        self.entered.set()
        self.gate.acquire()
        if frame.index == self.fail_on:
            raise OSError("disk full")
        self.got.append((frame.index, int(result.mask[0, 0])))

    def close(self) -> None:
        self.closed = True


def item(i: int, mask: np.ndarray) -> tuple[Frame, Result]:
    mask[...] = i % 5  # the runtime reuses its buffers for the next frame
    conf = np.ones(mask.shape, np.float32)
    grid = terrain_grid(mask, conf, (4, 4), CostTable((float("nan"), 1, 2, 5, float("inf"))))
    return Frame(f"f{i}", i, time.time(), mask), Result(mask, mask, conf, grid, 0.0)


def test_a_stalled_output_drops_its_oldest_results_and_never_blocks_the_loop():
    out = Gated()
    q = Queued(out, depth=2, block=False)
    buf = np.zeros((8, 8), np.uint8)
    q.publish(*item(0, buf))
    out.entered.wait()  # the worker holds frame 0 inside the stalled output
    for i in range(1, 10):  # returns at once although the output takes nothing
        q.publish(*item(i, buf))
    assert q.stats.dropped == 7  # frames 1..7 made way for newer ones; 8 and 9 wait
    for _ in range(3):
        out.gate.release()
    q.close()
    assert out.got == [(0, 0), (8, 3), (9, 4)]  # each result as it was when published, not the reused buffer
    assert out.closed and q.stats.published == 3 and q.stats.published + q.stats.dropped == 10


def test_a_blocking_output_gets_every_result_in_order():
    out = Gated()
    q = Queued(out, depth=2, block=True)
    buf = np.zeros((8, 8), np.uint8)
    producer = threading.Thread(target=lambda: [q.publish(*item(i, buf)) for i in range(6)])
    producer.start()
    out.entered.wait()
    for _ in range(6):
        out.gate.release()
    producer.join()
    q.close()
    assert out.got == [(i, i % 5) for i in range(6)] and q.stats.dropped == 0
    assert 0 < q.stats.latency_ms_mean <= q.stats.latency_ms_max < 60_000  # from the frames' capture times


def test_a_failure_in_the_worker_reaches_the_runtime_on_the_next_publish():
    out = Gated(fail_on=1)
    q = Queued(out, depth=4, block=True)
    buf = np.zeros((8, 8), np.uint8)
    for _ in range(3):
        out.gate.release()
    q.publish(*item(0, buf))
    q.publish(*item(1, buf))
    q.join()  # frame 1 has failed in the worker
    with pytest.raises(OSError, match="disk full"):
        q.publish(*item(2, buf))  # counted by the runtime like an inline publisher's failure
    q.close()
    assert out.got == [(0, 0), (2, 2)] and q.stats.errors == 1 and q.stats.published == 2


def test_a_queue_stays_failing_until_its_output_succeeds_again():
    """A `publish` that only queued says nothing about the output: `failing` is the worker's last outcome."""
    out = Gated(fail_on=0)
    q = Queued(out, depth=4, block=True)
    buf = np.zeros((8, 8), np.uint8)
    assert not q.failing
    out.gate.release()
    q.publish(*item(0, buf))
    q.join()
    assert q.failing
    with pytest.raises(OSError, match="disk full"):
        q.publish(*item(1, buf))  # queued behind the gate; frame 0's failure is reported now
    assert q.failing  # still: frame 1 has not reached the output
    out.gate.release()
    q.join()
    assert not q.failing
    q.close()


class QueuedButDown:
    """A queued output whose every attempt fails in its worker while `publish` itself keeps returning."""

    failing = True

    def publish(self, frame: Frame, result: Result) -> None:
        pass

    def close(self) -> None:
        pass


def test_fail_after_counts_a_queued_outputs_failures_not_its_accepted_results():
    """Under CPU load the worker lags, most `publish` calls return before it fails: the run must still end (exit 4)."""
    from marsseg.edge.config import EdgeConfig
    from marsseg.edge.model import TileModel
    from marsseg.edge.pipeline import Segmenter
    from marsseg.edge.runtime import OUTPUTS_FAILED_EXIT, Runtime
    from marsseg.edge.sources import SourceStats

    from tests.conftest import TINY_MODEL

    class Frames:
        live, stats = False, SourceStats()

        def __iter__(self):
            for i in range(2000):
                yield Frame(f"f{i}", i, time.time(), np.zeros((64, 128), np.uint8))

        def close(self) -> None:
            pass

    rt = Runtime(Frames(), Segmenter(TileModel(TINY_MODEL)), [QueuedButDown()], CostTable((1.0,) * 5),
                 EdgeConfig(cell=16, fail_after=0.05))
    rc = []
    worker = threading.Thread(target=lambda: rc.append(rt.run()))  # off the main thread: no signal handlers
    worker.start()
    worker.join()
    assert rc == [OUTPUTS_FAILED_EXIT] and rt.stats.frames < 2000


def test_one_copy_per_frame_shared_by_every_output_and_sized_once():
    """The runtime detaches a frame's result once; every queue keeps that same copy, and the mask brought to the
    frame's size is made once, whichever output thread asks first."""
    buffer = np.zeros((8, 8), np.uint8)
    frame, res = item(3, buffer)
    res = Result(np.zeros((32, 32), np.uint8), buffer, np.ones((8, 8), np.float32), res.grid)  # model scale 1/4
    shared = res.detached()
    assert shared.detached() is shared and shared.mask is not buffer
    buffer[...] = 0  # the segmenter's next frame
    assert (shared.mask == 3).all()
    sizes = []
    threads = [threading.Thread(target=lambda: sizes.append(shared.full_mask())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s is sizes[0] for s in sizes) and sizes[0].shape == (32, 32) and (sizes[0] == 3).all()
    outs = [Gated(), Gated()]
    queues = [Queued(o, 2, block=True) for o in outs]
    for q in queues:
        q.publish(frame, shared)
        assert q._queue[0][1] is shared  # kept as is: no second copy
    for o in outs:
        o.gate.release()
    for q in queues:
        q.close()
    assert [o.got for o in outs] == [[(3, 3)], [(3, 3)]]


def test_the_frame_at_the_mask_size_is_the_one_the_model_segmented():
    """An overlay at the model's scale is drawn over the frame the runtime segmented, not a second resize of it."""
    import cv2

    gray = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    mask, conf = np.zeros((8, 8), np.uint8), np.ones((8, 8), np.float32)
    work = cv2.resize(gray, (8, 8), interpolation=cv2.INTER_AREA)
    assert Result(gray, mask, conf, work=work).work_gray() is work
    np.testing.assert_array_equal(Result(gray, mask, conf).work_gray(), work)  # made again when not carried
    assert Result(gray, gray, gray.astype(np.float32), work=gray).work_gray() is gray  # not resized


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
def test_outputs_run_at_a_lower_priority_than_the_frame_loop():
    """Encoding must wait for the interpreter's idle moments, not preempt an invoke (on the 2-core VM: +10 nice)."""
    seen = []

    class Probe:
        def publish(self, frame, result):
            seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

        def close(self):
            pass

    q = Queued(Probe(), depth=2, block=True)
    q.publish(*item(0, np.zeros((8, 8), np.uint8)))
    q.close()
    loop = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert seen == [min(loop + Queued.NICE, 19)]
