"""`marsseg-edge`: stream frames, segment them with the int8 model, publish terrain maps.

Examples:
  marsseg-edge --camera 0 --serial /dev/ttyUSB0 --baud 921600
  marsseg-edge frames/ out/                       # positional input/output, like segNet
  marsseg-edge --source 'shots/*.png' --output out/ --npz --jsonl
  marsseg-edge --source drive.mp4 --video out/overlay.mp4 --fov 45
  marsseg-edge --source demo --output out/demo --summary
  marsseg-edge --config /etc/marsseg/edge.toml

Exit codes: 0 done or stopped by SIGINT/SIGTERM, 2 bad arguments/model/source/output, 3 watchdog,
4 every output failing for --fail-after seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from marsseg.edge.interpreter import ModelError
from marsseg.edge.publishers import MASK_SIZES
from marsseg.edge.sources import SourceError

log = logging.getLogger("marsseg.edge")


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range; the message names the option and the fix."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


def _opt(default, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False, hint: str = ""):
    """A config field with its allowed range (and what it means), checked by `validate` for flags and TOML."""
    return field(default=default, metadata={"range": (lo, hi, lo_open, hi_open), "hint": hint})


@dataclass
class EdgeConfig:
    """Every runtime option; from flags, optionally layered over a TOML file (same names, `-` or `_`)."""

    camera: str | None = None
    source: str | None = None
    output: str | None = None
    model: str | None = None  # default: the bundled model
    overlap: float = _opt(0.25, 0, 1, hi_open=True, hint="a fraction of the tile")
    fov: float | None = _opt(None, 0, 180, lo_open=True, hi_open=True,
                             hint="the camera's horizontal field of view in degrees")
    scale: float | None = _opt(None, 0, 64, lo_open=True, hint="a resize factor; 0.125 for 1024-px navcam frames")
    resize: str | None = None  # WxH; overrides scale and fov
    max_tiles: int = _opt(256, 1)  # memory budget: frames needing more tiles are refused (see --scale)
    cell: int = _opt(16, 1, 4096)
    overlay: bool = True
    mask_size: str = "input"  # saved masks at the input's size or the model's scale (MASK_SIZES)
    png_level: int = _opt(1, 0, 9, hint="zlib level: 0 stored, 1 fastest, 9 smallest")
    npz_compress: bool = True
    npz: bool = False
    video: str | None = None
    jsonl: bool = False
    serial: str | None = None
    baud: int = _opt(115200, 300, 16_000_000)
    map_rate: float = _opt(2.0, 0, 1000, lo_open=True)
    queue: int = _opt(8, 0, 1024)  # results each output may fall behind the frame loop (0: publish in the loop)
    drop: bool = False  # a full queue drops its oldest result (counted) instead of making the loop wait
    threads: int = _opt(0, 0, 1024)
    log_interval: float = _opt(5.0, 0, lo_open=True)
    watchdog: float = _opt(0.0, 0)
    fail_after: float = _opt(60.0, 0)  # exit 4 when every output has failed this long (0: never)
    max_frames: int = _opt(0, 0)
    summary: bool = False
    summary_json: str | None = None
    costs: dict = field(default_factory=dict)  # class name -> cost ("inf" lethal, "nan" unknown)
    lethal_fraction: float = _opt(0.05, 0, 1)
    min_confidence: float = _opt(0.0, 0, 1)  # cells less confident than this get unknown cost (0 = off)
    log_level: str = "INFO"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _type_ok(value, hint: str) -> bool:
    """`value` fits a field annotation (`float`, `int | None`, ...); bools are not numbers, ints are floats."""
    for t in hint.replace(" ", "").split("|"):
        if t == "None" and value is None:
            return True
        if t == "bool" and isinstance(value, bool):
            return True
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and (t == "float" or (t == "int" and float(value).is_integer())):
            return True
        if t == "str" and isinstance(value, str):
            return True
        if t == "dict" and isinstance(value, dict):
            return True
    return False


def validate(cfg: EdgeConfig) -> EdgeConfig:
    """Check every value by type and range, for flags and TOML alike, before anything starts.

    Raises ConfigError with one line naming the option, what it got and what it takes.
    """
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if not _type_ok(value, f.type):
            raise ConfigError(f"{_flag(f.name)} must be {f.type.replace(' | None', '')}, got {value!r}", f.name)
        if f.type.startswith("int") and isinstance(value, float):
            setattr(cfg, f.name, value := int(value))
        if value is None or "range" not in f.metadata:
            continue
        lo, hi, lo_open, hi_open = f.metadata["range"]
        below = lo is not None and (value < lo or (lo_open and value == lo))
        above = hi is not None and (value > hi or (hi_open and value == hi))
        if not math.isfinite(value) or below or above:
            span = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, " \
                   f"{hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"
            hint = f" ({f.metadata['hint']})" if f.metadata.get("hint") else ""
            raise ConfigError(f"{_flag(f.name)} must be in {span}, got {value!r}{hint}", f.name)
    for name, cost in cfg.costs.items():
        ok = (isinstance(cost, (int, float)) and not isinstance(cost, bool)) or cost in ("inf", "nan")
        if not ok:
            raise ConfigError(f"costs.{name} must be a number, \"inf\" (lethal) or \"nan\" (unknown), got {cost!r}",
                              "costs")
    if cfg.mask_size not in MASK_SIZES:
        raise ConfigError(f"--mask-size must be one of {', '.join(MASK_SIZES)}, got {cfg.mask_size!r}", "mask_size")
    if cfg.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    if cfg.camera is not None and cfg.source is not None:
        raise ConfigError("give either --camera or --source, not both")
    if cfg.camera is None and cfg.source is None:
        raise ConfigError("no input: pass --camera N or --source PATH (or a positional input)")
    if cfg.resize is not None:
        parse_size(cfg.resize)
    return cfg


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (not ten lines of usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bundled(name: str) -> Path:
    return Path(str(resources.files("marsseg.edge.assets").joinpath(name)))


def parse_args(argv: list[str] | None) -> EdgeConfig:
    p = OneLineParser(prog="marsseg-edge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    m.add_argument("--max-tiles", type=int, help="memory budget in tiles per frame; larger frames are refused "
                                                 "(default 256: ~400 MB, a 1024x1024 frame at overlap 0.25 is 231)")
    o = p.add_argument_group("outputs")
    o.add_argument("--output", help="folder for NAME.png class masks and NAME_overlay.png")
    o.add_argument("--no-overlay", dest="overlay", action="store_false", default=None)
    o.add_argument("--mask-size", choices=MASK_SIZES,
                   help="saved class masks at the input's size (default) or at the scale the model ran at")
    o.add_argument("--npz", action="store_true", default=None, help="also NAME_map.npz (mask, confidence, grid)")
    o.add_argument("--png-level", type=int, help="PNG zlib level 0-9 (default 1: fastest that compresses)")
    o.add_argument("--no-npz-compress", dest="npz_compress", action="store_false", default=None,
                   help="write NAME_map.npz uncompressed (faster, larger)")
    o.add_argument("--video", help="overlay video file (.mp4)")
    o.add_argument("--jsonl", action="store_true", default=None, help="JSON line per frame on stdout")
    o.add_argument("--serial", help="serial port for terrain maps (e.g. /dev/ttyUSB0)")
    o.add_argument("--baud", type=int)
    o.add_argument("--map-rate", type=float, help="maps/s the serial link budget is planned for (default 2)")
    o.add_argument("--queue", type=int, help="results each output (files, video, JSON lines) may fall behind, "
                                             "written by its own thread (default 8; 0: in the frame loop)")
    o.add_argument("--drop", action="store_true", default=None,
                   help="when an output is --queue results behind, drop its oldest (counted) instead of waiting")
    o.add_argument("--cell", type=int, help="terrain grid cell size in pixels (default 16)")
    o.add_argument("--min-confidence", type=float,
                   help="cells whose mean confidence is below this get unknown cost (default 0 = off; 0.7 suggested)")
    r = p.add_argument_group("operation")
    r.add_argument("--log-interval", type=float, help="seconds between stats log lines (default 5)")
    r.add_argument("--watchdog", type=float, help="exit 3 if no frame is processed for this many seconds")
    r.add_argument("--max-frames", type=int, help="stop after this many frames")
    r.add_argument("--summary", action="store_true", default=None, help="print a summary table at the end")
    r.add_argument("--summary-json", help="write the final summary as JSON to this file")
    r.add_argument("--fail-after", type=float, help="exit 4 when every output has failed for this many seconds "
                                                    "(default 60; 0 = never)")
    r.add_argument("--log-level", choices=LOG_LEVELS)
    a = p.parse_args(argv)
    values: dict = load_toml(p, a.config) if a.config else {}
    from_file = set(values)
    flags = {k: v for k, v in vars(a).items() if v is not None and k not in ("config", "input", "output_pos")}
    values.update(flags)
    from_file -= set(flags)
    if a.input:
        values["source"] = a.input
        from_file.discard("source")
    if a.output_pos:
        values["output"] = a.output_pos
        from_file.discard("output")
    try:
        return validate(EdgeConfig(**values))
    except ConfigError as e:
        p.error(f"config {a.config}: {e}".replace(_flag(e.option), e.option) if e.option in from_file else str(e))


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


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if not (0 < w <= 65536 and 0 < h <= 65536):
        raise ConfigError(f"--resize expects WxH like 640x480, got {text!r}")
    return w, h


def build_and_run(cfg: EdgeConfig) -> int:
    from marsseg.edge.model import TileModel
    from marsseg.edge.pipeline import Segmenter
    from marsseg.edge.publishers import FilePublisher, JsonLinesPublisher, Queued, VideoPublisher
    from marsseg.edge.render import palette
    from marsseg.edge.runtime import Runtime, Watchdog
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
    watchdog = Watchdog(cfg.watchdog)  # armed before the source opens: a frozen stream server hangs there
    source = open_source(cfg.camera, source_spec)
    check_outputs(cfg, getattr(source, "inputs", []))
    lut = palette(meta.colours)
    publishers = []
    if cfg.output:
        publishers.append(FilePublisher(Path(cfg.output), lut, cfg.overlay, cfg.npz, cfg.mask_size, cfg.png_level,
                                        cfg.npz_compress))
    if cfg.video:
        publishers.append(VideoPublisher(Path(cfg.video), lut))
    if cfg.jsonl:
        publishers.append(JsonLinesPublisher(sys.stdout, meta.class_names))
    if cfg.queue:
        publishers = [Queued(p, cfg.queue, block=not cfg.drop) for p in publishers]
    runtime = Runtime(source, Segmenter(model, cfg.overlap), publishers, table, cfg.cell, cfg.scale,
                      parse_size(cfg.resize) if cfg.resize else None, cfg.log_interval, watchdog,
                      cfg.max_frames, cfg.fov, cfg.max_tiles, cfg.fail_after)
    if cfg.serial:
        from marsseg.edge.serial_link import SerialPublisher

        publishers.append(SerialPublisher(cfg.serial, cfg.baud, table, meta.num_classes, cfg.map_rate,
                                          status=runtime.status, model_id=bytes.fromhex(meta.model_sha256[:16])))
    rc = runtime.run()
    summary = runtime.summary(meta.class_names)
    if cfg.serial:
        summary["serial"] = dataclasses.asdict(publishers[-1].stats)
    queued = {p.name: dataclasses.asdict(p.stats) for p in publishers if isinstance(p, Queued)}
    if queued:
        summary["outputs"] = queued
    log.info("summary: %s", json.dumps(summary))
    if cfg.summary:
        print_summary(summary)
    if cfg.summary_json:
        from marsseg.edge.io import write_text_atomic

        try:
            write_text_atomic(cfg.summary_json, json.dumps(summary, indent=2))
        except OSError as e:
            print(f"marsseg-edge: error: cannot write --summary-json {cfg.summary_json}: {e.strerror or e}",
                  file=sys.stderr)
            return rc or 2
    return rc


def check_outputs(cfg: EdgeConfig, inputs: list[Path]) -> None:
    """Refuse, before the first frame, outputs that would overwrite an input or cannot be written at all."""
    folders = {f.parent.resolve() for f in inputs}
    files = {f.resolve() for f in inputs}
    if cfg.output:
        out = Path(cfg.output)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--output {out} is a file, not a folder; pass a folder for the masks and overlays")
        if out.resolve() in folders:
            raise ConfigError(f"--output {out} holds input frames: its NAME.png masks would overwrite them; "
                              "pass another folder")
        _writable_folder(out, f"--output {out}")
    for flag, path in (("--video", cfg.video), ("--summary-json", cfg.summary_json)):
        if not path:
            continue
        path = Path(path)
        if path.resolve() in files:
            raise ConfigError(f"{flag} {path} is one of the input frames; pass another file name")
        if path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; pass a file name")
        _writable_folder(path.parent, f"{flag} {path}: folder {path.parent}")


def _writable_folder(folder: Path, what: str) -> None:
    """Create `folder` if needed; ConfigError naming `what` when that fails or this user cannot write there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what} cannot be created: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"{what} is not writable by this user; fix its permissions or pass another")


def print_summary(s: dict) -> None:
    out = sys.stderr  # stdout may carry JSON lines
    print(f"frames {s['frames']}  bad {s['bad_frames']}  dropped {s['dropped']}  fps {s['fps']:.2f}  "
          f"latency mean {s['latency_ms_mean']:.1f} ms  p95 {s['latency_ms_p95']:.1f} ms", file=out)
    print("stages (ms/frame): " + "  ".join(f"{k} {v:.2f}" for k, v in s["stage_ms_mean"].items()), file=out)
    print("class histogram: " + "  ".join(f"{k} {v:.1%}" for k, v in s["class_histogram"].items()), file=out)
    for name, q in s.get("outputs", {}).items():
        print(f"output {name}: published {q['published']}  dropped {q['dropped']}  errors {q['errors']}  "
              f"waited {q['blocked_s']:.2f} s  capture to done {q['latency_ms_mean']:.0f} ms mean, "
              f"{q['latency_ms_max']:.0f} ms max", file=out)
    if "mean_iou" in s:
        print(f"mean IoU vs the clip's masks (background ignored): {s['mean_iou']:.4f}  " +
              "  ".join(f"{k} {v:.3f}" for k, v in s["per_class_iou"].items()), file=out)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return build_and_run(cfg)
    except (ModelError, SourceError, ValueError, OSError) as e:
        print(f"marsseg-edge: error: {e}", file=sys.stderr)
        return 2
    finally:
        try:
            sys.stdout.flush()
        except OSError:  # stdout closed by its reader: already counted as a failing output
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lets the interpreter's own exit flush pass


if __name__ == "__main__":
    sys.exit(main())
