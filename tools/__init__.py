"""Measurement and maintenance tools, run from a checkout as `python -m tools.<name>`; not installed with marsseg."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from marsseg.core.frames import Dataset
    from marsseg.edge.model import TileModel

Main = Callable[[list[str] | None], int]


def one_line_errors(prog: str) -> Callable[[Main], Main]:
    """Wrap a tool's `main`: what a user gets wrong (a missing or unreadable model, frames file, config or output
    folder: ModelError, ValueError, OSError) ends as one line naming it and exit 2, as with the package's commands."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            from marsseg.core.interpreter import ModelError

            try:
                return main(argv)
            except (ModelError, ValueError, OSError) as e:  # DataError, OutputError, config errors: ValueErrors
                print(f"{prog}: error: {e}", file=sys.stderr)
                return 2

        return run

    return wrap


def add_frames_args(p: argparse.ArgumentParser) -> None:
    """The arguments of a tool that runs the edge path over a frames file: the file, a name list, the model."""
    p.add_argument("data", type=Path, help="frames file with masks (e.g. ../shared/data/ai4mars-frames-128.npz)")
    p.add_argument("--names", type=Path, help="JSON list of the frames to use (e.g. edge/assets/val_names.json)")
    p.add_argument("--model", help="int8 .tflite (default: the bundled model)")


def frames_and_model(a: argparse.Namespace) -> tuple[TileModel, Dataset]:
    """The model and the frames `add_frames_args` named."""
    from marsseg.core.frames import load_frames
    from marsseg.edge.cli import bundled
    from marsseg.edge.model import TileModel

    return TileModel(a.model or bundled("model_int8.tflite")), load_frames(a.data, names_file=a.names)
