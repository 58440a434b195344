"""The pytest-benchmark suite: servers x workloads, each round one load run.

Why it is built this way: pytest-benchmark owns what it is good at (rounds,
statistics, ``--benchmark-save`` storage, ``--benchmark-json``,
``pytest-benchmark compare``), and the harness owns the measurement.  Each
round is one ``run_load`` through ``benchmark.pedantic`` (never calibrated or
looped by the plugin: a round is seconds long and must run exactly
``plan.rounds`` times).  The plugin's clock is ``msgclock``: it advances by
the round's seconds per message (closed loop) or p99 latency (open loop), so
pytest-benchmark's own statistics are about the server, not about wall time.
Every figure of every round (``RoundSummary``), and the cell summary
(``CellSummary``, from ``CellStats.summary()``), go into ``extra_info``; both
are owned by the result schema (``sockbench.bench.schema``).

Stability follows pyperf: a standard deviation between rounds of 10% of the
median or more raises ``UnstableBenchmarkWarning`` (and the report flags the
cell).  An invalid or client-bound round raises a warning too; the run goes
on, and the report marks the figure.
"""

import math
import warnings

import pytest

from sockbench.bench.schema import RoundSummary
from sockbench.bench.suite import msgclock
from sockbench.thresholds import UNSTABLE_SPREAD

__all__ = ["UnstableBenchmarkWarning", "SuspectRunWarning", "test_echo"]


class UnstableBenchmarkWarning(UserWarning):
    """The rounds of a cell disagree by 10% of the median or more (pyperf's rule)."""


class SuspectRunWarning(UserWarning):
    """A round was invalid or client-bound: its figure must not be quoted."""


@pytest.mark.benchmark(timer=msgclock.clock, disable_gc=False, warmup=False)
def test_echo(benchmark, cell, suite_ctx):
    plan = suite_ctx.plan
    benchmark.group = cell.workload_id
    suite_ctx.start_cell(cell)
    rate = peak = None
    info = benchmark.extra_info
    info.update(server=cell.server, mode=cell.mode, protocol=cell.protocol, size=cell.size, conns=cell.conns, depth=cell.depth,
                duration_s=plan.duration_s, warmup_s=plan.warmup_s, rounds=plan.rounds,
                timed_as="seconds per message" if cell.mode == "closed" else "p99 latency, seconds")
    if cell.mode == "open":
        peak, source = suite_ctx.peak(cell.server)
        rate = peak * cell.load_pct / 100.0
        info.update(load_pct=cell.load_pct, peak_msgs_per_s=peak, peak_from=source, target_rate=rate)
    runs = []

    def one_round():
        r = suite_ctx.run_round(cell, len(runs) + 1, rate=rate, peak=peak)
        runs.append(r)
        if cell.mode == "closed":
            msgs = r.throughput.msgs_per_s or 0.0
            msgclock.advance(1.0 / msgs if msgs > 0 else plan.duration_s)
        else:
            p99 = r.latency_us.p99
            msgclock.advance(p99 / 1e6 if p99 and p99 > 0 else plan.duration_s)
        return r

    benchmark.pedantic(one_round, rounds=plan.rounds, iterations=1, warmup_rounds=0)

    stats = suite_ctx.stats(cell, runs)
    suite_ctx.record(stats)
    info["per_round"] = [RoundSummary.of(r).to_json() for r in runs]
    info.update(stats.summary().to_json())
    if stats.unstable:
        warnings.warn(UnstableBenchmarkWarning(
            f"{cell.id}: msgs/s spread {stats.spread:.1%} of the median over {len(runs)} rounds "
            f"(>= {UNSTABLE_SPREAD:.0%}); the result may be unreliable, re-run on a quieter machine"))
    if stats.invalid or stats.client_bound:
        why = "; ".join(stats.invalid_reasons) if stats.invalid else "the load client saturated its CPU"
        warnings.warn(SuspectRunWarning(f"{cell.id}: {' '.join(stats.flags())}: {why}"))
    assert len(runs) == plan.rounds and all(math.isfinite(x) for x in stats.msgs)
