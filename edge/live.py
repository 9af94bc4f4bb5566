"""`--serve HOST:PORT`: watch the runtime from a laptop's browser (standard library only).

  /              the page: the overlay stream, the cost map and the live figures
  /stream.mjpg   the overlay as MJPEG (multipart/x-mixed-replace), one part per new frame
  /frame.jpg     the newest overlay;  /costmap.png  the newest cost map (ground map if on, else the image grid)
  /stats.json    fps, per-stage ms, dropped and bad frames, class fractions, the newest frame's key

The publisher keeps only the newest result (the frame's one `detached` copy, shared with the queued outputs);
pictures are encoded on the viewers' threads, once per frame however many watch, so nobody watching costs
nothing, and a viewer that goes away ends its own thread. Listens on localhost unless a host is given.
"""

from __future__ import annotations

import json
import logging
import select
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np
from marsseg.edge.config import parse_address
from marsseg.edge.publishers import Result
from marsseg.edge.render import overlay
from marsseg.edge.sources import Frame

log = logging.getLogger(__name__)
BOUNDARY = "marssegframe"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>marsseg live</title>
<style>body{font-family:sans-serif;background:#111;color:#eee;margin:1em}img{max-width:48%;image-rendering:pixelated;
background:#222;margin-right:1%}td{padding:0 1em 0 0}</style></head>
<body><h3>marsseg — <span id="key">waiting for the first frame</span></h3>
<img id="stream" src="/stream.mjpg" alt="overlay"><img id="costmap" alt="cost map">
<p id="picture">stream: no picture yet</p>
<table id="stats"></table>
<script>
const canvas = document.createElement('canvas');
canvas.width = canvas.height = 8;
function picture() {  // the stream's size and a fingerprint of what it shows: it changes when the picture does
  const img = document.getElementById('stream');
  if (!img.naturalWidth) return;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(img, 0, 0, 8, 8);
  const px = ctx.getImageData(0, 0, 8, 8).data;
  let h = 0;
  for (let i = 0; i < px.length; i++) h = (h * 31 + px[i]) % 1000003;
  document.getElementById('picture').textContent =
    'stream: ' + img.naturalWidth + 'x' + img.naturalHeight + ', picture ' + h;
}
async function tick() {
  picture();
  try {
    const s = await (await fetch('/stats.json', {cache: 'no-store'})).json();
    document.getElementById('key').textContent = 'frame ' + s.frames + ' (' + (s.key || '-') + ')';
    const rows = [['fps', s.fps], ['dropped', s.dropped], ['bad frames', s.bad_frames]];
    for (const [k, v] of Object.entries(s.stage_ms_mean || {})) rows.push([k + ' ms', v]);
    for (const [k, v] of Object.entries(s.class_fractions || {})) rows.push([k, (100 * v).toFixed(1) + '%']);
    document.getElementById('stats').innerHTML =
      rows.map(r => '<tr><td>' + r[0] + '</td><td>' + r[1] + '</td></tr>').join('');
    if (s.frames) document.getElementById('costmap').src = '/costmap.png?frame=' + s.frames;
  } catch (e) {}
  setTimeout(tick, 1000);
}
tick();
</script></body></html>
"""


def cost_picture(cost: np.ndarray, scale: int) -> np.ndarray:
    """Cost cells as a BGR picture: green (cheap) to red (dear), dark red lethal, grey unknown."""
    finite = np.isfinite(cost)
    top = float(cost[finite].max()) if finite.any() and cost[finite].max() > 0 else 1.0
    t = np.where(finite, np.clip(cost / top, 0, 1), 0)
    bgr = np.stack([np.zeros_like(t), 255 * (1 - t), 255 * t], -1).astype(np.uint8)
    bgr[np.isinf(cost)] = (0, 0, 120)
    bgr[np.isnan(cost)] = (90, 90, 90)
    return cv2.resize(bgr, (cost.shape[1] * scale, cost.shape[0] * scale), interpolation=cv2.INTER_NEAREST)


class LiveView:
    """A publisher that serves the newest result over HTTP."""

    keeps_results = True

    def __init__(self, address: str, lut: np.ndarray, class_names: tuple[str, ...],
                 figures: Callable[[], dict]) -> None:
        """`figures`: the runtime's live summary (fps, stage times, drops), read when a viewer asks."""
        self.lut, self.class_names, self.figures = lut, class_names, figures
        self._cond = threading.Condition()
        self._latest: tuple[Frame, Result] | None = None
        self._count = 0  # frames published so far: a viewer waits for it to move
        self._cache: dict[tuple[str, int], bytes] = {}  # (picture, frame count) -> encoded bytes
        self._encoding = threading.Lock()  # one viewer encodes a frame's picture; the others wait and share it
        self._closed = False
        self.server = ThreadingHTTPServer(parse_address(address), _handler(self))
        self.server.daemon_threads = True
        host, port = self.server.server_address[:2]
        self.address = f"{host}:{port}"
        threading.Thread(target=self.server.serve_forever, name="live-view", daemon=True).start()
        log.info("live view on http://%s/", self.address)

    def publish(self, frame: Frame, result: Result) -> None:
        result = result.detached()  # pictures are made later, on viewers' threads: not from reused buffers
        with self._cond:
            self._latest, self._count = (frame, result), self._count + 1
            self._cache.clear()
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_newer(self, seen: int, timeout: float) -> int:
        """Block until a frame newer than `seen` is published (or the view closes); the newest count."""
        with self._cond:
            self._cond.wait_for(lambda: self._count > seen or self._closed, timeout)
            return self._count

    def picture(self, kind: str) -> tuple[bytes, int] | None:
        """The newest overlay (JPEG) or cost map (PNG) and its frame count, encoded once per frame."""
        with self._encoding:
            with self._cond:
                latest, count = self._latest, self._count
                cached = self._cache.get((kind, count))
            if latest is None:
                return None
            if cached is None:
                _, result = latest
                if kind == "jpg":
                    rgb = cv2.cvtColor(overlay(result.gray, result.full_mask(), self.lut), cv2.COLOR_RGB2BGR)
                    cached = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
                else:
                    cost = result.ground.cost if result.ground is not None else result.grid.cost
                    cached = cv2.imencode(".png", cost_picture(cost, max(1, 400 // max(cost.shape))))[1].tobytes()
                with self._cond:
                    if count == self._count:
                        self._cache[(kind, count)] = cached
            return cached, count

    def stats(self) -> dict:
        with self._cond:
            latest = self._latest
        out = dict(self.figures())
        if latest is not None:
            frame, result = latest
            hist = np.bincount(result.mask.ravel(), minlength=len(self.class_names)) / result.mask.size
            out["key"] = frame.key
            out["class_fractions"] = {n: round(float(v), 4) for n, v in zip(self.class_names, hist, strict=False)}
        return out


def _handler(view: LiveView) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "marsseg-live"

        def log_message(self, fmt: str, *args) -> None:  # requests at debug level, not on stderr
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: HTTPStatus, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
                elif path == "/stats.json":
                    self._send(HTTPStatus.OK, json.dumps(view.stats()).encode(), "application/json")
                elif path in ("/frame.jpg", "/costmap.png"):
                    pic = view.picture(path[-3:])
                    if pic is None:
                        self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"no frame yet\n", "text/plain")
                    else:
                        self._send(HTTPStatus.OK, pic[0], "image/jpeg" if path.endswith("jpg") else "image/png")
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(HTTPStatus.NOT_FOUND, f"no such page: {path}\n".encode(), "text/plain")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer went away: its thread ends here

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            seen = 0
            while not view.closed and not self._gone():
                count = view.wait_newer(seen, timeout=1.0)
                if count == seen:
                    continue
                pic = view.picture("jpg")
                if pic is None:
                    continue
                jpeg, seen = pic
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode() + jpeg + b"\r\n")
                self.wfile.flush()

        def _gone(self) -> bool:
            """The viewer closed its end (a readable socket with nothing to read): stop within a second, without
            waiting for a write to fail."""
            readable, _, _ = select.select([self.connection], [], [], 0)
            try:
                return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                return True

    return Handler
