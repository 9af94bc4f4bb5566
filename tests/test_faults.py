"""The operator's fault matrix: each case, its exit code, its one line, and what must be on disk afterwards.

Every case runs the real `marsseg-edge` console script. Afterwards the inputs are byte-identical, no temp
file is left, and outputs are complete or absent, never half-written or published as good when broken.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import TINY_MODEL, synthetic_frames

LOG_RECORD = re.compile(r"^(\d{4}-\d\d-\d\d [\d:,]+ (DEBUG|INFO|WARNING) |INFO: Created TensorFlow Lite)")
EDGE = shutil.which("marsseg-edge") or str(Path(sys.executable).parent / "marsseg-edge")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class Case:
    name: str
    args: Callable[[Path], list]  # from the case's folder (which holds `in/` with four frames)
    code: int
    line: str  # must appear in stderr
    setup: Callable[[Path], None] = lambda d: None
    after: Callable[[Path], None] = lambda d: None  # more checks on disk
    extra_inputs: list[str] = field(default_factory=list)  # paths (relative to the case folder) that must not change


def toml(text: str) -> Callable[[Path], None]:
    return lambda d: (d / "edge.toml").write_text(text)


def write_npz(name: str, **arrays) -> Callable[[Path], None]:
    return lambda d: np.savez(d / name, **arrays)


def truncated_npz(d: Path) -> None:
    frames, masks = synthetic_frames(n=3)
    np.savez(d / "clip.npz", frames=frames, masks=masks)
    data = (d / "clip.npz").read_bytes()
    (d / "clip.npz").write_bytes(data[: len(data) // 2])


def both_suffixes(d: Path) -> None:
    frame = cv2.imread(str(d / "in" / "shot_0.png"))
    cv2.imwrite(str(d / "in" / "shot_0.jpg"), frame)


def outputs_keyed_apart(d: Path) -> None:
    assert (d / "out" / "shot_0_png.png").is_file() and (d / "out" / "shot_0_jpg.png").is_file()
    assert len(list((d / "out").glob("*_overlay.png"))) == 5


def bad_metadata(doc) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        shutil.copy(TINY_MODEL, d / "m.tflite")
        (d / "m.json").write_text(json.dumps(doc(json.loads(TINY_MODEL.with_suffix(".json").read_text()))))
    return setup


def nameless_class(meta: dict) -> dict:
    del meta["classes"][2]["name"]
    return meta


def one_image_keyed(d: Path) -> None:
    assert sorted(p.name for p in (d / "out").iterdir()) == ["shot_1.png", "shot_1_overlay.png"]  # not a "video"


def one_big_frame(d: Path) -> None:
    cv2.imwrite(str(d / "in" / "shot_00_big.png"), np.full((3000, 4000), 120, np.uint8))


def big_frame_refused_rest_clean(d: Path) -> None:
    s = json.loads((d / "s.json").read_text())
    assert s["frames"] == 4 and s["bad_frames"] == 1
    assert not (d / "out" / "shot_00_big.png").exists()


CASES = [
    Case("output is the input folder", lambda d: [d / "in", d / "in"], 2, "holds input frames"),
    Case("output is a file", lambda d: [d / "in", d / "in" / "shot_0.png"], 2, "is a file, not a folder"),
    Case("output cannot be created", lambda d: [d / "in", d / "in" / "shot_0.png" / "out"], 2, "cannot be created"),
    Case("summary-json under a file", lambda d: [d / "in", "--summary-json", d / "in" / "shot_1.png" / "s.json"], 2,
         "--summary-json"),
    Case("one image in its own folder", lambda d: [d / "in" / "shot_1.png", d / "in"], 2, "holds input frames"),
    Case("one image", lambda d: [d / "in" / "shot_1.png", d / "out"], 0, "source: image", after=one_image_keyed),
    Case("video over an input", lambda d: [d / "in", d / "out", "--video", d / "in" / "shot_2.png"], 2,
         "is one of the input frames"),
    Case("two inputs share a stem", lambda d: [d / "in", d / "out"], 0, "share a stem", setup=both_suffixes,
         after=outputs_keyed_apart),
    Case("scale inf", lambda d: [d / "in", "--scale", "inf"], 2, "--scale must be in (0, 64], got inf"),
    Case("scale nan", lambda d: [d / "in", "--scale", "nan"], 2, "--scale must be in (0, 64], got nan"),
    Case("threads negative", lambda d: [d / "in", "--threads", "-3"], 2, "--threads must be in [0, 1024]"),
    Case("cell too big", lambda d: [d / "in", "--cell", "100000"], 2, "--cell must be in [1, 4096]"),
    Case("unknown flag", lambda d: [d / "in", "--bogus"], 2, "unrecognized arguments: --bogus"),
    Case("toml overlap text", lambda d: ["--config", d / "edge.toml", d / "in"], 2, "overlap must be float",
         setup=toml('overlap = "abc"\n')),
    Case("toml scale text", lambda d: ["--config", d / "edge.toml", d / "in"], 2, "scale must be float",
         setup=toml('scale = "0.5"\n')),
    Case("toml cell fraction", lambda d: ["--config", d / "edge.toml", d / "in"], 2, "cell must be int, got 2.5",
         setup=toml("cell = 2.5\n")),
    Case("toml source number", lambda d: ["--config", d / "edge.toml"], 2, "source must be str, got 5",
         setup=toml("source = 5\n")),
    Case("toml costs not a table", lambda d: ["--config", d / "edge.toml", d / "in"], 2, "costs must be dict",
         setup=toml("costs = 5\n")),
    Case("truncated npz", lambda d: ["--source", d / "clip.npz"], 2, "not a readable frames .npz",
         setup=truncated_npz, extra_inputs=["clip.npz"]),
    Case("masks shorter than frames", lambda d: ["--source", d / "clip.npz"], 2, "2 masks for 3 frames",
         setup=write_npz("clip.npz", frames=synthetic_frames(n=3)[0], masks=synthetic_frames(n=2)[1]),
         extra_inputs=["clip.npz"]),
    Case("metadata is a list", lambda d: [d / "in", "--model", d / "m.tflite"], 2, "m.json: model metadata must be a "
         "JSON object", setup=bad_metadata(lambda m: [])),
    Case("metadata is null", lambda d: [d / "in", "--model", d / "m.tflite"], 2, "m.json: model metadata must be a "
         "JSON object", setup=bad_metadata(lambda m: None)),
    Case("class without a name", lambda d: [d / "in", "--model", d / "m.tflite"], 2, "m.json: class 2 has no name",
         setup=bad_metadata(nameless_class)),
    Case("frame over the tile budget", lambda d: [d / "in", d / "out", "--max-tiles", "64", "--summary-json",
                                                  d / "s.json"], 0, "over the memory budget --max-tiles 64",
         setup=one_big_frame, after=big_frame_refused_rest_clean),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_fault(case: Case, tmp_path: Path) -> None:
    frames, _ = synthetic_frames(n=4)
    (tmp_path / "in").mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(tmp_path / "in" / f"shot_{i}.png"), f)
    case.setup(tmp_path)
    before = snapshot(tmp_path / "in")
    extra = {p: (tmp_path / p).read_bytes() for p in case.extra_inputs}
    uses_own_model = "--model" in map(str, case.args(tmp_path))
    cmd = [EDGE, *([] if uses_own_model else ["--model", TINY_MODEL]), *case.args(tmp_path)]
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=120)
    assert r.returncode == case.code, r.stderr
    assert case.line in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    if case.code == 2:  # one line, last, and nothing else but the ordinary log records (no usage dump)
        lines = [x for x in r.stderr.splitlines() if not LOG_RECORD.match(x)]
        assert lines == [r.stderr.splitlines()[-1]] and lines[0].startswith("marsseg-edge: error: "), r.stderr
    assert snapshot(tmp_path / "in") == before  # inputs byte-identical
    assert all((tmp_path / p).read_bytes() == b for p, b in extra.items())
    assert not [p for p in tmp_path.rglob(".*") if p.is_file()]  # no temp files left behind
    case.after(tmp_path)


def test_every_output_failing_exits_4_with_throttled_log(tmp_path: Path) -> None:
    """stdout closed by its reader: the only output fails on every frame. A few lines, then exit 4."""
    frames, _ = synthetic_frames(n=8)
    np.savez(tmp_path / "clip.npz", frames=np.tile(frames, (250, 1, 1)))  # 2,000 frames: far more than needed
    p = subprocess.Popen(list(map(str, [EDGE, "--model", TINY_MODEL, "--source", tmp_path / "clip.npz", "--jsonl",
                                        "--fail-after", "0.5", "--summary-json", tmp_path / "s.json"])),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    _, err = p.communicate(timeout=120)
    assert p.returncode == 4, err
    assert "every output has failed" in err and "Traceback" not in err
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["publish_errors"] >= 5 and s["frames"] < 2000
    assert err.count("JsonLinesPublisher failed") <= 3  # not one line per frame


def test_throttle_logs_first_then_counts(caplog) -> None:
    from marsseg.edge.runtime import Throttle

    now = [0.0]
    t = Throttle(interval=10, clock=lambda: now[0])
    with caplog.at_level("WARNING", logger="marsseg.edge"):
        for i in range(50):  # 25 frames/s for 2 s
            now[0] = i * 0.04
            t(30, "disk full", "publish failed on frame %d", i)
        now[0] = 12.0
        t(30, "disk full", "publish failed on frame %d", 50)
        t(30, "camera garbage", "skipping frame %d", 51)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["publish failed on frame 0", "publish failed on frame 50 (49 more like it in the last 12 s)",
                     "skipping frame 51"]


def test_damaged_video_stays_partial_and_raises(tmp_path: Path) -> None:
    from marsseg.edge.publishers import Result, VideoPublisher
    from marsseg.edge.render import palette
    from marsseg.edge.sources import Frame
    from marsseg.edge.terrain import TerrainGrid

    frames, masks = synthetic_frames(n=4)
    grid = TerrainGrid((16, 16), (0, 0), np.zeros((1, 1), np.uint8), np.zeros((1, 1, 5), np.float32),
                       np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32))

    def run(path: Path, damage: bool) -> None:
        v = VideoPublisher(path, palette([(i * 40, 0, 0) for i in range(5)]))
        for i in range(40):
            v.publish(Frame(str(i), i, 0.0, frames[i % 4]),
                      Result(frames[i % 4], masks[i % 4], np.ones((128, 128), np.float32), grid, 0.0))
        if damage:  # what a full disk does to the encoder's last writes: the index never lands
            v.writer.release()
            v.tmp.write_bytes(v.tmp.read_bytes()[:1000])
            v.writer = cv2.VideoWriter()  # released; close() releases it again
        v.close()

    run(tmp_path / "good.mp4", damage=False)
    assert int(cv2.VideoCapture(str(tmp_path / "good.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 40
    with pytest.raises(RuntimeError, match="damaged"):
        run(tmp_path / "bad.mp4", damage=True)
    assert not (tmp_path / "bad.mp4").exists() and (tmp_path / ".bad.partial.mp4").exists()


def test_watchdog_covers_a_frozen_stream_server(tmp_path: Path) -> None:
    """A network source whose server accepts and then says nothing: the watchdog fires while it opens."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # keep the connection open, send nothing
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        r = subprocess.run([EDGE, "--model", str(TINY_MODEL), "--source", f"http://127.0.0.1:{port}/stream.mjpg",
                            "--watchdog", "1"], capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        for c in held:
            c.close()
        server.close()
    assert r.returncode == 3, r.stderr
    assert "watchdog: no frame processed" in r.stderr


def test_frame_too_big_for_memory_leaves_later_masks_exact(tmp_path: Path) -> None:
    """Under a memory limit, a huge first frame fails inside the interpreter; the frames after it must come out
    exactly as in a clean run (the operator's case: they were garbage, 55-100% of pixels wrong, exit 0)."""
    import resource

    from marsseg.edge.cli import bundled

    with np.load(bundled("demo_clip.npz")) as z:
        clip = z["frames"][:3]
    for name in ("in", "clean"):
        (tmp_path / name).mkdir()
        for i, f in enumerate(clip):
            cv2.imwrite(str(tmp_path / name / f"b{i}.png"), f)
    cv2.imwrite(str(tmp_path / "in" / "a_big.png"), np.full((6000, 8000), 100, np.uint8))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, 3_000_000_000))

    r = subprocess.run([EDGE, tmp_path / "in", tmp_path / "out", "--max-tiles", "100000", "--summary-json",
                        tmp_path / "s.json"], capture_output=True, text=True, timeout=300, preexec_fn=limit)
    assert r.returncode == 0, r.stderr
    assert "skipping frame a_big" in r.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 3 and s["bad_frames"] == 1
    subprocess.run([EDGE, tmp_path / "clean", tmp_path / "ref"], capture_output=True, check=True, timeout=300)
    for i in range(3):
        assert (tmp_path / "out" / f"b{i}.png").read_bytes() == (tmp_path / "ref" / f"b{i}.png").read_bytes()
