"""Paired ratios within a run: the signed-rank interval, pairing by pass, the ranks with ties, the p99 sentence."""

import math
import random

import pytest

from report_fixture import make_results
from sockbench.bench.report.document import build_report
from sockbench.bench.report.ratios import _signed_rank_counts, paired_interval, pairs, ratio, workload_ratios
from sockbench.bench.report.stats import CellStats
from sockbench.bench.report.store import load_results
from sockbench.bench.report.summary import build_summary
from sockbench.bench.schema import (
    ERROR_KINDS, Cell, CellContext, Errors, Latency, LoadResult, Throughput, Workload,
)
from sockbench.bench.suite.plan import Plan
from sockbench.errors import SockbenchError


def _cell(server, figures, passes=None, mode="closed"):
    cell = Cell(server, mode, 64, 100, load_pct=50 if mode == "open" else 0)
    results = []
    for k, v in enumerate(figures, 1):
        p = passes[k - 1] if passes is not None else k
        results.append(LoadResult(
            server=server, workload=Workload(mode=mode, conns=100, size=64, duration_s=0.3),
            throughput=Throughput(msgs_per_s=v if mode == "closed" else 1000.0),
            latency_us=Latency(count=10, p99=v if mode == "open" else 50.0),
            errors=Errors.of(dict.fromkeys(ERROR_KINDS, 0)), valid=True,
            cell=CellContext.of(cell, k, None, 0, None, p)))
    return CellStats(cell, results)


def test_the_signed_rank_distribution_is_exact():
    for n in range(1, 12):
        counts = _signed_rank_counts(n)
        assert sum(counts) == 2**n and len(counts) == n * (n + 1) // 2 + 1
        assert counts == counts[::-1]  # symmetric about n(n+1)/4


def test_the_paired_interval_needs_six_pairs_and_keeps_its_level():
    est, lo, hi, conf = paired_interval([0.01] * 5)
    assert math.isinf(lo) and math.isinf(hi) and conf == 1.0  # five pairs cannot give 95%
    est, lo, hi, conf = paired_interval([0.01, 0.02, 0.0, 0.015, 0.005, 0.012])
    assert conf == pytest.approx(1 - 2 / 64) and lo == 0.0 and hi == 0.02 and lo <= est <= hi
    # coverage: symmetric noise around a true log ratio, 400 trials of 10 pairs: the 95% interval covers it
    rng = random.Random(3)
    covered = 0
    for _ in range(400):
        x = [0.05 + rng.gauss(0, 0.03) for _ in range(10)]
        _, lo, hi, conf = paired_interval(x)
        covered += lo <= 0.05 <= hi
    assert conf >= 0.95 and covered / 400 >= 0.93


def test_pairs_are_the_rounds_of_one_pass():
    a = _cell("a", [100, 110, 120, 130], passes=[1, 2, 3, 5])
    b = _cell("b", [50, 55, 60], passes=[2, 3, 4])
    assert pairs(b, a) == [(50, 110), (55, 120)]
    # a drift that moves both servers alike, pass by pass, leaves their paired ratio alone
    drift = [1.0, 0.9, 1.1, 0.95, 1.05, 0.92, 1.08, 1.0]
    fast = _cell("fast", [200 * d for d in drift])
    slow = _cell("slow", [100 * d * (1 + 0.002 * (k % 3)) for k, d in enumerate(drift)])
    r = ratio(slow, fast)
    assert r.paired and r.pairs == 8 and 0.49 < r.lo <= r.estimate <= r.hi < 0.51
    # without passes (a folder from before them) the interval is the unpaired one, far wider under that drift
    u = ratio(_cell("slow", slow.msgs, passes=[None] * 8), _cell("fast", fast.msgs, passes=[None] * 8))
    assert not u.paired and u.hi - u.lo > 5 * (r.hi - r.lo) and "unpaired" in u.text()


def test_ranks_tie_where_the_paired_interval_includes_one():
    drift = [1.0, 0.9, 1.1, 0.95, 1.05, 0.92, 1.08, 1.0]
    rng = random.Random(1)
    cells = [
        _cell("a", [200 * d * (1 + rng.uniform(-0.002, 0.002)) for d in drift]),
        _cell("b", [200 * d * (1 + rng.uniform(-0.02, 0.02)) for d in drift]),  # within noise of a
        _cell("c", [100 * d * (1 + rng.uniform(-0.002, 0.002)) for d in drift]),
    ]
    w = workload_ratios(cells)
    assert w.reference == "a" and not w.baseline and w.paired
    assert w.ranks == {"a": "1=", "b": "1=", "c": "3"}
    assert w.ratios["a"].estimate == 1.0 and w.ratios["c"].worse and not w.ratios["b"].worse
    based = workload_ratios(cells, baseline="c")
    assert based.reference == "c" and based.baseline and based.ratios["a"].better
    # open loop: lower p99 is better; the lowest is the reference
    opens = [_cell("a", [50 * d for d in drift], mode="open"), _cell("b", [80 * d for d in drift], mode="open")]
    w = workload_ratios(opens)
    assert w.reference == "a" and w.ranks == {"a": "1", "b": "2"} and w.ratios["b"].worse


def test_the_summary_names_the_lowest_p99_only_when_the_pairs_decide_it(tmp_path):
    # the fixture's open-loop latency depends on the share of the peak offered, not on the server, unless the
    # server is slowed: two equal servers tie, a slowed one has the highest p99
    def plan(servers):
        return Plan(servers=servers, duration_s=1.0, warmup_s=0.2, interval_s=0.1, open_pcts=(75,), protocols=())

    tie = build_summary(load_results(make_results(str(tmp_path / "tie"), servers=("selectors", "uvloop"),
                                                  plan=plan(("selectors", "uvloop")))))
    tail = [t for t in tie.sentences if "p99" in t]
    assert tail and "tie for the lowest p99" in tail[0] and "has the lowest p99" not in tail[0]
    assert {r.open_rank for r in tie.rows} == {"1="}
    servers = ("selectors", "asyncio-protocol", "uvloop")
    decided = build_summary(load_results(make_results(str(tmp_path / "slow"), servers=servers, plan=plan(servers),
                                                      slowdown={"selectors": 0.5, "uvloop": 0.25})))
    tail = [t for t in decided.sentences if "p99" in t]
    assert tail[0].startswith("Offered 75% of its own peak, asyncio-protocol has the lowest p99")
    assert "selectors has the highest" in tail[0]
    assert {r.server: r.open_rank for r in decided.rows} == {"asyncio-protocol": "1", "uvloop": "2", "selectors": "3"}


def test_report_baseline_must_be_a_server_of_the_folder(tmp_path):
    d = make_results(str(tmp_path / "s"), servers=("selectors", "uvloop"))
    rep = build_report(d, baseline="selectors")
    md = open(rep["md"]).read()
    assert "| vs selectors |" in md and "the baseline, selectors" in md
    with pytest.raises(SockbenchError, match="--baseline nosuch is not a server of"):
        build_report(d, baseline="nosuch")


def test_a_folder_without_passes_ranks_on_unpaired_intervals_and_says_so(tmp_path):
    d = make_results(str(tmp_path / "old"), servers=("selectors", "uvloop"), passes=False)
    s = build_summary(load_results(d))
    assert not s.paired and all(r.ratio is not None and not r.ratio.paired for r in s.rows if r.server != s.reference)
    md = open(build_report(d)["md"]).read()
    assert "unpaired (this folder was not measured in passes)" in md
