"""Human sizes on the command line: ``64``, ``1k``, ``16k``, ``1m`` (k and m are powers of 1024)."""

import re

from sockbench.errors import UsageError

__all__ = ["parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmM]?)(i?[bB])?\s*$")


def parse_size(text):
    """``"16k"`` -> 16384.  A malformed size, or one under 1 byte, is a one-line usage error."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"bad size {text!r}; use bytes such as 64, 1k, 16k or 1m")
        value = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    if value < 1:
        raise UsageError(f"bad size {text!r}; a size is at least 1 byte")
    return value
