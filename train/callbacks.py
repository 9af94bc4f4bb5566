"""The training loop's callbacks, in the order `fit.run_phase` lists them: weight average in, validation,
best-model checkpoint, history, learning-rate plateau, time budget, weight average out, resumable checkpoint."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import keras
import numpy as np
from marsseg.core.io import write_atomic
from marsseg.core.metrics import confusion_matrix, scores
from marsseg.train import checkpoint, cluster
from marsseg.train.scoring import predict_classes

log = logging.getLogger("marsseg.train.fit")
PLATEAU_STATE = ("wait", "best", "cooldown_counter")


class ValidationIoU(keras.callbacks.Callback):
    """Exact validation mean IoU (background ignored) via the shared metrics module, into the epoch logs.

    Must come first among the callbacks (after EmaSwap) so checkpointing, LR schedule and early stopping can monitor
    it. With `fake_quant` it scores the fake-quantized model, a stand-in for the int8 export the phase tunes for.
    It also scores the validation tiles through fixed random cameras (`val_miou_camera`): robustness is measured
    like accuracy in every phase. `val_score`, what checkpointing and early stopping follow, is the clean score,
    or with `camera_in_score` (phases that train through cameras) the mean of the two: chosen on clean tiles alone,
    a camera-augmented leg kept its least robust epoch (default-v19 first try: its first). The logs also carry
    the phase, the learning rate and the epoch's seconds, so every row of history.csv has the same columns.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, camera_x: np.ndarray, loss_fn, batch_size: int, phase: int,
                 camera_in_score: bool) -> None:
        super().__init__()
        self.x, self.y, self.camera_x, self.loss_fn = x, y, camera_x, loss_fn
        self.batch_size, self.phase, self.camera_in_score = batch_size, phase, camera_in_score
        self.started = time.monotonic()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        camera = scores(confusion_matrix(self.y, predict_classes(self.model, self.camera_x, self.batch_size)[0]))
        pred, probs = predict_classes(self.model, self.x, self.batch_size)
        s = scores(confusion_matrix(self.y, pred))
        losses = [float(keras.ops.convert_to_numpy(self.loss_fn(self.y[i : i + 256], probs[i : i + 256])))
                  for i in range(0, len(self.y), 256)]
        logs.update(val_loss=float(np.mean(losses)), val_miou=s.mean_iou, val_miou_camera=camera.mean_iou,
                    val_score=(s.mean_iou + camera.mean_iou) / 2 if self.camera_in_score else s.mean_iou,
                    val_acc=s.pixel_accuracy, phase=self.phase, seconds=time.monotonic() - self.started,
                    learning_rate=float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        logs.update({f"val_iou_{name}": v for name, v in s.per_class_iou.items()})
        log.info("phase %d epoch %d: loss %.4f val_loss %.4f val_miou %.4f camera %.4f | %s", self.phase + 1,
                 epoch + 1, logs.get("loss", float("nan")), logs["val_loss"], s.mean_iou, camera.mean_iou,
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
        for v in variables:  # own copies: on JAX the average's buffers are donated to the next training step
            v.assign(keras.ops.convert_to_numpy(v))

    def restorer(self) -> keras.callbacks.Callback:
        swap = self

        class Restore(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                for v, raw in zip(self.model.trainable_variables, swap.raw, strict=True):
                    v.assign(raw)

        return Restore()


class BestCheckpoint(keras.callbacks.Callback):
    """Save `model` atomically whenever val_score improves, so Ctrl-C or a crash keeps the best so far; stop
    the phase after `patience` epochs without improvement (the best model is what the run goes on with).

    `model` is the plain model even when training runs through its fake-quantized wrapper (quant.py).
    """

    def __init__(self, path: Path, model: keras.Model, patience: int) -> None:
        super().__init__()
        self.path, self.ship, self.patience = path, model, patience
        self.best, self.best_epoch, self.best_logs, self.stopped = -np.inf, -1, {}, False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        v = (logs or {}).get("val_score", -np.inf)
        if v > self.best:
            self.best, self.best_epoch, self.best_logs = float(v), epoch + 1, {k: float(x) for k, x in logs.items()}
            write_atomic(self.path, lambda p: self.ship.save(p))
        elif epoch + 1 - self.best_epoch >= self.patience:
            log.info("early stop: no better val_score for %d epochs (best %.4f, epoch %d)", self.patience,
                     self.best, self.best_epoch)
            self.model.stop_training = self.stopped = True


class ResumeCheckpoint(keras.callbacks.Callback):
    """The run's resumable checkpoint (checkpoint.py) after every epoch; last in the callback list, so it sees
    the raw weights (after EmaSwap's restorer) and every other callback's updated state."""

    def __init__(self, path: Path, phase: int, optimizer: keras.optimizers.Optimizer, best: BestCheckpoint,
                 plateau: keras.callbacks.ReduceLROnPlateau | None) -> None:
        super().__init__()
        self.path, self.phase, self.optimizer, self.best, self.plateau = path, phase, optimizer, best, plateau
        self.epochs_done = 0

    def state(self) -> dict:
        s = {"phase": self.phase, "epochs_done": self.epochs_done, "best": self.best.best,
             "best_epoch": self.best.best_epoch, "best_logs": self.best.best_logs, "stopped": self.best.stopped}
        if self.plateau is not None:
            s["plateau"] = {k: float(getattr(self.plateau, k)) for k in PLATEAU_STATE}
        return s

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epochs_done = epoch + 1
        checkpoint.save(self.path, self.model, self.optimizer, self.state())

    def resume(self, state: dict) -> None:
        self.epochs_done = state["epochs_done"]
        b = self.best
        b.best, b.best_epoch, b.best_logs, b.stopped = state["best"], state["best_epoch"], state["best_logs"], \
            state["stopped"]
        for k, v in state.get("plateau", {}).items():
            setattr(self.plateau, k, v)


class TimeBudget(keras.callbacks.Callback):
    """Pause the run at the end of the last epoch that fits a wall-clock budget (all phases together); the run
    stays resumable (`marsseg-train --resume`), so a long recipe runs as legs that each fit a session.

    An epoch is predicted to take as long as the previous one, so a run never overshoots its budget by
    most of an epoch (on CPU one epoch of a large model can be a third of the budget).
    """

    def __init__(self, minutes: float) -> None:
        super().__init__()
        self.deadline = time.monotonic() + minutes * 60
        self.epoch_started = time.monotonic()
        self.fired = False

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        if cluster.any_process(now + (now - self.epoch_started) > self.deadline):
            log.info("time budget: pausing after epoch %d (the next would end past the budget)", epoch + 1)
            self.model.stop_training = self.fired = True
