"""`make soak`: a long run of the real runtime with file and serial outputs (RSS sampled), and a decoder fuzz.

  python -m tools.soak [--frames 20000] [--fuzz 1000000] [--output bench/results]

Soak: `marsseg-edge` on N 128x128 frames (the bundled clip, repeated; output names cycle over 200 keys so the
folder stays bounded, as a "latest maps" folder would) with `--output` and `--serial` to a pty whose other end
a reader drains. The process's RSS is sampled every second; growth = median of the last tenth of the samples
minus the median of the second tenth (after warm-up). Goal: < 5 MB. (The frames file is held in memory by the
source: 20,000 frames are 328 MB of the RSS, constant.)
Fuzz: the serial decoder fed random byte strings, mutated valid frames and truncations; it must never raise.
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import random
import subprocess
import sys
import tempfile
import threading
import time
import tty
from pathlib import Path

import numpy as np
from marsseg.core.io import writable_folder
from marsseg.edge import protocol as P
from marsseg.edge.cli import bundled

from tools import one_line_errors
from tools.bench import REPO, base_result, say, write_result

KEYS = 200


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def soak(frames: int, work: Path) -> dict:
    with np.load(bundled("demo_clip.npz")) as z:
        clip = z["frames"]
    idx = np.arange(frames) % len(clip)
    np.savez(work / "soak.npz", frames=clip[idx], names=np.array([f"k{i % KEYS:03d}" for i in range(frames)]))
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    drained = [0]
    done = threading.Event()

    def drain() -> None:  # the flight computer's end: reads everything
        while not done.is_set():
            try:
                drained[0] += len(os.read(master, 65536))
            except OSError:
                return

    threading.Thread(target=drain, daemon=True).start()
    summary = work / "summary.json"
    cmd = [sys.executable, "-m", "marsseg.edge.cli", "--source", str(work / "soak.npz"), "--output", str(work / "out"),
           "--serial", os.ttyname(slave), "--baud", "921600", "--map-rate", "10", "--summary-json", str(summary),
           "--log-interval", "30", "--overlap", "0"]
    say(f"soak: {frames} frames with --output and --serial ({' '.join(cmd[3:])})")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while True:  # one RSS sample a second until the run exits (waiting on the process, not sleeping past it)
        r = rss_mb(proc.pid)
        if r is not None:
            samples.append((round(time.monotonic() - t0, 1), round(r, 1)))
            if len(samples) % 60 == 0:
                say(f"  {samples[-1][0]:.0f} s: RSS {r:.1f} MB")
        try:
            proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            continue
    err = proc.stderr.read()
    done.set()
    os.close(slave)
    os.close(master)
    if proc.returncode != 0:
        raise SystemExit(f"soak run failed (exit {proc.returncode}):\n{err[-2000:]}")
    s = json.loads(summary.read_text())
    rss = [r for _, r in samples]
    tenth = max(len(rss) // 10, 1)
    growth = float(np.median(rss[-tenth:]) - np.median(rss[tenth : 2 * tenth])) if len(rss) >= 20 else None
    out = {"frames": s["frames"], "bad_frames": s["bad_frames"], "publish_errors": s["publish_errors"],
           "fps": s["fps"], "serial": s.get("serial"), "bytes_drained": drained[0],
           "rss_mb_start": float(np.median(rss[tenth : 2 * tenth])) if rss else None,
           "rss_mb_end": float(np.median(rss[-tenth:])) if rss else None,  # the very last sample may be at exit
           "rss_mb_max": max(rss) if rss else None, "rss_growth_mb": None if growth is None else round(growth, 2),
           "rss_samples": samples[:: max(len(samples) // 200, 1)], "wall_s": round(time.monotonic() - t0, 1)}
    say(f"  {out['frames']} frames at {out['fps']:.1f} fps, RSS {out['rss_mb_start']} -> {out['rss_mb_end']} MB "
        f"(growth {out['rss_growth_mb']} MB, goal < 5), serial maps sent {(s.get('serial') or {}).get('maps_sent')}")
    return out


def fuzz(n: int, seed: int = 0) -> dict:
    """Random bytes, valid frames with flipped/inserted/deleted bytes, truncations and intact frames, into one
    decoder: it must never raise, and must keep decoding the intact frames."""
    rng = random.Random(seed)
    grid = np.arange(48, dtype=np.uint8).reshape(6, 8) % 5
    valid = [P.encode(P.GridMessage(P.Header(P.TYPE_GRID, i, i, i), (16, 16), (0, 0), 5, grid, grid, grid))
             for i in range(8)]
    valid += [P.encode(P.HeartbeatMessage(P.Header(P.TYPE_HEARTBEAT, i, 0, 0), 2.5, i, 0, 0, i, 0, i))
              for i in range(8)]
    d = P.StreamDecoder()
    raised = decoded = 0
    t0 = time.monotonic()
    for i in range(n):
        kind = i % 5
        if kind == 0:
            data = rng.randbytes(rng.randint(1, 300))
        elif kind == 4:  # an intact frame: the decoder must still find it among the garbage
            data = rng.choice(valid)
        else:
            data = bytearray(rng.choice(valid))
            if kind == 1:
                for _ in range(rng.randint(1, 4)):
                    data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == 2:
                pos = rng.randrange(len(data))
                data[pos:pos] = rng.randbytes(rng.randint(1, 8)) if rng.random() < 0.5 else b""
                del data[rng.randrange(len(data))]
            else:
                data = data[: rng.randrange(1, len(data))]
            data = bytes(data)
        try:
            decoded += len(d.feed(data))
        except Exception:  # counting any escape is the point of the fuzz
            raised += 1
        if (i + 1) % 250_000 == 0:
            say(f"  fuzz: {i + 1} inputs, {decoded} decoded, {raised} raised")
    return {"inputs": n, "intact_frames": n // 5, "raised": raised, "decoded": decoded,
            "duplicates_dropped": d.stats.duplicates, "rejected": d.stats.crc_errors, "resyncs": d.stats.resyncs,
            "seconds": round(time.monotonic() - t0, 1)}


@one_line_errors("soak")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--fuzz", type=int, default=1_000_000)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results")
    a = p.parse_args(argv)
    if a.frames < 1 or a.fuzz < 0:
        p.error(f"--frames takes 1 or more and --fuzz 0 or more, got {a.frames} and {a.fuzz}")
    writable_folder(a.output, "--output")
    result = base_result()
    with tempfile.TemporaryDirectory() as tmp:
        result["soak"] = soak(a.frames, Path(tmp))
    say(f"decoder fuzz: {a.fuzz} inputs")
    result["fuzz"] = fuzz(a.fuzz)
    say(f"  {result['fuzz']}")
    return write_result(result, a.output, "-soak")


if __name__ == "__main__":
    sys.exit(main())
