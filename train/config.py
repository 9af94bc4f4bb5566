"""The typed training configuration, nested by concern and saved beside every trained model (config.json).

A config is the recipe of a whole run: the model, the data (split and augmentation), the optimisation, the
quantization and the adjustment after training, and optionally `phases`. Each phase is a named set of changes to
the `data` (augmentation only), `optim` and `quant` sections, applied on top of the phase before it; one
`marsseg-train` runs every phase into one run folder, each starting from the best weights of the one before (the
first from `init_from`, or from scratch). `epoch_scale` shortens (or lengthens) every phase proportionally.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marsseg.core.fields import conform

SCHEDULES = ("plateau", "cosine")
LOSSES = ("wce", "wce_dice", "dice_focal")


@dataclass
class ModelConfig:
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


@dataclass
class DataConfig:
    path: str = ""  # frames file (frames/masks) or course file (training_set); default from MARSSEG_DATA
    val_fraction: float = 0.2
    seed: int = 42  # the train/validation split; and all training randomness unless train_seed is set
    limit_frames: int = 0  # >0: use only this many frames (smoke tests)
    outlier_min_repeats: int = 10  # identical masks on >= this many different images = outlier pattern
    deg_per_pixel: float = 45.0 / 128  # ground scale of the frames (AI4Mars: MSL navcam 45° over 1024 px, ÷ 8)
    # augmentation (the keys a phase may change)
    tiles_per_frame: int = 1  # random vertical crops per frame per epoch
    hflip: bool = True
    vflip: bool = False
    photometric: float = 0.0  # >0: random per-tile gamma/gain/offset of this strength (data.photometric)
    degrade: float = 0.0  # >0: each frame through a random camera of this strength before the crop (data.degrade)
    untouched: float = 0.25  # share of frames the random camera leaves as they are (the file's own pixels)
    camera_labels: float = 1.0  # chance a camera-changed frame keeps its labels; the others learn from distill only


AUGMENT_KEYS = ("tiles_per_frame", "hflip", "vflip", "photometric", "degrade", "untouched", "camera_labels")


@dataclass
class OptimConfig:
    loss: str = "wce_dice"  # wce | wce_dice | dice_focal
    background_weight: float = 0.0  # 0 excludes background-truth pixels from the loss
    rare_cap: float = 10.0  # cap on any class weight (big rock would be ~150 uncapped)
    focal_gamma: float = 2.0
    dice_weight: float = 0.5
    lovasz: float = 0.0  # >0: weight of a Lovász-softmax term (a surrogate of the per-class IoU the score is)
    distill: float = 0.0  # >0: weight of matching the teacher's answers on clean frames (losses.with_distillation)
    teacher: str = ""  # the .keras model distill matches (any architecture); empty: the phase's start model
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 1e-3
    schedule: str = "plateau"  # plateau (halve on a plateau) | cosine (one anneal over `epochs`)
    warmup_epochs: float = 0.0  # cosine only: ramp from min_lr up to learning_rate first
    min_lr: float = 1e-5
    ema: float = 0.0  # >0: validate, checkpoint and ship an exponential moving average of the weights
    patience: int = 12  # early stop after this many epochs without a better val_score
    lr_patience: int = 4  # plateau only
    freeze_bn: bool = False  # batch norm keeps the phase's start statistics (inference mode): camera fine-tuning


@dataclass
class QuantConfig:
    fake_quant: bool = False  # train through int8 rounding of activations (quant.py): a last phase before export


@dataclass
class AdjustConfig:
    logit_adjust: bool = True  # after training, fold per-class logit offsets chosen on training tiles (prior.py)
    scales: tuple[float, ...] = (1.0,)  # multiples of those offsets scored on validation, best kept


@dataclass
class TrainConfig:
    out_dir: str = "runs"
    run_name: str = ""  # default: <arch>-<timestamp>
    init_from: str = ""  # a .keras model of the same architecture to start from (narrower: widened, see widen.py)
    train_seed: int | None = None  # crops, flips, cameras, dropout, init; unset: data.seed
    epoch_scale: float = 1.0  # multiplies every phase's epochs (and warm-up): e.g. 0.1 for a CPU
    time_budget_min: float = 0.0  # >0: pause (resumable) at the last epoch that fits this wall time
    predictions_to_plot: int = 8
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    adjust: AdjustConfig = field(default_factory=AdjustConfig)
    phases: tuple[dict, ...] = ()  # [{"name": ..., "data": {...}, "optim": {...}, "quant": {...}}, ...]

    def __post_init__(self) -> None:
        for section, cls in SECTIONS.items():  # from_dict and keyword construction pass sections as dicts
            if not isinstance(getattr(self, section), cls):
                setattr(self, section, _build(cls, getattr(self, section), section))
        self.phases = tuple(self.phases)
        m, d, scales = self.model, self.data, self.adjust.scales
        _require("", (
            ("epoch_scale", self.epoch_scale, self.epoch_scale > 0, "> 0"),
            ("time_budget_min", self.time_budget_min, self.time_budget_min >= 0, ">= 0 (0: no budget)"),
            ("predictions_to_plot", self.predictions_to_plot, self.predictions_to_plot >= 0, ">= 0"),
            ("data.val_fraction", d.val_fraction, 0 < d.val_fraction < 1, "in (0, 1)"),
            ("data.limit_frames", d.limit_frames, d.limit_frames >= 0, ">= 0 (0: every frame)"),
            ("data.deg_per_pixel", d.deg_per_pixel, d.deg_per_pixel > 0, "> 0"),
            ("model.dropout", m.dropout, 0 <= m.dropout < 1, "in [0, 1)"),
            ("model.bn_momentum", m.bn_momentum, 0 <= m.bn_momentum < 1, "in [0, 1)"),
            *((f"model.{key}", widths, len(widths) > 0 and min(widths) >= 1, "a non-empty list of widths >= 1")
              for key, widths in (("fine_widths", m.fine_widths), ("coarse_widths", m.coarse_widths),
                                  ("dense_widths", m.dense_widths))),
            *((f"model.{key}", width, width >= 1, ">= 1") for key, width in (
                ("bottleneck", m.bottleneck), ("coarse_bottleneck", m.coarse_bottleneck),
                ("dense_bottleneck", m.dense_bottleneck), ("se_ratio", m.se_ratio))),
            ("adjust.scales", scales, len(scales) > 0 and min(scales) >= 0, "a non-empty list of multiples >= 0, "
                                                                           "e.g. [1.0] or [0, 0.5, 1]")))
        self.phase_configs()  # every phase is checked now, not when the run reaches it

    @property
    def training_seed(self) -> int:
        """Seed of the training randomness. With the split seed alone, every leg continued from a checkpoint
        replays the previous leg's crop/flip/exposure sequence (default-v14q and v15q: near-identical curves)."""
        return self.data.seed if self.train_seed is None else self.train_seed

    def phase_configs(self) -> list[Phase]:
        """Every phase in order, each with its own data (augmentation), optim and quant sections, epochs scaled by
        `epoch_scale`. Without `phases` the config is its own single phase, "main". A phase that distills or
        freezes batch norm needs a start model: `init_from` for the first, the phase before for the others (a
        phase that distills from its own `optim.teacher` does not).
        """
        values = {s: dataclasses.asdict(getattr(self, s)) for s in PHASE_SECTIONS}
        out = []
        for k, phase in enumerate(self.phases or ({"name": "main"},)):
            if not isinstance(phase, dict):
                raise ValueError(f'each phase must be an object like {{"name": ..., "optim": {{...}}}}, got {phase!r}')
            name = str(phase.get("name") or f"phase{k + 1}")
            unknown = sorted(set(phase) - {"name", *PHASE_SECTIONS})
            bad_data = sorted(set(phase.get("data", {})) - set(AUGMENT_KEYS))
            if unknown or bad_data:
                raise ValueError(f"phase {name!r} may change data ({', '.join(AUGMENT_KEYS)}), optim and quant; "
                                 f"not {[*unknown, *('data.' + key for key in bad_data)]}")
            for s in PHASE_SECTIONS:
                values[s] = {**values[s], **phase.get(s, {})}
            out.append(Phase(name, *(_build(SECTIONS[s], values[s], s) for s in PHASE_SECTIONS)).scaled(
                self.epoch_scale))
            o = out[-1].optim
            if (o.freeze_bn or (o.distill and not o.teacher)) and k == 0 and not self.init_from:
                raise ValueError(f"phase {name!r}: optim.freeze_bn and optim.distill need a start model "
                                 "(init_from, or an earlier phase; distill may name optim.teacher instead)")
        return out

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: Path) -> None:
        from marsseg.core.io import write_text_atomic

        write_text_atomic(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        return _build(cls, d, "")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "quant": QuantConfig,
            "adjust": AdjustConfig}


PHASE_SECTIONS = ("data", "optim", "quant")


@dataclass
class Phase:
    """One phase of a run: what it trains with. Checked when made (a bad value names the phase and the key)."""

    name: str
    data: DataConfig
    optim: OptimConfig
    quant: QuantConfig

    def __post_init__(self) -> None:
        o, d, where = self.optim, self.data, f"phase {self.name!r}: "
        if o.schedule not in SCHEDULES:
            raise ValueError(f"{where}optim.schedule must be one of {list(SCHEDULES)}, got {o.schedule!r}")
        if o.loss not in LOSSES:
            raise ValueError(f"{where}optim.loss must be one of {list(LOSSES)}, got {o.loss!r}")
        _require(where, (
            ("optim.epochs", o.epochs, o.epochs >= 1, ">= 1"),
            ("optim.batch_size", o.batch_size, o.batch_size >= 1, ">= 1"),
            ("optim.learning_rate", o.learning_rate, o.learning_rate > 0, "> 0"),
            ("optim.min_lr", o.min_lr, 0 <= o.min_lr <= o.learning_rate, "in [0, optim.learning_rate]"),
            ("optim.ema", o.ema, 0 <= o.ema < 1, "in [0, 1) (0: no average)"),
            ("optim.patience", o.patience, o.patience >= 1, ">= 1"),
            ("optim.lr_patience", o.lr_patience, o.lr_patience >= 1, ">= 1"),
            ("optim.rare_cap", o.rare_cap, o.rare_cap > 0, "> 0"),
            *((f"optim.{key}", weight, weight >= 0, ">= 0 (a loss weight)") for key, weight in (
                ("background_weight", o.background_weight), ("focal_gamma", o.focal_gamma),
                ("dice_weight", o.dice_weight), ("lovasz", o.lovasz), ("distill", o.distill))),
            ("data.tiles_per_frame", d.tiles_per_frame, d.tiles_per_frame >= 1, ">= 1"),
            ("data.photometric", d.photometric, d.photometric >= 0, ">= 0 (0: off)"),
            ("data.degrade", d.degrade, d.degrade >= 0, ">= 0 (0: off)"),
            ("data.untouched", d.untouched, 0 <= d.untouched <= 1, "a share in [0, 1]")))
        if o.warmup_epochs and not (o.schedule == "cosine" and 0 < o.warmup_epochs < o.epochs):
            raise ValueError(f"{where}optim.warmup_epochs needs schedule 'cosine' and 0 < warmup_epochs < epochs "
                             f"({o.epochs}), got {o.warmup_epochs} with {o.schedule!r}")
        if o.teacher and not o.distill:
            raise ValueError(f"{where}optim.teacher is only read with optim.distill > 0 (its weight), got 0")
        if not 0 <= d.camera_labels <= 1 or (d.camera_labels < 1 and not (d.degrade and o.distill)):
            raise ValueError(f"{where}data.camera_labels must be in [0, 1] and below 1 only with data.degrade and "
                             f"optim.distill on (the frames it unlabels learn from the teacher), got {d.camera_labels}")

    def scaled(self, scale: float) -> Phase:
        """The same phase with its epochs (and warm-up) multiplied by `scale`, at least one epoch."""
        if scale == 1.0:
            return self
        epochs = max(1, round(self.optim.epochs * scale))
        optim = dataclasses.replace(self.optim, epochs=epochs,
                                    warmup_epochs=self.optim.warmup_epochs * epochs / self.optim.epochs)
        return dataclasses.replace(self, optim=optim)


def _require(where: str, rows: Any) -> None:
    """ValueError naming the first (key, value, ok, what it must be) row whose check failed."""
    for key, value, ok, want in rows:
        if not ok:
            raise ValueError(f"{where}{key} must be {want}, got {value}")


def _build(cls: type, values: dict, path: str) -> Any:
    """A dataclass from a (nested) dict; an unknown key is a one-line error naming it and where it belongs."""
    if not isinstance(values, dict):
        raise ValueError(f"config section {path or 'top level'} must be an object, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = unknown[0]
        home = [s for s, c in SECTIONS.items() if key in {f.name for f in dataclasses.fields(c)}]
        hint = f" (it belongs in {home[0]}: {home[0]}.{key})" if home and not path else ""
        raise ValueError(f"unknown config key {(path + '.' if path else '') + key!r}{hint}; valid keys"
                         f"{' in ' + path if path else ''}: {sorted(fields)}")
    checked = {}
    for key, value in values.items():
        if cls is TrainConfig and key in SECTIONS:  # stays a dict: TrainConfig.__post_init__ builds it
            checked[key] = value
            continue
        try:
            checked[key] = conform(value, fields[key].type)
        except ValueError as e:
            raise ValueError(f"config key {(path + '.' if path else '') + key!r} {e}") from None
    return cls(**checked)
