"""The training loop: data -> cleaning -> split -> tiles -> model -> run folder."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import keras
import numpy as np
from marsseg.edge.io import sha256_file, write_atomic, write_text_atomic
from marsseg.edge.metrics import confusion_matrix, scores
from marsseg.edge.spec import CLASS_NAMES, preprocess
from marsseg.train import checkpoint, prior, quant
from marsseg.train import data as D
from marsseg.train.config import TrainConfig
from marsseg.train.losses import make_loss, with_distillation
from marsseg.train.macs import count_macs
from marsseg.train.model import build_model

log = logging.getLogger(__name__)


class TrainTiles(keras.utils.PyDataset):
    """Fresh random crops, flips (and camera and exposure changes) every epoch, batched as (float input, int labels).

    With a `teacher` the targets are (labels, the teacher's probabilities on the same crop of the clean frame),
    packed as (B, H, W, 1 + C) for `losses.with_distillation`.
    """

    def __init__(self, ds: D.Dataset, cfg: TrainConfig, teacher: keras.Model | None = None,
                 first_epoch: int = 0) -> None:
        super().__init__()
        self.ds, self.cfg, self.teacher = ds, cfg, teacher
        self.next_epoch = first_epoch  # epoch k draws from its own generator (seed, k): a resumed run replays it
        self.epoch: tuple | None = None
        self._served = False

    def on_epoch_end(self) -> None:
        """New crops for the next epoch. Keras also calls this once before the first epoch: an epoch nobody has
        read yet is kept (with a teacher, making one costs a pass over every training tile)."""
        if self.epoch is None or self._served:
            self._make_epoch()

    def _make_epoch(self) -> None:
        self._served = False
        epoch_key = (self.cfg.training_seed, self.next_epoch)
        self.rng = np.random.default_rng(epoch_key)
        self.next_epoch += 1
        frames, masks = self.ds.frames, self.ds.masks
        if self.cfg.degrade > 0:
            frames, touched = D.degrade(frames, self.rng, self.cfg.degrade)
            if self.cfg.camera_labels < 1:  # these frames learn from the teacher alone (background = no label);
                draws = np.random.default_rng((*epoch_key, 1)).random(len(frames))  # own stream: same crops
                unlabelled = touched & (draws >= self.cfg.camera_labels)
                masks = np.where(unlabelled[:, None, None], 0, masks).astype(masks.dtype)
        if self.teacher is not None:  # the clean frame rides along as a second channel: same crop, same flip
            frames = np.stack([frames, self.ds.frames], axis=-1)
        x, y = D.random_tiles(D.Dataset(frames, masks, self.ds.names), self.rng, self.cfg.tiles_per_frame,
                              self.cfg.hflip, self.cfg.vflip)
        clean = None
        if self.teacher is not None:
            x, clean = x[..., 0], x[..., 1]
        if self.cfg.photometric > 0:
            x = D.photometric(x, self.rng, self.cfg.photometric)
        order = self.rng.permutation(len(x))
        soft = None
        if self.teacher is not None:
            log.info("teacher: answering %d clean tiles", len(x))
            soft = predict_classes(self.teacher, clean[order], self.cfg.batch_size)[1].astype(np.float16)
        self.epoch = (x[order], y[order], soft)  # one assignment: a prefetching reader never mixes two epochs

    def __len__(self) -> int:
        if self.epoch is None:
            self._make_epoch()
        return math.ceil(len(self.epoch[0]) / self.cfg.batch_size)

    def __getitem__(self, i: int):
        if self.epoch is None:
            self._make_epoch()
        self._served = True
        x, y, soft = self.epoch
        s = slice(i * self.cfg.batch_size, (i + 1) * self.cfg.batch_size)
        if soft is None:
            return preprocess(x[s]), y[s].astype(np.int32)
        return preprocess(x[s]), np.concatenate([y[s, ..., None], soft[s]], axis=-1, dtype=np.float32)


def predict_classes(model: keras.Model, x: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Argmax classes and the probabilities for uint8 tiles (N, H, W)."""
    probs = model.predict(preprocess(x), batch_size=batch_size, verbose=0)
    return probs.argmax(-1).astype(np.uint8), probs


class ValidationIoU(keras.callbacks.Callback):
    """Exact validation mean IoU (background ignored) via the shared metrics module, into the epoch logs.

    Must come first among the callbacks (after EmaSwap) so checkpointing, LR schedule and early stopping can monitor it.
    With `fake_quant` it scores the fake-quantized model, a stand-in for the int8 export the leg is tuning for.
    With `camera_x` (the validation tiles through fixed random cameras) it also logs `val_miou_camera`, and
    `val_score`, the mean of the two, which is then what checkpointing and early stopping follow: chosen on clean
    tiles alone, a camera-augmented leg kept its least robust epoch (default-v19 first try: its first).
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, loss_fn, batch_size: int,
                 camera_x: np.ndarray | None = None) -> None:
        super().__init__()
        self.x, self.y, self.loss_fn, self.batch_size, self.camera_x = x, y, loss_fn, batch_size, camera_x

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        if self.camera_x is not None:
            camera = scores(confusion_matrix(self.y, predict_classes(self.model, self.camera_x, self.batch_size)[0]))
            logs["val_miou_camera"] = camera.mean_iou
        pred, probs = predict_classes(self.model, self.x, self.batch_size)
        s = scores(confusion_matrix(self.y, pred))
        losses = [
            float(keras.ops.convert_to_numpy(self.loss_fn(self.y[i : i + 256], probs[i : i + 256])))
            for i in range(0, len(self.y), 256)
        ]
        logs["val_loss"] = float(np.mean(losses))
        logs["val_miou"] = s.mean_iou
        logs["val_score"] = (s.mean_iou + logs["val_miou_camera"]) / 2 if self.camera_x is not None else s.mean_iou
        logs["val_acc"] = s.pixel_accuracy
        for name, v in s.per_class_iou.items():
            logs[f"val_iou_{name}"] = v
        log.info("epoch %d: loss %.4f val_loss %.4f val_miou %.4f camera %.4f | %s", epoch + 1,
                 logs.get("loss", float("nan")), logs["val_loss"], s.mean_iou, logs.get("val_miou_camera", np.nan),
                 " ".join(f"{k} {v:.3f}" for k, v in s.per_class_iou.items()))


class EmaSwap(keras.callbacks.Callback):
    """Validate and checkpoint the optimizer's weight average (`Adam(use_ema=True)`), keep training raw weights.

    Val mIoU of the raw weights swings by several points between epochs even at a low learning rate; the
    average over the last few hundred steps is steadier and usually better. Put this callback first (it
    swaps the average in at epoch end) and `self.restorer()` last (it puts the raw weights back).
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[np.ndarray] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        variables = self.model.trainable_variables
        self.raw = [keras.ops.convert_to_numpy(v) for v in variables]
        self.model.optimizer.finalize_variable_values(variables)

    def restorer(self) -> keras.callbacks.Callback:
        swap = self

        class Restore(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                for v, raw in zip(self.model.trainable_variables, swap.raw, strict=True):
                    v.assign(raw)

        return Restore()


class BestCheckpoint(keras.callbacks.Callback):
    """Save `model` atomically whenever val_score improves, so Ctrl-C or a crash keeps the best so far; stop
    training after `patience` epochs without improvement (the best model is what the run goes on with).

    `model` is the plain model even when training runs through its fake-quantized wrapper (quant.py).
    """

    def __init__(self, path: Path, model: keras.Model, patience: int) -> None:
        super().__init__()
        self.path, self.ship, self.patience = path, model, patience
        self.best, self.best_epoch, self.best_logs = -np.inf, -1, {}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        v = (logs or {}).get("val_score", -np.inf)
        if v > self.best:
            self.best, self.best_epoch, self.best_logs = float(v), epoch + 1, {k: float(x) for k, x in logs.items()}
            write_atomic(self.path, lambda p: self.ship.save(p))
        elif epoch + 1 - self.best_epoch >= self.patience:
            log.info("early stop: no better val_score for %d epochs (best %.4f, epoch %d)", self.patience,
                     self.best, self.best_epoch)
            self.model.stop_training = True


class ResumeCheckpoint(keras.callbacks.Callback):
    """The run's resumable checkpoint (checkpoint.py) after every epoch; last in the callback list, so it sees
    the raw weights (after EmaSwap's restorer) and every other callback's updated state."""

    def __init__(self, path: Path, optimizer: keras.optimizers.Optimizer, best: BestCheckpoint,
                 plateau: keras.callbacks.ReduceLROnPlateau | None) -> None:
        super().__init__()
        self.path, self.optimizer, self.best, self.plateau = path, optimizer, best, plateau
        self.epochs_done = 0

    def state(self) -> dict:
        s = {"epochs_done": self.epochs_done, "best": self.best.best, "best_epoch": self.best.best_epoch,
             "best_logs": self.best.best_logs, "stopped": bool(self.model.stop_training)}
        if self.plateau is not None:
            s["plateau"] = {k: float(getattr(self.plateau, k)) for k in PLATEAU_STATE}
        return s

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_done = epoch + 1
        checkpoint.save(self.path, self.model, self.optimizer, self.state())

    def resume(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        self.best.best, self.best.best_epoch, self.best.best_logs = state["best"], state["best_epoch"], \
            state["best_logs"]
        for k, v in state.get("plateau", {}).items():
            setattr(self.plateau, k, v)


PLATEAU_STATE = ("wait", "best", "cooldown_counter")


class TimeBudget(keras.callbacks.Callback):
    """Stop cleanly at the end of the last epoch that fits a wall-clock budget (best weights are kept).

    An epoch is predicted to take as long as the previous one, so a run never overshoots its budget by
    most of an epoch (on CPU one epoch of a large model can be a third of the budget).
    """

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.deadline = time.monotonic() + minutes * 60
        self.epoch_started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        if now + (now - self.epoch_started) > self.deadline:
            log.info("time budget: stopping after epoch %d (the next would end past the budget)", epoch + 1)
            self.model.stop_training = True


def prepare_data(cfg: TrainConfig) -> dict:
    """Load, clean and split by frame; returns the pieces training and export both need."""
    path = D.resolve_data_path(cfg.data)
    ds = D.load_dataset(path)
    if cfg.limit_frames:
        ds = ds.subset(np.arange(min(cfg.limit_frames, len(ds))))
    ds, cleaning = D.clean(ds, cfg.outlier_min_repeats)
    train_idx, val_idx = D.split_by_frame(ds, cfg.val_fraction, cfg.seed)
    return {"path": path, "ds": ds, "cleaning": cleaning, "train": ds.subset(train_idx), "val": ds.subset(val_idx)}


def load_split(run_dir: Path) -> dict:
    return json.loads((run_dir / "split.json").read_text())


def validation_tiles_for_run(run_dir: Path, data: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The held-out validation tiles of a finished run (same frames, same fixed crops)."""
    cfg = TrainConfig.load(run_dir / "config.json")
    if data:
        cfg.data = data
    split = load_split(run_dir)
    ds = D.load_dataset(D.resolve_data_path(cfg.data))
    wanted = set(split["val_names"])
    idx = np.array([i for i, n in enumerate(ds.names) if n in wanted])
    if len(idx) != len(wanted):
        raise D.DataError(f"{len(wanted) - len(idx)} validation frames of run {run_dir} are missing from {cfg.data}")
    return D.fixed_tiles(ds.subset(idx))


@contextlib.contextmanager
def device_scope():
    """Mixed precision + MirroredStrategy on GPUs (TensorFlow backend); plain CPU otherwise."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            keras.mixed_precision.set_global_policy("mixed_float16")
            strategy = tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
            log.info("training on %d GPU(s), mixed precision", len(gpus))
            with strategy.scope():
                yield
            return
    log.info("training on CPU (%s backend)", keras.backend.backend())
    yield


def freeze_batch_norm(model: keras.Model) -> None:
    """Run every batch norm in inference mode on its current statistics, scale and offset.

    Batch statistics of degraded-camera batches are not those of the clean frames the model is also judged on:
    60 training-mode forward passes with `degrade` 0.5 (no weight update) took v17q's float model from 0.703 to
    0.617 validation mean IoU (0.687 with `degrade` 0), and fine-tuning legs never won those points back. Frozen,
    the layers normalise exactly as the exported model will, and the convolutions learn the robustness.
    """
    frozen = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in frozen:
        layer.trainable = False
    log.info("batch norm frozen in %d layers", len(frozen))


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.CosineDecay:
    """The optimizer's learning rate: a constant for `plateau` (a callback halves it), else a per-step schedule.

    `cosine` anneals once from `learning_rate` to `min_lr` over `epochs`, so a fine-tuning leg ends at a low rate
    instead of stopping on whichever noisy epoch the time budget lands on; `cosine_restarts` restarts every 10 epochs.
    `warmup_epochs` first ramps linearly up from `min_lr`: a continued leg starts with fresh Adam moments, and at
    the full rate its first epoch undid ~1.7 points of the checkpoint it started from (0.8 with a 1-epoch warm-up).
    """
    if cfg.schedule == "cosine":
        warm = round(steps_per_epoch * cfg.warmup_epochs)
        return keras.optimizers.schedules.CosineDecay(
            cfg.min_lr if warm else cfg.learning_rate, decay_steps=steps_per_epoch * cfg.epochs - warm,
            alpha=min(cfg.min_lr / cfg.learning_rate, 1.0), warmup_target=cfg.learning_rate if warm else None,
            warmup_steps=warm)
    if cfg.schedule == "cosine_restarts":
        return keras.optimizers.schedules.CosineDecayRestarts(cfg.learning_rate, first_decay_steps=steps_per_epoch * 10)
    return cfg.learning_rate


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train one model; returns the run folder. With `resume`, continue the run `cfg` names from its checkpoint.

    An interrupted run (SIGINT/SIGTERM) stops after saving nothing new: model.keras is its best epoch so far and
    `--resume` continues it; the logit adjustment and metrics.json come once, when the run finishes.
    """
    from marsseg.train import report

    keras.utils.set_random_seed(cfg.training_seed)
    run_name = cfg.run_name = cfg.run_name or f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out_dir) / run_name
    if resume and (run_dir / "metrics.json").exists():  # written once, when a run finishes
        raise checkpoint.ResumeError(f"run {run_dir} has finished; nothing to resume (start a new run with init_from)")
    saved = checkpoint.load(run_dir / checkpoint.NAME) if resume else None
    prep = prepare_data(cfg)
    train_ds, val_ds = prep["train"], prep["val"]
    val_x, val_y = D.fixed_tiles(val_ds)
    camera_x = None
    if cfg.degrade > 0:  # the same frames through random cameras of the training strength, fixed for the run
        cameras = D.degrade(val_ds.frames, np.random.default_rng(cfg.seed), cfg.degrade)[0]
        camera_x, camera_y = D.fixed_tiles(D.Dataset(cameras, val_ds.masks, val_ds.names))
        assert np.array_equal(camera_y, val_y)
    weights = D.class_weights(train_ds.masks, cfg.background_weight, cfg.rare_cap)
    log.info("frames: %d train / %d val (%d val tiles); class weights %s", len(train_ds), len(val_ds),
             len(val_x), np.round(weights, 3).tolist())

    if resume:
        if load_split(run_dir)["val_names"] != val_ds.names.tolist():
            raise checkpoint.ResumeError(f"the split rebuilt from {cfg.data} differs from {run_dir}/split.json")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
        write_text_atomic(run_dir / "split.json", json.dumps({
            "data": str(prep["path"]), "data_sha256": sha256_file(prep["path"]), "seed": cfg.seed,
            "val_fraction": cfg.val_fraction, "train_frames": len(train_ds), "val_frames": len(val_ds),
            "val_names": val_ds.names.tolist(), "cleaning": prep["cleaning"].as_dict(),
        }, indent=1))

    loss_fn = make_loss(cfg.loss, weights, cfg.focal_gamma, cfg.dice_weight)
    with device_scope():
        model = build_model(cfg)
        if cfg.init_from:
            start = keras.saving.load_model(cfg.init_from, compile=False)
            model.set_weights(start.get_weights())
            log.info("starting from the weights of %s", cfg.init_from)
        if cfg.freeze_bn:
            freeze_batch_norm(model)
        steps = math.ceil(len(train_ds) * cfg.tiles_per_frame / cfg.batch_size)
        optimizer = keras.optimizers.Adam(learning_rate_schedule(cfg, steps), use_ema=cfg.ema > 0,
                                          ema_momentum=cfg.ema or 0.99)
        net = quant.with_fake_quant(model) if cfg.fake_quant else model  # shares model's weights
        teacher = keras.saving.load_model(cfg.init_from, compile=False) if cfg.distill else None
        net.compile(optimizer=optimizer, loss=with_distillation(loss_fn, cfg.distill) if teacher else loss_fn)
        if saved:
            checkpoint.restore(net, optimizer, saved[0], saved[1], run_dir / checkpoint.NAME)
    macs = count_macs(model)
    log.info("%s: %d parameters, %.3f GMAC per tile", model.name, model.count_params(), macs / 1e9)

    ckpt = BestCheckpoint(run_dir / "model.keras", model, cfg.patience)
    plateau = keras.callbacks.ReduceLROnPlateau("val_score", mode="max", factor=0.5, patience=cfg.lr_patience,
                                                min_lr=cfg.min_lr, verbose=1) if cfg.schedule == "plateau" else None
    resumable = ResumeCheckpoint(run_dir / checkpoint.NAME, optimizer, ckpt, plateau)
    ema = [EmaSwap()] if cfg.ema > 0 else []
    callbacks = [
        *ema,
        ValidationIoU(val_x, val_y, loss_fn, cfg.batch_size, camera_x),
        ckpt,
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume),
        *([plateau] if plateau else []),
        *([TimeBudget(cfg.time_budget_min)] if cfg.time_budget_min > 0 else []),
        *[e.restorer() for e in ema],
        resumable,
    ]
    done = 0
    if saved:
        resumable.resume(saved[2])
        done = saved[2]["epochs_done"] if not saved[2].get("stopped") else cfg.epochs
        log.info("resuming %s after epoch %d (best %.4f at epoch %d)", run_dir, saved[2]["epochs_done"],
                 ckpt.best, ckpt.best_epoch)
    started = time.perf_counter()
    if done < cfg.epochs:
        try:
            net.fit(TrainTiles(train_ds, cfg, teacher, first_epoch=done), epochs=cfg.epochs, initial_epoch=done,
                    callbacks=callbacks, verbose=2)
        except KeyboardInterrupt:
            log.warning("interrupted: model.keras is the best epoch so far (%d); continue with "
                        "`marsseg-train --resume %s`", ckpt.best_epoch, run_dir)
            raise
    wall = time.perf_counter() - started
    if not (run_dir / "model.keras").exists():
        raise RuntimeError("training stopped before the first epoch finished; no model was saved")
    epochs_run = resumable.epochs_done

    best = keras.saving.load_model(run_dir / "model.keras", compile=False)
    before, adjusted = float(ckpt.best_logs.get("val_miou", np.nan)), {}
    if "val_miou_camera" in ckpt.best_logs:
        adjusted["val_miou_camera"] = round(float(ckpt.best_logs["val_miou_camera"]), 4)
    if cfg.fake_quant:  # epochs were scored through the fake-quant wrapper; the shipped float model scores itself
        adjusted["val_miou_fake_quant"] = round(before, 4)
        fq = before
        before = scores(confusion_matrix(val_y, predict_classes(best, val_x, cfg.batch_size)[0])).mean_iou
        log.info("best checkpoint: val mean IoU %.4f fake-quantized, %.4f float", fq, before)
    if cfg.logit_adjust:
        done_adjust = prior.adjust(best, D.fixed_tiles(train_ds), (val_x, val_y), prior.SAMPLE_TILES, cfg.seed,
                                   cfg.logit_adjust_scales)
        adjusted["logit_adjustment"] = {**done_adjust, "val_miou_before": round(before, 4), "made_by": "training"}
        write_atomic(run_dir / "model.keras", lambda p: best.save(p))
    metrics = {
        "run": run_name, "arch": cfg.arch, "loss": cfg.loss, **evaluate_run(best, val_x, val_y, cfg, run_dir),
        "best_epoch": ckpt.best_epoch, "epochs_run": epochs_run, "resumed": resume,
        "wall_seconds": round(wall, 1), "seconds_per_epoch": round(wall / max(epochs_run - done, 1), 1),
        "parameters": int(best.count_params()), "macs_per_tile": int(macs),
        "class_weights": weights.tolist(), "train_frames": len(train_ds), "val_frames": len(val_ds),
        "val_tiles": len(val_x), "backend": keras.backend.backend(), **adjusted,
    }
    write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    if (run_dir / "history.csv").exists():
        report.plot_curves(run_dir / "history.csv", run_dir / "curves.png")
    log.info("run %s: val mean IoU %.4f (%s) in %.0f s", run_dir, metrics["mean_iou"],
             ", ".join(f"{k} {v:.3f}" for k, v in metrics["per_class_iou"].items()), wall)
    return run_dir


def evaluate_run(model: keras.Model, val_x: np.ndarray, val_y: np.ndarray, cfg: TrainConfig, run_dir: Path) -> dict:
    """Validation scores + confusion matrix of the model a run ships, with its confusion and prediction plots."""
    from marsseg.train import report

    pred, _ = predict_classes(model, val_x, cfg.batch_size)
    cm = confusion_matrix(val_y, pred)
    report.plot_confusion(cm, run_dir / "confusion.png")
    k = min(cfg.predictions_to_plot, len(val_x))
    pick = np.random.default_rng(0).choice(len(val_x), size=k, replace=False)
    report.plot_predictions(val_x[pick], val_y[pick], pred[pick], run_dir / "predictions.png")
    return {**scores(cm).as_dict(), "confusion_matrix": cm.tolist(), "class_names": list(CLASS_NAMES)}
