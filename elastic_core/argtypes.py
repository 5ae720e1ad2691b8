"""Argument types for the command lines: a bad number is refused by argparse itself, with the usage line
and `error: argument --steps: -5: expected a whole number >= 1`, exit code 2, before any work starts
(a negative step count once trained silently for minutes and wrote a file that said "steps -5")."""
from __future__ import annotations

import argparse
import math


def _number(kind, text: str, what: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: expected {what}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text}: expected {what}")
    return v


def int_at_least(lo: int):
    """An int >= lo (1: a count of steps or samples; 0: a count that may be zero)."""
    what = f"a whole number >= {lo}"

    def parse(text: str) -> int:
        v = _number(int, text, what)
        if v < lo:
            raise argparse.ArgumentTypeError(f"{text}: expected {what}")
        return v
    parse.__name__ = "int"  # argparse names the type in its own messages
    return parse


def float_in(lo: float, hi: float = math.inf, lo_open: bool = False):
    """A finite float in [lo, hi] ((lo, hi] with lo_open: a learning rate must be above 0)."""
    what = f"a number {'>' if lo_open else '>='} {lo:g}" + ("" if hi == math.inf else f" and <= {hi:g}")

    def parse(text: str) -> float:
        v = _number(float, text, what)
        if v < lo or (lo_open and v == lo) or v > hi:
            raise argparse.ArgumentTypeError(f"{text}: expected {what}")
        return v
    parse.__name__ = "float"
    return parse


POSITIVE_INT = int_at_least(1)
COUNT = int_at_least(0)
POSITIVE_FLOAT = float_in(0.0, lo_open=True)
NON_NEGATIVE_FLOAT = float_in(0.0)
FRACTION = float_in(0.0, 1.0)  # a target share (rho_g, rho_w)
