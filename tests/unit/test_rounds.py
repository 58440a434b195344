"""Rounds until the figure is stable: the interval, the stopping rule, re-measuring disturbed rounds, the budgets.

The suite's cell loop (``SuiteContext.run_cell``) runs here on a synthetic
load (``FakeLoad``: it returns the figures it is given, says ``disturbed``
when told to, and moves a fake clock by what a real round would take), into a
temporary results folder, so every rule is checked in milliseconds with
exactly the rounds, files and progress events a real run writes.
"""

import json
import os
import random

import pytest

from sockbench.bench.report.stats import CellStats, median_interval
from sockbench.bench.report.store import load_results
from sockbench.bench.schema import (
    ERROR_KINDS, Cell, Errors, Fairness, Interference, Latency, LoadResult, Throughput, Workload,
)
from sockbench.bench.suite.plan import (
    HICCUP_S, HICCUP_SHARE, MAX_OPEN_DURATION_S, REMEASURE_DISTURBED, Plan, default_plan, full_plan, quick_plan,
)
from sockbench.bench.suite.progress import CellDone, CellStarted, RoundDone, Window, parse
from sockbench.bench.suite.session import PROGRESS_FILE, SuiteContext, stop_reason
from sockbench.servers import registry

CELL = Cell("uvloop", "closed", 64, 100)


def _result(msgs, p99=30.0, disturbed=False, valid=True, starved=0, cell=CELL):
    conns = [0] * starved + [100] * (cell.conns - starved)
    return LoadResult(
        server=cell.server,
        workload=Workload(mode=cell.mode, conns=cell.conns, size=cell.size, duration_s=0.3),
        throughput=Throughput(msgs_per_s=msgs),
        latency_us=Latency(count=1000, p50=20.0, p99=p99),
        errors=Errors.of(dict.fromkeys(ERROR_KINDS, 0)),
        valid=valid,
        invalid_reason=None if valid else "starved: 1 of 100 connections completed no message",
        interference=Interference(server_foreign=0.2 if disturbed else 0.0, client_foreign=0.0, disturbed=disturbed),
        fairness=Fairness.of(conns),
    )


class FakeLoad:
    """``run_load``'s stand-in: the given (msgs/s, disturbed) per call, a fake clock moved by each round's length."""

    def __init__(self, plan, rounds, clock):
        self.plan = plan
        self.rounds = iter(rounds)
        self.clock = clock
        self.specs = []

    def __call__(self, spec, on_window=None):
        self.specs.append(spec)
        start = int(self.clock.now * 1e9)
        if on_window:
            on_window(start, start + int((spec.warmup_s + spec.duration_s) * 1e9))
        self.clock.now += self.plan.round_estimate_s(CELL)
        msgs, disturbed = next(self.rounds)
        return _result(msgs, disturbed=disturbed, valid=msgs > 0, starved=0 if msgs > 0 else 1)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def _run(tmp_path, rounds, **plan_kw):
    kw = dict(servers=("uvloop",), sizes=(64,), conns=(100,), open_pcts=(), protocols=(), cell_budget_s=1000.0)
    kw.update(plan_kw)
    plan = Plan(**kw)
    clock = Clock()
    load = FakeLoad(plan, rounds, clock)
    ctx = SuiteContext(plan, str(tmp_path), run=load, clock=clock)
    try:
        run = ctx.run_cell(CELL)
    finally:
        ctx.close()
    events = [parse(json.loads(line)) for line in open(tmp_path / PROGRESS_FILE)]
    return run, events, load


def _steady(value=100_000.0, spread=0.005, disturbed=False, seed=1):
    rng = random.Random(seed)
    while True:
        yield value * (1 + rng.uniform(-spread, spread)), disturbed


# --- the interval of a median ---------------------------------------------------------------------


def test_median_interval_from_order_statistics():
    # 5 rounds: the widest interval, min-max, covers the median with 1 - 2/32 = 93.75% only: none at 95%
    five = median_interval([5, 1, 4, 2, 3])
    assert five.median == 3 and not five.bounded and five.text() == "none yet (n=5)"
    six = median_interval([6, 1, 5, 2, 4, 3])
    assert (six.lo, six.hi, six.confidence) == (1, 6, pytest.approx(1 - 2 / 64))
    # from 9 rounds on the lowest and the highest round are left out: one bad round cannot widen it
    nine = median_interval([100, 101, 99, 102, 98, 100, 101, 99, 10])
    assert (nine.lo, nine.hi, nine.confidence) == (98, 101, pytest.approx(1 - 2 * 10 / 512))
    assert nine.half_width == pytest.approx(0.02) and nine.text() == "-2.0% / +1.0%"
    assert median_interval([None, float("nan")]).n == 0


@pytest.mark.parametrize("n", [6, 9, 12, 20])
def test_median_interval_covers_the_median_at_its_level(n):
    rng = random.Random(n)
    held = 0
    trials = 2000
    for _ in range(trials):
        # a skewed distribution (a hiccup only lowers a throughput): exponential, true median ln 2
        iv = median_interval([rng.expovariate(1.0) for _ in range(n)])
        held += iv.lo <= 0.6931471805599453 <= iv.hi
    assert held / trials >= 0.95 - 0.01 and iv.confidence >= 0.95  # 0.01: the simulation's own error, 2 sd


# --- the stopping rule ------------------------------------------------------------------------------


def test_stop_reason_order():
    plan = Plan(servers=("uvloop",), min_rounds=5, max_rounds=8, ci=0.03)
    flat = [_result(1000.0) for _ in range(6)]
    noisy = [_result(1000.0 * (1 + 0.2 * (-1) ** k)) for k in range(8)]
    assert stop_reason(plan, CellStats(CELL, flat[:4]), 0, 0) is None  # the minimum rounds always run
    assert stop_reason(plan, CellStats(CELL, flat[:5]), 0, 1e9) is None  # 5 rounds: no 95% interval yet
    assert stop_reason(plan, CellStats(CELL, flat), 0, 1e9) == "stable"
    assert stop_reason(plan, CellStats(CELL, noisy[:7]), 0, 1e9) is None
    assert stop_reason(plan, CellStats(CELL, noisy), 0, 1e9) == "max-rounds"
    assert stop_reason(plan, CellStats(CELL, noisy[:6]), 10.0, 10.5, round_s=1.0) == "budget"
    assert stop_reason(plan, CellStats(CELL, noisy[:6]), 10.0, 11.0, round_s=1.0) is None
    assert stop_reason(plan, CellStats(CELL, flat[:5] + [_result(0.0, valid=False)]), 0, 1e9) == "invalid"
    fixed = Plan(servers=("uvloop",), min_rounds=3, max_rounds=3)
    assert stop_reason(fixed, CellStats(CELL, noisy[:3]), 0, 0) == "fixed"


# --- a cell's rounds, end to end on a synthetic load -------------------------------------------------


def test_a_steady_cell_stops_when_its_interval_is_narrow(tmp_path):
    run, events, load = _run(tmp_path, _steady())
    assert run.stopped == "stable" and len(run.results) == 6 and not run.discarded
    assert sorted(os.listdir(tmp_path / "raw")) == [f"uvloop__closed-64B-c100__r{k}.json" for k in range(1, 7)]
    assert [type(e) for e in events] == [CellStarted] + [Window, RoundDone] * 6 + [CellDone]
    done = events[-1]
    assert (done.rounds, done.remeasured, done.stopped, done.figure, done.flags) == (6, 0, "stable", "msgs/s", ())
    assert done.interval.startswith(("±", "-")) and "%" in done.interval
    results = load_results(str(tmp_path))
    assert [r.round_no for r in results.cells[("uvloop", "closed-64B-c100")].results] == list(range(1, 7))


def test_a_noisy_cell_runs_to_its_most_rounds_and_says_so(tmp_path):
    run, events, _ = _run(tmp_path, _steady(spread=0.2), max_rounds=12)
    assert run.stopped == "max-rounds" and len(run.results) == 12
    assert "WIDE-CI" in events[-1].flags and events[-1].stopped == "max-rounds"


def test_the_cell_budget_stops_rounds_but_never_the_minimum(tmp_path):
    plan = Plan(servers=("uvloop",))
    per_round = plan.round_estimate_s(CELL)
    run, _, _ = _run(tmp_path / "a", _steady(spread=0.2), cell_budget_s=8.5 * per_round)
    assert run.stopped == "budget" and len(run.results) == 8 and run.elapsed_s <= run.budget_s
    run, _, _ = _run(tmp_path / "b", _steady(spread=0.2), cell_budget_s=per_round)
    assert run.stopped == "budget" and len(run.results) == plan.min_rounds


def test_a_fixed_plan_runs_exactly_its_rounds(tmp_path):
    run, events, load = _run(tmp_path, _steady(spread=0.2), min_rounds=3, max_rounds=3)
    assert run.stopped == "fixed" and len(run.results) == len(load.specs) == 3
    assert "WIDE-CI" not in events[-1].flags  # no interval was asked for


def test_an_invalid_cell_stops_at_its_minimum(tmp_path):
    rounds = [(100_000.0, False)] * 2 + [(0.0, False)] + [(100_000.0, False)] * 20
    run, events, _ = _run(tmp_path, iter(rounds))
    assert run.stopped == "invalid" and len(run.results) == 5
    assert {"INVALID", "STARVED"} <= set(events[-1].flags)


def test_a_disturbed_round_is_measured_again_and_set_aside(tmp_path):
    steady = _steady()
    rounds = [next(steady), (50_000.0, True)] + [next(steady) for _ in range(10)]
    run, events, load = _run(tmp_path, iter(rounds))
    assert run.stopped == "stable" and len(run.results) == 6 and len(load.specs) == 7
    assert [r.disturbed for r in run.discarded] == [True] and not any(r.disturbed for r in run.results)
    assert (tmp_path / "raw" / "uvloop__closed-64B-c100__r2__disturbed1.json").exists()
    assert len(os.listdir(tmp_path / "raw")) == 7
    rounds_ev = [e for e in events if isinstance(e, RoundDone)]
    assert [(e.round, e.attempt, e.kept, e.disturbed) for e in rounds_ev[:3]] == [
        (1, 1, True, False), (2, 1, False, True), (2, 2, True, False)]
    assert events[-1].remeasured == 1 and "DISTURBED" not in events[-1].flags
    # the report counts the set-aside attempt as a re-measured round, not as a round
    cell = load_results(str(tmp_path)).cells[("uvloop", "closed-64B-c100")]
    assert (len(cell.results), cell.remeasured, cell.disturbed) == (6, 1, False)
    assert 50_000.0 not in cell.msgs


def test_a_round_that_stays_disturbed_is_kept_and_flagged(tmp_path):
    run, events, load = _run(tmp_path, _steady(disturbed=True))
    assert len(run.results) == 6 and all(r.disturbed for r in run.results)
    assert len(load.specs) == 6 * (1 + REMEASURE_DISTURBED) and len(run.discarded) == 6 * REMEASURE_DISTURBED
    assert "DISTURBED" in events[-1].flags and events[-1].remeasured == 6
    cell = load_results(str(tmp_path)).cells[("uvloop", "closed-64B-c100")]
    assert "DISTURBED" in cell.flags() and cell.disturbed_rounds == 6 and cell.remeasured == 6


def test_no_measuring_again_past_the_budget(tmp_path):
    plan = Plan(servers=("uvloop",))
    run, events, load = _run(tmp_path, _steady(disturbed=True), cell_budget_s=plan.round_estimate_s(CELL))
    # the budget has room for no second attempt: every round is kept disturbed at once, and flagged
    assert len(load.specs) == len(run.results) == plan.min_rounds and not run.discarded
    assert "DISTURBED" in events[-1].flags


# --- budgets and round lengths ---------------------------------------------------------------------


def test_the_run_budget_is_shared_by_the_cells_left():
    plan = Plan(servers=("uvloop", "cython"), sizes=(64,), conns=(100,), open_pcts=(25,), protocols=(),
                run_budget_s=100.0, cell_budget_s=1000.0)
    cells = plan.cells()
    need = sum(plan.cell_estimate_s(c) for c in cells)
    own = plan.cell_estimate_s(cells[0])
    # exactly the minimum left: each cell gets its minimum; twice as much: twice its minimum
    assert plan.cell_share_s(cells[0], cells[1:], need) == pytest.approx(own)
    assert plan.cell_share_s(cells[0], cells[1:], 2 * need) == pytest.approx(2 * own)
    assert plan.cell_share_s(cells[0], cells[1:], -5.0) == 0.0  # behind: the minimum rounds only
    assert Plan(servers=("a",), cell_budget_s=7.0).cell_share_s(cells[0], [], 1e6) == 7.0  # no run budget


def test_round_lengths_absorb_one_hiccup():
    plan = full_plan(["uvloop"])
    for cell in plan.cells():
        d = plan.round_duration(cell)
        if cell.mode == "closed":
            # a hiccup costs a closed round under half the interval the rounds must agree to
            assert HICCUP_S / d <= default_plan(["uvloop"]).ci / 2
        else:
            # the messages one hiccup delays, the queue's drain included, stay under the 1% beyond the p99
            assert HICCUP_S / ((1 - cell.load_pct / 100) * d) <= HICCUP_SHARE + 1e-4 < 0.01
    opens = {c.load_pct: plan.round_duration(c) for c in plan.cells() if c.mode == "open"}
    assert opens == {25: 0.67, 50: 1.0, 75: 2.0, 90: 5.0}
    assert plan.round_duration(Cell("uvloop", "open", 64, 100, load_pct=100)) == MAX_OPEN_DURATION_S
    assert quick_plan(["uvloop"]).round_duration(quick_plan(["uvloop"]).cells()[1]) == 0.2  # the smoke test


def test_the_default_run_fits_in_five_minutes():
    names = registry.names()
    plan = default_plan(names, speaks={n: list(registry.get(n).protocols) for n in names})
    cells = plan.cells()
    # every server, its closed cell (the open loop's peak, the protocols' raw baseline), an open-loop cell,
    # and the protocol section of every server that speaks a framed protocol
    assert {c.server for c in cells} == set(names)
    assert all(Cell(n, "open", 64, 100, load_pct=50) in cells for n in names)
    framed = [n for n in names if plan.server_protocols(n)]
    assert framed and all(Cell(n, "closed", 64, 100, protocol="json") in cells for n in framed)
    # 6 rounds a cell (the fewest with a 95% interval) use under 92% of the run budget (the rest: rounds for
    # the noisy cells; twelve servers, cython-uring the twelfth, leave less room than seven did: 6 rounds
    # take 90% of it), the cells never take more than the budget, and the budget leaves 30 s to start the
    # suite and write the report
    assert plan.min_estimate_s() * (6 / plan.min_rounds) <= 0.92 * plan.run_budget_s
    assert plan.max_estimate_s() <= plan.run_budget_s <= 300 - 30
    quick = quick_plan(names)
    assert quick.min_estimate_s() <= 40  # --quick: under a minute with pytest's start and the report
