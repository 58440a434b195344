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

Values are recorded in nanoseconds; summaries are reported in microseconds,
as the result schema's ``Latency``.
"""

from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

from sockbench.bench.schema import Latency

__all__ = [
    "LOWEST_NS",
    "HIGHEST_NS",
    "SIGNIFICANT_DIGITS",
    "LAYOUT",
    "Layout",
    "new_histogram",
    "from_buckets",
    "merge_encoded",
    "encode_text",
    "summary_us",
]

LOWEST_NS = 1
#: 100 s: anything slower is clamped to this (a run is far shorter than that).
HIGHEST_NS = 100 * 1_000_000_000
SIGNIFICANT_DIGITS = 3


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


def encode_text(h):
    """HdrHistogram's base64 encoding of ``h`` as text, or None for an empty histogram."""
    if not h.get_total_count():
        return None
    blob = h.encode()
    return blob.decode() if isinstance(blob, bytes) else blob


def summary_us(h, exact_mean_ns=None):
    """The ``Latency`` summary of ``h`` in microseconds (every figure ``None`` when nothing was recorded).

    ``exact_mean_ns`` (the loop's exact sum / count) is preferred to the
    histogram's bucket-midpoint mean when given.
    """
    n = h.get_total_count()
    if not n:
        return Latency(count=n)
    pct = {name: round(h.get_value_at_percentile(p) / 1000.0, 3) for name, p in Latency.PERCENTILES}
    mean_ns = exact_mean_ns if exact_mean_ns is not None else h.get_mean_value()
    return Latency(count=n, max=round(h.get_max_value() / 1000.0, 3), mean=round(mean_ns / 1000.0, 3), **pct)
