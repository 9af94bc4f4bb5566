"""Do navcam-sized frames score like the model's native ones? The check behind `marsseg-edge --fov`.

Each validation frame (128², the model's ground scale) is brought to navcam size (1024², bicubic, as a camera
would deliver it) and brought back by the runtime's own resize (`sources.ground_scale` from `--fov`, then
`sources.to_gray`), then segmented on the edge path. For comparison, the same frames through the chain that made
the training frames (bilinear to 256², then 2×2 block mean), and the native frames.

  python -m tools.navcam_check ../shared/data/ai4mars-frames-128.npz --names edge/assets/val_names.json \\
      --output bench/results/navcam-check.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from marsseg.core.io import write_text_atomic
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.edge.pipeline import Segmenter
from marsseg.edge.sources import ground_scale, to_gray

from tools import add_frames_args, frames_and_model, one_line_errors


def runtime_resize(big: np.ndarray, fov: float, deg_per_pixel: float) -> np.ndarray:
    return to_gray(big, ground_scale(big.shape[1], fov, deg_per_pixel))


def training_chain(big: np.ndarray, fov: float, deg_per_pixel: float) -> np.ndarray:
    """1024 -> 256 bilinear, then 2x2 block mean: the resampling the AI4Mars frames file records."""
    h, w = big.shape
    quarter = cv2.resize(big, (w // 4, h // 4), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(quarter, (w // 8, h // 8), interpolation=cv2.INTER_AREA)


@one_line_errors("navcam_check")
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.navcam_check", description=__doc__.split("\n\n")[0])
    add_frames_args(p)
    p.add_argument("--size", type=int, default=1024, help="navcam frame size the frames are brought to")
    p.add_argument("--fov", type=float, default=45.0, help="the navcam's horizontal field of view")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--output", type=Path)
    a = p.parse_args(argv)
    model, ds = frames_and_model(a)
    seg = Segmenter(model, a.overlap)
    frames, masks = ds.frames, ds.masks
    n = model.meta.num_classes
    paths = {"native": None, f"navcam {a.size}² --fov {a.fov:g} (runtime resize)": runtime_resize,
             f"navcam {a.size}², training-file chain (bilinear /4, block mean /2)": training_chain}
    cms = {k: np.zeros((n, n), np.int64) for k in paths}
    for f, m in zip(frames, masks, strict=True):
        big = cv2.resize(f, (a.size, a.size), interpolation=cv2.INTER_CUBIC)
        for name, back in paths.items():
            work = f if back is None else back(big, a.fov, model.meta.deg_per_pixel)
            if work.shape != f.shape:
                raise ValueError(f"{name}: resized to {work.shape}, expected {f.shape}; check --fov and --size")
            cms[name] += confusion_matrix(m, seg(work).mask, n)
    out = {"model_sha256": model.meta.model_sha256, "run_id": model.meta.run_id, "frames": len(frames),
           "overlap": a.overlap, "results": {k: scores(cm, model.meta.class_names).as_dict() for k, cm in cms.items()}}
    for k, r in out["results"].items():
        print(f"{k}: mean IoU {r['mean_iou']:.4f} | " + " ".join(f"{c} {v:.3f}" for c, v in r["per_class_iou"].items()))
    if a.output:
        write_text_atomic(a.output, json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
