"""The statistics behind ``sockbench compare``, proved on synthetic rounds.

``compare`` calls a cell slower or faster only when the whole Hodges-Lehmann
95% interval of B/A lies beyond the threshold (5%), and "same" only when it
lies within.  The simulations assume what the default run gives at the least:
5 rounds per cell on each side (``--min-rounds``), each round's figure the
true value times ``1 + 0.05 z`` with z standard normal ("5% noise"), drawn
from a fixed seed so the test is deterministic.  They check what compare
promises (no real change: at most 5% of cells called changed; a 20% change: at
least 95% called), and the interval's own promise (it holds the true ratio in
at least 95% of the cells), over 4000 cells each, in well under a second.
"""

import math

import numpy as np
import pytest

from sockbench.bench.report import stats as stats_mod
from sockbench.bench.report.compare import DEFAULT_THRESHOLD, UNDECIDED, verdict
from sockbench.bench.report.stats import RatioInterval, _hl_rank, _u_null_counts, ratio_interval, ratio_intervals

ROUNDS = 5          # per cell and side: the default --min-rounds
NOISE = 0.05        # the relative standard deviation of a round's figure
CELLS = 4000        # simulated cells per scenario


def _rounds(rng, true_value, n=ROUNDS, cells=CELLS, noise=NOISE):
    return true_value * (1.0 + noise * rng.standard_normal((cells, n)))


def _verdicts(a, b, higher_is_better=True, threshold=DEFAULT_THRESHOLD):
    est, lo, hi, conf = ratio_intervals(a, b)
    return [verdict(RatioInterval(e, l, h, conf, a.shape[1], b.shape[1]), higher_is_better, threshold)[0]
            for e, l, h in zip(est, lo, hi)]


# --- the interval -------------------------------------------------------------------------------


def test_mann_whitney_null_distribution_is_exact():
    # 2 v 2: the 6 splits give U = 0, 1, 2, 2, 3, 4
    assert _u_null_counts(2, 2) == (1, 1, 2, 1, 1)
    for n, m in ((3, 3), (5, 5), (5, 8), (12, 9)):
        counts = _u_null_counts(n, m)
        assert sum(counts) == math.comb(n + m, n) and counts == counts[::-1]


@pytest.mark.parametrize("n, m, k", [
    # the published two-sided 5% critical values of U (k - 1): 5v5: 2, 6v6: 5, 8v8: 13, 10v10: 23, 5v8: 6
    (5, 5, 3), (6, 6, 6), (8, 8, 14), (10, 10, 24), (5, 8, 7),
    # too few rounds for any 95% interval: 3 v 3 (the smallest two-sided level is 90%), 2 v 5; just enough: 2 v 8, 4 v 4
    (3, 3, 0), (2, 5, 0), (2, 8, 1), (4, 4, 1),
])
def test_interval_ranks_match_the_tables(n, m, k):
    got, conf = _hl_rank(n, m, 0.95)
    assert got == k
    assert conf >= 0.95 if k else conf == 1.0


def test_normal_approximation_agrees_with_the_exact_ranks(monkeypatch):
    exact = _hl_rank(40, 40, 0.95)[0]
    monkeypatch.setattr(stats_mod, "EXACT_PAIRS", 0)
    _hl_rank.cache_clear()
    try:
        assert abs(_hl_rank(40, 40, 0.95)[0] - exact) <= 1
    finally:
        _hl_rank.cache_clear()


def test_ratio_interval_of_a_known_shift():
    a = [100.0, 101.0, 99.0, 102.0, 98.0]
    iv = ratio_interval(a, [x * 0.8 for x in a])
    # the 3rd smallest and 3rd largest of the 25 pairwise ratios b_j / a_i: 98/102, 98/101, 99/102 ...
    assert iv.estimate == pytest.approx(0.8) and iv.lo == pytest.approx(0.8 * 99 / 102)
    assert iv.hi == pytest.approx(0.8 * 102 / 99) and iv.confidence == pytest.approx(1 - 2 * 4 / 252)
    iv = ratio_interval(a, [80.0, 81.0, 79.0, 82.0, 78.0])
    assert iv.lo < 0.8 < iv.hi < 0.85
    # non-figures (a failed round's None, NaN, 0) are left out, and too few rounds give no interval
    assert ratio_interval([1.0, None, float("nan"), 0.0], [1.0, 2.0]) == RatioInterval(
        pytest.approx(math.sqrt(2)), 0.0, math.inf, 1.0, 1, 2)  # the median of the log ratios 0 and log 2


def test_the_interval_holds_the_true_ratio_at_its_level():
    rng = np.random.default_rng(11)
    for change in (1.0, 0.8):
        a, b = _rounds(rng, 1000.0), _rounds(rng, 1000.0 * change)
        _, lo, hi, conf = ratio_intervals(a, b)
        # the noise is relative to each side's value, so log B/A is a pure shift: the exact level holds
        held = np.mean((lo <= change) & (change <= hi))
        assert conf == pytest.approx(0.968, abs=0.001) and held >= 0.95


# --- the verdicts -------------------------------------------------------------------------------


def test_no_real_change_is_rarely_called_a_change():
    rng = np.random.default_rng(1)
    v = _verdicts(_rounds(rng, 50_000.0), _rounds(rng, 50_000.0))
    changed = sum(x in ("slower", "faster") for x in v) / len(v)
    assert changed <= 0.05
    # with 5 rounds of 5% noise the interval is about ±7%: most cells honestly say they cannot tell
    assert v.count(UNDECIDED) > v.count("same")


def test_a_20_percent_slowdown_is_called_nearly_always():
    rng = np.random.default_rng(2)
    v = _verdicts(_rounds(rng, 50_000.0), _rounds(rng, 40_000.0))
    assert v.count("slower") / len(v) >= 0.95 and "faster" not in v


def test_lower_is_better_for_latency():
    # open loop is judged on p99: B's p99 25% higher is slower (the latency of a 20% lower throughput: 1/0.8),
    # 20% lower is faster
    rng = np.random.default_rng(3)
    a = _rounds(rng, 40.0)
    assert _verdicts(a, _rounds(rng, 50.0), higher_is_better=False).count("slower") / CELLS >= 0.95
    assert _verdicts(a, _rounds(rng, 32.0), higher_is_better=False).count("faster") / CELLS >= 0.95


def test_same_needs_the_whole_interval_within_the_threshold():
    rng = np.random.default_rng(4)
    # 6 rounds of 1% noise: the interval is about ±1.5%, well within ±5%
    v = _verdicts(_rounds(rng, 1000.0, n=6, noise=0.01), _rounds(rng, 1000.0, n=6, noise=0.01))
    assert v.count("same") / len(v) >= 0.95
    # a change of exactly the threshold: the rounds cannot say which side it is on, and mostly say so
    v = _verdicts(_rounds(rng, 1000.0, n=6, noise=0.01), _rounds(rng, 950.0, n=6, noise=0.01))
    assert v.count(UNDECIDED) > CELLS / 2 and v.count("slower") < CELLS / 4 and v.count("same") < CELLS / 4


def test_three_rounds_a_side_never_decide():
    rng = np.random.default_rng(5)
    v = _verdicts(_rounds(rng, 1000.0, n=3, cells=200), _rounds(rng, 500.0, n=3, cells=200))
    assert set(v) == {UNDECIDED}


def test_verdict_edges():
    iv = RatioInterval(0.9, 0.85, 0.94, 0.968, 5, 5)
    assert verdict(iv, True, 0.05) == ("slower", (pytest.approx(-0.15), pytest.approx(-0.06)))
    assert verdict(iv, True, 0.10)[0] == UNDECIDED
    assert verdict(iv, False, 0.05)[0] == "faster"  # a lower latency is better
    assert verdict(RatioInterval(1.0, 0.97, 1.04, 0.968, 5, 5), True, 0.05)[0] == "same"
    assert verdict(RatioInterval(1.0, 0.0, math.inf, 1.0, 3, 3), True, 0.05)[0] == UNDECIDED
