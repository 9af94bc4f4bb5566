"""The one adapter over the TFLite interpreter: which runtime, tensors in, dequantized tensors out.

pycoral-style thin free functions. `ai-edge-litert` (LiteRT) is the runtime; `tflite_runtime` is accepted
as a fallback for legacy boards. int8 outputs are dequantized with the model's own scale and zero point
(never reinterpreted as uint8).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """A model file that cannot be used; the message says what and how to fix it."""


def interpreter_class() -> type:
    """The Interpreter class of the first importable runtime: LiteRT, else tflite_runtime."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError as e:
        raise ModelError(
            "no TFLite runtime found: pip install ai-edge-litert (or tflite-runtime on legacy boards)") from e


def make_interpreter(model_path: str | os.PathLike, num_threads: int | None = None, delegates: bool = True) -> Any:
    """Load a .tflite model; a missing or corrupt file is a ModelError naming the file.

    `delegates=False` skips the default XNNPACK delegate (to list the model's own ops). If XNNPACK
    refuses the model (e.g. degenerate quantization scales), the built-in kernels are used instead with
    a warning: slower, but the rover keeps seeing. The export stage fails such a model up front.
    """
    path = Path(model_path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path} (pass --model PATH.tflite)")
    cls = interpreter_class()
    threads = num_threads or os.cpu_count()
    try:
        return _create(cls, path, threads, delegates)
    except (ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0]
        if delegates and "XNNPack" in first:
            log.warning("XNNPACK refused %s (%s); falling back to built-in kernels", path, first)
            return make_interpreter(path, num_threads, delegates=False)
        raise ModelError(f"{path} is not a loadable TFLite model ({first}); re-export it") from e


def xnnpack_accepts(model_path: str | os.PathLike) -> str:
    """'' if the default XNNPACK delegate prepares the model, else its error (the export gate uses this)."""
    cls = interpreter_class()
    try:
        _create(cls, Path(model_path), 1, True)
    except (ValueError, RuntimeError) as e:
        return str(e).splitlines()[0]
    return ""


def _create(cls: type, path: Path, threads: int | None, delegates: bool) -> Any:
    kwargs = {}
    if not delegates:
        module = sys.modules[cls.__module__]
        kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = cls(model_path=str(path), num_threads=threads, **kwargs)
    interp.allocate_tensors()
    return interp


@dataclass(frozen=True)
class TensorInfo:
    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float  # 0.0 for float tensors
    zero_point: int


def _info(d: dict) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(int(d["index"]), tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]), float(scale), int(zp))


def input_info(interp: Any) -> TensorInfo:
    return _info(interp.get_input_details()[0])


def output_info(interp: Any) -> TensorInfo:
    return _info(interp.get_output_details()[0])


def resize_batch(interp: Any, batch: int) -> None:
    """Set the batch dimension (once per frame shape, not per frame) and reallocate.

    Always reallocates: after a failed allocation the input already has the new shape but no buffers.
    """
    info = input_info(interp)
    interp.resize_tensor_input(info.index, [batch, *info.shape[1:]])
    interp.allocate_tensors()


def set_input(interp: Any, batch: np.ndarray) -> None:
    """Copy an already-typed batch (int8 or float32, NHWC) into the input tensor."""
    info = input_info(interp)
    if batch.dtype != info.dtype or batch.shape != info.shape:
        raise ValueError(f"input must be {info.dtype} {info.shape}, got {batch.dtype} {batch.shape}")
    interp.set_tensor(info.index, batch)


def op_names(interp: Any) -> list[str]:
    """Builtin op names in execution order."""
    return [d["op_name"] for d in interp._get_ops_details()]


def float_tensors_in_ops(interp: Any) -> list[str]:
    """Ops that read or write a float tensor: on a full-integer model there must be none."""
    details = {d["index"]: d for d in interp.get_tensor_details()}
    bad = []
    for op in interp._get_ops_details():
        for t in [*op["inputs"], *op["outputs"]]:
            if t >= 0 and t in details and np.dtype(details[t]["dtype"]) in (np.float32, np.float16):
                bad.append(f"{op['op_name']}({details[t]['name']})")
                break
    return bad
