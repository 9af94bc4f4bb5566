"""`marsseg-listen`: print (and optionally save) the terrain maps and heartbeats arriving on a serial port.

Examples:
  marsseg-listen /dev/ttyUSB0 --baud 921600
  marsseg-listen /dev/pts/5 --json --save maps/
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import signal
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import serial
from marsseg.core.io import OutputError, writable_folder, write_bytes_atomic
from marsseg.edge import protocol as P
from marsseg.edge.cli import OneLineParser
from marsseg.edge.serial_link import Receiver

log = logging.getLogger("marsseg.listen")


def describe(msg: P.Message) -> dict:
    h = msg.header
    base = {"seq": h.seq, "timestamp_us": h.timestamp_us, "frame_id": h.frame_id}
    if isinstance(msg, P.HeartbeatMessage):
        d = asdict(msg)
        d.pop("header")
        d["model_id"] = msg.model_id.hex()
        return {"type": "heartbeat", **base, **d}
    rows, cols = msg.classes.shape
    hist = np.bincount(msg.classes.ravel(), minlength=msg.num_classes) / msg.classes.size
    return {"type": msg.KIND, **base, "rows": rows, "cols": cols, "cell": list(msg.cell), "origin": list(msg.origin),
            "encoding": P.ENCODING_NAMES[msg.encoding], "classes": msg.classes.tolist(),
            "cost": msg.cost.tolist(), "class_fractions": [round(float(x), 3) for x in hist],
            "lethal_cells": int((msg.cost == P.COST_LETHAL).sum())}


def human(d: dict) -> str:
    if d["type"] == "heartbeat":
        return (f"heartbeat seq={d['seq']} fps={d['fps']:.1f} frames={d['frames']} dropped={d['dropped']} "
                f"errors={d['errors']} maps sent/skipped={d['maps_sent']}/{d['maps_skipped']} "
                f"model={d['model_id']} up={d['uptime_s']}s")
    size = f"{d['cell'][0] / 1000:g} m" if d["type"] == "ground" else f"{d['cell'][0]}x{d['cell'][1]} px"
    return (f"{d['type']} seq={d['seq']} frame={d['frame_id']} {d['rows']}x{d['cols']} cells of {size} "
            f"({d['encoding']}) classes={d['class_fractions']} lethal={d['lethal_cells']}")


def save_grid(msg: P.GridMessage, out_dir: Path) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, classes=msg.classes, confidence=msg.confidence, cost=P.byte_to_cost(msg.cost),
                        cell=np.array(msg.cell), origin=np.array(msg.origin))
    write_bytes_atomic(out_dir / f"{msg.KIND}_{msg.header.frame_id:08d}_{msg.header.seq:08d}.npz", buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="marsseg-listen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", help="serial port or pyserial URL (e.g. /dev/ttyUSB0, loop://)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--json", action="store_true", help="JSON lines instead of human-readable lines")
    p.add_argument("--save", type=Path, help="save each grid as .npz in this folder")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0 = run until Ctrl-C)")
    p.add_argument("--idle-timeout", type=float, default=None, help="exit after this many silent seconds")
    a = p.parse_args(argv)
    if a.count < 0 or (a.idle_timeout is not None and not a.idle_timeout > 0):
        p.error(f"--count must be >= 0 and --idle-timeout > 0 seconds, got {a.count} and {a.idle_timeout}")
    if a.save:  # now, not at the first map
        try:
            writable_folder(a.save, f"--save {a.save}")
        except OutputError as e:
            p.error(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rx = Receiver(a.port, a.baud)
    except (serial.SerialException, OSError, ValueError) as e:
        print(f"marsseg-listen: error: cannot open {a.port}: {e}", file=sys.stderr)
        return 2
    log.info("listening on %s at %d baud", a.port, a.baud)  # opening the port flushed whatever came before
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    n = save_errors = 0
    try:
        for msg in rx.messages(stop, a.idle_timeout):
            d = describe(msg)
            print(json.dumps(d, allow_nan=False) if a.json else human(d), flush=True)
            if a.save and isinstance(msg, P.GridMessage):
                try:
                    save_grid(msg, a.save)
                except OSError as e:  # a full or read-only disk must not stop the maps being shown
                    save_errors += 1
                    if save_errors == 1 or save_errors % 100 == 0:
                        log.error("cannot save grids to %s (%s); %d not saved so far", a.save, e, save_errors)
            n += 1
            if a.count and n >= a.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        rx.close()
    s = rx.decoder.stats
    print(f"received {s.frames} messages, {s.crc_errors} corrupt, {s.seq_gaps} lost, {s.duplicates} duplicates, "
          f"{s.resyncs} resyncs, {s.bytes} bytes, {rx.reopens} reopens, {save_errors} not saved", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
