"""Integer settings read from environment variables (the trainers' switches), checked the same way everywhere."""
from __future__ import annotations

import os
from typing import Mapping, Optional


def integer_variable(name: str, environ: Optional[Mapping[str, str]] = None, minimum: int = 0,
                     maximum: Optional[int] = None, meaning: str = "") -> Optional[int]:
    """The integer in the environment variable ``name`` of ``environ`` (default os.environ); None when unset or blank.

    Raises:
        ValueError: naming the variable and its value when it is not an integer from ``minimum`` to ``maximum``
            (no upper bound when None); ``meaning`` is added to the message, e.g. ``" (0 turns recording off)"``.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {bounds}{meaning}, got {raw!r}")
    return value
