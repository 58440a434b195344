"""Values as people type them and as sockbench prints them: sizes, numbers, ports, CPU lists, percentages, addresses.

The one set of parsers behind every command-line option.  Each raises a
``UsageError`` whose message names the option and says what to type instead;
the command line prints it as one line and exits 2.  ``arg(parse, name)``
turns a parser into an argparse ``type=``.
"""

import re

from sockbench.errors import UsageError

__all__ = ["parse_size", "format_size", "parse_number", "parse_port", "parse_cpus", "parse_percent", "parse_scheduler",
           "arg"]

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kKmM]?)(i?[bB])?\s*$")


def parse_size(text, name="size"):
    """``"16k"`` -> 16384 (k and m are powers of 1024).  A malformed size, or one under 1 byte, is a usage error."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"bad {name} {text!r}; use bytes such as 64, 1k, 16k or 1m")
        value = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    if value < 1:
        raise UsageError(f"bad {name} {text!r}; a size is at least 1 byte")
    return value


def format_size(n):
    """Bytes as the short label of cell names, tables and plots: 64B, 1KiB, 16KiB, 1MiB."""
    n = int(n)
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n >> 10}KiB"
    return f"{n}B"


def parse_number(text, kind=float, name="value", positive=False):
    """``kind(text)`` (int or float); ``positive`` also demands > 0."""
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise UsageError(f"bad {name} {text!r}; use {what}") from None
    if value != value or (positive and not value > 0):  # NaN, or not > 0
        raise UsageError(f"bad {name} {text!r}; use {what} > 0")
    return value


def parse_port(text, name="port"):
    """``"8080"`` -> 8080: a TCP port from 0 to 65535 (0 lets the kernel pick a free one)."""
    try:
        value = text if isinstance(text, int) else int(str(text).strip())
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 65535:
        raise UsageError(f"bad {name} {text!r}; use a port from 0 to 65535 (0 picks a free one)")
    return value


def parse_cpus(text, name="CPU list"):
    """``"0"``, ``"0,2"``, ``"1-3"`` -> a sorted tuple of CPU numbers."""
    cpus = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                lo, hi = int(lo), int(hi)
                if lo > hi:
                    raise ValueError
                cpus.update(range(lo, hi + 1))
            else:
                cpus.add(int(part))
        except ValueError:
            raise UsageError(f"bad {name} {text!r}; use e.g. 0, 0,2 or 1-3") from None
    if not cpus or min(cpus) < 0:
        raise UsageError(f"bad {name} {text!r}; use e.g. 0, 0,2 or 1-3")
    return tuple(sorted(cpus))


def parse_percent(text, name="percentage"):
    """``5%`` or ``5`` -> 0.05, from 0% up to (not including) 100%."""
    s = str(text).strip()
    try:
        v = float(s[:-1] if s.endswith("%") else s)
    except ValueError:
        raise UsageError(f"bad {name} {text!r}; use a value such as 5%") from None
    if not 0 <= v < 100:
        raise UsageError(f"bad {name} {text!r}; use a value from 0% to 100%")
    return v / 100.0


_SCHEDULER_RE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/\[\]]+))"
                           r"(?::(?P<port>[^/]*))?$")


def parse_scheduler(text, name="--scheduler"):
    """A Dask scheduler's address, ``tcp://HOST:PORT`` (``[V6]`` for an IPv6 host), checked before anything connects.

    Only ``tcp`` is accepted (what ``dask scheduler`` listens on, and all
    sockbench configures), and the port must be 1..65535; without a port it
    is Dask's 8786.  Returns the address with its port spelled out.
    """
    text = str(text).strip()
    hint = "use tcp://HOST:PORT (`dask scheduler` listens on port 8786)"
    m = _SCHEDULER_RE.match(text)
    if not m:
        raise UsageError(f"bad {name} {text!r}; {hint}")
    if m.group("scheme").lower() != "tcp":
        raise UsageError(f"bad {name} {text!r}: sockbench reaches a Dask scheduler over tcp only; {hint}")
    port = m.group("port")
    if port is None:
        port = "8786"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UsageError(f"bad {name} {text!r}: the port must be from 1 to 65535; {hint}")
    host = f"[{m.group('v6')}]" if m.group("v6") else m.group("host")
    return f"tcp://{host}:{int(port)}"


def arg(parse, name, **kw):
    """An argparse ``type=`` that parses with ``parse(text, name=name, **kw)``; a bad value is one usage line."""

    def conv(text):
        return parse(text, name=name, **kw)

    conv.__name__ = name
    return conv
