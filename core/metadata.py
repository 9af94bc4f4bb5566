"""The model's metadata file (`<model>.json` beside `<model>.tflite`): everything the runtime must not guess.

Written by the export stage through `build_metadata`, read by the runtime through `load_metadata`, and
checked against the model itself at start-up (`check_model`), so a model/metadata mismatch is a clear
start-up error rather than wrong maps.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marsseg.core import spec
from marsseg.core.interpreter import ModelError, input_info, output_info
from marsseg.core.io import sha256_file

FORMAT = "marsseg-model/1"


@dataclass
class Quant:
    dtype: str  # "int8" or "float32"
    scale: float
    zero_point: int


@dataclass
class ModelMetadata:
    model_file: str
    model_sha256: str
    tile_shape: tuple[int, int]
    classes: list[dict]  # {id, name, colour [r,g,b], cost (null = unknown, "inf" = lethal)}
    input_scale: float  # float input = pixel * input_scale + input_offset
    input_offset: float
    input_quant: Quant
    output_quant: Quant
    run_id: str = ""
    train_metrics: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    deg_per_pixel: float = 0.0  # ground scale: degrees of view per pixel of the training frames (0 = not recorded)
    float_model: dict = field(default_factory=dict)  # {file, sha256} of the float .keras it was exported from
    exposure_floor: float = 0.0  # DN: the runtime lifts darker frames to it (`spec.lift_exposure`; 0 = off)
    format: str = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(c["name"] for c in self.classes)

    @property
    def colours(self) -> list[tuple[int, int, int]]:
        return [tuple(c["colour"]) for c in self.classes]

    def costs(self) -> list[float]:
        return [_cost_from_json(c["cost"]) for c in self.classes]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _cost_to_json(c: float) -> float | str | None:
    if math.isnan(c):
        return None
    return "inf" if math.isinf(c) else c


def _cost_from_json(c: Any) -> float:
    if c is None:
        return float("nan")
    return float(c)


def metadata_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def build_metadata(model_path: Path, interp: Any, run_id: str, train_metrics: dict, export: dict,
                   deg_per_pixel: float = 0.0, float_model: dict | None = None,
                   exposure_floor: float = 0.0) -> ModelMetadata:
    """Describe an exported model from the shared spec, the model's own tensors and its training run."""
    i, o = input_info(interp), output_info(interp)
    return ModelMetadata(
        model_file=model_path.name,
        model_sha256=sha256_file(model_path),
        tile_shape=spec.TILE_SHAPE,
        classes=[{"id": c.id, "name": c.name, "colour": list(c.colour), "cost": _cost_to_json(c.cost)}
                 for c in spec.CLASSES],
        input_scale=spec.INPUT_SCALE,
        input_offset=spec.INPUT_OFFSET,
        input_quant=Quant(i.dtype.name, i.scale, i.zero_point),
        output_quant=Quant(o.dtype.name, o.scale, o.zero_point),
        run_id=run_id,
        train_metrics=train_metrics,
        export=export,
        deg_per_pixel=deg_per_pixel,
        float_model=float_model or {},
        exposure_floor=exposure_floor,
    )


def load_metadata(path: str | Path) -> ModelMetadata:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model metadata not found: {path} (export writes it beside the .tflite; re-export)")
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable model metadata ({e}); re-export the model") from e
    if not isinstance(d, dict):
        raise ModelError(f"{path}: model metadata must be a JSON object, got {type(d).__name__}; re-export the model")
    if d.get("format") != FORMAT:
        raise ModelError(f"{path}: metadata format {d.get('format')!r}, expected {FORMAT!r}; re-export the model")
    try:
        d["tile_shape"] = tuple(int(v) for v in d["tile_shape"])
        d["input_quant"] = Quant(**d["input_quant"])
        d["output_quant"] = Quant(**d["output_quant"])
        meta = ModelMetadata(**d)
        problem = _class_problem(meta.classes)
    except (TypeError, KeyError, ValueError) as e:
        raise ModelError(f"{path}: unreadable model metadata ({type(e).__name__}: {e}); re-export the model") from e
    if problem or len(meta.tile_shape) != 2 or min(meta.tile_shape) < 1:
        raise ModelError(f"{path}: {problem or f'tile_shape {meta.tile_shape}'}; re-export the model")
    return meta


def _class_problem(classes: Any) -> str:
    """What is wrong with a metadata class table, or "" (the runtime indexes names, colours and costs)."""
    if not isinstance(classes, list) or not classes:
        return "classes must be a non-empty list"
    for i, c in enumerate(classes):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
            return f"class {i} has no name"
        colour = c.get("colour")
        if not (isinstance(colour, list) and len(colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255
                                                                     for v in colour)):
            return f"class {c['name']!r}: colour must be [r, g, b] in 0..255, got {colour!r}"
        try:
            _cost_from_json(c.get("cost"))
        except (TypeError, ValueError):
            return f"class {c['name']!r}: cost must be a number, \"inf\" or null, got {c.get('cost')!r}"
    return ""


def check_model(meta: ModelMetadata, model_path: Path, interp: Any) -> None:
    """Fail at start-up, naming expected vs actual, when metadata does not describe this model."""
    problems = []
    digest = sha256_file(model_path)
    if digest != meta.model_sha256:
        problems.append(f"sha256 {digest[:12]}.. != metadata {meta.model_sha256[:12]}..")
    i, o = input_info(interp), output_info(interp)
    if tuple(i.shape[1:3]) != tuple(meta.tile_shape):
        problems.append(f"input tile {i.shape[1:3]} != metadata {tuple(meta.tile_shape)}")
    if o.shape[-1] != meta.num_classes:
        problems.append(f"output classes {o.shape[-1]} != metadata {meta.num_classes}")
    for name, info, q in (("input", i, meta.input_quant), ("output", o, meta.output_quant)):
        if info.dtype.name != q.dtype or not math.isclose(info.scale, q.scale, rel_tol=1e-6) \
                or info.zero_point != q.zero_point:
            problems.append(f"{name} {info.dtype.name} scale {info.scale:g} zp {info.zero_point} != metadata "
                            f"{q.dtype} scale {q.scale:g} zp {q.zero_point}")
    if problems:
        raise ModelError(f"{model_path} does not match its metadata {metadata_path(model_path)}: "
                         + "; ".join(problems) + "; re-export, or copy the .json that came with this model")
