"""HDR latency histograms: one layout shared by the Cython hot loop and the ``hdrhistogram`` package.

Why it is built this way: the load loop runs without the GIL and must not call
Python per message, so it cannot call ``HdrHistogram.record_value``.  Instead
it increments a plain C array of counts laid out exactly like HdrHistogram's
own counts array (same lowest/highest trackable value, 3 significant digits,
so the same index for every value).  ``LAYOUT`` carries the few integers the C
code needs to compute that index.  After the run, ``from_buckets`` moves the
non-zero buckets into a real ``HdrHistogram`` through its public API (each
bucket's representative value maps back to the same bucket, so the move is
exact), and from there the package does everything else: encoding for the
wire and for the result JSON, exact merging across load processes
(encode -> decode -> add) and percentiles.  Percentiles are never averaged.

Values are recorded in nanoseconds; summaries are reported in microseconds.
"""

from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

__all__ = [
    "LOWEST_NS",
    "HIGHEST_NS",
    "SIGNIFICANT_DIGITS",
    "LAYOUT",
    "Layout",
    "new_histogram",
    "from_buckets",
    "merge_encoded",
    "summary_us",
    "PERCENTILES",
]

LOWEST_NS = 1
#: 100 s: anything slower is clamped to this (a run is far shorter than that).
HIGHEST_NS = 100 * 1_000_000_000
SIGNIFICANT_DIGITS = 3

#: (result key, percentile) for the summaries in the result JSON
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def new_histogram():
    """An empty histogram with the one layout sockbench uses everywhere."""
    return HdrHistogram(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)


@dataclass(frozen=True)
class Layout:
    """What the C code needs to compute HdrHistogram's counts index of a value."""

    unit_magnitude: int
    sub_bucket_half_count_magnitude: int
    sub_bucket_mask: int
    counts_len: int
    highest: int


def _layout():
    h = new_histogram()
    return Layout(
        unit_magnitude=h.unit_magnitude,
        sub_bucket_half_count_magnitude=h.sub_bucket_half_count_magnitude,
        sub_bucket_mask=h.sub_bucket_mask,
        counts_len=h.counts_len,
        highest=HIGHEST_NS,
    )


LAYOUT = _layout()


def from_buckets(buckets):
    """Build an ``HdrHistogram`` from ``(index, count)`` pairs of a counts array laid out as ``LAYOUT``.

    The Cython loop hands back only its non-zero buckets.  Each bucket's
    representative value maps back to the same index, so the copy is exact.
    """
    h = new_histogram()
    for index, count in buckets:
        if not 0 <= index < LAYOUT.counts_len:
            raise ValueError(f"bucket index {index} outside the layout (0..{LAYOUT.counts_len - 1})")
        if count:
            h.record_value(h.get_value_from_index(index), count)
    return h


def merge_encoded(encoded):
    """Merge encoded histograms (one per load process) exactly into one histogram."""
    total = new_histogram()
    for blob in encoded:
        if blob:
            total.decode_and_add(blob)
    return total


def summary_us(h, exact_mean_ns=None):
    """p50/p90/p99/p999/max/mean in microseconds (``None`` each when nothing was recorded).

    ``exact_mean_ns`` (the loop's exact sum / count) is preferred to the
    histogram's bucket-midpoint mean when given.
    """
    n = h.get_total_count()
    out = {"count": n}
    if not n:
        out.update({k: None for k, _ in PERCENTILES})
        out.update(max=None, mean=None)
        return out
    for key, pct in PERCENTILES:
        out[key] = round(h.get_value_at_percentile(pct) / 1000.0, 3)
    out["max"] = round(h.get_max_value() / 1000.0, 3)
    mean_ns = exact_mean_ns if exact_mean_ns is not None else h.get_mean_value()
    out["mean"] = round(mean_ns / 1000.0, 3)
    return out
