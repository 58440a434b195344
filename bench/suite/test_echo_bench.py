"""The pytest-benchmark suite: servers x workloads, each cell measured until its figure is stable.

Why it is built this way: pytest-benchmark owns what it is good at
(statistics, ``--benchmark-save`` storage, ``--benchmark-json``,
``pytest-benchmark compare``), and the harness owns the measurement.  The
cells' rounds are measured first, all of them, in interleaved passes
(``SuiteContext.measure``, asked for by the first test through the session
fixture ``measured``: a pass visits every selected cell, so no test can
measure its own cell alone).  Each test then hands its cell's rounds to
``benchmark.pedantic``, one call per kept round, with ``rounds`` set to how
many there were (known only then; ``pedantic`` wants it up front).  This keeps pytest-benchmark's storage exact: its clock is
``msgclock``, a virtual clock that only ever moves by a round's measured
figure, never by wall time: in closed loop the seconds per message (so
pytest-benchmark's ops is msgs/s); in open loop the round's mean latency in
seconds (a mean of means is a mean, so pytest-benchmark's statistics keep a
meaning; a mean of p99s would not be a p99).  An open-loop cell's percentiles
are in ``extra_info`` only (its ``latency_us``, from the merged histogram, and
each round's), and ``extra_info["timed_as"]`` says what was timed.  The test is
parametrized on plain values (the fields of ``Cell``, see ``conftest.py``), so
pytest-benchmark's ``params`` serialize and ``pytest-benchmark compare
--group-by=param:server`` works.  The clock so a round handed over after it was measured gives
the plugin the very value it would have timed during it; its ``rounds`` is
the cell's real count, and its statistics are over exactly the kept rounds.
A disturbed attempt that was measured again is not a round: it is in
``raw/``, not in pytest-benchmark's data.  Every figure of every round
(``RoundSummary``), the cell summary (``CellSummary``, from
``CellStats.summary()``) and why the rounds stopped go into ``extra_info``;
the summaries are owned by the result schema (``sockbench.bench.schema``).

Stability follows pyperf: a standard deviation between rounds of 10% of the
median or more raises ``UnstableBenchmarkWarning`` (and the report flags the
cell).  An invalid, starved, disturbed or client-bound round raises a warning
too; the run goes on, and the report marks the figure.
"""

import dataclasses
import math
import warnings

import pytest

from sockbench.bench.schema import Cell, RoundSummary
from sockbench.bench.suite import msgclock
from sockbench.thresholds import UNSTABLE_SPREAD

__all__ = ["UnstableBenchmarkWarning", "SuspectRunWarning", "test_echo"]


#: the test's plain parameters (conftest.py parametrizes the same fields of Cell)
CELL_PARAMS = tuple(f.name for f in dataclasses.fields(Cell))


class UnstableBenchmarkWarning(UserWarning):
    """The rounds of a cell disagree by 10% of the median or more (pyperf's rule)."""


class SuspectRunWarning(UserWarning):
    """A round was invalid, starved, disturbed or client-bound: its figure must not be quoted."""


def _clock_step(cell, r, plan):
    """What msgclock advances by for one round: seconds per message (closed, connect), mean latency in seconds (open)."""
    if cell.mode != "open":  # closed loop, and connect mode (one message a connection)
        msgs = r.throughput.msgs_per_s or 0.0
        return 1.0 / msgs if msgs > 0 else plan.duration_s
    mean = r.latency_us.mean
    return mean / 1e6 if mean and mean > 0 else plan.round_duration(cell)


@pytest.mark.usefixtures(*CELL_PARAMS)
@pytest.mark.benchmark(timer=msgclock.clock, disable_gc=False, warmup=False)
def test_echo(benchmark, cell, suite_ctx, measured):
    plan = suite_ctx.plan
    benchmark.group = cell.workload_id
    info = benchmark.extra_info
    info.update(server=cell.server, python=cell.python or None, mode=cell.mode, protocol=cell.protocol, transport=cell.transport, size=cell.size, conns=cell.conns, depth=cell.depth,
                duration_s=plan.round_duration(cell), warmup_s=plan.warmup_s, min_rounds=plan.min_rounds,
                max_rounds=plan.max_rounds, ci_target=plan.ci_for(cell.mode),
                tls=cell.tls, resumed=cell.resumed,
                timed_as="seconds per message" if cell.mode != "open" else
                "mean latency per round, seconds (percentiles: latency_us and per_round)")
    run = measured.get(cell.id)
    if run is not None and run.error:
        pytest.fail(run.error, pytrace=False)
    if run is None or not run.results:
        pytest.skip("not measured: the passes stopped (interrupted) before this cell's first round")
    if cell.mode == "open":
        info.update(load_pct=cell.load_pct, peak_msgs_per_s=run.peak, peak_from=run.peak_from, target_rate=run.rate)
    runs = run.results
    replay = iter(runs)

    def one_round():
        msgclock.advance(_clock_step(cell, next(replay), plan))

    benchmark.pedantic(one_round, rounds=len(runs), iterations=1, warmup_rounds=0)

    stats = run.stats()
    info["per_round"] = [RoundSummary.of(r).to_json() for r in runs]
    info["passes"] = [r.pass_no for r in runs]
    info.update(stats.summary().to_json(), stopped=run.stopped, budget_s=round(run.budget_s, 1),
                elapsed_s=round(run.elapsed_s, 1), seed=suite_ctx.seed)
    if stats.unstable:
        warnings.warn(UnstableBenchmarkWarning(
            f"{cell.id}: msgs/s spread {stats.robust_spread:.1%} of the median over {len(runs)} rounds "
            f"(>= {UNSTABLE_SPREAD:.0%}); the result may be unreliable, re-run on a quieter machine"))
    suspect = [f for f in stats.flags() if f in ("INVALID", "STARVED", "DISTURBED", "CLIENT-BOUND")]
    if suspect:
        why = "; ".join(stats.invalid_reasons) if stats.invalid else (
            f"{stats.disturbed_rounds} round(s) disturbed by foreign load on the pinned CPUs" if stats.disturbed
            else "the load client saturated its CPU")
        warnings.warn(SuspectRunWarning(f"{cell.id}: {' '.join(suspect)}: {why}"))
    if not suite_ctx.interrupted:
        assert plan.min_rounds <= len(runs) <= plan.max_rounds
    assert all(math.isfinite(x) for x in stats.msgs)
