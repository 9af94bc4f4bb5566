"""Measurement and maintenance tools, run from a checkout as `python -m tools.<name>`; not installed with marsseg."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

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
