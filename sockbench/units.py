"""Human sizes on the command line: ``64``, ``1k``, ``16k``, ``1m`` (k and m are powers of 1024)."""

from sockbench.errors import UsageError

__all__ = ["parse_size", "format_size"]

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2, "mib": 1024**2}


def parse_size(text):
    """``"16k"`` -> 16384.  A malformed size is a one-line usage error."""
    raw = str(text).strip().lower()
    digits = raw.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = raw[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS:
        raise UsageError(f"bad size {text!r}; use bytes such as 64, 1k, 16k or 1m")
    return int(digits) * _UNITS[unit]


def format_size(n):
    """16384 -> ``"16k"``: the inverse of parse_size for exact multiples."""
    for suffix, unit in (("m", 1024**2), ("k", 1024)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)
