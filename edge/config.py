"""The runtime's one configuration object, `EdgeConfig`: each option declared once, as a field that carries its
range, its help and its flag, so the command line and the TOML file (same names, `-` or `_`) can never differ.

Every value, from a flag or a file, is checked by type and range before anything starts (`validate`); a bad one
is one line naming the option (or the file and key), what it got and what it takes.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from marsseg.core.fields import conform
from marsseg.edge.ground import CameraGeometry, GroundLayout
from marsseg.edge.lens import Lens
from marsseg.edge.sources import FLIPS

MASK_SIZES = ("input", "model")  # saved class masks at the input's size, or at the scale the model ran at
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
GROUPS = ("input", "model", "outputs", "ground map", "operation")


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range; the message names the option and the fix."""

    def __init__(self, message: str, option: str = "") -> None:
        super().__init__(message)
        self.option = option


def _opt(default, help: str, group: str, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, hi_open: bool = False, hint: str = "", choices: tuple[str, ...] = (),
         flag: bool = True):
    """An option: its default, help and flag group; its allowed range (and what it means) or choices; `flag`
    False for TOML-only options. A boolean that defaults to True is switched off by `--no-NAME`."""
    return field(default=default, metadata={"help": help, "group": group, "range": (lo, hi, lo_open, hi_open),
                                            "hint": hint, "choices": choices, "flag": flag})


@dataclass
class EdgeConfig:
    """Every runtime option: flags, optionally layered over a TOML file (`--config`)."""

    camera: str | None = _opt(None, "camera index or /dev/videoN (live: newest frame wins)", "input")
    source: str | None = _opt(None, "image folder, glob, video file, frames .npz, URL, GStreamer pipeline, or 'demo' "
                                    "(the bundled clip)", "input")
    fov: float | None = _opt(None, "the camera's horizontal field of view in degrees: frames are resized to the "
                                   "model's ground scale (e.g. 45 for an MSL navcam)", "input", 0, 180, lo_open=True,
                             hi_open=True, hint="the camera's horizontal field of view in degrees")
    scale: float | None = _opt(None, "resize factor instead of --fov (0.125: 1024-px navcam frames)", "input", 0, 64,
                               lo_open=True, hint="a resize factor; 0.125 for 1024-px navcam frames")
    resize: str | None = _opt(None, "resize frames to WxH instead of --fov/--scale", "input")
    camera_info: str | None = _opt(None, "the camera's calibration, a ROS camera_info YAML or an OpenCV calibration "
                                         "file: frames are undistorted first, and its focal length gives the field "
                                         "of view (instead of --fov)", "input")
    input_flip: str = _opt("none", "turn or mirror frames as they arrive, for a camera mounted turned or read out "
                                   "mirrored: the model wants the sky up (docs/robustness.md). --fov is across the "
                                   "frame as delivered; outputs are as turned", "input", choices=tuple(FLIPS))
    bit_depth: int = _opt(16, "significant bits of 16-bit frames (16-bit PNG/TIFF, mono16): 12 for a camera that "
                              "puts 12-bit values in 16-bit words (default 16)", "input", 8, 16,
                          hint="the camera's bits per pixel")
    topic: str | None = _opt(None, "image topic of an .mcap --source (sensor_msgs/Image or CompressedImage; "
                                   "optional when the recording has one)", "input")
    model: str | None = _opt(None, "int8 .tflite with its .json metadata beside it (default: bundled)", "model")
    overlap: float = _opt(0.25, "tile overlap as a fraction of the tile (default 0.25)", "model", 0, 1, hi_open=True,
                          hint="a fraction of the tile")
    flip_average: bool = _opt(False, "also segment every tile mirrored and average the two answers: about a point of "
                                     "mean IoU (docs/robustness.md) for twice the invoke time", "model")
    exposure_floor: float | None = _opt(None, "lift frames darker than this mean grey level (DN) with a gamma curve "
                                              "before tiling, as auto-exposure would (default: the model's typical "
                                              "input brightness, from its metadata; 0 = off)", "model", 0, 255,
                                        hint="a mean grey level in DN; 0 = off")
    threads: int = _opt(0, "interpreter threads (default: all cores)", "model", 0, 1024)
    max_tiles: int = _opt(256, "memory budget in tiles per frame; larger frames are refused (default 256: ~400 MB, "
                               "a 1024x1024 frame at overlap 0.25 is 231)", "model", 1)
    output: str | None = _opt(None, "folder for NAME.png class masks and NAME_overlay.png", "outputs")
    overlay: bool = _opt(True, "with --output, also NAME_overlay.png", "outputs")
    mask_size: str = _opt("input", "saved class masks and overlays at the input's size (default) or at the scale "
                                   "the model ran at", "outputs", choices=MASK_SIZES)
    npz: bool = _opt(False, "also NAME_map.npz (mask, confidence, grid)", "outputs")
    png_level: int = _opt(1, "PNG zlib level 0-9 (default 1: fastest that compresses)", "outputs", 0, 9,
                          hint="zlib level: 0 stored, 1 fastest, 9 smallest")
    npz_compress: bool = _opt(True, "compressed NAME_map.npz (off: faster, larger)", "outputs")
    video: str | None = _opt(None, "overlay video file (.mp4)", "outputs")
    serve: str | None = _opt(None, "serve a live view (overlay stream, cost map, figures) at HOST:PORT or PORT "
                                   "(localhost)", "outputs")
    mcap: str | None = _opt(None, "ROS 2 recording (.mcap) of the class masks, overlays and ground cost map "
                                  "(needs the ros extra)", "outputs")
    jsonl: bool = _opt(False, "JSON line per frame on stdout", "outputs")
    serial: str | None = _opt(None, "serial port for terrain maps (e.g. /dev/ttyUSB0)", "outputs")
    baud: int = _opt(115200, "serial baud rate (default 115200)", "outputs", 300, 16_000_000)
    map_rate: float = _opt(2.0, "maps/s the serial link budget is planned for (default 2)", "outputs", 0, 1000,
                           lo_open=True)
    queue: int = _opt(8, "results each output (files, video, JSON lines) may fall behind, written by its own "
                         "thread (default 8; 0: in the frame loop)", "outputs", 0, 1024)
    drop: bool = _opt(False, "when an output is --queue results behind, drop its oldest (counted) instead of "
                             "waiting", "outputs")
    cell: int = _opt(16, "terrain grid cell size in pixels (default 16)", "outputs", 1, 4096)
    min_confidence: float = _opt(0.0, "cells whose mean confidence is below this get unknown cost (default 0 = off; "
                                      "0.7 suggested)", "outputs", 0, 1)
    costs: dict = field(default_factory=dict, metadata={  # class name -> cost ("inf" lethal, "nan" unknown)
        "help": "per-class traversal costs (TOML table)", "group": "outputs", "flag": False})
    lethal_fraction: float = _opt(0.05, "share of lethal pixels that makes a cell lethal (TOML)", "outputs", 0, 1,
                                  flag=False)
    camera_height: float | None = _opt(None, "camera height above the ground in metres: turns on the ground cost "
                                             "map (needs --fov and --camera-pitch)", "ground map", 0, 1000,
                                       lo_open=True)
    camera_pitch: float | None = _opt(None, "degrees the camera looks below the horizon", "ground map", 0, 90,
                                      lo_open=True, hint="degrees below the horizon")
    camera_roll: float = _opt(0.0, "degrees the camera is rolled about its optical axis (clockwise positive)",
                              "ground map", -90, 90, lo_open=True, hi_open=True)
    ground_cell: float = _opt(0.1, "ground map cell size in metres (default 0.1)", "ground map", 0, lo_open=True)
    ground_depth: float = _opt(10.0, "metres of ground ahead the map covers (default 10)", "ground map", 0,
                               lo_open=True)
    ground_width: float = _opt(10.0, "metres across the map covers, centred (default 10)", "ground map", 0,
                               lo_open=True)
    ground_near: float = _opt(0.0, "metres ahead of the camera where the map starts (default 0)", "ground map", 0)
    serial_map: str = _opt("image", "what --serial sends: the image grid (default) or the ground cost map "
                                    "(needs --camera-height)", "ground map", choices=("image", "ground"))
    log_interval: float = _opt(5.0, "seconds between stats log lines (default 5)", "operation", 0, lo_open=True)
    watchdog: float = _opt(0.0, "exit 3 if no frame is processed for this many seconds", "operation", 0)
    fail_after: float = _opt(60.0, "exit 4 when every output has failed for this many seconds (default 60; 0 = "
                                   "never)", "operation", 0)
    max_frames: int = _opt(0, "stop after this many frames", "operation", 0)
    summary: bool = _opt(False, "print a summary table at the end", "operation")
    summary_json: str | None = _opt(None, "write the final summary as JSON to this file", "operation")
    log_level: str = _opt("INFO", "log level (default INFO)", "operation", choices=LOG_LEVELS)

    def frame_size(self) -> tuple[int, int] | None:
        """--resize as (W, H), or None."""
        return parse_size(self.resize) if self.resize else None

    @functools.cached_property
    def lens(self) -> Lens | None:
        """The calibrated lens of --camera-info, read once; None without one."""
        if self.camera_info is None:
            return None
        try:
            return Lens.load(self.camera_info)
        except ValueError as e:
            raise ConfigError(str(e), "camera_info") from None

    def hfov(self) -> float | None:
        """Horizontal field of view of the frames the model's resize sees: undistorted ones' with --camera-info."""
        return self.lens.hfov if self.lens else self.fov

    def ground(self) -> tuple[CameraGeometry, GroundLayout] | None:
        """The camera geometry and grid of the ground cost map, or None when it is off (no --camera-height)."""
        if self.camera_height is None:
            return None
        if self.hfov() is None or self.camera_pitch is None:
            raise ConfigError("--camera-height (the ground cost map) needs --fov and --camera-pitch too (or "
                              "--camera-info for --fov)",
                              "camera_height")
        try:
            return (CameraGeometry(self.hfov(), self.camera_height, self.camera_pitch, self.camera_roll),
                    GroundLayout(self.ground_cell, self.ground_near, self.ground_depth, self.ground_width))
        except ValueError as e:
            raise ConfigError(f"ground map: {e}") from e


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option, in its group; unset flags stay None so the TOML file (or the default) shows through."""
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    for f in dataclasses.fields(EdgeConfig):
        meta = f.metadata
        if not meta.get("flag", True):
            continue
        g = groups[meta["group"]]
        if f.type == "bool":
            if f.default:
                g.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false", default=None,
                               help=f"turns off: {meta['help']}")
            else:
                g.add_argument(flag(f.name), action="store_true", default=None, help=meta["help"])
            continue
        kind = {"int": int, "float": float}.get(f.type.replace(" | None", ""), str)
        g.add_argument(flag(f.name), type=kind, choices=meta["choices"] or None, help=meta["help"])


def validate(cfg: EdgeConfig) -> EdgeConfig:
    """Check every value by type, range and choices, for flags and TOML alike, before anything starts."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        try:
            setattr(cfg, f.name, value := conform(value, f.type))
        except ValueError as e:
            raise ConfigError(f"{flag(f.name)} {e}", f.name) from None
        if value is None:
            continue
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise ConfigError(f"{flag(f.name)} must be one of {', '.join(f.metadata['choices'])}, got {value!r}",
                              f.name)
        lo, hi, lo_open, hi_open = f.metadata.get("range", (None, None, False, False))
        if lo is None and hi is None:
            continue
        below = lo is not None and (value < lo or (lo_open and value == lo))
        above = hi is not None and (value > hi or (hi_open and value == hi))
        if not math.isfinite(value) or below or above:
            span = f"{'(' if lo_open else '['}{lo if lo is not None else '-inf'}, " \
                   f"{hi if hi is not None else 'inf'}{')' if hi_open or hi is None else ']'}"
            hint = f" ({f.metadata['hint']})" if f.metadata.get("hint") else ""
            raise ConfigError(f"{flag(f.name)} must be in {span}, got {value!r}{hint}", f.name)
    for name, cost in cfg.costs.items():
        ok = (isinstance(cost, (int, float)) and not isinstance(cost, bool)) or cost in ("inf", "nan")
        if not ok:
            raise ConfigError(f"costs.{name} must be a number, \"inf\" (lethal) or \"nan\" (unknown), got {cost!r}",
                              "costs")
    if cfg.camera is not None and cfg.source is not None:
        raise ConfigError("give either --camera or --source, not both")
    if cfg.camera is None and cfg.source is None:
        raise ConfigError("no input: pass --camera N or --source PATH (or a positional input)")
    if cfg.camera_info is not None and cfg.fov is not None:
        raise ConfigError("give either --fov or --camera-info: the calibration's focal length gives the field of view",
                          "fov")
    cfg.hfov()  # reads --camera-info now: a bad calibration is one line before a model, source or folder is opened
    if cfg.topic is not None and not (cfg.source or "").endswith(".mcap"):
        raise ConfigError("--topic picks the image topic of a ROS 2 recording: give it with --source FILE.mcap",
                          "topic")
    cfg.frame_size()
    if cfg.serve is not None:
        try:
            parse_address(cfg.serve)
        except ValueError as e:
            raise ConfigError(str(e), "serve") from e
    if cfg.ground() is None and cfg.serial_map == "ground":
        raise ConfigError("--serial-map ground needs the ground cost map: give --camera-height (and --fov, "
                          "--camera-pitch)", "serial_map")
    return cfg


def load_toml(path: Path) -> dict:
    """The options a TOML file sets; an unreadable file or an unknown key is a ConfigError."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config {path}: {e}") from e
    known = {f.name for f in dataclasses.fields(EdgeConfig)}
    values = {k.replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(values) - known)
    if unknown:
        near = {k: difflib.get_close_matches(k, known, 1) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {m[0]!r}?" for k, m in near.items() if m)
        raise ConfigError(f"config {path}: unknown keys {unknown}" + (f" ({hints})" if hints else ""))
    return values


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0
    if not (0 < w <= 65536 and 0 < h <= 65536):
        raise ConfigError(f"--resize expects WxH like 640x480, got {text!r}")
    return w, h


def parse_address(text: str) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'PORT' (localhost) -> (host, port); ValueError naming the form."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"--serve expects HOST:PORT or PORT (e.g. 8080 or 0.0.0.0:8080), got {text!r}")
    return host or "127.0.0.1", number
