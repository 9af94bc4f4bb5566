"""Serial transport for the terrain-map protocol: a non-blocking publisher and a receiver.

Transport (pyserial, any `serial_for_url` port: /dev/ttyUSB0, loop://, a pty) is kept apart from framing
(`protocol`). The publisher runs in its own thread behind a one-slot, newest-wins mailbox, so a slow or
dead link never blocks segmentation; a missing or vanished port is logged, counted and reopened with
backoff. The link budget (baud / 10 bytes per second at 8N1, shared by `map_rate` maps per second) is
enforced by coarsening the grid (cell size doubled until the map fits) or skipping the map, counted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import serial
from marsseg.edge import protocol as P
from marsseg.edge.ground import GroundGrid
from marsseg.edge.publishers import Result
from marsseg.edge.sources import Frame
from marsseg.edge.terrain import CostTable, TerrainGrid

log = logging.getLogger(__name__)
HEARTBEAT_SHARE = 0.1  # of the link kept free for heartbeats and jitter
MAX_COARSENING = 5  # cell size doubled at most this many times to fit the budget


def bytes_per_second(baud: int) -> float:
    return baud / 10.0  # 8N1: start + 8 data + stop bits per byte


def map_budget(baud: int, map_rate: float) -> int:
    """Largest wire size of one map that sustains `map_rate` maps/s at `baud`."""
    return int(bytes_per_second(baud) * (1 - HEARTBEAT_SHARE) / map_rate)


def grid_message(grid: TerrainGrid | GroundGrid, seq: int, frame: Frame, num_classes: int) -> P.GridMessage:
    """The image grid as a type-1 message, the ground map (cells and origin in millimetres) as type 3."""
    planes = (grid.classes, np.clip(np.rint(grid.confidence * 255), 0, 255).astype(np.uint8), P.cost_to_byte(grid.cost))
    stamp = int(frame.stamp * 1e6)
    if isinstance(grid, GroundGrid):
        mm = round(grid.cell * 1000)
        return P.GroundMessage(P.Header(P.TYPE_GROUND, seq, stamp, frame.index), (mm, mm),
                               (round(grid.origin[0] * 1000), round(grid.origin[1] * 1000)), num_classes, *planes)
    return P.GridMessage(P.Header(P.TYPE_GRID, seq, stamp, frame.index), grid.cell, grid.origin, num_classes, *planes)


@dataclass
class LinkStats:
    maps_sent: int = 0
    maps_skipped: int = 0  # replaced in the mailbox before sending, or over budget even when coarsened
    maps_coarsened: int = 0
    heartbeats: int = 0
    bytes_sent: int = 0
    write_errors: int = 0
    reopens: int = 0


class SerialPublisher:
    """Publishes terrain grids (and heartbeats) on a serial port from its own thread."""

    def __init__(self, port: str, baud: int, table: CostTable, num_classes: int, map_rate: float = 2.0,
                 heartbeat_s: float = 1.0, write_timeout: float = 0.5, backoff: tuple[float, float] = (0.2, 5.0),
                 status: Callable[[], dict] | None = None, model_id: bytes = b"", ground: bool = False) -> None:
        """`ground`: send the ground cost map (type 3) instead of the image grid when the runtime makes one."""
        self.port, self.baud, self.table, self.num_classes, self.ground = port, baud, table, num_classes, ground
        self.budget = map_budget(baud, map_rate)
        self.heartbeat_s, self.write_timeout, self.backoff = heartbeat_s, write_timeout, backoff
        self.status, self.model_id = status, model_id
        self.stats = LinkStats()
        self._seq = 0
        self._ser: serial.SerialBase | None = None
        self._mail: P.GridMessage | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._write_delay = 0.0  # grows while writes keep failing (a reader that never drains), 0 after a success
        self._thread = threading.Thread(target=self._run, name="serial-publisher", daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[LinkStats], bool], timeout: float) -> bool:
        """Block until `predicate(stats)` holds or `timeout` passes; the sender thread signals every change, so
        a caller (a test, a supervisor) synchronises on the link's events instead of polling."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.stats), timeout)

    def _changed(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def publish(self, frame: Frame, result: Result) -> None:
        """Called from the frame loop: never blocks on the link."""
        msg = self._fit(frame, result)
        with self._cond:
            if msg is None:
                self.stats.maps_skipped += 1
                return
            if self._mail is not None:
                self.stats.maps_skipped += 1
            self._mail = msg
            self._cond.notify_all()  # the sender thread, and close() waiting for the mailbox to empty

    def _fit(self, frame: Frame, result: Result) -> P.GridMessage | None:
        ground = self.ground and result.ground is not None
        grid = result.ground if ground else result.grid
        for k in range(MAX_COARSENING + 1):
            msg = grid_message(grid, 0, frame, self.num_classes)
            if P.wire_size(len(msg.payload())) <= self.budget:
                if k:
                    self.stats.maps_coarsened += 1
                return msg
            if ground:
                grid = result.ground.coarsened(2 ** (k + 1), self.table)
            else:
                grid = result.grid_at(grid.cell[0] * 2, self.table)
        log.warning("map of frame %s does not fit the %d-byte link budget even coarsened; skipped",
                    frame.key, self.budget)
        return None

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def _heartbeat(self) -> P.HeartbeatMessage:
        s = self.status() if self.status else {}
        return P.HeartbeatMessage(
            P.Header(P.TYPE_HEARTBEAT, 0, int(time.time() * 1e6), s.get("frames", 0)), float(s.get("fps", 0.0)),
            s.get("frames", 0), s.get("dropped", 0), s.get("errors", 0), self.stats.maps_sent,
            self.stats.maps_skipped, int(time.monotonic() - self._started), self.model_id)

    def _run(self) -> None:
        delay = self.backoff[0]
        next_beat = time.monotonic()
        while not self._stop.is_set():
            if self._ser is None:
                try:
                    self._ser = serial.serial_for_url(self.port, self.baud, write_timeout=self.write_timeout,
                                                      timeout=0, exclusive=None)
                    log.info("serial port %s open at %d baud", self.port, self.baud)
                    delay = self.backoff[0]
                except (serial.SerialException, OSError, ValueError) as e:
                    self.stats.reopens += 1
                    self._changed()
                    log.warning("serial port %s unavailable (%s); retrying in %.1f s", self.port, e, delay)
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.backoff[1])
                    continue
            with self._cond:
                timeout = max(0.0, next_beat - time.monotonic())
                self._cond.wait_for(lambda: self._mail is not None or self._stop.is_set(), timeout=timeout)
                msg, self._mail = self._mail, None
                self._cond.notify_all()
            if msg is None and time.monotonic() >= next_beat:
                msg = self._heartbeat()
                next_beat = time.monotonic() + self.heartbeat_s
            if msg is not None:
                self._send(msg)

    def _send(self, msg: P.Message) -> None:
        msg.header = P.Header(msg.header.type, self._next_seq(), msg.header.timestamp_us, msg.header.frame_id)
        try:
            wire = P.encode(msg)
        except P.ProtocolError as e:  # never let one bad message end the sender thread
            self.stats.write_errors += 1
            log.error("serial: cannot encode %s: %s", type(msg).__name__, e)
            return
        try:
            self._ser.write(wire)
        except Exception as e:
            self.stats.write_errors += 1
            self._changed()
            self._write_delay = min(max(self._write_delay * 2, self.backoff[0]), self.backoff[1])
            log.warning("serial write to %s failed (%s: %s); reopening in %.1f s", self.port, type(e).__name__, e,
                        self._write_delay)
            self._close_port()
            self._stop.wait(self._write_delay)  # a reader that never drains must not cost a core in retries
            return
        self._write_delay = 0.0
        self.stats.bytes_sent += len(wire)
        if isinstance(msg, P.GridMessage):
            self.stats.maps_sent += 1
        else:
            self.stats.heartbeats += 1
        self._changed()

    def _close_port(self) -> None:
        self._ser = close_quietly(self._ser)

    def close(self, flush_timeout: float = 2.0) -> None:
        """Send what is in the mailbox (bounded wait), then stop the thread and close the port.

        Waits even while the port is being reopened after a failed write: the last map of a run is the one the
        flight computer most needs, and a transient fault just before shutdown must not drop it.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._mail is None, timeout=flush_timeout)
            self._stop.set()
            self._cond.notify_all()
        self._thread.join(timeout=flush_timeout)
        self._close_port()


class Receiver:
    """Reads a serial port and yields decoded messages; the flight-computer side's reference.

    A port that vanishes mid-run (a USB-serial adapter unplugged) is reopened with backoff, like the sender's;
    only a port that cannot be opened at start is an error.
    """

    def __init__(self, port: str, baud: int, read_timeout: float = 0.2,
                 backoff: tuple[float, float] = (0.2, 5.0)) -> None:
        self.port, self.baud, self.read_timeout, self.backoff = port, baud, read_timeout, backoff
        self.ser: serial.SerialBase | None = self._open()
        self.decoder = P.StreamDecoder()
        self.reopens = 0

    def _open(self) -> serial.SerialBase:
        return serial.serial_for_url(self.port, self.baud, timeout=self.read_timeout)

    def _read(self, stop: threading.Event) -> bytes:
        """Some bytes, or b"" after the read timeout; a failed port is closed and reopened with backoff."""
        delay = self.backoff[0]
        while not stop.is_set():
            try:
                if self.ser is None:
                    self.ser = self._open()
                    log.info("serial port %s reopened", self.port)
                return self.ser.read(max(1, self.ser.in_waiting or 1))
            except (serial.SerialException, OSError, ValueError) as e:
                self.reopens += 1
                log.warning("serial port %s failed (%s); reopening in %.1f s", self.port, e, delay)
                self.close()
                stop.wait(delay)
                delay = min(delay * 2, self.backoff[1])
        return b""

    def messages(self, stop: threading.Event | None = None, idle_timeout: float | None = None) -> Iterator[P.Message]:
        """Messages until `stop` is set or nothing arrived for `idle_timeout` seconds."""
        stop = stop or threading.Event()
        last = time.monotonic()
        while not stop.is_set():
            data = self._read(stop)
            if data:
                last = time.monotonic()
                yield from self.decoder.feed(data)
            elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                return

    def close(self) -> None:
        self.ser = close_quietly(self.ser)


def close_quietly(ser: serial.SerialBase | None) -> None:
    """Close a port that may already be gone (an unplugged adapter raises on close too); returns None to store."""
    if ser is not None:
        with contextlib.suppress(serial.SerialException, OSError):
            ser.close()
