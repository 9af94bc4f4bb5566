"""The run folder (`runs/NAME/`): the one place that names, reads and writes what a training run leaves.

  config.json      the TrainConfig the run was made with (the recipe: every phase)
  split.json       the validation frames, the data file's checksum and what cleaning removed
  history.csv      one row per epoch of every phase (its `phase` column), curves.png drawn from it
  checkpoint.npz   the resumable state after the last finished epoch (checkpoint.py)
  phaseK-NAME.keras  the best model of each finished phase, where the next phase starts
  model.keras      the best model so far; at the end the run's model (logit offsets folded in)
  metrics.json     written once, when the run has finished: validation scores and the training record
  export/          what `marsseg-export` makes from it; eval/: what `marsseg-eval` reports

Training, `marsseg-adjust`, `marsseg-export` and the asset tools all go through `RunFolder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from marsseg.core.frames import keep_names, resolve_data_path
from marsseg.core.io import write_text_atomic
from marsseg.train import cluster
from marsseg.train import data as D
from marsseg.train.config import TrainConfig


class RunError(ValueError):
    """A folder that is not the run it is used as; the message names the file and what to do."""


@dataclass(frozen=True)
class RunFolder:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, cfg: TrainConfig) -> RunFolder:
        """The run `cfg` names, as this process keeps it (a worker of a job of several: its copy, `cluster`)."""
        return cls(cluster.own_folder(Path(cfg.out_dir) / cfg.run_name))

    @property
    def name(self) -> str:
        return self.path.name

    config_path = property(lambda self: self.path / "config.json")
    split_path = property(lambda self: self.path / "split.json")
    history = property(lambda self: self.path / "history.csv")
    checkpoint = property(lambda self: self.path / "checkpoint.npz")
    model = property(lambda self: self.path / "model.keras")
    metrics_path = property(lambda self: self.path / "metrics.json")
    curves = property(lambda self: self.path / "curves.png")
    confusion = property(lambda self: self.path / "confusion.png")
    predictions = property(lambda self: self.path / "predictions.png")
    export_dir = property(lambda self: self.path / "export")
    eval_dir = property(lambda self: self.path / "eval")

    def phase_model(self, index: int, name: str) -> Path:
        """Where phase `index` (0-based) leaves its best model: the next phase's start (and teacher)."""
        return self.path / f"phase{index + 1}-{name}.keras"

    @property
    def finished(self) -> bool:
        """A run has finished when its metrics.json exists (written once, at the very end)."""
        return self.metrics_path.is_file()

    def config(self) -> TrainConfig:
        if not self.config_path.is_file():
            raise RunError(f"{self.path} is not a run folder (no config.json)")
        try:
            return TrainConfig.load(self.config_path)
        except (ValueError, TypeError) as e:
            raise RunError(f"{self.config_path}: {e}") from e

    def write_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        cfg.save(self.config_path)

    def split(self) -> dict:
        if not self.split_path.is_file():
            raise RunError(f"{self.path} has no split.json: not a training run folder")
        return json.loads(self.split_path.read_text())

    def write_split(self, split: dict) -> None:
        write_text_atomic(self.split_path, json.dumps(split, indent=1))

    def metrics(self) -> dict:
        if not self.finished:
            raise RunError(f"{self.path} has no metrics.json: the run has not finished (resume it with "
                           f"`marsseg-train --resume {self.path}`)")
        return json.loads(self.metrics_path.read_text())

    def write_metrics(self, metrics: dict) -> None:
        write_text_atomic(self.metrics_path, json.dumps(metrics, indent=2))

    def validation_tiles(self, data: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The run's held-out validation tiles (same frames, same fixed crops), from `data` or its own file."""
        cfg = self.config()
        path = resolve_data_path(data or cfg.data.path)
        wanted = set(self.split()["val_names"])
        return D.fixed_tiles(keep_names(D.load_dataset(path), wanted, f"{self.path}'s split", all_needed=True))
