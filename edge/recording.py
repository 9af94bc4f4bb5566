"""ROS 2 recordings (MCAP) without ROS: camera frames in, class masks, overlays and the ground cost map out.

Reading takes `sensor_msgs/Image` (mono8, rgb8, bgr8, mono16) and `sensor_msgs/CompressedImage` from one topic,
with the recorded header stamps. Writing uses the standard ROS 2 message definitions as schemas, so `ros2 bag`
and Foxglove open the file. Needs the optional `ros` extra (`mcap`, `mcap-ros2-support`), imported only when an
`.mcap` source or `--mcap` is used.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from marsseg.edge.publishers import Result
from marsseg.edge.render import overlay
from marsseg.edge.sources import Frame, SourceError
from marsseg.edge.terrain import CostTable

_SEP = "=" * 80 + "\n"
_TIME = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n"
_HEADER = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n"
IMAGE = ("sensor_msgs/msg/Image", "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\n"
         "uint8 is_bigendian\nuint32 step\nuint8[] data\n" + _SEP + _HEADER + _SEP + _TIME)
COMPRESSED = ("sensor_msgs/msg/CompressedImage", "std_msgs/Header header\nstring format\nuint8[] data\n" + _SEP
              + _HEADER + _SEP + _TIME)
OCCUPANCY = ("nav_msgs/msg/OccupancyGrid", "std_msgs/Header header\nMapMetaData info\nint8[] data\n" + _SEP
             + _HEADER + _SEP + _TIME + _SEP + "MSG: nav_msgs/MapMetaData\nbuiltin_interfaces/Time map_load_time\n"
             "float32 resolution\nuint32 width\nuint32 height\ngeometry_msgs/Pose origin\n" + _SEP
             + "MSG: geometry_msgs/Pose\nPoint position\nQuaternion orientation\n" + _SEP
             + "MSG: geometry_msgs/Point\nfloat64 x\nfloat64 y\nfloat64 z\n" + _SEP
             + "MSG: geometry_msgs/Quaternion\nfloat64 x 0\nfloat64 y 0\nfloat64 z 0\nfloat64 w 1\n")
TOPICS = {"mask": "/marsseg/mask", "overlay": "/marsseg/overlay", "ground": "/marsseg/ground_cost"}
GROUND_FRAME = "base_footprint"  # the rover frame of the ground map: x forward, y left, on the ground


def _need_ros(what: str) -> None:
    try:
        import mcap_ros2  # noqa: F401
    except ImportError as e:
        raise SourceError(f"{what} needs the optional ROS 2 recording support: pip install 'marsseg[ros]'") from e


def image_topics(path: Path) -> dict[str, str]:
    """Topic -> message type of every image topic in a recording."""
    from mcap.reader import make_reader

    with open(path, "rb") as f:
        summary = make_reader(f).get_summary()
    if summary is None:
        return {}
    return {c.topic: summary.schemas[c.schema_id].name for c in summary.channels.values()
            if c.schema_id in summary.schemas and summary.schemas[c.schema_id].name in (IMAGE[0], COMPRESSED[0])}


def read_frames(path: Path, topic: str | None) -> Iterator[Frame]:
    """The frames of one image topic, in log order, stamped with their recorded header time (the log time when
    the header has none). Checked now (file, topic), read lazily."""
    _need_ros(f"--source {path}")
    try:
        topics = image_topics(path)
    except Exception as e:  # the mcap library raises its own errors for a damaged file
        raise SourceError(f"{path}: not a readable MCAP recording ({type(e).__name__}: {e})") from e
    if topic is None and len(topics) == 1:
        topic = next(iter(topics))
    if topic not in topics:
        listed = ", ".join(f"{t} ({k.rsplit('/', 1)[-1]})" for t, k in sorted(topics.items())) or "none"
        raise SourceError(f"{path}: {'pass --topic; ' if topic is None else f'no image topic {topic!r}; '}"
                          f"image topics in it: {listed}")
    return _frames(path, topic)


def _frames(path: Path, topic: str) -> Iterator[Frame]:
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        messages = make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(topics=[topic])
        for i, (schema, _, message, msg) in enumerate(messages):
            stamp = msg.header.stamp
            t = stamp.sec + stamp.nanosec * 1e-9 if (stamp.sec or stamp.nanosec) else message.log_time * 1e-9
            try:
                image, error = decode_image(msg, schema.name), ""
            except ValueError as e:
                image, error = None, str(e)
            yield Frame(f"{path.stem}-{i:06d}", i, time.time(), image, error, recorded=t)


def decode_image(msg, kind: str) -> np.ndarray:
    """A ROS image message -> grayscale or BGR pixels; ValueError naming what is wrong with this one."""
    if kind == COMPRESSED[0]:
        image = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise ValueError(f"cannot decode {msg.format or 'compressed'} image")
        return image
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3, "mono16": 1}.get(msg.encoding)
    if channels is None:
        raise ValueError(f"image encoding {msg.encoding!r} not supported (mono8, rgb8, bgr8, mono16)")
    depth = 2 if msg.encoding == "mono16" else 1
    data = np.frombuffer(bytes(msg.data), np.uint8)
    if msg.step < msg.width * channels * depth or len(data) < msg.step * msg.height or not msg.height:
        raise ValueError(f"image of {msg.width}x{msg.height} {msg.encoding}: {len(data)} bytes, step {msg.step}")
    rows = data[: msg.step * msg.height].reshape(msg.height, msg.step)[:, : msg.width * channels * depth]
    if depth == 2:
        wide = rows.view(">u2" if msg.is_bigendian else "<u2")
        return (wide >> 8).astype(np.uint8)
    image = rows.reshape(msg.height, msg.width, channels) if channels == 3 else rows
    return np.ascontiguousarray(image[..., ::-1] if msg.encoding == "rgb8" else image)


def occupancy(cost: np.ndarray, table: CostTable) -> np.ndarray:
    """Ground costs -> OccupancyGrid values: finite costs scaled to 0-99 by the table's largest finite cost,
    lethal 100, unknown -1."""
    finite = [c for c in table.costs if math.isfinite(c)]
    top = max(finite) if finite and max(finite) > 0 else 1.0
    with np.errstate(invalid="ignore"):
        out = np.clip(np.rint(cost / top * 99), 0, 99)
    out = np.where(np.isinf(cost), 100, out)
    return np.where(np.isnan(cost), -1, out).astype(np.int8)


class McapPublisher:
    """`--mcap FILE`: per frame the class mask (mono8 class ids) and the overlay (rgb8) as `sensor_msgs/Image`,
    and the ground cost map as `nav_msgs/OccupancyGrid`, stamped with the frame's capture time. Written to a
    temporary file and renamed at close: a reader never sees half a recording."""

    def __init__(self, path: Path, lut: np.ndarray, table: CostTable) -> None:
        _need_ros(f"--mcap {path}")
        from mcap_ros2.writer import Writer

        self.path, self.lut, self.table = Path(path), lut, table
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.partial")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        self._writer = Writer(self._file)
        self._schemas = {k: self._writer.register_msgdef(*d) for k, d in (("image", IMAGE), ("grid", OCCUPANCY))}
        self._seq = 0

    def publish(self, frame: Frame, result: Result) -> None:
        ns = round(frame.stamp * 1e6) * 1000  # to the microsecond (a float holds no more)
        header = {"stamp": {"sec": ns // 1_000_000_000, "nanosec": ns % 1_000_000_000}, "frame_id": "camera"}
        mask = result.full_mask()
        rgb = overlay(result.gray, mask, self.lut)
        for topic, pixels, encoding in (("mask", mask, "mono8"), ("overlay", rgb, "rgb8")):
            h, w = pixels.shape[:2]
            self._write(topic, "image", ns, {"header": header, "height": h, "width": w, "encoding": encoding,
                                             "is_bigendian": 0, "step": w * (1 if pixels.ndim == 2 else 3),
                                             "data": np.ascontiguousarray(pixels).tobytes()})
        if result.ground is not None:
            g = result.ground
            values = occupancy(g.cost, self.table).T  # OccupancyGrid rows run along y, columns along x
            info = {"map_load_time": header["stamp"], "resolution": g.cell, "width": values.shape[1],
                    "height": values.shape[0], "origin": {"position": {"x": g.origin[0], "y": g.origin[1], "z": 0.0},
                                                          "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}}}
            self._write("ground", "grid", ns, {"header": {**header, "frame_id": GROUND_FRAME}, "info": info,
                                               "data": values.ravel().tolist()})
        self._seq += 1

    def _write(self, topic: str, schema: str, ns: int, message: dict) -> None:
        self._writer.write_message(TOPICS[topic], self._schemas[schema], message, log_time=ns, publish_time=ns,
                                   sequence=self._seq)

    def close(self) -> None:
        if self._file.closed:
            return
        self._writer.finish()
        self._file.close()
        os.replace(self._tmp, self.path)
