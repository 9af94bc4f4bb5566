"""Publisher -> receiver over real pseudo-terminals and pyserial's loop://; no sleeps as synchronisation."""

import contextlib
import json
import os
import signal
import threading
import time
import tty

import numpy as np
import pytest
from marsseg.edge import protocol as P
from marsseg.edge.publishers import Result
from marsseg.edge.serial_link import Receiver, SerialPublisher, map_budget
from marsseg.edge.sources import Frame
from marsseg.edge.terrain import CostTable, terrain_grid

TABLE = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")))


def result(shape=(128, 128), cell=16, seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 5, shape, dtype=np.uint8)
    conf = rng.random(shape, dtype=np.float32)
    return Result(mask, mask, conf, terrain_grid(mask, conf, (cell, cell), TABLE), 0.01)


def frame(i):
    return Frame(f"f{i}", i, 1_700_000_000.0 + i, None)


@pytest.fixture
def pty_pair():
    """(publisher side path, receiver side path) of two linked pseudo-terminals."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    name = os.ttyname(slave)
    yield master, name, slave
    for fd in (master, slave):
        with contextlib.suppress(OSError):
            os.close(fd)


def collect(rx: Receiver, want, timeout=20.0):
    """Read until `want(messages)` holds or the deadline passes (an event-style wait, not a sleep)."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not want(got):
        got += rx.decoder.feed(rx.ser.read(4096))
    return got


def test_pty_publisher_to_receiver(pty_pair):
    master, name, _ = pty_pair
    pub = SerialPublisher(name, 921600, TABLE, 5, map_rate=5, heartbeat_s=0.2)
    rx = Receiver.__new__(Receiver)
    rx.ser, rx.decoder = _FdReader(master), P.StreamDecoder()
    try:
        sent = [result(seed=i) for i in range(3)]
        grids = []
        for i, r in enumerate(sent):
            pub.publish(frame(i), r)
            grids += [m for m in collect(rx, lambda g: any(isinstance(m, P.GridMessage) for m in g))
                      if isinstance(m, P.GridMessage)]
        msgs = collect(rx, lambda g: any(isinstance(m, P.HeartbeatMessage) for m in g))
        assert any(isinstance(m, P.HeartbeatMessage) for m in msgs)
        assert [g.header.frame_id for g in grids] == [0, 1, 2]
        for g, r in zip(grids, sent, strict=True):
            np.testing.assert_array_equal(g.classes, r.grid.classes)
            np.testing.assert_array_equal(P.byte_to_cost(g.cost)[np.isfinite(r.grid.cost)],
                                          np.round(r.grid.cost[np.isfinite(r.grid.cost)] * 10) / 10)
        assert rx.decoder.stats.crc_errors == 0 and rx.decoder.stats.seq_gaps == 0
    finally:
        pub.close()


class _FdReader:
    """Minimal pyserial-like reader over a raw pty master fd."""

    def __init__(self, fd):
        self.fd = fd

    def read(self, n):
        import select

        r, _, _ = select.select([self.fd], [], [], 0.1)
        return os.read(self.fd, n) if r else b""


def test_loop_url_round_trip_and_newest_wins():
    pub = SerialPublisher("loop://", 115200, TABLE, 5, map_rate=2, heartbeat_s=60)
    dec = P.StreamDecoder()
    msgs = []
    try:
        for i in range(50):  # a burst far faster than the link: older maps are replaced, counted
            pub.publish(frame(i), result(seed=i % 3))
        deadline = time.monotonic() + 20  # read as the link delivers (loop:// holds 4 KiB): no sleeps
        while time.monotonic() < deadline and not (msgs and msgs[-1].header.frame_id == 49):
            port = pub._ser
            if port is not None:
                msgs += dec.feed(port.read(port.in_waiting))
        assert pub.stats.maps_sent + pub.stats.maps_skipped == 50
        assert pub.stats.maps_skipped > 0 and pub.stats.write_errors == 0
        assert msgs[-1].header.frame_id == 49  # the newest map always gets through
    finally:
        pub.close()


def test_link_budget_coarsens_then_skips():
    budget = map_budget(9600, 2.0)  # 432 bytes per map
    pub = SerialPublisher("loop://", 9600, TABLE, 5, map_rate=2, heartbeat_s=60)
    try:
        pub.publish(frame(0), result(shape=(256, 256), cell=8))  # 32x32 noisy cells: far too big
        assert pub.stats.maps_coarsened == 1
        dec = P.StreamDecoder()
        assert pub.wait_for(lambda s: s.maps_sent == 1, 10)
        (m,) = [x for x in dec.feed(pub._ser.read(pub._ser.in_waiting)) if isinstance(x, P.GridMessage)]
        assert m.cell[0] > 8 and len(P.encode(m)) <= budget
    finally:
        pub.close()
    tiny = SerialPublisher("loop://", 300, TABLE, 5, map_rate=50, heartbeat_s=60)
    try:
        tiny.publish(frame(0), result())
        assert tiny.stats.maps_skipped == 1  # cannot fit even 1 cell: skipped, counted
    finally:
        tiny.close()


def test_missing_port_retries_with_backoff_then_connects(tmp_path):
    """The port appears late (receiver plugged in after start): the publisher keeps retrying, never blocks."""
    link = tmp_path / "tty"
    pub = SerialPublisher(str(link), 115200, TABLE, 5, heartbeat_s=0.1, backoff=(0.05, 0.2))
    try:
        pub.publish(frame(0), result())  # returns though nothing is connected (else the test stops here)
        assert pub.wait_for(lambda s: s.reopens >= 2, 10)  # and the sender keeps retrying meanwhile
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        os.symlink(os.ttyname(slave), link)
        reader = _FdReader(master)
        dec = P.StreamDecoder()
        got = []
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            got = dec.feed(reader.read(4096))
        assert got, "nothing arrived after the port appeared"
        os.close(master)
        os.close(slave)
    finally:
        pub.close()


def test_port_vanishing_mid_stream_is_counted_and_survived():
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    name = os.ttyname(slave)
    pub = SerialPublisher(name, 115200, TABLE, 5, heartbeat_s=0.05, write_timeout=0.2, backoff=(0.05, 0.1))
    try:
        reader = _FdReader(master)
        dec = P.StreamDecoder()
        deadline = time.monotonic() + 10
        while not dec.feed(reader.read(4096)) and time.monotonic() < deadline:
            pass
        os.close(master)  # the far end disappears (cable pulled)
        os.close(slave)
        pub.publish(frame(1), result())
        assert pub.wait_for(lambda s: s.write_errors + s.reopens > 0, 10)  # a map or a heartbeat hits the dead port
        pub.publish(frame(2), result())  # still non-blocking, still alive
        assert pub._thread.is_alive()
    finally:
        pub.close()


def test_receiver_joining_mid_stream_resyncs():
    wires = b"".join(P.encode(P.HeartbeatMessage(P.Header(P.TYPE_HEARTBEAT, i, 0, 0), 1, 2, 3, 4, 5, 6, 7))
                     for i in range(10))
    dec = P.StreamDecoder()
    msgs = dec.feed(wires[37:])  # joined in the middle of frame 0 or 1
    assert msgs[-1].header.seq == 9 and len(msgs) >= 8


def test_edge_cli_to_listen_cli_through_ptys(tmp_path):
    """`marsseg-edge --serial <pty>` -> null-modem relay -> `marsseg-listen <pty>`: maps arrive and decode."""
    import select
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import cv2

    from tests.conftest import TINY_MODEL, synthetic_frames

    bindir = Path(sys.executable).parent
    frames, _ = synthetic_frames(n=5)
    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(d / f"f{i}.png"), f)
    m1, s1 = os.openpty()  # edge side
    m2, s2 = os.openpty()  # flight-computer side
    for fd in (m1, s1, m2, s2):
        tty.setraw(fd)
    stop = threading.Event()

    def relay():  # a null-modem cable between the two ptys
        while not stop.is_set():
            r, _, _ = select.select([m1], [], [], 0.05)
            if r:
                try:
                    os.write(m2, os.read(m1, 4096))
                except OSError:
                    return

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    listen = subprocess.Popen([shutil.which("marsseg-listen") or str(bindir / "marsseg-listen"), os.ttyname(s2),
                               "--json", "--save", str(tmp_path / "grids")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # opening a port flushes its input: start sending only once the listener has it open
        opened = ""
        while "listening on" not in opened and listen.poll() is None:
            opened = listen.stderr.readline()
        edge = subprocess.run([shutil.which("marsseg-edge") or str(bindir / "marsseg-edge"), str(d), "--model",
                               str(TINY_MODEL), "--serial", os.ttyname(s1), "--baud", "921600", "--map-rate", "20"],
                              capture_output=True, text=True, timeout=120)
        assert edge.returncode == 0, edge.stderr
        lines = []
        guard = threading.Timer(60, listen.terminate)  # if the last map never comes, stdout still ends
        guard.start()
        for line in listen.stdout:  # until the last frame's map arrives (flushed by the sender at shutdown)
            lines.append(line)
            if '"type": "grid"' in line and json.loads(line)["frame_id"] == 4:
                break
        guard.cancel()
        listen.send_signal(signal.SIGTERM)
        rest, err = listen.communicate(timeout=60)
        out = "".join(lines) + rest
    finally:
        stop.set()
        listen.kill()
        for fd in (m1, s1, m2, s2):
            os.close(fd)
    msgs = [json.loads(x) for x in out.splitlines()]
    grids = [m for m in msgs if m["type"] == "grid"]
    assert grids, err
    assert grids[-1]["frame_id"] == 4  # the last frame's map always arrives (flushed at shutdown)
    assert grids[0]["rows"] == 8 and grids[0]["cols"] == 8
    assert len(list((tmp_path / "grids").glob("grid_*.npz"))) == len(grids)
    assert "0 corrupt" in err


def test_receiver_reopens_a_vanished_port(monkeypatch):
    """A USB-serial adapter unplugged under the listener: reopened with backoff, no traceback, nothing lost after."""
    import serial

    rx = Receiver("loop://", 115200, read_timeout=0.05, backoff=(0.01, 0.02))

    class Unplugged:
        in_waiting = 0

        def read(self, n):
            raise serial.SerialException("device reports readiness to read but returned no data")

        def close(self):
            pass

    replugged = serial.serial_for_url("loop://", timeout=0.05)
    beat = P.HeartbeatMessage(P.Header(P.TYPE_HEARTBEAT, 7, 0, 0), 3.0, 1, 0, 0, 0, 0, 1)
    replugged.write(P.encode(beat))
    attempts = iter([serial.SerialException("no such port"), replugged])

    def reopen():
        nxt = next(attempts)
        if isinstance(nxt, Exception):
            raise nxt
        return nxt

    rx.ser = Unplugged()
    monkeypatch.setattr(rx, "_open", reopen)
    msg = next(rx.messages(threading.Event()))
    assert msg.header.seq == 7 and rx.reopens == 2  # the unplug, then one failed reopen
    rx.close()


def test_listen_survives_a_save_folder_lost_mid_run_and_refuses_a_bad_one_at_start(tmp_path, monkeypatch, capsys):
    from marsseg.edge import listen

    save = tmp_path / "grids"
    grid = np.ones((2, 3), np.uint8)
    msgs = [P.GridMessage(P.Header(P.TYPE_GRID, i, 0, i), (16, 16), (0, 0), 5, grid, grid, grid) for i in (1, 2)]

    class FakeReceiver:
        def __init__(self, port, baud):
            self.decoder, self.reopens = P.StreamDecoder(), 0

        def messages(self, stop, idle_timeout):
            save.rmdir()  # the folder was fine at start; now a file stands where it was
            save.write_text("not a folder")
            yield from msgs

        def close(self):
            pass

    monkeypatch.setattr(listen, "Receiver", FakeReceiver)
    assert listen.main(["loop://", "--json", "--save", str(save)]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(x)["frame_id"] for x in out.splitlines()] == [1, 2]  # every map still shown
    assert "2 not saved" in err
    with pytest.raises(SystemExit) as e:  # a folder that cannot be made is refused before listening
        listen.main(["loop://", "--save", str(save / "grids")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--save" in err and "cannot be created" in err and len(err.strip().splitlines()) == 1
