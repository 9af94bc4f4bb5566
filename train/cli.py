"""`marsseg-train`: train a segmentation model and write a run folder.

Examples:
  marsseg-train --data ../shared/data/ai4mars-frames-128.npz
  marsseg-train --config train/configs/default.json --epochs 5
  marsseg-train --arch dense-unet --loss wce --set dense_widths=[16,32,64,128]
  marsseg-train --resume runs/default-v19          # continue an interrupted run exactly where it stopped
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path

from marsseg.train.config import TrainConfig

FLAGS = ("data", "out_dir", "run_name", "arch", "loss", "epochs", "batch_size", "learning_rate",
         "background_weight", "limit_frames", "seed", "schedule")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="marsseg-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="JSON config (keys of TrainConfig); flags override it")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for name in FLAGS:
        conv = {"int": int, "float": float}.get(str(types[name]), str)
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=conv, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override any config key, value as JSON (e.g. fine_widths=[16,32,64])")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue this run from its last epoch (its own config.json; only --data may be given)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    if args.resume:
        others = [k for k in FLAGS if k != "data" and getattr(args, k) is not None] + (["set"] if args.set else [])
        if args.config or others:
            raise ValueError(f"--resume continues the run with its own config.json; drop {others or ['--config']}")
        if not (args.resume / "config.json").is_file():
            raise ValueError(f"{args.resume} is not a run folder (no config.json)")
        cfg = TrainConfig.load(args.resume / "config.json")
        cfg.out_dir, cfg.run_name = str(args.resume.parent), args.resume.name
        if args.data:
            cfg.data = args.data
        return cfg
    values = json.loads(args.config.read_text()) if args.config else {}
    values.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return TrainConfig.from_dict(values)


def _stop_training(signum: int, _frame) -> None:
    raise KeyboardInterrupt  # fit() is interrupted; the last epoch's checkpoint is kept for --resume


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # A job started in the background inherits SIGINT ignored; SIGTERM comes from service managers and `kill`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_training)
    from marsseg.train.data import DataError

    try:
        cfg = build_config(args)
        from marsseg.train.fit import train

        run_dir = train(cfg, resume=args.resume is not None)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"marsseg-train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"marsseg-train: interrupted; continue with: marsseg-train --resume {Path(cfg.out_dir) / cfg.run_name}",
              file=sys.stderr)
        return 130
    print(run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
