"""The statistics of one cell: its rounds summarised for tables, plots and ``compare``.

Why it is built this way: latency percentiles of a cell come from the exact
merge of its rounds' HDR histograms (``merged_hdr``), never from an average of
per-round percentiles, as HdrHistogram's users expect.  Throughput is
summarised pyperf-style: the median over rounds, with the standard deviation
as the spread; a spread of ``UNSTABLE_SPREAD`` (10%) of the median or more
marks the cell *unstable*.  The rounds are ``LoadResult`` objects
(``sockbench.bench.schema``), so every figure here reads a typed field; a
figure a round lacks counts as 0 (or is left out, for the CPU per message)
rather than failing the report of a damaged folder.
"""

import base64
import math
import statistics
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from sockbench.bench.schema import Cell, CellSummary, MergedLatency
from sockbench.thresholds import UNSTABLE_SPREAD

__all__ = ["CellStats", "decode_hdr", "merged_hdr", "UNSTABLE_SPREAD"]


def decode_hdr(text):
    """An ``hdr`` field (the base64 text of HdrHistogram's ``encode()``) -> a histogram, or None.

    Values are in nanoseconds, as the harness records them (``sockbench.bench.load.hdr``).
    """
    if not text:
        return None
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
        base64.b64decode(raw, validate=True)
        return HdrHistogram.decode(raw)
    except Exception:
        return None


def merged_hdr(results):
    """The exact merge of every ``LoadResult``'s latency histogram (None if none carries one)."""
    hists = [h for h in (decode_hdr(r.hdr) for r in results) if h is not None]
    if not hists:
        return None
    first = hists[0]
    total = HdrHistogram(
        first.lowest_trackable_value, first.highest_trackable_value, first.significant_figures
    )
    for h in hists:
        total.add(h)
    return total


def _num(x, default=0.0):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def _median(values):
    return statistics.median(values) if values else float("nan")


@dataclass
class CellStats:
    """All rounds of one (server, workload), summarised for tables and plots.

    ``results`` are the rounds as ``LoadResult`` objects, in round order.
    """

    cell: Cell
    results: list = field(default_factory=list)
    _hdr: object = field(default=None, repr=False, compare=False)
    _lat: object = field(default=None, repr=False, compare=False)
    _cdf: object = field(default=None, repr=False, compare=False)
    _runs: object = field(default=None, repr=False, compare=False)

    @property
    def runs(self):
        """The rounds as result dicts (``LoadResult.to_json()``), for code not yet reading ``results``."""
        if self._runs is None or len(self._runs) != len(self.results):
            self._runs = [r.to_json() for r in self.results]
        return self._runs

    # --- throughput ----------------------------------------------------------------
    @property
    def server(self):
        return self.cell.server

    @property
    def workload_id(self):
        return self.cell.workload_id

    @property
    def msgs(self):
        return [_num(r.throughput.msgs_per_s) for r in self.results]

    @property
    def median(self):
        return _median(self.msgs)

    @property
    def stdev(self):
        m = self.msgs
        return statistics.stdev(m) if len(m) >= 2 else 0.0

    @property
    def spread(self):
        """The standard deviation over rounds as a fraction of the median."""
        med = self.median
        return self.stdev / med if med > 0 else 0.0

    @property
    def unstable(self):
        return len(self.results) >= 2 and self.spread >= UNSTABLE_SPREAD

    @property
    def mb_per_s(self):
        return _median([_num(r.throughput.bytes_per_s) for r in self.results]) / 1e6

    @property
    def target_rate(self):
        return _median([_num(r.throughput.target_rate) for r in self.results])

    @property
    def achieved_rate(self):
        return _median([_num(r.throughput.achieved) for r in self.results])

    # --- latency (exact HDR merge) ----------------------------------------------------
    def hdr(self):
        """The exact merge of every round's histogram (values in nanoseconds), cached."""
        if self._hdr is None:
            self._hdr = (merged_hdr(self.results),)
        return self._hdr[0]

    def hdr_cdf(self):
        """``(values_us, cumulative_counts)`` of the merged histogram, one walk over it, cached.

        ``values_us[i]`` is the highest value of the i-th recorded bucket, so
        ``percentile_us`` applies HdrHistogram's own rounding rule to it, so it
        equals ``get_value_at_percentile`` at a fraction of its cost.
        """
        if self._cdf is None:
            import numpy as np  # deferred: numpy is only needed for the report's percentiles

            h = self.hdr()
            if h is None or h.get_total_count() == 0:
                self._cdf = (np.array([]), np.array([]))
            else:
                # the counts array, read in place: only the recorded buckets are visited
                counts = np.ctypeslib.as_array(h.counts)[: h.counts_len]
                idx = np.nonzero(counts)[0]
                vals = [h.get_highest_equivalent_value(h.get_value_from_index(int(i))) for i in idx]
                counts = counts[idx]
                cum = np.cumsum(counts.astype(np.int64))
                self._cdf = (np.asarray(vals, dtype=float) / self.hdr_scale, cum)
        return self._cdf

    def percentile_us(self, pct):
        """Latency at percentile ``pct`` (0-100) in microseconds from the merged histogram, or NaN."""
        import numpy as np  # deferred: as in hdr_cdf

        vals, cum = self.hdr_cdf()
        if not len(vals):
            return float("nan")
        total = int(cum[-1])
        target = max(1, min(total, int(min(100.0, pct) / 100.0 * total + 0.5)))
        i = np.searchsorted(cum, target, side="left")
        return float(vals[min(int(i), len(vals) - 1)])

    def latency_summary(self):
        """The cell's latency over every round as a ``MergedLatency`` (µs), cached.

        Percentiles come from the merged histogram; the mean is the
        count-weighted mean of the rounds' exact means (HdrHistogram's own mean
        walks every bucket, which is slow and only bucket-accurate).
        """
        if self._lat is not None:
            return self._lat
        h = self.hdr()
        means = [(_num(r.latency_us.mean), _num(r.latency_us.count, 1.0)) for r in self.results]
        weight = sum(w for _, w in means)
        mean = sum(m * w for m, w in means) / weight if weight > 0 else float("nan")
        if h is not None and h.get_total_count() > 0:
            pct = {name: self.percentile_us(p) for name, p in MergedLatency.PERCENTILES}
            out = MergedLatency(count=h.get_total_count(), max=h.get_max_value() / self.hdr_scale, mean=mean,
                                source="hdr", **pct)
        else:
            # no histogram: fall back to the per-round figures (the median, marked as such)
            def med(name):
                return _median([_num(getattr(r.latency_us, name)) for r in self.results])

            out = MergedLatency(count=0, p50=med("p50"), p90=med("p90"), p99=med("p99"), p999=med("p999"),
                                max=med("max"), mean=mean, source="median of rounds")
        self._lat = out
        return out

    def latency(self):
        """``latency_summary()`` as a dict: ``{p50, p90, p99, p999, max, mean, count, source}``."""
        return self.latency_summary().to_json()

    @property
    def hdr_scale(self):
        """Histogram units per microsecond: 1000 (nanoseconds, the harness's unit) unless a run says ``hdr_unit: us``."""
        units = {str(r.hdr_unit) for r in self.results}
        return 1.0 if units == {"us"} else 1000.0

    # --- CPU, memory, errors, flags -----------------------------------------------
    @property
    def cpu_us_per_msg(self):
        """The server's user+sys CPU µs per message, median over rounds."""
        vals = self.cpu_us_per_msg_rounds()
        return _median(vals) if vals else float("nan")

    def _per_msg(self, user, sys_):
        """Per round: the server's CPU µs per message (user and/or sys); an unread figure counts as 0."""
        return [(_num(r.server_proc.us_per_msg.user) if user else 0.0) + (_num(r.server_proc.us_per_msg.sys) if sys_ else 0.0)
                for r in self.results]

    def cpu_us_per_msg_rounds(self):
        return self._per_msg(True, True)

    def user_us_per_msg_rounds(self):
        return self._per_msg(True, False)

    @property
    def user_us_per_msg(self):
        """The server's user CPU µs per message, median over rounds (the interpreter's share; sys is the kernel's)."""
        vals = self.user_us_per_msg_rounds()
        return _median(vals) if vals else float("nan")

    @property
    def msgs_per_cpu_s(self):
        us = self.cpu_us_per_msg
        return 1e6 / us if us and us > 0 and math.isfinite(us) else float("nan")

    def msgs_per_cpu_s_rounds(self):
        out = []
        for r in self.results:
            per = r.server_proc.us_per_msg
            us = _num(per.user) + _num(per.sys)
            if us > 0:
                out.append(1e6 / us)
        return out

    @property
    def rss_peak_bytes(self):
        vals = [_num(r.server_proc.rss_peak_bytes) for r in self.results]
        return max(vals) if vals else 0.0

    @property
    def client_cpu_util(self):
        return _median([_num(r.client.cpu_util) for r in self.results])

    @property
    def client_polling(self):
        """True when the client polled (open loop): its CPU is then always ~100%, its busy share is its load."""
        return any(r.client.polling for r in self.results)

    @property
    def client_load(self):
        """What decides client-bound: the busy share of a polling client, else its CPU utilisation (median)."""
        polling = self.client_polling
        return _median([_num(r.client.busy_util if polling else r.client.cpu_util) for r in self.results])

    @property
    def errors_total(self):
        return int(sum(_num(r.errors.total) for r in self.results))

    @property
    def errors_by_kind(self):
        out = {}
        for r in self.results:
            for k, v in r.errors.by_kind.items():
                out[k] = out.get(k, 0) + int(_num(v))
        return out

    @property
    def client_bound(self):
        return any(bool(r.client_bound) for r in self.results)

    @property
    def invalid(self):
        return any(not r.valid for r in self.results)

    @property
    def invalid_reasons(self):
        return sorted({str(r.invalid_reason) for r in self.results if not r.valid and r.invalid_reason})

    @property
    def behind(self):
        """Open loop: did the client fall behind its schedule in any round?"""
        return any(bool(r.throughput.behind) for r in self.results)

    def flags(self):
        out = []
        if self.invalid:
            out.append("INVALID")
        if self.client_bound:
            out.append("CLIENT-BOUND")
        if self.unstable:
            out.append("UNSTABLE")
        if self.cell.mode == "open" and self.behind:
            out.append("BEHIND")
        return out

    def summary(self):
        """The cell over all its rounds as a ``CellSummary`` (what the suite puts into ``extra_info``)."""
        return CellSummary(
            msgs_per_s_median=self.median,
            msgs_per_s_stdev=self.stdev,
            spread=self.spread,
            unstable=self.unstable,
            mb_per_s_median=self.mb_per_s,
            latency_us=self.latency_summary(),
            server_cpu_us_per_msg=self.cpu_us_per_msg,
            server_user_us_per_msg=self.user_us_per_msg,
            server_rss_peak_bytes=self.rss_peak_bytes,
            client_cpu_util=self.client_cpu_util,
            client_load=self.client_load,
            errors_total=self.errors_total,
            errors_by_kind=self.errors_by_kind,
            valid=not self.invalid,
            client_bound=self.client_bound,
            invalid_reasons=self.invalid_reasons,
            flags=self.flags(),
        )
