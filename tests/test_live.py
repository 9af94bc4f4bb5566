"""`--serve`: every endpoint over plain HTTP, bad requests, viewers that leave, and the page in a real browser."""

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading

import cv2
import numpy as np
import pytest
from marsseg.edge.config import ConfigError, EdgeConfig, parse_address, validate
from marsseg.edge.live import LiveView
from marsseg.edge.publishers import Result
from marsseg.edge.render import palette
from marsseg.edge.sources import Frame
from marsseg.edge.terrain import CostTable, terrain_grid

NAMES = ("background", "soil", "bedrock", "sand", "big_rock")
TABLE = CostTable((float("nan"), 1.0, 2.0, 5.0, float("inf")))
COLOURS = [(0, 0, 0), (194, 144, 88), (120, 120, 200), (230, 210, 120), (200, 60, 60)]


def result(k: int) -> tuple[Frame, Result]:
    """Frame k: a different mask every time (stripes that move)."""
    mask = ((np.arange(96)[None, :] + 7 * k) // 12 % 5 * np.ones((64, 1), int)).astype(np.uint8)
    conf = np.full(mask.shape, 0.9, np.float32)
    return Frame(f"f{k}", k, 0.0, mask * 40), Result(mask * 40, mask, conf, terrain_grid(mask, conf, (16, 16), TABLE))


@pytest.fixture
def view():
    v = LiveView("127.0.0.1:0", palette(COLOURS), NAMES, lambda: {"fps": 12.5, "frames": 3, "dropped": 1})
    yield v
    v.close()


def get(v: LiveView, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    c = http.client.HTTPConnection(*parse_address(v.address), timeout=10)
    c.request(method, path)
    r = c.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    c.close()
    return out


def test_every_endpoint(view):
    assert get(view, "/frame.jpg")[0] == 503 and get(view, "/costmap.png")[0] == 503  # nothing yet
    assert "key" not in json.loads(get(view, "/stats.json")[2])
    view.publish(*result(1))
    status, headers, page = get(view, "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"/stream.mjpg" in page
    status, headers, jpeg = get(view, "/frame.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (64, 96, 3)
    status, headers, png = get(view, "/costmap.png?frame=1")
    assert status == 200 and cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) is not None
    stats = json.loads(get(view, "/stats.json")[2])
    assert stats["fps"] == 12.5 and stats["key"] == "f1" and set(stats["class_fractions"]) == set(NAMES)
    assert abs(sum(stats["class_fractions"].values()) - 1) < 1e-3


def test_bad_requests(view):
    assert get(view, "/nope")[0] == 404
    assert get(view, "/", "POST")[0] == 501
    with socket.create_connection(parse_address(view.address), timeout=10) as s:
        s.sendall(b"GET / BOGUS/1.0\r\n\r\n")  # a malformed request line: an error page, then the server goes on
        reply = b"".join(iter(lambda: s.recv(4096), b""))
        assert b"Error code: 400" in reply
    assert get(view, "/stats.json")[0] == 200


def read_part(r) -> bytes:
    """One part of the MJPEG stream: boundary, headers, the JPEG."""
    assert r.fp.readline().strip() == b"--marssegframe"
    headers = {}
    while (line := r.fp.readline().strip()):
        k, _, v = line.decode().partition(":")
        headers[k.lower()] = v.strip()
    assert headers["content-type"] == "image/jpeg"
    body = r.fp.read(int(headers["content-length"]))
    r.fp.readline()
    return body


def test_the_stream_sends_each_new_frame_and_a_viewer_that_leaves_costs_nothing(view):
    view.publish(*result(1))
    before = set(threading.enumerate())
    c = http.client.HTTPConnection(*parse_address(view.address), timeout=10)
    c.request("GET", "/stream.mjpg")
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("multipart/x-mixed-replace")
    first = read_part(r)  # the newest frame at once
    view.publish(*result(2))
    second = read_part(r)  # then each new one
    assert first != second
    (handler,) = set(threading.enumerate()) - before
    r.close()  # the viewer goes away: its thread sees the closed socket and ends, no frame needed
    c.close()
    handler.join(timeout=10)
    assert not handler.is_alive()
    assert get(view, "/frame.jpg")[0] == 200  # the others are served as before


def test_several_viewers_get_the_same_frames(view):
    view.publish(*result(1))
    viewers = []
    for _ in range(3):
        c = http.client.HTTPConnection(*parse_address(view.address), timeout=10)
        c.request("GET", "/stream.mjpg")
        viewers.append((c, c.getresponse()))
    firsts = [read_part(r) for _, r in viewers]
    view.publish(*result(2))
    seconds = [read_part(r) for _, r in viewers]
    assert len(set(firsts)) == 1 and len(set(seconds)) == 1 and firsts[0] != seconds[0]  # encoded once per frame
    for c, r in viewers:
        r.close()
        c.close()


def test_serve_address_is_checked():
    assert parse_address("8080") == ("127.0.0.1", 8080) and parse_address("0.0.0.0:81") == ("0.0.0.0", 81)
    with pytest.raises(ConfigError, match="--serve expects HOST:PORT"):
        validate(EdgeConfig(source="demo", serve="localhost:http"))


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def dump_dom(url: str, tmp_path, ms: int) -> str:
    args = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}", f"--timeout={ms + 2000}",
            f"--virtual-time-budget={ms}", "--dump-dom", url]
    r = subprocess.run([chromium(), *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_the_page_in_a_real_browser(view, tmp_path):
    """Headless Chromium (the test setup installs it: `.ci/run`): the page loads, the stream shows a picture,
    the figures fill in; loaded again later, the picture and the frame count have changed."""
    if chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium not installed here (apt-get install chromium)")
    stop = threading.Event()

    def feed() -> None:  # frames keep coming, as from a camera
        k = 0
        while not stop.wait(0.1):
            k += 1
            view.publish(*result(k))

    threading.Thread(target=feed, daemon=True).start()
    try:
        pages = [dump_dom(f"http://{view.address}/", tmp_path / f"p{i}", 3000) for i in range(2)]
    finally:
        stop.set()
    pictures, keys = [], []
    for dom in pages:
        assert "<title>marsseg live</title>" in dom
        assert "<td>fps</td><td>12.5</td>" in dom and "<td>soil</td>" in dom  # the figures filled in
        picture = dom.split('id="picture">')[1].split("<")[0]
        assert picture.startswith("stream: 96x64, picture "), picture  # the stream shows a frame
        pictures.append(picture)
        keys.append(dom.split('id="key">')[1].split("<")[0])
    assert pictures[0] != pictures[1] and keys[0] != keys[1]


def test_a_taken_port_is_one_line(capsys):
    from marsseg.edge.cli import main

    from tests.conftest import TINY_MODEL

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["--source", "demo", "--model", str(TINY_MODEL), "--serve", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--serve 127.0.0.1:{port}: cannot listen there" in err and len(err.splitlines()) == 1
