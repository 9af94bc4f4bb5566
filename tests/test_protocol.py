"""Round trips of every message type, COBS properties, and a fuzz suite for the stream decoder."""

import random
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marsseg.edge import protocol as P

headers = st.builds(P.Header, type=st.just(P.TYPE_GRID), seq=st.integers(0, 2**32 - 1),
                    timestamp_us=st.integers(0, 2**64 - 1), frame_id=st.integers(0, 2**32 - 1))


@st.composite
def grid_messages(draw, seq=None):
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    n = rows * cols
    def plane(hi):  # runs make RLE win, noise makes raw win; a mix of both makes per-plane coding win
        if draw(st.booleans()):
            return np.repeat(np.array(draw(st.lists(st.integers(0, hi), min_size=1, max_size=4)), np.uint8),
                             -(-n // 1))[:n].reshape(rows, cols)
        return np.array(draw(st.lists(st.integers(0, hi), min_size=n, max_size=n)), np.uint8).reshape(rows, cols)
    h = draw(headers)
    if seq is not None:
        h = P.Header(P.TYPE_GRID, seq, h.timestamp_us, h.frame_id)
    return P.GridMessage(h, (draw(st.integers(1, 512)), draw(st.integers(1, 512))),
                         (draw(st.integers(-100, 100)), draw(st.integers(-100, 100))), 5,
                         plane(4), plane(255), plane(255))


heartbeats = st.builds(
    P.HeartbeatMessage,
    header=headers.map(lambda h: P.Header(P.TYPE_HEARTBEAT, h.seq, h.timestamp_us, h.frame_id)),
    fps=st.floats(0, 1000, width=32), frames=st.integers(0, 2**32 - 1), dropped=st.integers(0, 2**32 - 1),
    errors=st.integers(0, 2**32 - 1), maps_sent=st.integers(0, 2**32 - 1), maps_skipped=st.integers(0, 2**32 - 1),
    uptime_s=st.integers(0, 2**32 - 1), model_id=st.binary(min_size=8, max_size=8))


def same(a, b):
    assert type(a) is type(b) and a.header == b.header
    if isinstance(a, P.GridMessage):
        assert (a.cell, a.origin, a.num_classes) == (b.cell, b.origin, b.num_classes)
        for x, y in ((a.classes, b.classes), (a.confidence, b.confidence), (a.cost, b.cost)):
            np.testing.assert_array_equal(x, y)
    else:
        assert a == b


@given(st.binary(max_size=2000))
def test_cobs_round_trip_and_no_zero(data):
    enc = P.cobs_encode(data)
    assert b"\x00" not in enc
    assert P.cobs_decode(enc) == data
    assert len(enc) <= len(data) + len(data) // 254 + 1


@settings(max_examples=150, deadline=None)
@given(st.one_of(grid_messages(), heartbeats))
def test_message_round_trip(msg):
    wire = P.encode(msg)
    assert wire.startswith(b"\x00") and wire.endswith(b"\x00") and b"\x00" not in wire[1:-1]
    assert len(wire) <= P.wire_size(len(msg.payload()))
    dec = P.StreamDecoder()
    (out,) = dec.feed(wire)
    same(msg, out)


def test_frame_is_checkable_with_zlib_alone():
    msg = P.HeartbeatMessage(P.Header(P.TYPE_HEARTBEAT, 7, 123, 9), 10.0, 1, 2, 3, 4, 5, 6, b"abcdefgh")
    frame = P.cobs_decode(P.encode(msg)[1:-1])
    assert zlib.crc32(frame[:-4]).to_bytes(4, "little") == frame[-4:]
    assert frame[:2] == b"MS" and frame[2] == 1 and frame[3] == P.TYPE_HEARTBEAT


def test_cost_bytes():
    c = np.array([0.0, 1.0, 2.5, np.inf, np.nan, 100.0])
    np.testing.assert_array_equal(P.cost_to_byte(c), [0, 10, 25, 254, 255, 253])
    back = P.byte_to_cost(P.cost_to_byte(c))
    assert np.isinf(back[3]) and np.isnan(back[4]) and back[2] == 2.5


def test_oversized_payload_refused():
    with pytest.raises(P.ProtocolError, match="exceeds"):
        P.pack(P.Header(1, 0, 0, 0), bytes(P.MAX_PAYLOAD + 1))


def _grid(classes, confidence, cost):
    return P.GridMessage(P.Header(P.TYPE_GRID, 1, 2, 3), (16, 16), (0, 0), 5, classes, confidence, cost)


def test_each_encoding_is_chosen_when_shortest_and_decodes():
    rng = np.random.default_rng(0)
    flat = np.zeros((30, 40), np.uint8)
    noise = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    for planes, enc in (((noise, noise, noise), P.ENC_RAW), ((flat, flat, flat), P.ENC_RLE),
                        ((flat + 1, noise, flat + 10), P.ENC_PLANES)):
        msg = _grid(*planes)
        payload = msg.payload()
        assert msg.encoding == enc
        same(msg, P.GridMessage.parse(msg.header, payload))
    # a map with flat class/cost planes and a noisy confidence plane: 40% of raw, where one RLE is longer than raw
    assert len(payload) - P.GRID_HEAD.size < 0.4 * 3 * flat.size < len(P.rle_encode(b"".join(
        p.tobytes() for p in planes)))


@pytest.mark.parametrize("body, problem", [
    (P.PLANE_HEAD.pack(P.ENC_RAW, 6) + bytes(6), "head missing"),
    (P.PLANE_HEAD.pack(P.ENC_RAW, 7) + bytes(6), "only 6 bytes left"),
    (P.PLANE_HEAD.pack(P.ENC_RAW, 5) + bytes(5), "5 bytes for 6 cells"),
    (P.PLANE_HEAD.pack(3, 6) + bytes(6), "encoding 3"),
    ((P.PLANE_HEAD.pack(P.ENC_RLE, 2) + bytes([6, 1])) * 3 + b"x", "1 bytes after the third plane"),
    (P.PLANE_HEAD.pack(P.ENC_RLE, 2) + bytes([5, 1]), "expands to 5 bytes"),
])
def test_malformed_per_plane_body_is_refused(body, problem):
    payload = P.GRID_HEAD.pack(2, 3, 16, 16, 0, 0, P.ENC_PLANES, 5) + body
    with pytest.raises(ValueError, match=problem):
        P.GridMessage.parse(P.Header(P.TYPE_GRID, 0, 0, 0), payload)


def _stream(n, seed=0):
    rng = np.random.default_rng(seed)
    msgs = []
    for i in range(n):
        rows, cols = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        msgs.append(P.GridMessage(P.Header(P.TYPE_GRID, i, i * 1000, i), (8, 8), (0, 0), 5,
                                  rng.integers(0, 5, (rows, cols), dtype=np.uint8),
                                  rng.integers(0, 256, (rows, cols), dtype=np.uint8),
                                  rng.integers(0, 256, (rows, cols), dtype=np.uint8)))
    return msgs


def _decode_all(data: bytes, chunk: int = 7):
    dec = P.StreamDecoder()
    out = []
    for i in range(0, len(data), chunk):
        out += dec.feed(data[i : i + chunk])
    return dec, out


@pytest.mark.parametrize("seed", range(200))
def test_fuzz_corruption_never_raises_never_accepts_bad_frames(seed):
    rnd = random.Random(seed)
    msgs = _stream(30, seed)
    wires = [P.encode(m) for m in msgs]
    corrupted = set()
    data = bytearray()
    for i, w in enumerate(wires):
        w = bytearray(w)
        kind = rnd.choice(["ok", "ok", "flip", "insert", "delete", "truncate", "noise"])
        if kind == "flip":
            pos = rnd.randrange(len(w) - 1)
            w[pos] ^= 1 << rnd.randrange(8)
        elif kind == "insert":
            w.insert(rnd.randrange(len(w) - 1), rnd.randrange(1, 256))
        elif kind == "delete":
            del w[rnd.randrange(len(w) - 1)]
        elif kind == "truncate":
            w = w[: rnd.randrange(1, len(w) - 1)]  # delimiter lost: the next frame is swallowed too
        elif kind == "noise":  # garbage with no delimiter after it merges into (and spoils) this frame
            data += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300)))
        if kind != "ok":
            corrupted.add(i)
        if kind == "truncate":
            corrupted.add(i + 1)
        data += w
    _dec, out = _decode_all(bytes(data), chunk=rnd.randrange(1, 64))
    good = {m.header.seq: m for m in msgs}
    for m in out:
        same(good[m.header.seq], m)  # anything accepted is exactly what was sent
    got = {m.header.seq for m in out}
    # every frame sent intact after an intact delimiter arrives: the decoder resynchronises every time
    assert {i for i in range(30) if i not in corrupted} <= got


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_random_noise_never_raises_and_resyncs(noise):
    msg = _stream(1)[0]
    dec = P.StreamDecoder()
    dec.feed(noise)
    out = dec.feed(b"\x00" + P.encode(msg))
    assert len(out) == 1
    same(msg, out[0])


def test_bounded_memory_under_endless_garbage():
    dec = P.StreamDecoder()
    rng = np.random.default_rng(1)
    for _ in range(200):  # 200 x 64 kB of non-zero garbage, no delimiter
        dec.feed(rng.integers(1, 256, 65536, dtype=np.uint8).tobytes())
        assert len(dec._buf) <= P.MAX_WIRE
    assert dec.stats.resyncs > 0
    msg = _stream(1)[0]
    assert len(dec.feed(b"\x00" + P.encode(msg))) == 1


def test_counters_gaps_duplicates_crc():
    msgs = _stream(6)
    wires = [P.encode(m) for m in msgs]
    bad = bytearray(wires[3])
    bad[5] ^= 0xFF
    data = wires[0] + wires[1] + wires[1] + bytes(bad) + wires[4] + wires[5]
    dec, out = _decode_all(data)
    assert [m.header.seq for m in out] == [0, 1, 4, 5]
    assert dec.stats.duplicates == 1
    assert dec.stats.crc_errors == 1
    assert dec.stats.seq_gaps == 2  # 2 and 3 never arrived intact


def test_concatenated_frames_in_one_read():
    msgs = _stream(50)
    dec = P.StreamDecoder()
    out = dec.feed(b"".join(P.encode(m) for m in msgs))
    assert [m.header.seq for m in out] == list(range(50))


def test_empty_grids_and_non_finite_numbers_rejected_on_both_ends():
    empty = np.zeros((0, 4), np.uint8)
    msg = P.GridMessage(P.Header(P.TYPE_GRID, 1, 0, 0), (16, 16), (0, 0), 5, empty, empty, empty)
    with pytest.raises(P.ProtocolError, match="0x4 cells"):
        P.encode(msg)
    beat = P.HeartbeatMessage(P.Header(P.TYPE_HEARTBEAT, 1, 0, 0), float("nan"), 1, 0, 0, 0, 0, 1)
    with pytest.raises(P.ProtocolError, match="fps"):
        P.encode(beat)
    # hand-made frames with valid CRCs: what a buggy or hostile sender could put on the wire
    def beat(fps: float) -> bytes:
        return P.HEARTBEAT.pack(fps, 1, 0, 0, 0, 0, 1, b"\0" * 8)

    def grid(rows: int) -> bytes:
        return P.GRID_HEAD.pack(rows, 4, 16, 16, 0, 0, P.ENC_RAW, 5) + bytes(3 * rows * 4)

    for type_, bad, good in ((P.TYPE_GRID, grid(0), grid(1)), (P.TYPE_HEARTBEAT, beat(float("nan")), beat(2.0))):
        d = P.StreamDecoder()
        assert d.feed(P.pack(P.Header(type_, 1, 0, 0), bad)) == [] and d.stats.crc_errors == 1
        assert len(d.feed(P.pack(P.Header(type_, 2, 0, 0), good))) == 1  # the same frame, well-formed, decodes


def test_a_frame_cut_short_does_not_take_the_next_one_down():
    """Line noise or a sender reset cuts a frame before its delimiter: the next frame still decodes."""
    a, b = (P.encode(P.HeartbeatMessage(P.Header(P.TYPE_HEARTBEAT, s, 0, 0), 1.0, s, 0, 0, 0, 0, 1)) for s in (1, 2))
    d = P.StreamDecoder()
    out = d.feed(a[: len(a) // 2] + b"\x17\x99" + b)
    assert [m.header.seq for m in out] == [2] and d.stats.crc_errors == 1
