"""`marsseg-train`: train a segmentation model, every phase of its recipe, into one run folder.

Examples:
  marsseg-train --data ../shared/data/ai4mars-frames-128.npz          # the default recipe (all its phases)
  marsseg-train --config train/configs/default.json --epoch-scale 0.1  # every phase 10x shorter (a CPU)
  marsseg-train --set model.arch=dense-unet --set optim.loss=wce --set model.dense_widths=[16,32,64,128]
  marsseg-train --resume runs/default-v19          # continue an interrupted (or paused) run where it stopped
  KERAS_BACKEND=jax marsseg-train --coordinator node0:7777 --num-processes 2 --process-id 0   # one of 2 workers

Exit status: 0 finished, 2 bad input, 3 paused at its time budget (resume it), 130 interrupted (resume it).
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

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.json"
# the flags (each a config key; any other key is reachable with --set)
FLAGS = {"data": ("data.path", str), "out_dir": ("out_dir", str), "run_name": ("run_name", str),
         "epoch_scale": ("epoch_scale", float), "time_budget_min": ("time_budget_min", float),
         "batch_size": ("optim.batch_size", int), "limit_frames": ("data.limit_frames", int)}
LEG = ("data", "time_budget_min")  # what a resumed run may change: where its data is, how long this leg runs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="marsseg-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help=f"JSON config; flags override it (default: the recipe of the bundled "
                                               f"model, {DEFAULT_CONFIG.name})")
    for name, (key, conv) in FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=conv, default=None, help=f"sets {key}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override any config key, value as JSON (e.g. optim.learning_rate=1e-4, "
                        "model.fine_widths=[16,32,64])")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue this run from its last epoch (its own config.json; only --data and --time-budget-min "
                        "may be given)")
    job = p.add_argument_group("several processes (one data-parallel job on Keras' JAX backend; or TF_CONFIG)")
    job.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0, the chief")
    job.add_argument("--num-processes", type=int, metavar="N", help="processes in the job")
    job.add_argument("--process-id", type=int, metavar="K", help="this process, 0..N-1")
    return p.parse_args(argv)


def set_key(values: dict, key: str, value) -> None:
    """values[a][b] = value for key "a.b"."""
    *path, last = key.split(".")
    for part in path:
        values = values.setdefault(part, {})
        if not isinstance(values, dict):
            raise ValueError(f"--set {key}: {part} is not a section")
    values[last] = value


def read_config(path: Path) -> dict:
    """The JSON object of a config file; ValueError naming the file when it is missing, unreadable or not one."""
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON config ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config is a JSON object of keys and sections like train/configs/default.json, "
                         f"got a {type(values).__name__}")
    return values


def build_config(args: argparse.Namespace) -> TrainConfig:
    given = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    if args.resume:
        others = [f"--{k.replace('_', '-')}" for k in given if k not in LEG] + (["--set"] if args.set else [])
        if args.config or others:
            raise ValueError(f"--resume continues the run with its own config.json; drop {others or ['--config']}")
        from marsseg.train import cluster
        from marsseg.train.run import RunFolder

        cfg = RunFolder(cluster.own_folder(args.resume)).config()
        cfg.out_dir, cfg.run_name = str(args.resume.parent), args.resume.name
        if args.data:
            cfg.data.path = args.data
        if args.time_budget_min is not None:
            cfg.time_budget_min = args.time_budget_min
        return TrainConfig.from_dict(dataclasses.asdict(cfg))  # the leg's flags pass the same checks
    values = read_config(args.config or DEFAULT_CONFIG)
    for name, v in given.items():
        set_key(values, FLAGS[name][0], v)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            set_key(values, key, json.loads(raw))
        except json.JSONDecodeError:
            set_key(values, key, raw)
    return TrainConfig.from_dict(values)


def _stop_training(signum: int, _frame) -> None:
    raise KeyboardInterrupt  # fit() is interrupted; the last epoch's checkpoint is kept for --resume


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    # A job started in the background inherits SIGINT ignored; SIGTERM comes from service managers and `kill`.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_training)
    from marsseg.core.frames import DataError

    try:
        from marsseg.train import cluster

        cluster.join(cluster.describe(args.coordinator, args.num_processes, args.process_id))
        from marsseg.train.fit import Paused, train  # bound before any `except Paused` below is looked at

        cfg = build_config(args)

        run = train(cfg, resume=args.resume is not None)
    except (DataError, ValueError, FileNotFoundError) as e:
        print(f"marsseg-train: error: {e}", file=sys.stderr)
        return 2
    except Paused as e:
        print(f"marsseg-train: {e}; continue with: marsseg-train --resume {Path(cfg.out_dir) / cfg.run_name}",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"marsseg-train: interrupted; continue with: marsseg-train --resume {Path(cfg.out_dir) / cfg.run_name}",
              file=sys.stderr)
        return 130
    print(run.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
