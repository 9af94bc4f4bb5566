"""ROS 2 recordings (MCAP) through the runtime: frames in with their stamps, masks/overlays/cost map out."""

import json
import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

pytest.importorskip("mcap_ros2")  # the optional `ros` extra; in the [test] extra

from marsseg.edge.cli import main
from marsseg.edge.recording import COMPRESSED, IMAGE, decode_image, occupancy
from marsseg.edge.terrain import CostTable
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from mcap_ros2.writer import Writer

from tests.conftest import TINY_MODEL, synthetic_frames

STAMP0 = 1_700_000_000  # recorded stamps, far from now: the outputs must carry these, not the wall clock


def record(path, frames, encoding="mono8", topic="/navcam/image_raw"):
    with open(path, "wb") as f:
        w = Writer(f)
        schema = w.register_msgdef(*IMAGE)
        for i, img in enumerate(frames):
            pixels = img if encoding == "mono8" else np.repeat(img[..., None], 3, -1)
            w.write_message(topic, schema, {
                "header": {"stamp": {"sec": STAMP0 + i, "nanosec": 250_000_000}, "frame_id": "navcam"},
                "height": img.shape[0], "width": img.shape[1], "encoding": encoding, "is_bigendian": 0,
                "step": pixels.strides[0], "data": pixels.tobytes()}, log_time=i)
        w.finish()


def test_a_recording_in_gives_a_recording_out(tmp_path):
    frames, _ = synthetic_frames(n=3)
    src, out = tmp_path / "drive.mcap", tmp_path / "out" / "segmented.mcap"
    record(src, frames, "rgb8")
    assert main(["--source", str(src), "--topic", "/navcam/image_raw", "--model", str(TINY_MODEL), "--mcap",
                 str(out), "--fov", "45", "--scale", "1", "--camera-height", "1.9", "--camera-pitch", "30"]) == 0
    got = {}
    with open(out, "rb") as f:  # the library's own reader
        for _, channel, message, msg in make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages():
            got.setdefault(channel.topic, []).append((message, msg))
    assert sorted(got) == ["/marsseg/ground_cost", "/marsseg/mask", "/marsseg/overlay"]
    assert all(len(v) == 3 for v in got.values())
    for topic in got:
        for i, (message, msg) in enumerate(got[topic]):
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (STAMP0 + i, 250_000_000)
            assert message.log_time == (STAMP0 + i) * 10**9 + 250_000_000
    mask = got["/marsseg/mask"][0][1]
    assert (mask.encoding, mask.height, mask.width) == ("mono8", 128, 128)
    assert set(np.frombuffer(bytes(mask.data), np.uint8)) <= set(range(5))
    assert got["/marsseg/overlay"][0][1].encoding == "rgb8"
    grid = got["/marsseg/ground_cost"][0][1]
    assert grid.header.frame_id == "base_footprint" and grid.info.resolution == pytest.approx(0.1)
    assert (grid.info.width, grid.info.height) == (100, 100) and grid.info.origin.position.y == -5
    values = np.array(grid.data, np.int16)
    assert values.min() == -1 and values.max() <= 100 and (values >= 0).any()
    assert not list(out.parent.glob(".*"))  # the partial file was renamed into place


def cdr_compressed(sec: int, nanosec: int, frame_id: str, fmt: str, data: bytes) -> bytes:
    """sensor_msgs/CompressedImage in CDR, encoded by hand: a writer that is not the one marsseg uses."""
    buf = bytearray(b"\x00\x01\x00\x00")  # little-endian CDR encapsulation

    def u32(v: int, code: str = "<I") -> None:
        buf.extend(b"\x00" * (-(len(buf) - 4) % 4))
        buf.extend(struct.pack(code, v))

    def string(s: str) -> None:
        b = s.encode() + b"\x00"
        u32(len(b))
        buf.extend(b)

    u32(sec, "<i")
    u32(nanosec)
    string(frame_id)
    string(fmt)
    u32(len(data))
    buf.extend(data)
    return bytes(buf)


def test_a_recording_from_another_writer_reads(tmp_path, capsys):
    """Plain `mcap` writer, hand-made CDR, PNG-compressed frames, no chunk compression."""
    from mcap.writer import CompressionType
    from mcap.writer import Writer as RawWriter

    frames, _ = synthetic_frames(n=2)
    src = tmp_path / "other.mcap"
    with open(src, "wb") as f:
        w = RawWriter(f, compression=CompressionType.NONE)
        w.start(profile="ros2", library="hand-made")
        schema = w.register_schema(COMPRESSED[0], "ros2msg", COMPRESSED[1].encode())
        channel = w.register_channel("/cam/compressed", "cdr", schema)
        for i, img in enumerate(frames):
            png = cv2.imencode(".png", img)[1].tobytes()
            data = cdr_compressed(STAMP0, i * 1000, "cam", "png", png)
            w.add_message(channel, log_time=5 + i, publish_time=5 + i, data=data)
        w.finish()
    summary = tmp_path / "s.json"
    assert main(["--source", str(src), "--model", str(TINY_MODEL), "--jsonl", "--summary-json", str(summary),
                 "--output", str(tmp_path / "out")]) == 0  # one image topic: no --topic needed
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("{")]
    assert len(lines) == 2 and '"timestamp": 1700000000.0' in lines[0] and '"shape": [128, 128]' in lines[0]
    s = json.loads(summary.read_text())  # latencies from when the frames were read, not from their 2023 stamps
    assert 0 < s["capture_to_published_ms_mean"] < 60_000
    assert all(0 < o["latency_ms_max"] < 60_000 for o in s["outputs"].values())


@pytest.mark.parametrize(("args", "words"), [
    (["--topic", "/nope"], "no image topic '/nope'; image topics in it: /navcam/image_raw (Image)"),
])
def test_a_missing_topic_is_one_line(tmp_path, capsys, args, words):
    src = tmp_path / "drive.mcap"
    record(src, synthetic_frames(n=1)[0])
    assert main(["--source", str(src), "--model", str(TINY_MODEL), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_damaged_recording_and_misplaced_topic(tmp_path, capsys):
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    assert main(["--source", str(bad), "--model", str(TINY_MODEL)]) == 2
    assert "not a readable MCAP recording" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--source", "demo", "--topic", "/cam"])
    assert "--topic picks the image topic of a ROS 2 recording" in capsys.readouterr().err


def test_image_encodings_decode_to_what_opencv_expects():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 0] = 200  # red
    msg = SimpleNamespace(encoding="rgb8", width=3, height=2, step=10, is_bigendian=0,
                          data=np.pad(rgb.reshape(2, 9), ((0, 0), (0, 1))).tobytes())  # padded rows
    bgr = decode_image(msg, IMAGE[0])
    assert bgr.shape == (2, 3, 3) and (bgr[..., 2] == 200).all() and (bgr[..., 0] == 0).all()
    wide = np.array([[0x1234, 0xFF00]], ">u2")
    msg16 = SimpleNamespace(encoding="mono16", width=2, height=1, step=4, is_bigendian=1, data=wide.tobytes())
    np.testing.assert_array_equal(decode_image(msg16, IMAGE[0]), [[0x12, 0xFF]])
    with pytest.raises(ValueError, match="'yuv422' not supported"):
        decode_image(SimpleNamespace(encoding="yuv422", width=1, height=1, step=2, data=b"ab"), IMAGE[0])
    with pytest.raises(ValueError, match="bytes, step"):
        decode_image(SimpleNamespace(encoding="mono8", width=4, height=4, step=4, is_bigendian=0, data=b"ab"),
                     IMAGE[0])


def test_occupancy_values():
    table = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")))
    cost = np.array([[0.0, 1.0, 5.0, np.inf, np.nan]], np.float32)
    np.testing.assert_array_equal(occupancy(cost, table), [[0, 20, 99, 100, -1]])


def test_without_the_ros_extra_the_flags_say_what_to_install(tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "mcap_ros2", None)  # as on a board installed without [ros]
    assert main(["--source", "demo", "--model", str(TINY_MODEL), "--mcap", str(tmp_path / "o.mcap")]) == 2
    assert "pip install 'marsseg[ros]'" in capsys.readouterr().err
    assert not (tmp_path / "o.mcap").exists()
