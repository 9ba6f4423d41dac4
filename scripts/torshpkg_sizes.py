"""Byte sizes as the scripts take and print them: "1G", "256M", "512K", "1.5GiB", "4096" (binary
multiples, case-insensitive, optional B/iB suffix). Shared by scripts/bench (and, through it,
bench-filters and bench-verify) and scripts/gen-model.py, which find it next to themselves:

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from torshpkg_sizes import parse_size, human_size

Only the Python 3 standard library.
"""
from __future__ import annotations

import argparse


def parse_size(s: str, *, allow_zero: bool = False, examples: str = "1G, 256M, 1M") -> int:
    """Bytes of `s`, for argparse's type=: a bad or negative size (or zero, unless allow_zero) raises
    ArgumentTypeError, whose message names `examples`."""
    t = s.strip().upper()
    for suffix in ("IB", "B"):
        if t.endswith(suffix) and len(t) > len(suffix) and t[-len(suffix) - 1] in "KMGT":
            t = t[: -len(suffix)]
            break
    mult = 1
    if t and t[-1] in "KMGT":
        mult = 1024 ** ("KMGT".index(t[-1]) + 1)
        t = t[:-1]
    try:
        v = float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {s!r} (e.g. {examples})")
    if v < 0 or (v == 0 and not allow_zero):
        raise argparse.ArgumentTypeError(f"bad size {s!r}")
    return int(v * mult)


def human_size(n: int) -> str:
    """The shortest exact spelling: 1073741824 -> "1G", 1536 -> "1536", 3 << 20 -> "3M"."""
    for unit, mult in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)
