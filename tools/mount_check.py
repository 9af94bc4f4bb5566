"""What a camera mounted turned or read out mirrored costs when nobody tells the runtime (`--input-flip`).

  python -m tools.mount_check ../shared/data/ai4mars-frames-128.npz --names edge/assets/val_names.json \\
      [--model M.tflite] [--output docs/robustness/mount-<run>.json]

Each of `--input-flip`'s turns and mirrors is applied to the frames and their masks alike (the scene as such a
camera delivers it) and the frames run on the edge path as they come; `--input-flip` with the camera's name turns
them back exactly (tests/test_edge_cli.py), so the upright figure is what the flag restores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from marsseg.core.io import write_text_atomic
from marsseg.edge.evaluate import evaluate
from marsseg.edge.sources import FLIPS

from tools import add_frames_args, frames_and_model, one_line_errors


@one_line_errors("mount_check")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mount_check", description=__doc__.split("\n\n")[0])
    add_frames_args(p)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--output", type=Path, help="JSON file for the figures")
    a = p.parse_args(argv)
    model, ds = frames_and_model(a)
    rows = {}
    for name, flip in FLIPS.items():
        frames, masks = (np.stack([flip(x) for x in xs]) for xs in (ds.frames, ds.masks))
        rows[name] = evaluate(model, frames, masks, a.overlap, thresholds=None)
        print(f"{name}: mean IoU {rows[name]['mean_iou']:.4f} | " +
              " ".join(f"{c} {v:.3f}" for c, v in rows[name]["per_class_iou"].items()), flush=True)
    if a.output:
        write_text_atomic(a.output, json.dumps({"run_id": model.meta.run_id, "model_sha256": model.meta.model_sha256,
                                                "frames": len(ds.frames), "overlap": a.overlap, "results": rows},
                                               indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
