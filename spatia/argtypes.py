"""argparse types that check ranges, so a bad value is reported by the flag's CLI name (``argument --width: must
be >= 8, got 0``) before it reaches code whose own checks name internal fields (``fx``, ``num_frames``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """An int (or float with ``kind=float``) >= ``minimum``."""

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not (v >= minimum and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        return v

    parse.__name__ = kind.__name__  # argparse's "invalid <name> value" fallback reads it
    return parse


def positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}")
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return v
