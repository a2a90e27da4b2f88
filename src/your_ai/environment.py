"""Numbers read from environment variables: the one reader of a setting such as ``WORLD_SIZE``,
``YOUR_AI_DOWNLOAD_RETRIES`` or ``YOUR_AI_SAFETY_MIN_AVAILABLE_GB``, with its default and its one-line error."""

from __future__ import annotations

import math
import os
from typing import Mapping


def env_number(name: str, default, *, whole: bool = False, unit: str = "", error: type[Exception] = ValueError,
               environ: Mapping[str, str] | None = None):
    """The non-negative number in the environment variable ``name`` (an ``int`` when ``whole``, else a
    ``float``), ``default`` when it is unset or blank. Any other value raises ``error`` with one line naming the
    variable and its value (``unit``, e.g. " of GB", says what the number counts)."""
    text = (os.environ if environ is None else environ).get(name)
    if text is None or not text.strip():
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = math.nan
    if not value >= 0:
        raise error(f"{name}={text!r} is not a non-negative {'whole ' if whole else ''}number{unit}")
    return value
