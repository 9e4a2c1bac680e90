"""JSON text that every reader parses: a figure that is not a number (the AUC of a scene with
one class, an F1 with nothing predicted) is written as ``null``, not the bare ``NaN`` that
Python writes and strict parsers (jq, JavaScript, most JSON libraries) refuse."""

from __future__ import annotations

import json
import math
from typing import Any


def dumps(value: Any, indent: int | None = None) -> str:
    """``json.dumps`` with every non-finite float as ``null``."""
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
