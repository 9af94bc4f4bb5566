"""The terrain-map link protocol (docs/protocol.md): pure encode/decode, no I/O.

Wire: COBS(frame) + 0x00 per frame. Frame (little-endian):
  magic 'MS' (2) | version (1) | type (1) | seq u32 | timestamp_us u64 | frame_id u32 | length u16 |
  payload (length) | CRC-32 u32 (zlib.crc32 of everything before it)
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

MAGIC = b"MS"
VERSION = 1
HEADER = struct.Struct("<2sBBIQIH")  # 22 bytes
CRC = struct.Struct("<I")
MAX_PAYLOAD = 16384
MAX_FRAME = HEADER.size + MAX_PAYLOAD + CRC.size  # unstuffed
MAX_WIRE = MAX_FRAME + MAX_FRAME // 254 + 3  # COBS overhead + the two delimiters

TYPE_GRID, TYPE_HEARTBEAT, TYPE_GROUND = 1, 2, 3
ENC_RAW, ENC_RLE, ENC_PLANES = 0, 1, 2
ENCODING_NAMES = {ENC_RAW: "raw", ENC_RLE: "rle", ENC_PLANES: "per-plane"}
PLANE_HEAD = struct.Struct("<BH")  # per-plane encoding (raw/RLE), byte length
GRID_HEAD = struct.Struct("<HHHHhhBB")  # rows, cols, cell_h, cell_w, origin_row, origin_col, encoding, classes
GROUND_HEAD = struct.Struct("<HHHiiBB")  # rows, cols, cell_mm, origin_x_mm, origin_y_mm, encoding, classes
HEARTBEAT = struct.Struct("<fIIIIII8s")  # fps, frames, dropped, errors, maps_sent, maps_skipped, uptime_s, model_id
COST_SCALE = 10  # cost byte = round(cost * 10) for costs 0..25.3
COST_LETHAL, COST_UNKNOWN = 254, 255


class ProtocolError(ValueError):
    """A frame that cannot be encoded as asked (too large, out-of-range field)."""


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: output has no 0x00; decode(encode(x)) == x."""
    out = bytearray()
    for block in data.split(b"\x00"):
        while len(block) >= 254:
            out += b"\xff" + block[:254]
            block = block[254:]
        out += bytes([len(block) + 1]) + block
    return bytes(out)


def cobs_decode(data: bytes) -> bytes:
    """Inverse of cobs_encode; raises ValueError on a malformed block."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        if code == 0 or i + code > n + (1 if code == 1 else 0) or 0 in data[i + 1 : i + code]:
            raise ValueError("malformed COBS block")
        out += data[i + 1 : i + code]
        i += code
        if code < 0xFF and i < n:
            out.append(0)
    return bytes(out)


@dataclass(frozen=True)
class Header:
    type: int
    seq: int
    timestamp_us: int
    frame_id: int


def pack(header: Header, payload: bytes) -> bytes:
    """One wire frame: 0x00 + COBS(header + payload + CRC-32) + 0x00.

    The leading delimiter ends whatever garbage came before (line noise, a frame cut short by a reset), so a
    damaged frame never takes the next good one down with it; a receiver skips the empty frame between two.
    """
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte maximum")
    body = HEADER.pack(MAGIC, VERSION, header.type, header.seq & 0xFFFFFFFF, header.timestamp_us,
                       header.frame_id & 0xFFFFFFFF, len(payload)) + payload
    return b"\x00" + cobs_encode(body + CRC.pack(zlib.crc32(body))) + b"\x00"


def unpack(frame: bytes) -> tuple[Header, bytes]:
    """Check and split one unstuffed frame; ValueError says what is wrong."""
    if len(frame) < HEADER.size + CRC.size:
        raise ValueError(f"frame of {len(frame)} bytes is shorter than header + CRC")
    body, (crc,) = frame[: -CRC.size], CRC.unpack(frame[-CRC.size :])
    if zlib.crc32(body) != crc:
        raise ValueError("CRC mismatch")
    magic, version, mtype, seq, ts, fid, length = HEADER.unpack_from(body)
    if magic != MAGIC or version != VERSION:
        raise ValueError(f"bad magic/version {magic!r}/{version}")
    if length != len(body) - HEADER.size:
        raise ValueError(f"length field {length} != payload {len(body) - HEADER.size}")
    return Header(mtype, seq, ts, fid), body[HEADER.size :]


def rle_encode(data: bytes) -> bytes:
    """(run length 1..255, value) pairs."""
    out = bytearray()
    i = 0
    while i < len(data):
        j = i
        while j < len(data) and j - i < 255 and data[j] == data[i]:
            j += 1
        out += bytes((j - i, data[i]))
        i = j
    return bytes(out)


def rle_decode(data: bytes, expected: int) -> bytes:
    if len(data) % 2:
        raise ValueError("RLE data has odd length")
    out = bytearray()
    for k in range(0, len(data), 2):
        if data[k] == 0:
            raise ValueError("RLE run of length 0")
        out += bytes([data[k + 1]]) * data[k]
    if len(out) != expected:
        raise ValueError(f"RLE expands to {len(out)} bytes, expected {expected}")
    return bytes(out)


def cost_to_byte(cost: np.ndarray) -> np.ndarray:
    c = np.asarray(cost, np.float64)
    out = np.clip(np.rint(np.nan_to_num(c, nan=0, posinf=0) * COST_SCALE), 0, COST_LETHAL - 1)
    out = np.where(np.isinf(c), COST_LETHAL, out)
    return np.where(np.isnan(c), COST_UNKNOWN, out).astype(np.uint8)


def byte_to_cost(b: np.ndarray) -> np.ndarray:
    out = b.astype(np.float32) / COST_SCALE
    out[b == COST_LETHAL] = np.inf
    out[b == COST_UNKNOWN] = np.nan
    return out


@dataclass
class GridMessage:
    """Terrain grid: per cell class id, confidence (0..255 = 0..1) and cost byte (see COST_*)."""

    KIND = "grid"  # what receivers call it (`marsseg-listen` output and file names)

    header: Header
    cell: tuple[int, int]
    origin: tuple[int, int]
    num_classes: int
    classes: np.ndarray  # uint8 (rows, cols)
    confidence: np.ndarray  # uint8 (rows, cols)
    cost: np.ndarray  # uint8 (rows, cols)
    encoding: int = ENC_RAW

    def payload(self) -> bytes:
        """Grid head + the shortest of raw planes, one RLE over all three, or each plane coded on its own.

        Per plane wins on big grids: class and cost planes have long runs, the confidence plane rarely does.
        """
        rows, cols = self.classes.shape
        if rows == 0 or cols == 0 or min(self.cell) <= 0:
            raise ProtocolError(f"grid of {rows}x{cols} cells of {self.cell[0]}x{self.cell[1]} px: nothing to send")
        planes = [np.ascontiguousarray(p, np.uint8).tobytes() for p in (self.classes, self.confidence, self.cost)]
        raw = b"".join(planes)
        candidates = [(ENC_RAW, raw), (ENC_RLE, rle_encode(raw))]
        if rows * cols <= 0xFFFF:  # the plane length field is u16
            candidates.append((ENC_PLANES, b"".join(_plane_chunk(p) for p in planes)))
        self.encoding, body = min(candidates, key=lambda c: len(c[1]))
        try:
            return self._pack_head(rows, cols) + body
        except struct.error as e:
            raise ProtocolError(f"{type(self).__name__} head out of range (cell {self.cell}, origin {self.origin}): "
                                f"{e}") from e

    def _pack_head(self, rows: int, cols: int) -> bytes:
        return GRID_HEAD.pack(rows, cols, *self.cell, *self.origin, self.encoding, self.num_classes)

    @classmethod
    def _unpack_head(cls, payload: bytes) -> tuple[int, int, tuple[int, int], tuple[int, int], int, int, int]:
        """rows, cols, cell, origin, encoding, classes, head size."""
        rows, cols, ch, cw, orow, ocol, enc, ncls = GRID_HEAD.unpack_from(payload)
        return rows, cols, (ch, cw), (orow, ocol), enc, ncls, GRID_HEAD.size

    @classmethod
    def parse(cls, header: Header, payload: bytes) -> GridMessage:
        try:
            rows, cols, cell, origin, enc, ncls, head = cls._unpack_head(payload)
        except struct.error:
            raise ValueError(f"{cls.__name__} payload shorter than its head") from None
        if rows == 0 or cols == 0 or min(cell) == 0 or ncls == 0:
            raise ValueError(f"grid of {rows}x{cols} cells of {cell[0]}x{cell[1]}, {ncls} classes: empty")
        body, n = payload[head:], rows * cols
        if enc == ENC_RLE:
            body = rle_decode(body, 3 * n)
        elif enc == ENC_PLANES:
            body = _split_planes(body, n)
        elif enc != ENC_RAW or len(body) != 3 * n:
            raise ValueError(f"grid body: encoding {enc}, {len(body)} bytes for {rows}x{cols} cells")
        planes = np.frombuffer(body, np.uint8).reshape(3, rows, cols)
        return cls(header, cell, origin, ncls, planes[0].copy(), planes[1].copy(), planes[2].copy(), enc)


@dataclass
class GroundMessage(GridMessage):
    """Ground cost map (type 3): the same three planes, on the ground in the rover frame (x forward, y left).
    `cell` is (cell_mm, cell_mm); `origin` is (x_mm, y_mm) of cell (0, 0)'s corner; row i runs along x, column j
    along y."""

    KIND = "ground"

    def _pack_head(self, rows: int, cols: int) -> bytes:
        return GROUND_HEAD.pack(rows, cols, self.cell[0], *self.origin, self.encoding, self.num_classes)

    @classmethod
    def _unpack_head(cls, payload: bytes) -> tuple[int, int, tuple[int, int], tuple[int, int], int, int, int]:
        rows, cols, cell, ox, oy, enc, ncls = GROUND_HEAD.unpack_from(payload)
        return rows, cols, (cell, cell), (ox, oy), enc, ncls, GROUND_HEAD.size


def _plane_chunk(plane: bytes) -> bytes:
    """One plane for ENC_PLANES: (encoding, length) + the shorter of raw and RLE."""
    rle = rle_encode(plane)
    enc, data = (ENC_RLE, rle) if len(rle) < len(plane) else (ENC_RAW, plane)
    return PLANE_HEAD.pack(enc, len(data)) + data


def _split_planes(body: bytes, n: int) -> bytes:
    """Inverse of three `_plane_chunk`s: the 3 * n plane bytes; ValueError on any inconsistency."""
    out, i = bytearray(), 0
    for k in range(3):
        if i + PLANE_HEAD.size > len(body):
            raise ValueError(f"grid plane {k}: head missing ({len(body) - i} bytes left)")
        enc, length = PLANE_HEAD.unpack_from(body, i)
        i += PLANE_HEAD.size
        data = body[i : i + length]
        if len(data) != length:
            raise ValueError(f"grid plane {k}: length field {length}, only {len(data)} bytes left")
        if enc == ENC_RLE:
            data = rle_decode(data, n)
        elif enc != ENC_RAW or length != n:
            raise ValueError(f"grid plane {k}: encoding {enc}, {length} bytes for {n} cells")
        out += data
        i += length
    if i != len(body):
        raise ValueError(f"grid body: {len(body) - i} bytes after the third plane")
    return bytes(out)


@dataclass
class HeartbeatMessage:
    header: Header
    fps: float
    frames: int
    dropped: int
    errors: int
    maps_sent: int
    maps_skipped: int
    uptime_s: int
    model_id: bytes = field(default=b"\x00" * 8)

    def payload(self) -> bytes:
        if not self.fps_ok():
            raise ProtocolError(f"heartbeat fps must be a finite number >= 0, got {self.fps}")
        return HEARTBEAT.pack(self.fps, self.frames, self.dropped, self.errors, self.maps_sent, self.maps_skipped,
                              self.uptime_s, self.model_id[:8].ljust(8, b"\x00"))

    @classmethod
    def parse(cls, header: Header, payload: bytes) -> HeartbeatMessage:
        if len(payload) != HEARTBEAT.size:
            raise ValueError(f"heartbeat payload is {len(payload)} bytes, expected {HEARTBEAT.size}")
        msg = cls(header, *HEARTBEAT.unpack(payload))
        if not msg.fps_ok():
            raise ValueError(f"heartbeat fps {msg.fps}")
        return msg

    def fps_ok(self) -> bool:
        """The one rule both ends apply: a receiver's JSON has no NaN, a dashboard no negative rate."""
        return math.isfinite(self.fps) and self.fps >= 0


Message = GridMessage | GroundMessage | HeartbeatMessage
PARSERS = {TYPE_GRID: GridMessage.parse, TYPE_HEARTBEAT: HeartbeatMessage.parse, TYPE_GROUND: GroundMessage.parse}


def encode(msg: Message) -> bytes:
    return pack(msg.header, msg.payload())


def decode_frame(frame: bytes) -> Message:
    """One unstuffed frame -> message; ValueError for anything corrupt or unknown."""
    header, payload = unpack(frame)
    parser = PARSERS.get(header.type)
    if parser is None:
        raise ValueError(f"unknown message type {header.type}")
    return parser(header, payload)


@dataclass
class DecoderStats:
    frames: int = 0
    crc_errors: int = 0  # any frame rejected: CRC, COBS, header or payload inconsistency
    seq_gaps: int = 0  # messages lost between two received ones
    duplicates: int = 0
    resyncs: int = 0  # oversized garbage discarded without a delimiter
    bytes: int = 0


class StreamDecoder:
    """Bytes in, messages out. Never raises on input; memory bounded by MAX_WIRE."""

    def __init__(self) -> None:
        self.stats = DecoderStats()
        self._buf = bytearray()
        self._overflow = False
        self._last_seq: int | None = None

    def feed(self, data: bytes) -> list[Message]:
        self.stats.bytes += len(data)
        out: list[Message] = []
        start = 0
        while True:
            end = data.find(b"\x00", start)
            chunk = data[start:] if end < 0 else data[start:end]
            if not self._overflow:
                self._buf += chunk
                if len(self._buf) > MAX_WIRE:  # no delimiter in sight: drop and wait for the next 0x00
                    self._buf.clear()
                    self._overflow = True
                    self.stats.resyncs += 1
            if end < 0:
                return out
            if not self._overflow and self._buf:
                msg = self._frame(bytes(self._buf))
                if msg is not None:
                    out.append(msg)
            self._buf.clear()
            self._overflow = False
            start = end + 1

    def _frame(self, wire: bytes) -> Message | None:
        try:
            msg = decode_frame(cobs_decode(wire))
        except (ValueError, struct.error):
            self.stats.crc_errors += 1
            return None
        seq = msg.header.seq
        if self._last_seq is not None:
            delta = (seq - self._last_seq) & 0xFFFFFFFF
            if delta == 0:
                self.stats.duplicates += 1
                return None
            if delta < 0x80000000:
                self.stats.seq_gaps += delta - 1
        self._last_seq = seq
        self.stats.frames += 1
        return msg


def wire_size(payload_len: int) -> int:
    """Worst-case bytes on the wire for a payload (COBS overhead + the two delimiters)."""
    n = HEADER.size + payload_len + CRC.size
    return n + math.ceil(n / 254) + 2
