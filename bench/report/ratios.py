"""Paired ratios within a run: each server's figure against the fastest one's (or a baseline's), and ranks.

Why it is built this way: in a run measured in passes (``suite.session``)
the rounds of one workload in one pass ran within seconds of each other, so
whatever the machine was doing then weighed on all of them alike.  A ratio
of two servers taken pass by pass leaves that out, where the ratio of two
medians keeps it: the rounds of two cells are pairs.  So:

* ``paired_interval``: the Hodges-Lehmann estimate of the median log ratio
  of the pairs (the median of the Walsh averages, the pairwise means of the
  log ratios) and its distribution-free interval from the exact null
  distribution of Wilcoxon's signed-rank statistic (Hollander & Wolfe, as
  ``stats.ratio_interval`` does for two unpaired samples; exact up to
  ``EXACT_PAIRS`` pairs, a normal approximation above).  It assumes the log
  ratios are symmetric about their median, which a ratio of two servers'
  throughputs under the same passing load is far closer to than either
  figure is alone.  Five pairs cannot give 95% (the interval then reads
  unbounded); six can.
* ``ratio``: one server's cell against another's at the same workload:
  paired when both cells' rounds carry their pass (``cell.pass``) and share
  at least one, else (a folder written before the passes, or cells that
  never met in a pass) the unpaired interval of ``stats.ratio_interval``,
  and says which.
* ``workload_ratios``: every server of one workload against the reference,
  the fastest valid one (the highest median msgs/s in closed loop, the
  lowest median p99 in open loop) or ``baseline`` when it is there; and the
  ranks with ties: a server ranks below another only when the interval of
  their ratio lies wholly on the worse side of 1, so two servers the pairs
  cannot tell apart share a rank (``2=``).
"""

import functools
import math
import statistics
from dataclasses import dataclass, field

from sockbench.bench.report.stats import CONFIDENCE, ratio_interval

__all__ = ["PairedRatio", "WorkloadRatios", "paired_interval", "pairs", "ratio", "workload_ratios", "EXACT_PAIRS"]

#: above this many pairs the signed-rank statistic's null distribution is taken as normal
EXACT_PAIRS = 200


@functools.lru_cache(maxsize=256)
def _signed_rank_counts(n):
    """How many of the 2**n sign choices give each signed-rank sum W+ = 0..n(n+1)/2."""
    top = n * (n + 1) // 2
    c = [1] + [0] * top
    for rank in range(1, n + 1):
        for w in range(top, rank - 1, -1):
            c[w] += c[w - rank]
    return tuple(c)


@functools.lru_cache(maxsize=256)
def _walsh_rank(n, level):
    """``(k, confidence)``: the interval is the k-th smallest and k-th largest Walsh average; k 0 when the pairs
    are too few for ``level``."""
    alpha2 = (1.0 - level) / 2.0
    if n <= EXACT_PAIRS:
        counts = _signed_rank_counts(n)
        total = 2**n
        k, cum = 0, 0
        for c in counts:
            if (cum + c) / total > alpha2:
                break
            cum += c
            k += 1
        return k, 1.0 - 2.0 * cum / total
    m = n * (n + 1) / 2.0
    z = statistics.NormalDist().inv_cdf(1.0 - alpha2)
    k = int(math.floor(m / 2.0 - z * math.sqrt(n * (n + 1) * (2 * n + 1) / 24.0) - 0.5)) + 1
    return max(0, k), level


def paired_interval(log_ratios, level=CONFIDENCE):
    """``(estimate, lo, hi, confidence)`` of the median of paired log ratios (see the module doc); lo/hi are
    -inf/inf and the confidence 1 when the pairs are too few for ``level``."""
    x = [float(v) for v in log_ratios if v is not None and math.isfinite(v)]
    n = len(x)
    if not n:
        return float("nan"), float("-inf"), float("inf"), 1.0
    walsh = sorted((x[i] + x[j]) / 2.0 for i in range(n) for j in range(i, n))
    estimate = statistics.median(walsh)
    k, conf = _walsh_rank(n, level)
    if k == 0:
        return estimate, float("-inf"), float("inf"), 1.0
    return estimate, walsh[k - 1], walsh[len(walsh) - k], conf


@dataclass(frozen=True)
class PairedRatio:
    """``server``'s figure over ``reference``'s: the estimate and its interval (0..inf when unbounded).

    ``pairs`` counts the passes both were measured in (``paired``), or with ``paired`` False the rounds of
    ``server`` (the interval is then the unpaired one of two sets of rounds).
    """

    server: str
    reference: str
    estimate: float
    lo: float
    hi: float
    confidence: float
    pairs: int
    paired: bool
    higher_is_better: bool = True

    @property
    def bounded(self):
        return self.lo > 0 and math.isfinite(self.hi)

    @property
    def better(self):
        """The whole interval lies on the better side of 1 (higher msgs/s, lower p99)."""
        return self.bounded and (self.lo > 1.0 if self.higher_is_better else self.hi < 1.0)

    @property
    def worse(self):
        """The whole interval lies on the worse side of 1."""
        return self.bounded and (self.hi < 1.0 if self.higher_is_better else self.lo > 1.0)

    def text(self):
        """``0.85× (0.83–0.87)``, ``0.85× (no interval yet, 5 pairs)``; ``unpaired`` when not from pairs."""
        if not math.isfinite(self.estimate):
            return "n/a"
        how = "" if self.paired else ", unpaired"
        if not self.bounded:
            what = "pairs" if self.paired else "rounds"
            return f"{self.estimate:.2f}× (no interval yet, {self.pairs} {what})"
        return f"{self.estimate:.2f}× ({self.lo:.2f}–{self.hi:.2f}{how})"


def pairs(a, b):
    """The figures of cells ``a`` and ``b`` (``CellStats``) pass by pass: ``[(a's, b's)]`` for each pass both have a
    kept round in, in pass order ([] when either lacks pass numbers)."""
    fa = _by_pass(a)
    fb = _by_pass(b)
    return [(fa[p], fb[p]) for p in sorted(set(fa) & set(fb))]


def _by_pass(c):
    out = {}
    figures = c.figures_by_round()
    for r, v in zip(c.results, figures):
        p = r.pass_no
        if p is not None and v is not None and v > 0 and math.isfinite(v):
            out[p] = v
    return out


def ratio(cell, reference, level=CONFIDENCE):
    """``cell``'s figure over ``reference``'s (two ``CellStats`` of one workload) as a ``PairedRatio``."""
    higher = cell.higher_is_better
    if cell is reference:
        return PairedRatio(cell.server, reference.server, 1.0, 1.0, 1.0, 1.0, len(cell.results), bool(_by_pass(cell)),
                           higher)
    matched = pairs(cell, reference)
    if matched:
        est, lo, hi, conf = paired_interval([math.log(a / b) for a, b in matched], level)
        return PairedRatio(cell.server, reference.server, math.exp(est), math.exp(lo), math.exp(hi), conf,
                           len(matched), True, higher)
    iv = ratio_interval(reference.figures(), cell.figures(), level)
    return PairedRatio(cell.server, reference.server, iv.estimate, iv.lo, iv.hi, iv.confidence, iv.n_b, False, higher)


@dataclass
class WorkloadRatios:
    """One workload's servers against its reference: ``ratios`` by server, ``ranks`` (``"1"``, ``"2="`` ...)."""

    reference: str | None
    baseline: bool
    ratios: dict = field(default_factory=dict)
    ranks: dict = field(default_factory=dict)
    #: (a, b) -> the ratio of a over b, for every ordered pair of valid servers
    pairwise: dict = field(default_factory=dict)

    @property
    def paired(self):
        return bool(self.ratios) and all(r.paired for r in self.ratios.values())

    def leaders(self):
        """The servers ranked first (tied or not)."""
        return [s for s, r in self.ranks.items() if r in ("1", "1=")]


def _valid(c):
    return not c.invalid and math.isfinite(c.interval().median) and c.figures()


def workload_ratios(cells, baseline=None, level=CONFIDENCE):
    """The ``WorkloadRatios`` of ``cells`` (``CellStats`` of one workload, one per server)."""
    good = [c for c in cells if _valid(c)]
    if not good:
        return WorkloadRatios(None, False, ranks={c.server: "n/a" for c in cells})
    higher = good[0].higher_is_better
    by_server = {c.server: c for c in good}
    if baseline is not None and baseline in by_server:
        ref, is_base = by_server[baseline], True
    else:
        pick = max if higher else min
        ref, is_base = pick(good, key=lambda c: c.interval().median), False
    out = WorkloadRatios(ref.server, is_base)
    out.ratios = {c.server: ratio(c, ref, level) for c in good}
    for a in good:
        for b in good:
            if a is not b:
                out.pairwise[(a.server, b.server)] = ratio(a, b, level)
    beaten = {c.server: sum(1 for o in good if o is not c and out.pairwise[(o.server, c.server)].better)
              for c in good}
    for s, n in beaten.items():
        rank = 1 + n
        shared = sum(1 for v in beaten.values() if v == n) > 1
        out.ranks[s] = f"{rank}=" if shared else str(rank)
    for c in cells:
        out.ranks.setdefault(c.server, "n/a")
    return out
