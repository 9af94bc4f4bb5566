"""The typed training configuration, saved beside every trained model (config.json)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

SCHEDULES = ("plateau", "cosine", "cosine_restarts")


@dataclass
class TrainConfig:
    data: str = ""  # frames file (frames/masks) or course file (training_set); default from MARSSEG_DATA
    out_dir: str = "runs"
    run_name: str = ""  # default: <arch>-<timestamp>
    # model
    arch: str = "dual-unet"  # dual-unet | dense-unet
    fine_widths: tuple[int, ...] = (12, 24, 48)  # detail branch, from full resolution down
    bottleneck: int = 96  # detail branch bottleneck (1/8 scale)
    coarse_widths: tuple[int, ...] = (32, 64)  # context branch, from 1/4 scale down
    coarse_bottleneck: int = 128  # context branch bottleneck (1/16 scale), dilated
    dense_widths: tuple[int, ...] = (32, 64, 128, 256)  # dense-unet only
    dense_bottleneck: int = 512
    dropout: float = 0.3
    bn_momentum: float = 0.9  # low momentum: moving stats catch up within the first epoch
    se_ratio: int = 8
    # loss and class balance
    loss: str = "wce_dice"  # wce | wce_dice | dice_focal
    background_weight: float = 0.0  # 0 excludes background-truth pixels from the loss
    rare_cap: float = 10.0  # cap on any class weight (big rock would be ~150 uncapped)
    focal_gamma: float = 2.0
    dice_weight: float = 0.5
    logit_adjust: bool = True  # after training, fold per-class logit offsets chosen on training tiles (prior.py)
    logit_adjust_scales: tuple[float, ...] = (1.0,)  # multiples of those offsets scored on validation, best kept
    # data
    val_fraction: float = 0.2
    seed: int = 42  # the train/validation split; and all training randomness unless train_seed is set
    train_seed: int | None = None  # crops, flips, exposure, camera, dropout, init: give each continued leg its own
    tiles_per_frame: int = 1  # random vertical crops per frame per epoch
    hflip: bool = True
    vflip: bool = False
    photometric: float = 0.0  # >0: random per-tile gamma/gain/offset of this strength (see data.photometric)
    deg_per_pixel: float = 45.0 / 128  # ground scale of the frames (AI4Mars: MSL navcam 45° over 1024 px, ÷ 8)
    degrade: float = 0.0  # >0: each frame through a random camera of this strength before the crop (data.degrade)
    distill: float = 0.0  # >0: weight of matching init_from's clean-frame answers (losses.with_distillation)
    camera_labels: float = 1.0  # chance a camera-changed frame keeps its labels; the others learn from distill only
    limit_frames: int = 0  # >0: use only this many frames (smoke tests)
    outlier_min_repeats: int = 10  # identical masks on >= this many different images = outlier pattern
    # optimisation
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    schedule: str = "plateau"  # plateau | cosine (one anneal over `epochs`) | cosine_restarts
    warmup_epochs: float = 0.0  # cosine only: ramp from min_lr up to learning_rate first (continued legs)
    ema: float = 0.0  # >0: validate, checkpoint and ship an exponential moving average of the weights
    fake_quant: bool = False  # train through int8 rounding of activations (quant.py): a last leg before export
    freeze_bn: bool = False  # batch norm keeps init_from's statistics (inference mode): degraded-camera fine-tuning
    init_from: str = ""  # a .keras model of the same architecture to start from (continue a CPU run)
    time_budget_min: float = 0.0  # >0: stop at the last epoch that fits this wall time (CPU runs)
    patience: int = 12
    lr_patience: int = 4
    min_lr: float = 1e-5
    predictions_to_plot: int = 8
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {list(SCHEDULES)}, got {self.schedule!r}")
        if not self.logit_adjust_scales:
            raise ValueError("logit_adjust_scales needs at least one scale, e.g. [1.0] or [0, 0.5, 1]")
        if self.freeze_bn and not self.init_from:
            raise ValueError("freeze_bn needs init_from: the model whose batch-norm statistics are kept")
        if self.distill and not self.init_from:
            raise ValueError("distill needs init_from: the model whose clean-frame answers are matched")
        if not 0 <= self.camera_labels <= 1 or (self.camera_labels < 1 and not (self.degrade and self.distill)):
            raise ValueError(f"camera_labels must be in [0, 1] and below 1 only with degrade and distill on (the "
                             f"frames it unlabels learn from the teacher), got {self.camera_labels}")
        if self.warmup_epochs and not (self.schedule == "cosine" and 0 < self.warmup_epochs < self.epochs):
            raise ValueError(f"warmup_epochs needs schedule 'cosine' and 0 < warmup_epochs < epochs ({self.epochs}), "
                             f"got {self.warmup_epochs} with {self.schedule!r}")

    @property
    def training_seed(self) -> int:
        """Seed of the training randomness. With the split seed alone, every leg continued from a checkpoint
        replays the previous leg's crop/flip/exposure sequence (default-v14q and v15q: near-identical curves)."""
        return self.seed if self.train_seed is None else self.train_seed

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: Path) -> None:
        from marsseg.edge.io import write_text_atomic

        write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**kwargs)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))
