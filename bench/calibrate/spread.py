"""A figure over repeats as its median with its spread: the summary every benchmark script prints.

One place, so that ``server_cpu``, ``vs_reference``, ``framed_load``, ``pacing_check`` and
``framed_cpu`` summarise and print repeats the same way: ``median [min..max]``.
"""

import statistics

__all__ = ["spread", "fmt_spread"]


def spread(values):
    """``{"median", "min", "max", "n"}`` of the values that were measured (None and NaN left out), or None."""
    xs = [v for v in values if v is not None and v == v]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def fmt_spread(st, spec=",.0f"):
    """``"1,234 [1,200..1,250]"`` with ``spec`` as a format spec; ``"-"`` when nothing was measured."""
    if st is None:
        return "-"
    return f"{st['median']:{spec}} [{st['min']:{spec}}..{st['max']:{spec}}]"
