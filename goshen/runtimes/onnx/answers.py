"""Answers as JSON bytes: numpy arrays written directly, values that are not finite as null."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson


def render_json(value: Any) -> bytes:
    """JSON for answers holding numpy arrays: floats written shortest-exact for their own type
    (a float32 as 0.45561102, not 0.4556110203266144), and NaN or infinity as null."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback)


def _fallback(value: Any) -> Any:
    # orjson writes C-contiguous arrays of numeric types itself; others go through lists (whose
    # NaN and infinity it also writes as null).
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
