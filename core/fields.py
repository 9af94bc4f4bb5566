"""Config values from JSON, TOML or flags checked against their dataclass field's annotation, in one place for the
training config and the runtime's: a string where a number belongs is refused before anything starts."""

from __future__ import annotations

from typing import Any


def conform(value: Any, hint: str) -> Any:
    """`value` as the annotation `hint` (`float`, `int | None`, `tuple[int, ...]`, `dict`) wants it, or ValueError.

    Bools are not numbers; ints are floats; an integral float is an int (TOML and JSON writers differ); a list is a
    tuple (JSON has none).
    """
    for t in hint.replace(" ", "").split("|"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if (t == "None" and value is None) or (t == "float" and number) or (t == "bool" and isinstance(value, bool)) \
                or (t == "str" and isinstance(value, str)) or (t == "dict" and isinstance(value, dict)):
            return value
        if t == "int" and number and float(value).is_integer():
            return int(value)
        if t.startswith("tuple[") and t.endswith(",...]") and isinstance(value, (list, tuple)):
            try:
                return tuple(conform(v, t[len("tuple["):-len(",...]")]) for v in value)
            except ValueError:
                continue
    raise ValueError(f"must be {hint.replace(' | None', '')}, got {value!r}")
