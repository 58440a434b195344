"""The statistics of one cell: its rounds summarised for tables, plots and ``compare``, and the intervals that
say how far a figure can be trusted.

Why it is built this way:

* Latency percentiles come from the exact merge of the rounds' HDR histograms
  (``merged_hdr``), never from averaged per-round percentiles.
* Throughput is pyperf-style: the median over rounds; the cell is *unstable*
  when its spread reaches ``UNSTABLE_SPREAD`` of the median, the spread being
  ``robust_spread`` (MAD scaled to a standard deviation), which one outlier
  round cannot set, as it cannot move the median.  Outlier rounds (more than
  ``OUTLIER_SHARE`` from the median) are flagged on their own: a degraded
  round is the server's behaviour, which the report shows.
* Rounds are ``LoadResult`` objects, so every figure reads a typed field; a
  figure a round lacks counts as 0 (or is left out, for CPU per message)
  rather than failing the report of a damaged folder.

A cell is judged on one figure per round (``CellStats.figure``): msgs/s in
closed loop, p99 in open loop.  Its intervals are distribution-free, because
a handful of rounds is neither normal nor symmetric (a hiccup only ever
lowers a throughput or raises a p99):

* ``median_interval``: ``[x(k), x(n+1-k)]`` from order statistics, exact for
  any continuous distribution; 95% needs at least six rounds, and from nine
  on it leaves out the lowest and highest round.
* ``ratio_interval``: the Hodges-Lehmann estimate of B/A with the interval
  the exact Mann-Whitney null distribution picks among the pairwise log
  differences (Hollander & Wolfe).  Unlike a bootstrap of few rounds it keeps
  its level exactly, needs no seed (the same folders give the same verdict),
  and says when the rounds are too few (3 against 3 cannot give 95%).
"""

import base64
import functools
import math
import statistics
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

from sockbench.bench.schema import Cell, CellSummary, Datagrams, MergedLatency, merge_stalls
from sockbench.thresholds import LOSSY_SHARE, OUTLIER_SHARE, UNSTABLE_SPREAD

__all__ = [
    "CellStats", "decode_hdr", "merged_hdr", "recorded_buckets", "UNSTABLE_SPREAD", "CONFIDENCE", "median_interval", "ratio_interval",
    "ratio_intervals", "Interval", "RatioInterval", "FLAGS", "ROUND_FLAGS", "round_flags",
]

#: the confidence of every interval the suite, the report and compare show
CONFIDENCE = 0.95

#: every flag, in the order a cell lists them; UNSTABLE, OUTLIERS, WIDE-CI and LOSSY belong to a cell's rounds together
FLAGS = ("INVALID", "STARVED", "DISTURBED", "CLIENT-BOUND", "UNSTABLE", "OUTLIERS", "WIDE-CI", "BEHIND", "LOSSY")
#: the flags one round carries on its own, and when, given its cell's mode (a cell has one when a kept round has it)
ROUND_FLAGS = {
    "INVALID": lambda r, mode: not r.valid,
    "STARVED": lambda r, mode: bool(r.starved),
    "DISTURBED": lambda r, mode: bool(r.disturbed),
    "CLIENT-BOUND": lambda r, mode: bool(r.client_bound),
    "BEHIND": lambda r, mode: mode == "open" and bool(r.throughput.behind),
}


def round_flags(r, mode=None):
    """The flags round ``r`` carries on its own, in ``FLAGS`` order; ``mode`` is its cell's (default: its workload's)."""
    mode = r.workload.mode if mode is None else mode
    return [name for name, on in ROUND_FLAGS.items() if on(r, mode)]


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


def recorded_buckets(h):
    """``[(lowest, highest, count)]``: each bucket of histogram ``h`` that holds a count, in value order.

    Its lowest and highest equivalent values and its count, as hdrh's recorded
    iterator yields them (``value_iterated_to`` is ``highest``).  Read from the
    counts array in place: that iterator steps through every bucket of the
    layout in Python, tens of thousands per pass, for the few hundred that
    hold counts.
    """
    import numpy as np  # deferred: numpy is only needed for the report's percentiles

    counts = np.ctypeslib.as_array(h.counts)[: min(h.counts_len, h.encoder.payload.counts_len)]
    out = []
    for i in np.nonzero(counts)[0]:
        lowest = h.get_value_from_index(int(i))
        out.append((lowest, h.get_highest_equivalent_value(lowest), int(counts[i])))
    return out


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


@dataclass(frozen=True)
class Interval:
    """A confidence interval ``lo``..``hi`` of the ``median`` of ``n`` rounds, at ``confidence``.

    Unbounded (``lo`` -inf, ``hi`` inf, ``confidence`` 1) when ``n`` rounds are too few for the level asked.
    """

    median: float
    lo: float
    hi: float
    confidence: float
    n: int

    @property
    def bounded(self):
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def half_width(self):
        """The interval's larger distance from the median, as a fraction of the median (inf when unbounded)."""
        if not self.bounded or not (self.median > 0):
            return float("inf")
        return max(self.median - self.lo, self.hi - self.median) / self.median

    def text(self):
        """``±1.4%`` (or ``-0.8% / +2.1%`` when lopsided); ``none yet (n=5)`` when unbounded."""
        if not self.bounded or not (self.median > 0):
            return f"none yet (n={self.n})"
        down, up = (self.median - self.lo) / self.median, (self.hi - self.median) / self.median
        if abs(down - up) < 0.0005:
            return f"±{up:.1%}"
        return f"-{down:.1%} / +{up:.1%}"


def _binomial_tail(n, k):
    """P(Binomial(n, 1/2) <= k)."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def median_interval(values, level=CONFIDENCE):
    """The distribution-free interval of the median of ``values`` at ``level`` or above (an ``Interval``).

    The narrowest pair of order statistics ``x(k), x(n+1-k)`` whose exact
    confidence ``1 - 2 P(Binomial(n, 1/2) <= k-1)`` is at least ``level``.
    """
    x = sorted(float(v) for v in values if v is not None and math.isfinite(v))
    n = len(x)
    med = statistics.median(x) if x else float("nan")
    k, conf = 0, 1.0
    for cand in range(1, n // 2 + 1):
        c = 1.0 - 2.0 * _binomial_tail(n, cand - 1)
        if c < level:
            break
        k, conf = cand, c
    if k == 0:
        return Interval(med, float("-inf"), float("inf"), 1.0, n)
    return Interval(med, x[k - 1], x[n - k], conf, n)


#: above this many pairs, the Mann-Whitney null distribution is taken as normal (exact below: a few ms)
EXACT_PAIRS = 3600


@functools.lru_cache(maxsize=256)
def _u_null_counts(n, m):
    """How many of the C(n+m, n) rank splits give each U = 0..n*m: the Gaussian binomial [n+m choose n]_q."""
    top = n * m
    c = [1] + [0] * top
    for i in range(1, n + 1):
        k = m + i
        for u in range(top, k - 1, -1):  # times (1 - q^(m+i))
            c[u] -= c[u - k]
        for u in range(i, top + 1):  # over (1 - q^i), as a power series
            c[u] += c[u - i]
    return tuple(c)


@functools.lru_cache(maxsize=256)
def _hl_rank(n, m, level):
    """``(k, confidence)``: the interval is the k-th smallest and k-th largest of the n*m pairwise differences.

    k is the largest with ``P(U <= k-1) <= (1 - level) / 2`` under the null distribution of the
    Mann-Whitney U statistic; 0 when no such k exists (too few rounds for ``level``).
    """
    alpha2 = (1.0 - level) / 2.0
    if n * m <= EXACT_PAIRS:
        counts = _u_null_counts(n, m)
        total = math.comb(n + m, n)
        k, cum = 0, 0
        for c in counts:
            if (cum + c) / total > alpha2:
                break
            cum += c
            k += 1
        return k, 1.0 - 2.0 * cum / total
    # the normal approximation (with continuity correction) of U's distribution
    z = statistics.NormalDist().inv_cdf(1.0 - alpha2)
    k = int(math.floor(n * m / 2.0 - z * math.sqrt(n * m * (n + m + 1) / 12.0) - 0.5)) + 1
    return max(0, k), level


@dataclass(frozen=True)
class RatioInterval:
    """The Hodges-Lehmann estimate of B/A and its interval (0..inf when the rounds are too few), from n_a v n_b rounds."""

    estimate: float
    lo: float
    hi: float
    confidence: float
    n_a: int
    n_b: int

    @property
    def bounded(self):
        return self.lo > 0 and math.isfinite(self.hi)


def ratio_intervals(a, b, level=CONFIDENCE):
    """``ratio_interval`` for many comparisons at once: ``a`` (S, n) and ``b`` (S, m), positive values.

    Returns ``(estimate, lo, hi, confidence)``: three arrays of S ratios B/A and the interval's exact level.
    """
    import numpy as np  # deferred: numpy is only needed when intervals are computed

    la = np.log(np.asarray(a, dtype=float))
    lb = np.log(np.asarray(b, dtype=float))
    s, n = la.shape
    m = lb.shape[1]
    diffs = np.sort((lb[:, None, :] - la[:, :, None]).reshape(s, n * m), axis=1)
    estimate = np.exp(np.median(diffs, axis=1))
    k, conf = _hl_rank(n, m, level)
    if k == 0:
        return estimate, np.zeros(s), np.full(s, np.inf), 1.0
    return estimate, np.exp(diffs[:, k - 1]), np.exp(diffs[:, n * m - k]), conf


def ratio_interval(a, b, level=CONFIDENCE):
    """B/A of two sets of rounds (positive figures): the Hodges-Lehmann estimate and its interval."""
    va = [float(v) for v in a if v is not None and math.isfinite(v) and v > 0]
    vb = [float(v) for v in b if v is not None and math.isfinite(v) and v > 0]
    if not va or not vb:
        return RatioInterval(float("nan"), 0.0, float("inf"), 1.0, len(va), len(vb))
    est, lo, hi, conf = ratio_intervals([va], [vb], level)
    return RatioInterval(float(est[0]), float(lo[0]), float(hi[0]), float(conf), len(va), len(vb))


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
    #: the attempts set aside because they were disturbed, and measured again (not rounds)
    discarded: list = field(default_factory=list)
    #: the interval half-width the rounds ran to reach (the plan's ``ci``), when they ran until stable
    ci_target: float | None = None
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
    def robust_spread(self):
        """The spread over rounds that one outlier round cannot set, as a fraction of the median: the median
        absolute deviation times 1.4826 (a standard deviation's estimate for normal rounds)."""
        m, med = self.msgs, self.median
        if len(m) < 2 or med <= 0:
            return 0.0
        return 1.4826 * statistics.median(abs(x - med) for x in m) / med

    @property
    def unstable(self):
        return len(self.results) >= 2 and self.robust_spread >= UNSTABLE_SPREAD

    @property
    def outlier_rounds(self):
        """The rounds' msgs/s more than ``OUTLIER_SHARE`` from their median (of three rounds or more), as the
        spread is judged on msgs/s."""
        m, med = self.msgs, self.median
        if len(m) < 3 or med <= 0:
            return []
        return [x for x in m if abs(x - med) > OUTLIER_SHARE * med]

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
                buckets = recorded_buckets(h)
                cum = np.cumsum(np.array([n for _, _, n in buckets], dtype=np.int64))
                self._cdf = (np.array([hi for _, hi, _ in buckets], dtype=float) / self.hdr_scale, cum)
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
        return [1e6 / us for us in self.cpu_us_per_msg_rounds() if us > 0]

    @property
    def rss_peak_bytes(self):
        vals = [_num(r.server_proc.rss_peak_bytes) for r in self.results]
        return max(vals) if vals else 0.0

    @property
    def client_cpu_util(self):
        return _median([_num(r.client.cpu_util) for r in self.results])

    @property
    def engines(self):
        """The load loops that measured the cell's rounds (``schema.Client.engine_name``), sorted."""
        return sorted({r.client.engine_name for r in self.results})

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
    def client_stalls(self):
        """A polling client's stalls over every round of the cell (as its latency merges every round):
        ``(count, total s, longest s)``, or None when no round measured them (the client did not poll)."""
        stalls, total, longest = merge_stalls([r.client for r in self.results])
        return None if stalls is None else (stalls, total, longest)

    @property
    def client_stall_share(self):
        """The share of the cell's measured windows that its polling client lost to stalls (None: not measured)."""
        st = self.client_stalls
        window = sum(_num(r.workload.duration_s) for r in self.results)
        return None if st is None or window <= 0 else st[1] / window

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

    # --- the figure a cell is judged on, and its interval --------------------------------
    @property
    def figure_name(self):
        """What a round of this cell is judged on: msgs/s (closed loop) or its p99 latency (open loop)."""
        return "p99 µs" if self.cell.mode == "open" else "msgs/s"

    @property
    def higher_is_better(self):
        return self.cell.mode != "open"

    def figures(self):
        """The judged figure of every round that has one (msgs/s, or p99 µs in open loop)."""
        if self.cell.mode == "open":
            vals = [r.latency_us.p99 for r in self.results]
        else:
            vals = [r.throughput.msgs_per_s for r in self.results]
        return [float(v) for v in vals if v is not None and math.isfinite(v)]

    def figures_by_round(self):
        """The judged figure of each kept round, in round order (None where a round has none)."""
        vals = [r.latency_us.p99 if self.cell.mode == "open" else r.throughput.msgs_per_s for r in self.results]
        return [float(v) if v is not None and math.isfinite(v) else None for v in vals]

    def interval(self, level=CONFIDENCE):
        """The distribution-free interval of the median of ``figures()`` (``median_interval``)."""
        return median_interval(self.figures(), level)

    @property
    def wide(self):
        """The rounds ran until stable but stopped (budget, max rounds) with the interval still wider than the target."""
        return self.ci_target is not None and bool(self.results) and self.interval().half_width > self.ci_target

    # --- the machine and the connections ----------------------------------------------
    @property
    def remeasured(self):
        """How many rounds were measured again because they were disturbed."""
        return len({r.round_no for r in self.discarded})

    @property
    def disturbed_rounds(self):
        """Kept rounds that were disturbed (foreign load on their CPUs that measuring again did not escape)."""
        return sum(1 for r in self.results if r.disturbed)

    @property
    def disturbed(self):
        return self.disturbed_rounds > 0

    @property
    def starved(self):
        """The most connections any round left with no message completed in its window."""
        return max((r.starved for r in self.results), default=0)

    @property
    def held(self):
        """Other threads' long slices on the pinned CPUs (``Interference.held_s``, both sides) per kept round:
        ``(median s, most s, [(thread, pid, s over every round)] longest first)``; None when no round read them."""
        per_round, threads = [], {}
        for r in self.results:
            i = r.interference
            if i is None or i.held_s is None:
                continue
            per_round.append(i.held_s)
            for h in i.held_by or ():
                key = (h.get("thread"), h.get("pid"))
                threads[key] = threads.get(key, 0.0) + _num(h.get("s"))
        if not per_round:
            return None
        named = sorted(((t, p, v) for (t, p), v in threads.items()), key=lambda x: -x[2])
        return statistics.median(per_round), max(per_round), named

    def interference_summary(self):
        """``(server foreign, client foreign, steal)``: the worst share over the kept rounds (None when unmeasured)."""
        def worst(get):
            vals = [get(r.interference) for r in self.results if r.interference is not None]
            vals = [v for v in vals if v is not None]
            return max(vals) if vals else None

        steal = [worst(lambda i: i.server_steal), worst(lambda i: i.client_steal)]
        steal = [v for v in steal if v is not None]
        return worst(lambda i: i.server_foreign), worst(lambda i: i.client_foreign), (max(steal) if steal else None)

    # --- datagrams (udp) ---------------------------------------------------------------
    @property
    def datagrams(self):
        """The rounds' datagram accounting added up (``Datagrams``), or None for a stream cell."""
        parts = [r.datagrams for r in self.results if r.datagrams is not None]
        if not parts:
            return None
        return Datagrams.of(d.to_json() for d in parts)

    @property
    def loss_share(self):
        """Datagrams lost over datagrams sent, all rounds together (None for a stream cell or nothing sent)."""
        d = self.datagrams
        return d.loss_share if d is not None else None

    @property
    def lossy(self):
        share = self.loss_share
        return share is not None and share > LOSSY_SHARE

    def flags(self):
        """The cell's flags in ``FLAGS`` order: a round's flag when any kept round carries it, and the cell's own."""
        held = {name for r in self.results for name in round_flags(r, self.cell.mode)}
        unstable = self.unstable
        own = {
            "UNSTABLE": unstable,
            # in an unstable cell, rounds far from the median are its spread, not outliers
            "OUTLIERS": not unstable and bool(self.outlier_rounds),
            "WIDE-CI": self.wide,
            "LOSSY": self.lossy,
        }
        return [name for name in FLAGS if name in held or own.get(name)]

    def summary(self):
        """The cell over all its rounds as a ``CellSummary`` (what the suite puts into ``extra_info``)."""
        iv = self.interval()
        return CellSummary(
            rounds=len(self.results),
            remeasured=self.remeasured,
            figure=self.figure_name,
            figure_median=iv.median,
            figure_ci=(iv.lo, iv.hi) if iv.bounded else None,
            figure_ci_confidence=iv.confidence if iv.bounded else None,
            disturbed_rounds=self.disturbed_rounds,
            starved=self.starved,
            msgs_per_s_median=self.median,
            msgs_per_s_stdev=self.stdev,
            spread=self.spread,
            unstable=self.unstable,
            robust_spread=self.robust_spread,
            outlier_rounds=len(self.outlier_rounds),
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
            datagrams=self.datagrams,
        )
