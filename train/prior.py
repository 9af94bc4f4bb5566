"""Logit adjustment: a per-class bias, chosen on training tiles, folded into the model's last convolution.

Class weights and the Dice term move the decision boundaries away from what maximises mean IoU (on the
default run bedrock was under-predicted and sand over-predicted). Adding log-prior offsets to the logits
before the softmax is the standard post-hoc correction (Menon et al. 2021, "Long-tail learning via logit
adjustment"). The offsets are searched on training tiles, then folded into the bias of the 1x1 conv that feeds the
softmax: the float model, the int8 export and the edge runtime all carry it with no runtime change.

Offsets fitted on tiles the model has trained on for many epochs can overshoot (default-v11: +1.2 on bedrock and
-0.6 on big rock lost rock recall on validation and int8 agreement). So the fitted vector may be scaled back: each
of `scales` (e.g. 0, 0.5, 1) times the offsets is scored on the validation tiles and the best is kept -- one
number chosen on validation, as early stopping chooses the epoch; the fit itself never sees validation.

    marsseg-adjust runs/<run> [--output runs/<run>a] [--scales 0 0.5 1]   # after training, or to re-choose
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
from marsseg.core.frames import DataError
from marsseg.core.io import write_atomic
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.core.spec import BACKGROUND, NUM_CLASSES, preprocess
from marsseg.train import quant
from marsseg.train.data import fixed_tiles
from marsseg.train.scoring import answer_batch

log = logging.getLogger(__name__)

GRID = np.round(np.arange(-2.0, 2.0001, 0.1), 2)  # log-odds offsets tried per class
SEARCH_STRIDE = 2  # every 2nd pixel each way: 4x less work, same optimum to ~0.1 point
SAMPLE_TILES = 2400  # training tiles the offsets are chosen on (~1 min of CPU inference)


def log_probs(model: keras.Model, tiles: np.ndarray, batch_size: int = 64, stride: int = SEARCH_STRIDE) -> np.ndarray:
    """Log softmax outputs (N, H/stride, W/stride, C) of uint8 tiles, subsampled to bound memory."""
    out = []
    for i in range(0, len(tiles), batch_size):
        p = answer_batch(model, preprocess(tiles[i : i + batch_size])).astype(np.float32, copy=False)
        out.append(np.log(np.maximum(p[:, ::stride, ::stride], 1e-7)))
    return np.concatenate(out)


def _miou(logp: np.ndarray, y: np.ndarray, bias: np.ndarray) -> float:
    return scores(confusion_matrix(y, (logp + bias).argmax(-1).astype(np.uint8))).mean_iou


def fit_logit_bias(logp: np.ndarray, y: np.ndarray, rounds: int = 3) -> tuple[np.ndarray, float, float]:
    """Coordinate ascent on mean IoU over per-class offsets in GRID; returns (bias, mIoU before, after).

    Only labelled pixels count (the metric ignores background truth); background's own offset stays 0.
    """
    keep = y > BACKGROUND
    logp, y = logp[keep], y[keep]
    bias = np.zeros(NUM_CLASSES, np.float32)
    before = best = _miou(logp, y, bias)
    for _ in range(rounds):
        improved = False
        for c in range(NUM_CLASSES):
            if c == BACKGROUND:
                continue
            for v in GRID:
                trial = bias.copy()
                trial[c] = v
                s = _miou(logp, y, trial)
                if s > best + 1e-6:
                    best, bias, improved = s, trial, True
        if not improved:
            break
    return bias, before, best


def fold_logit_bias(model: keras.Model, bias: np.ndarray) -> None:
    """Add `bias` to the bias of the convolution feeding the final softmax layer `probs`, in place."""
    feeds = quant.layer_inputs(model).get("probs", [])
    conv = model.get_layer(feeds[0]) if len(feeds) == 1 else None
    if not isinstance(conv, keras.layers.Conv2D) or not conv.use_bias or conv.filters != len(bias):
        raise ValueError(f"expected a biased Conv2D with {len(bias)} filters before 'probs', got {feeds}")
    conv.bias.assign(keras.ops.convert_to_numpy(conv.bias) + bias.astype(np.float32))


def choose_scale(logp: np.ndarray, y: np.ndarray, bias: np.ndarray, scales: tuple[float, ...]) -> dict[float, float]:
    """Mean IoU of `logp + s * bias` for each scale s (labelled pixels only), in the order given."""
    keep = y > BACKGROUND
    logp, y = logp[keep], y[keep]  # masked once, not once per scale (the validation array is ~100 MB)
    return {float(s): _miou(logp, y, np.float32(s) * bias) for s in scales}


def adjust(model: keras.Model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
           sample: int, seed: int, scales: tuple[float, ...] = (1.0,)) -> dict:
    """Fit the offsets on `sample` training tiles, scale them by the best of `scales` on the validation tiles
    (skipped for the single scale 1), fold them into `model`; returns what was done."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(train[0]), size=min(sample, len(train[0])), replace=False))
    logp = log_probs(model, train[0][pick])
    fitted, before, after = fit_logit_bias(logp, train[1][pick][:, ::SEARCH_STRIDE, ::SEARCH_STRIDE])
    log.info("logit offsets %s: training-tile mIoU %.4f -> %.4f", np.round(fitted, 2).tolist(), before, after)
    done = {"fitted_bias": [round(float(b), 2) for b in fitted], "train_tiles": len(pick),
            "train_miou_before": round(before, 4), "train_miou_after": round(after, 4), "scales": list(scales)}
    scale = 1.0
    if tuple(scales) != (1.0,):
        by_scale = choose_scale(log_probs(model, val[0]), val[1][:, ::SEARCH_STRIDE, ::SEARCH_STRIDE], fitted, scales)
        scale = max(by_scale, key=by_scale.get)
        log.info("validation mIoU by scale of the offsets %s: keeping %g",
                 {k: round(v, 4) for k, v in by_scale.items()}, scale)
        done["val_miou_by_scale"] = {f"{k:g}": round(v, 4) for k, v in by_scale.items()}
    bias = np.float32(scale) * fitted
    fold_logit_bias(model, bias)
    # 4 decimals: exact enough to take out again; + 0.0 turns the -0.0 of scale 0 × a negative offset into 0.0
    return {"bias": [round(float(b), 4) + 0.0 for b in bias], "scale": scale, **done}


def adjust_run(run_dir: Path, data: str | None = None, sample: int = SAMPLE_TILES, output: Path | None = None,
               scales: tuple[float, ...] | None = None) -> dict:
    """Adjust a finished run's model.keras and refresh its metrics.json and plots: in place, or in a copy at `output`.

    A copy leaves the original run intact, e.g. as the `init_from` of a later leg. On a run that is already
    adjusted the earlier offsets are taken out first, so the choice is made again from the model as trained.
    `scales` defaults to the run's `logit_adjust_scales`.
    """
    from marsseg.train import data as D
    from marsseg.train.run import RunFolder
    from marsseg.train.scoring import evaluate_run

    run = RunFolder(run_dir)
    metrics = run.metrics()
    earlier = metrics.get("logit_adjustment")
    if output is not None and output.exists():
        raise ValueError(f"--output {output} exists; name a new folder")
    cfg = run.config()
    d = cfg.data
    prep = D.prepare(d, data)
    if prep.val.names.tolist() != run.split()["val_names"]:
        raise ValueError(f"the split rebuilt from {prep.path} differs from {run.split_path}; pass the run's data")
    model = keras.saving.load_model(run.model, compile=False)
    if earlier:
        fold_logit_bias(model, -np.asarray(earlier["bias"], np.float32))
        log.info("took out the earlier offsets %s", earlier["bias"])
    val_x, val_y = fixed_tiles(prep.val)
    done = adjust(model, fixed_tiles(prep.train), (val_x, val_y), sample, d.seed, tuple(scales or cfg.adjust.scales))
    done.update(val_miou_before=earlier["val_miou_before"] if earlier else round(metrics["mean_iou"], 4),
                made_by="marsseg-adjust")
    if output is not None:  # copied only now, so a failure above leaves no half-made folder behind
        # export/ and eval/ describe the unadjusted model, so they stay behind
        shutil.copytree(run.path, output, ignore=shutil.ignore_patterns("export", "eval"))
        run = RunFolder(output)
    metrics.update(evaluate_run(model, val_x, val_y, run.path, plotted=cfg.predictions_to_plot),
                   logit_adjustment=done)
    write_atomic(run.model, lambda p: model.save(p))
    run.write_metrics(metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="marsseg-adjust", description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a finished run folder (model.keras, config.json, split.json, metrics.json)")
    p.add_argument("--data", help="frames file, if not the one recorded in the run's config")
    p.add_argument("--sample", type=int, default=SAMPLE_TILES, help="training tiles to choose the offsets on")
    p.add_argument("--output", type=Path, help="adjust a copy of the run in this new folder (default: in place)")
    p.add_argument("--scales", type=float, nargs="+",
                   help="multiples of the fitted offsets scored on validation, best kept (default: the run's config)")
    args = p.parse_args(argv)
    try:
        m = adjust_run(args.run, args.data, args.sample, args.output, args.scales)
    except (DataError, ValueError, FileNotFoundError) as e:  # RunError is a ValueError
        print(f"marsseg-adjust: error: {e}", file=sys.stderr)
        return 2
    a = m["logit_adjustment"]
    print(f"{args.output or args.run}: bias {a['bias']} (scale {a['scale']:g} of {a['fitted_bias']}); "
          f"val mean IoU {a['val_miou_before']:.4f} -> {m['mean_iou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
