"""The report's summary: one row per server, the ranking with ties, the open-loop share, the verdict."""

import re

import pytest

from report_fixture import make_results
from sockbench.bench.report.document import build_report
from sockbench.bench.report.ratios import workload_ratios
from sockbench.bench.report.store import load_results
from sockbench.bench.report.summary import build_summary
from sockbench.bench.suite.plan import Plan


@pytest.mark.slow
def test_summary_ranks_with_ties_and_states_a_verdict(tmp_path):
    d = make_results(str(tmp_path / "s"), servers=("selectors", "asyncio-protocol", "uvloop"))
    results = load_results(d)
    s = build_summary(results)
    assert [r.server for r in s.rows] and {r.server for r in s.rows} == set(results.servers())
    assert s.open_share == 75 and s.protocols == ["frame", "json"]
    heads = {r.server: r.headline for r in s.rows}
    best = max(heads.values(), key=lambda c: c.median)
    assert s.rows[0].rank in ("1", "1=")
    # a rank below another means the interval of their paired ratio lies wholly below 1
    ranked = workload_ratios([r.headline for r in s.rows])
    for r in s.rows:
        for o in s.rows:
            if int(r.rank.rstrip("=")) > int(o.rank.rstrip("=")):
                assert ranked.pairwise[(r.server, o.server)].hi < 1.0
    assert s.reference == best.server and not s.baseline and s.paired
    assert all(r.ratio.paired and r.ratio.pairs == 6 for r in s.rows)
    assert any(best.server in t and "fastest" in t for t in s.sentences)
    assert any("kernel" in t for t in s.sentences) and any("json protocol costs" in t for t in s.sentences)
    md = open(build_report(d)["md"]).read()
    # the summary comes first, before the settings and the tables
    assert md.index("## Summary") < md.index("## Machine and settings") < md.index("## Results by workload")
    assert ("| server | rank | msgs/s | 95% interval | vs fastest | server CPU µs/msg | p99 µs at 75% of peak (rank) |"
            in md)
    assert re.search(r"^Flags: ", md, re.M)


@pytest.mark.slow
def test_without_a_75_percent_cell_the_highest_share_is_used_and_said(tmp_path):
    plan = Plan(servers=("selectors", "uvloop"), duration_s=1.0, warmup_s=0.2, interval_s=0.1, open_pcts=(25, 50),
                protocols=())
    d = make_results(str(tmp_path / "s50"), servers=("selectors", "uvloop"), plan=plan)
    s = build_summary(load_results(d))
    assert s.open_share == 50 and s.protocols == []
    md = open(build_report(d)["md"]).read()
    assert "p99 µs at 50% of peak" in md and "no 75% cell, so the highest share measured, 50%" in md
