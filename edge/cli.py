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
import os
import sys
from importlib import resources
from pathlib import Path

from marsseg.core.interpreter import ModelError
from marsseg.core.io import writable_folder
from marsseg.edge.config import ConfigError, EdgeConfig, add_flags, flag, load_toml, validate
from marsseg.edge.sources import SourceError

log = logging.getLogger("marsseg.edge")


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
    p.add_argument("--config", type=Path, help="TOML file with any of the options below (and costs, lethal_fraction)")
    add_flags(p)
    a = p.parse_args(argv)
    try:
        values: dict = load_toml(a.config) if a.config else {}
    except ConfigError as e:
        p.error(str(e))
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
        p.error(f"config {a.config}: {e}".replace(flag(e.option), e.option) if e.option in from_file else str(e))


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
    source = open_source(cfg.camera, source_spec, cfg.topic)
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
    if cfg.mcap:
        from marsseg.edge.recording import McapPublisher

        publishers.append(McapPublisher(Path(cfg.mcap), lut, table))
    if cfg.queue:
        publishers = [Queued(p, cfg.queue, block=not cfg.drop) for p in publishers]
    segmenter = Segmenter(model, cfg.overlap, cfg.flip_average, cfg.exposure_floor)
    if segmenter.exposure_floor:
        log.info("frames darker than %.1f DN on average are brightened to it (exposure floor; --exposure-floor 0: off)",
                 segmenter.exposure_floor)
    runtime = Runtime(source, segmenter, publishers, table, cfg, watchdog)
    if cfg.serial:
        from marsseg.edge.serial_link import SerialPublisher

        publishers.append(SerialPublisher(cfg.serial, cfg.baud, table, meta.num_classes, cfg.map_rate,
                                          status=runtime.status, model_id=bytes.fromhex(meta.model_sha256[:16]),
                                          ground=cfg.serial_map == "ground"))
    if cfg.serve:
        from marsseg.edge.live import LiveView

        try:
            view = LiveView(cfg.serve, lut, meta.class_names, lambda: runtime.summary(meta.class_names))
        except OSError as e:
            raise ConfigError(f"--serve {cfg.serve}: cannot listen there ({e.strerror or e})") from e
        publishers.append(view)
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
        from marsseg.core.io import write_text_atomic

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
        writable_folder(out, f"--output {out}")
    for option, path in (("--video", cfg.video), ("--summary-json", cfg.summary_json), ("--mcap", cfg.mcap)):
        if not path:
            continue
        path = Path(path)
        if path.resolve() in files:
            raise ConfigError(f"{option} {path} is one of the input frames; pass another file name")
        if path.is_dir():
            raise ConfigError(f"{option} {path} is a folder; pass a file name")
        writable_folder(path.parent, f"{option} {path}: folder {path.parent}")


def print_summary(s: dict) -> None:
    out = sys.stderr  # stdout may carry JSON lines
    print(f"frames {s['frames']}  bad {s['bad_frames']}  dropped {s['dropped']}  brightened {s['lifted_frames']}  "
          f"fps {s['fps']:.2f}  "
          f"latency mean {s['latency_ms_mean']:.1f} ms  p95 {s['latency_ms_p95']:.1f} ms  capture to published mean "
          f"{s['capture_to_published_ms_mean']:.1f} ms  p95 {s['capture_to_published_ms_p95']:.1f} ms", file=out)
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
