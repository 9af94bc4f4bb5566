"""The training loop: data -> cleaning -> split -> every phase of the recipe -> adjustment -> run folder."""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
from marsseg.core.io import sha256_file, write_atomic
from marsseg.core.spec import preprocess
from marsseg.train import checkpoint, cluster, prior, quant, widen
from marsseg.train import data as D
from marsseg.train.callbacks import BestCheckpoint, EmaSwap, ResumeCheckpoint, TimeBudget, ValidationIoU
from marsseg.train.config import Phase, TrainConfig
from marsseg.train.losses import make_loss, with_distillation
from marsseg.train.macs import count_macs
from marsseg.train.model import build_model
from marsseg.train.run import RunError, RunFolder
from marsseg.train.scoring import data_parallel_devices, evaluate_run, mean_iou, predict_classes

log = logging.getLogger(__name__)


class Paused(Exception):
    """The time budget ran out between two epochs; the run is resumable from its checkpoint."""


class TrainTiles(keras.utils.PyDataset):
    """Fresh random crops, flips (and camera and exposure changes) every epoch, batched as (float input, int labels).

    Epoch k of phase p draws from its own generator (seed, p, k), so a resumed run replays it exactly. With a
    `teacher` the targets are (labels, the teacher's probabilities on the same crop of the clean frame), packed as
    (B, H, W, 1 + C) for `losses.with_distillation`.
    """

    def __init__(self, ds: D.Dataset, phase: Phase, seed: tuple[int, ...], teacher: keras.Model | None = None,
                 first_epoch: int = 0) -> None:
        super().__init__()
        self.ds, self.phase, self.seed, self.teacher = ds, phase, seed, teacher
        self.first_epoch, self.begun = first_epoch, 0
        self.epoch: tuple | None = None
        self.made_for = -1

    def on_epoch_begin(self) -> None:
        """Keras calls this as every epoch starts. Each epoch's tiles are made once: the first batches Keras reads
        before the first epoch (to learn their shapes) come from the same ones (with a teacher, making an epoch
        costs a pass over every training tile)."""
        self._make(self.first_epoch + self.begun)
        self.begun += 1

    def _make(self, k: int) -> None:
        if self.made_for == k:
            return
        d, key = self.phase.data, (*self.seed, k)
        rng = np.random.default_rng(key)
        frames, masks = self.ds.frames, self.ds.masks
        if d.degrade > 0:
            frames, touched = D.degrade(frames, rng, d.degrade, d.untouched)
            if d.camera_labels < 1:  # these frames learn from the teacher alone (background = no label);
                draws = np.random.default_rng((*key, 1)).random(len(frames))  # own stream: the same crops
                unlabelled = touched & (draws >= d.camera_labels)
                masks = np.where(unlabelled[:, None, None], 0, masks).astype(masks.dtype)
        if self.teacher is not None:  # the clean frame rides along as a second channel: same crop, same flip
            frames = np.stack([frames, self.ds.frames], axis=-1)
        x, y = D.random_tiles(D.Dataset(frames, masks, self.ds.names), rng, d.tiles_per_frame, d.hflip, d.vflip)
        clean = None
        if self.teacher is not None:
            x, clean = x[..., 0], x[..., 1]
        if d.photometric > 0:
            x = D.photometric(x, rng, d.photometric)
        order = rng.permutation(len(x))
        soft = None
        if self.teacher is not None:
            log.info("teacher: answering %d clean tiles", len(x))
            soft = predict_classes(self.teacher, clean[order], self.phase.optim.batch_size)[1].astype(np.float16)
        self.epoch, self.made_for = (x[order], y[order], soft), k  # one assignment: a reader never mixes epochs

    def __len__(self) -> int:
        """Batches per epoch. Split over several JAX devices, a last batch that does not divide between them
        is left out (the devices take equal shares); everywhere else the last batch may be short."""
        tiles, b = len(self.ds) * self.phase.data.tiles_per_frame, self.phase.optim.batch_size
        return tiles // b if tiles % b % data_parallel_devices() else math.ceil(tiles / b)

    def __getitem__(self, i: int):
        if self.epoch is None:
            self._make(self.first_epoch)
        x, y, soft = self.epoch
        b = self.phase.optim.batch_size
        x, y = x[i * b : (i + 1) * b], y[i * b : (i + 1) * b]
        mine = cluster.own_rows(len(x))  # every process makes the same epoch and takes its share of each batch
        if soft is None:
            return preprocess(x[mine]), y[mine].astype(np.int32)
        soft = soft[i * b : (i + 1) * b]
        return preprocess(x[mine]), np.concatenate([y[mine, ..., None], soft[mine]], axis=-1, dtype=np.float32)


@contextlib.contextmanager
def device_scope():
    """Where the model trains. TensorFlow: mixed precision on GPUs and `MirroredStrategy` over several. JAX:
    `keras.distribution.DataParallel` over every device JAX sees (several GPUs; on a CPU, as many as
    `XLA_FLAGS=--xla_force_host_platform_device_count=N` makes), the global batch split between them."""
    if keras.backend.backend() == "jax":
        import jax

        devices = jax.devices()  # of every process in a job of several (`cluster`)
        if len(devices) > 1:
            dist = keras.distribution.DataParallel(devices=devices)
            dist.auto_shard_dataset = False  # TrainTiles feeds each process its share itself
            keras.distribution.set_distribution(dist)
            log.info("training data-parallel on %d %s devices (JAX)%s", len(devices), devices[0].platform,
                     f" in {jax.process_count()} processes" if jax.process_count() > 1 else "")
            try:
                yield
            finally:
                keras.distribution.set_distribution(None)
            return
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


def learning_rate_schedule(phase: Phase, steps_per_epoch: int) -> float | keras.optimizers.schedules.CosineDecay:
    """The optimizer's learning rate: a constant for `plateau` (a callback halves it), else a per-step schedule.

    `cosine` anneals once from `learning_rate` to `min_lr` over the phase's epochs, so a phase ends at a low rate
    instead of stopping on whichever noisy epoch the time budget lands on. `warmup_epochs` first ramps linearly up
    from `min_lr`: a phase starts with fresh Adam moments, and at the full rate its first epoch undid ~1.7 points
    of the checkpoint it started from (0.8 with a 1-epoch warm-up).
    """
    o = phase.optim
    if o.schedule == "cosine":
        warm = round(steps_per_epoch * o.warmup_epochs)
        return keras.optimizers.schedules.CosineDecay(
            o.min_lr if warm else o.learning_rate, decay_steps=steps_per_epoch * o.epochs - warm,
            alpha=min(o.min_lr / o.learning_rate, 1.0), warmup_target=o.learning_rate if warm else None,
            warmup_steps=warm)
    return o.learning_rate


def train(cfg: TrainConfig, resume: bool = False) -> RunFolder:
    """Run every phase of `cfg` into one run folder (continuing an interrupted one with `resume`), then adjust the
    final model's logit offsets and write metrics.json. Raises `Paused` when the time budget ends a leg."""
    cfg.run_name = cfg.run_name or f"{cfg.model.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunFolder.of(cfg)
    if resume and run.finished:
        raise checkpoint.ResumeError(f"run {run.path} has finished; nothing to resume (start a new run with "
                                     "init_from)")
    if not resume and run.config_path.is_file():
        held, how = ("a finished", "") if run.finished else (
            "an unfinished", f"continue it with `marsseg-train --resume {run.path}` or ")
        raise RunError(f"{run.path} already holds {held} run: {how}give another --run-name")
    phases = cfg.phase_configs()
    if not resume:
        check_models(cfg, phases)
    d = cfg.data
    prep = D.prepare(d)
    val_x, val_y = D.fixed_tiles(prep.val)
    camera_x = D.camera_validation(prep.val, d.seed)
    log.info("frames: %d train / %d val (%d val tiles); %d phase(s): %s", len(prep.train), len(prep.val),
             len(val_x), len(phases), ", ".join(f"{p.name} ({p.optim.epochs} epochs)" for p in phases))
    if resume:
        if run.split()["val_names"] != prep.val.names.tolist():
            raise checkpoint.ResumeError(f"the split rebuilt from {prep.path} differs from {run.split_path}")
        first, saved = resume_point(run, phases)
    else:
        run.write_config(cfg)
        run.write_split({
            "data": str(prep.path), "data_sha256": sha256_file(prep.path), "seed": d.seed,
            "val_fraction": d.val_fraction, "train_frames": len(prep.train), "val_frames": len(prep.val),
            "val_names": prep.val.names.tolist(), "cleaning": prep.cleaning.as_dict()})
        first, saved = 0, None
    budget = TimeBudget(cfg.time_budget_min) if cfg.time_budget_min > 0 else None
    with device_scope():
        for k in range(first, len(phases)):
            run_phase(cfg, run, phases, k, prep.train, (val_x, val_y, camera_x), saved if k == first else None,
                      budget)
            unfinished = k + 1 < len(phases) or not run.phase_model(k, phases[k].name).is_file()
            if budget is not None and budget.fired and unfinished:
                raise Paused(f"time budget of {cfg.time_budget_min:g} min reached in phase {phases[k].name!r}")
    finish(cfg, run, phases, prep, (val_x, val_y), resume)
    return run


def check_models(cfg: TrainConfig, phases: list[Phase]) -> None:
    """Refuse a missing start model or teacher, a model section Keras cannot build, or a start model that does not
    fit it, before the run folder is written, so a mistake leaves no half-made run behind to block its name."""
    named = [("init_from", cfg.init_from)] + [(f"phase {p.name!r} optim.teacher", p.optim.teacher) for p in phases]
    for key, path in named:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{key} {path}: no such model; give a .keras file, e.g. edge/assets/model.keras")
    try:
        model = build_model(cfg.model)  # an unknown arch or a width Keras refuses, before the folder too
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    if not cfg.init_from:
        return
    try:
        widen.transfer_weights(keras.saving.load_model(cfg.init_from, compile=False), model)
    except widen.WidenError as e:
        raise widen.WidenError(f"init_from {cfg.init_from}: {e}") from None


def resume_point(run: RunFolder, phases: list[Phase]) -> tuple[int, tuple | None]:
    """The first phase without its finished model, and the checkpoint to continue it from (None: start it)."""
    first = next((k for k, p in enumerate(phases) if not run.phase_model(k, p.name).is_file()), len(phases))
    if first == len(phases):
        return first, None
    if first > 0 and not run.checkpoint.is_file():
        return first, None  # the previous phase ended before this one finished an epoch
    saved = checkpoint.load(run.checkpoint)
    if saved[2].get("phase", 0) != first:
        return first, None  # a checkpoint of a finished phase
    done = saved[2]["epochs_done"]
    log.info("resuming %s in phase %s after epoch %d (best %.4f at epoch %d)", run.path, phases[first].name, done,
             saved[2]["best"], saved[2]["best_epoch"])
    keep_history(run, first, done)
    return first, saved


def keep_history(run: RunFolder, phase: int, epochs_done: int) -> None:
    """Drop history rows of epochs the checkpoint does not hold (written just before an interruption)."""
    if not run.history.is_file():
        return
    with open(run.history, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    p, e = rows[0].index("phase"), rows[0].index("epoch")
    kept = [rows[0], *(r for r in rows[1:] if (int(float(r[p])), int(r[e])) < (phase, epochs_done))]
    if len(kept) != len(rows):
        def write(path):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

        write_atomic(run.history, write)


def run_phase(cfg: TrainConfig, run: RunFolder, phases: list[Phase], k: int, train_ds: D.Dataset,
              val: tuple[np.ndarray, np.ndarray, np.ndarray], saved: tuple | None, budget: TimeBudget | None) -> None:
    """Train phase `k` from the previous phase's best model (the first from `init_from`, or from scratch) and
    leave its best model as `run.phase_model(k)`, where the next phase starts."""
    phase, o = phases[k], phases[k].optim
    start = run.phase_model(k - 1, phases[k - 1].name) if k else cfg.init_from
    keras.utils.set_random_seed(cfg.training_seed + k)
    weights = D.class_weights(train_ds.masks, o.background_weight, o.rare_cap)
    log.info("phase %d/%d %r: %d epochs, class weights %s%s", k + 1, len(phases), phase.name, o.epochs,
             np.round(weights, 3).tolist(), f", from {start}" if start else "")
    loss_fn = make_loss(o.loss, weights, o.focal_gamma, o.dice_weight, o.lovasz)
    model = build_model(cfg.model)
    start_model = keras.saving.load_model(start, compile=False) if start else None
    if start_model is not None and widen.transfer_weights(start_model, model):
        log.info("widened %s: its weights in the leading channels, the new ones wired in at zero", start)
    if o.freeze_bn:
        freeze_batch_norm(model)
    steps = math.ceil(len(train_ds) * phase.data.tiles_per_frame / o.batch_size)
    optimizer = keras.optimizers.Adam(learning_rate_schedule(phase, steps), use_ema=o.ema > 0,
                                      ema_momentum=o.ema or 0.99)
    net = quant.with_fake_quant(model) if phase.quant.fake_quant else model  # shares model's weights
    teacher = (keras.saving.load_model(o.teacher, compile=False) if o.teacher else start_model) if o.distill else None
    del start_model  # only a teacher needs it past this point
    if teacher is not None:
        log.info("distilling from %s (weight %g)", o.teacher or start, o.distill)
    net.compile(optimizer=optimizer, loss=with_distillation(loss_fn, o.distill) if teacher else loss_fn)
    if saved:
        checkpoint.restore(net, optimizer, saved[0], saved[1], run.checkpoint)
    if k == 0:
        log.info("%s: %d parameters, %.3f GMAC per tile", model.name, model.count_params(), count_macs(model) / 1e9)

    best = BestCheckpoint(run.model, model, o.patience)
    plateau = keras.callbacks.ReduceLROnPlateau("val_score", mode="max", factor=0.5, patience=o.lr_patience,
                                                min_lr=o.min_lr, verbose=1) if o.schedule == "plateau" else None
    resumable = ResumeCheckpoint(run.checkpoint, k, optimizer, best, plateau)
    ema = [EmaSwap()] if o.ema > 0 else []
    callbacks = [
        *ema,
        ValidationIoU(*val, loss_fn, o.batch_size, k, camera_in_score=phase.data.degrade > 0),
        best,
        keras.callbacks.CSVLogger(str(run.history), append=True),
        *([plateau] if plateau else []),
        *([budget] if budget else []),
        *[e.restorer() for e in ema],
        resumable,
    ]
    done = 0
    if saved:
        resumable.resume(saved[2])
        done = o.epochs if best.stopped else saved[2]["epochs_done"]
    if done < o.epochs:
        try:
            # shuffle=False: TrainTiles already orders each epoch from its own seeded stream; Keras would also
            # shuffle the batches with Python's global `random`, which a checkpoint cannot hold (issue 21)
            net.fit(TrainTiles(train_ds, phase, (cfg.training_seed, k), teacher, first_epoch=done), epochs=o.epochs,
                    initial_epoch=done, callbacks=callbacks, shuffle=False, verbose=2)
        except KeyboardInterrupt:
            log.warning("interrupted in phase %r: continue with `marsseg-train --resume %s`", phase.name, run.path)
            raise
    if budget is not None and budget.fired and resumable.epochs_done < o.epochs and not best.stopped:
        return
    if not run.model.is_file():
        raise RuntimeError(f"phase {phase.name!r} stopped before its first epoch finished; no model was saved")
    write_atomic(run.phase_model(k, phase.name), lambda p: shutil.copyfile(run.model, p))
    log.info("phase %r done: best val_score %.4f at epoch %d", phase.name, best.best, best.best_epoch)


def phase_record(run: RunFolder, phases: list[Phase]) -> list[dict]:
    """Per phase, from history.csv: epochs run, seconds, and the best epoch's validation figures."""
    with open(run.history, newline="") as f:
        rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    out = []
    for k, p in enumerate(phases):
        mine = [r for r in rows if int(r["phase"]) == k]
        best = max(mine, key=lambda r: r["val_score"])
        out.append({"name": p.name, "epochs_run": len(mine), "best_epoch": int(best["epoch"]) + 1,
                    "seconds": round(sum(r["seconds"] for r in mine), 1),
                    **{key: round(best[key], 4) for key in ("val_miou", "val_miou_camera", "val_score")}})
    return out


def finish(cfg: TrainConfig, run: RunFolder, phases: list[Phase], prep: D.Prepared,
           val: tuple[np.ndarray, np.ndarray], resumed: bool) -> None:
    """The run's model: the last phase's best, its float score (phases may train fake-quantized), logit offsets
    chosen on validation, scores, plots, curves, and metrics.json (which marks the run finished)."""
    from marsseg.train import report

    val_x, val_y = val
    record = phase_record(run, phases)
    last = record[-1]
    best = keras.saving.load_model(run.model, compile=False)
    before = mean_iou(best, val_x, val_y)
    extra = {"val_miou_camera": last["val_miou_camera"]}
    if phases[-1].quant.fake_quant:  # its epochs were scored through the fake-quant wrapper
        extra["val_miou_fake_quant"] = last["val_miou"]
        log.info("best checkpoint: val mean IoU %.4f fake-quantized, %.4f float", last["val_miou"], before)
    if cfg.adjust.logit_adjust:
        done = prior.adjust(best, D.fixed_tiles(prep.train), val, prior.SAMPLE_TILES, cfg.data.seed,
                            cfg.adjust.scales)
        extra["logit_adjustment"] = {**done, "val_miou_before": round(before, 4), "made_by": "training"}
        write_atomic(run.model, lambda p: best.save(p))
    wall = sum(p["seconds"] for p in record)
    epochs = sum(p["epochs_run"] for p in record)
    weights = D.class_weights(prep.train.masks, phases[-1].optim.background_weight, phases[-1].optim.rare_cap)
    metrics = {
        "run": run.name, "arch": cfg.model.arch, "loss": phases[-1].optim.loss,
        **evaluate_run(best, val_x, val_y, run.path, phases[-1].optim.batch_size, cfg.predictions_to_plot),
        "best_epoch": last["best_epoch"], "epochs_run": epochs, "phases": record, "resumed": resumed,
        "wall_seconds": round(wall, 1), "seconds_per_epoch": round(wall / max(epochs, 1), 1),
        "parameters": int(best.count_params()), "macs_per_tile": int(count_macs(best)),
        "class_weights": weights.tolist(), "train_frames": len(prep.train), "val_frames": len(prep.val),
        "val_tiles": len(val_x), "backend": keras.backend.backend(), **extra,
    }
    run.write_metrics(metrics)
    report.plot_curves(run.history, run.curves, tuple(p.name for p in phases))
    log.info("run %s: val mean IoU %.4f (%s) in %.0f s", run.path, metrics["mean_iou"],
             ", ".join(f"{k} {v:.3f}" for k, v in metrics["per_class_iou"].items()), wall)
