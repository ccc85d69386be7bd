"""Numbers printed beside a threshold: enough digits to show on which side of it they are."""

from __future__ import annotations

import math

MOST_DIGITS = 12


def beside_threshold(value: float, threshold: float, digits: int = 3) -> str:
    """``value`` with ``digits`` significant digits, or as many more as it takes for the printed
    number to fall on the same side of ``threshold`` as ``value`` and not on it: an excess of
    0.50031 over τ = 0.5 prints ``0.5003``, not ``0.5``; 0.61 prints ``0.61``; NaN ``nan``."""
    value, threshold = float(value), float(threshold)
    if not math.isfinite(value):
        return str(value)
    for shown in range(digits, MOST_DIGITS + 1):
        text = f"{value:.{shown}g}"
        printed = float(text)
        if value == threshold or (
            printed != threshold and (printed > threshold) == (value > threshold)
        ):
            return text
    return repr(value)
