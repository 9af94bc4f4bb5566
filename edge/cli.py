"""`marsseg-edge`: stream frames, segment them with the int8 model, publish terrain maps.

Examples:
  marsseg-edge --camera 0 --serial /dev/ttyUSB0 --baud 921600
  marsseg-edge frames/ out/                       # positional input/output, like segNet
  marsseg-edge --source 'shots/*.png' --output out/ --npz --jsonl
  marsseg-edge --source drive.mp4 --video out/overlay.mp4 --fov 45
  marsseg-edge --source demo --output out/demo --summary
  marsseg-edge --config /etc/marsseg/edge.toml

Exit codes: 0 done or stopped by SIGINT/SIGTERM, 2 bad arguments/model/source, 3 watchdog.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from marsseg.edge.interpreter import ModelError
from marsseg.edge.sources import SourceError

log = logging.getLogger("marsseg.edge")


@dataclass
class EdgeConfig:
    """Every runtime option; from flags, optionally layered over a TOML file (same names, `-` or `_`)."""

    camera: str | None = None
    source: str | None = None
    output: str | None = None
    model: str | None = None  # default: the bundled model
    overlap: float = 0.25
    fov: float | None = None  # camera's horizontal field of view, degrees: resize to the model's ground scale
    scale: float | None = None  # overrides fov
    resize: str | None = None  # WxH; overrides scale and fov
    cell: int = 16
    overlay: bool = True
    npz: bool = False
    video: str | None = None
    jsonl: bool = False
    serial: str | None = None
    baud: int = 115200
    map_rate: float = 2.0
    threads: int = 0
    log_interval: float = 5.0
    watchdog: float = 0.0
    max_frames: int = 0
    summary: bool = False
    summary_json: str | None = None
    costs: dict = field(default_factory=dict)  # class name -> cost ("inf" lethal, "nan" unknown)
    lethal_fraction: float = 0.05
    min_confidence: float = 0.0  # cells less confident than this get unknown cost (0 = off)
    log_level: str = "INFO"


def bundled(name: str) -> Path:
    return Path(str(resources.files("marsseg.edge.assets").joinpath(name)))


def parse_args(argv: list[str] | None) -> EdgeConfig:
    p = argparse.ArgumentParser(prog="marsseg-edge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", help="same as --source")
    p.add_argument("output_pos", nargs="?", metavar="output", help="same as --output")
    p.add_argument("--config", type=Path, help="TOML file with any of the options below")
    src = p.add_argument_group("input")
    src.add_argument("--camera", help="camera index or /dev/videoN (live: newest frame wins)")
    src.add_argument("--source", help="image folder, glob, video file, frames .npz, URL, GStreamer pipeline, "
                                      "or 'demo' (the bundled clip)")
    src.add_argument("--fov", type=float, help="the camera's horizontal field of view in degrees: frames are resized "
                                               "to the model's ground scale (e.g. 45 for an MSL navcam)")
    src.add_argument("--scale", type=float, help="resize factor instead of --fov (0.125: 1024-px navcam frames)")
    src.add_argument("--resize", help="resize frames to WxH instead of --fov/--scale")
    m = p.add_argument_group("model")
    m.add_argument("--model", help="int8 .tflite with its .json metadata beside it (default: bundled)")
    m.add_argument("--overlap", type=float, help="tile overlap as a fraction of the tile (default 0.25)")
    m.add_argument("--threads", type=int, help="interpreter threads (default: all cores)")
    o = p.add_argument_group("outputs")
    o.add_argument("--output", help="folder for NAME.png class masks and NAME_overlay.png")
    o.add_argument("--no-overlay", dest="overlay", action="store_false", default=None)
    o.add_argument("--npz", action="store_true", default=None, help="also NAME_map.npz (mask, confidence, grid)")
    o.add_argument("--video", help="overlay video file (.mp4)")
    o.add_argument("--jsonl", action="store_true", default=None, help="JSON line per frame on stdout")
    o.add_argument("--serial", help="serial port for terrain maps (e.g. /dev/ttyUSB0)")
    o.add_argument("--baud", type=int)
    o.add_argument("--map-rate", type=float, help="maps/s the serial link budget is planned for (default 2)")
    o.add_argument("--cell", type=int, help="terrain grid cell size in pixels (default 16)")
    o.add_argument("--min-confidence", type=float,
                   help="cells whose mean confidence is below this get unknown cost (default 0 = off; 0.7 suggested)")
    r = p.add_argument_group("operation")
    r.add_argument("--log-interval", type=float, help="seconds between stats log lines (default 5)")
    r.add_argument("--watchdog", type=float, help="exit 3 if no frame is processed for this many seconds")
    r.add_argument("--max-frames", type=int, help="stop after this many frames")
    r.add_argument("--summary", action="store_true", default=None, help="print a summary table at the end")
    r.add_argument("--summary-json", help="write the final summary as JSON to this file")
    r.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    a = p.parse_args(argv)
    values: dict = {}
    if a.config:
        values.update(load_toml(p, a.config))
    flags = {k: v for k, v in vars(a).items() if v is not None and k not in ("config", "input", "output_pos")}
    values.update(flags)
    if a.input:
        values["source"] = a.input
    if a.output_pos:
        values["output"] = a.output_pos
    cfg = EdgeConfig(**values)
    if cfg.camera is not None and cfg.source is not None:
        p.error("give either --camera or --source, not both")
    if cfg.camera is None and cfg.source is None:
        p.error("no input: pass --camera N or --source PATH (or a positional input)")
    if not 0 <= cfg.overlap < 1:
        p.error(f"--overlap must be a fraction in [0, 1), got {cfg.overlap}")
    if (cfg.scale is not None and cfg.scale <= 0) or cfg.cell < 1 or cfg.baud < 300 or cfg.map_rate <= 0:
        p.error("--scale, --cell, --baud and --map-rate must be positive")
    if cfg.fov is not None and not 0 < cfg.fov < 180:
        p.error(f"--fov is the camera's horizontal field of view in degrees, in (0, 180); got {cfg.fov}")
    if not 0 <= cfg.min_confidence <= 1:
        p.error(f"--min-confidence must be in [0, 1], got {cfg.min_confidence}")
    if cfg.resize is not None:
        parse_size(p, cfg.resize)
    return cfg


def load_toml(p: argparse.ArgumentParser, path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        p.error(f"config {path}: {e}")
    known = {f.name for f in dataclasses.fields(EdgeConfig)}
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        p.error(f"config {path}: unknown keys {unknown}")
    return values


def parse_size(p: argparse.ArgumentParser | None, text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        if p is None:
            raise
        p.error(f"--resize expects WxH like 640x480, got {text!r}")
    return w, h


def build_and_run(cfg: EdgeConfig) -> int:
    from marsseg.edge.model import TileModel
    from marsseg.edge.pipeline import Segmenter
    from marsseg.edge.publishers import FilePublisher, JsonLinesPublisher, VideoPublisher
    from marsseg.edge.render import palette
    from marsseg.edge.runtime import Runtime
    from marsseg.edge.sources import open_source
    from marsseg.edge.terrain import CostTable

    model_path = Path(cfg.model) if cfg.model else bundled("model_int8.tflite")
    if not cfg.model and not model_path.is_file():
        raise ModelError("no bundled model in this install; pass --model PATH.tflite (see `make export`)")
    model = TileModel(model_path, num_threads=cfg.threads or None)
    meta = model.meta
    log.info("model %s (%s, run %s, tile %s, classes %s)", model_path.name, meta.model_sha256[:12], meta.run_id,
             tuple(meta.tile_shape), ", ".join(meta.class_names))
    costs = meta.costs()
    for name, value in cfg.costs.items():
        if name not in meta.class_names:
            raise ValueError(f"costs: unknown class {name!r}; classes are {', '.join(meta.class_names)}")
        costs[meta.class_names.index(name)] = float(value)
    table = CostTable(tuple(costs), cfg.lethal_fraction, min_confidence=cfg.min_confidence)
    source_spec = str(bundled("demo_clip.npz")) if cfg.source == "demo" else cfg.source
    source = open_source(cfg.camera, source_spec)
    lut = palette(meta.colours)
    publishers = []
    if cfg.output:
        publishers.append(FilePublisher(Path(cfg.output), lut, overlay=cfg.overlay, npz=cfg.npz))
    if cfg.video:
        publishers.append(VideoPublisher(Path(cfg.video), lut))
    if cfg.jsonl:
        publishers.append(JsonLinesPublisher(sys.stdout, meta.class_names))
    runtime = Runtime(source, Segmenter(model, cfg.overlap), publishers, table, cfg.cell, cfg.scale,
                      parse_size(None, cfg.resize) if cfg.resize else None, cfg.log_interval, cfg.watchdog,
                      cfg.max_frames, cfg.fov)
    if cfg.serial:
        from marsseg.edge.serial_link import SerialPublisher

        publishers.append(SerialPublisher(cfg.serial, cfg.baud, table, meta.num_classes, cfg.map_rate,
                                          status=runtime.status, model_id=bytes.fromhex(meta.model_sha256[:16])))
    rc = runtime.run()
    summary = runtime.summary(meta.class_names)
    if cfg.serial:
        summary["serial"] = dataclasses.asdict(publishers[-1].stats)
    log.info("summary: %s", json.dumps(summary))
    if cfg.summary_json:
        from marsseg.edge.io import write_text_atomic

        write_text_atomic(cfg.summary_json, json.dumps(summary, indent=2))
    if cfg.summary:
        print_summary(summary)
    return rc


def print_summary(s: dict) -> None:
    out = sys.stderr  # stdout may carry JSON lines
    print(f"frames {s['frames']}  bad {s['bad_frames']}  dropped {s['dropped']}  fps {s['fps']:.2f}  "
          f"latency mean {s['latency_ms_mean']:.1f} ms  p95 {s['latency_ms_p95']:.1f} ms", file=out)
    print("stages (ms/frame): " + "  ".join(f"{k} {v:.2f}" for k, v in s["stage_ms_mean"].items()), file=out)
    print("class histogram: " + "  ".join(f"{k} {v:.1%}" for k, v in s["class_histogram"].items()), file=out)
    if "mean_iou" in s:
        print(f"mean IoU vs the clip's masks (background ignored): {s['mean_iou']:.4f}  " +
              "  ".join(f"{k} {v:.3f}" for k, v in s["per_class_iou"].items()), file=out)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return build_and_run(cfg)
    except (ModelError, SourceError, ValueError) as e:
        print(f"marsseg-edge: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
