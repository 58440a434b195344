"""Rounds until the figure is stable: the interval, the stopping rule, re-measuring disturbed rounds, the budgets.

The suite's passes (``SuiteContext.measure``) run here on a synthetic
load (``FakeLoad``: it returns the figures it is given, says ``disturbed``
when told to, and moves a fake clock by what a real round would take), into a
temporary results folder, so every rule is checked in milliseconds with
exactly the rounds, files and progress events a real run writes.
"""

import json
import os
import random
import statistics

import pytest

from sockbench.bench.report.stats import CellStats, median_interval
from sockbench.bench.report.store import load_results
from sockbench.bench.schema import (
    ERROR_KINDS, Cell, Errors, Fairness, Interference, Latency, LoadResult, RunPlan, Throughput, Workload,
)
from sockbench.bench.suite.plan import (
    HICCUP_S, HICCUP_SHARE, MAX_OPEN_DURATION_S, REMEASURE_DISTURBED, Plan, default_plan, full_plan, quick_plan,
)
from sockbench.bench.suite.progress import CellDone, PassStarted, RoundDone, RoundSetAside, RoundStarted, Window, parse
from sockbench.bench.suite import session
from sockbench.bench.suite.session import PROGRESS_FILE, SuiteContext, stop_reason
from sockbench.errors import UsageError
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


def _measure(tmp_path, make_load, cells=None, **plan_kw):
    """The suite's passes over ``cells`` (default: the plan's) with the load ``make_load(plan, clock)`` on a fake
    clock, into ``tmp_path``: ``(ctx, runs, events, load)``."""
    kw = dict(sizes=(64,), conns=(100,), open_pcts=(), protocols=(), cell_budget_s=1000.0)
    kw.update(plan_kw)
    plan = Plan(**kw)
    clock = Clock()
    load = make_load(plan, clock)
    ctx = SuiteContext(plan, str(tmp_path), run=load, clock=clock)
    try:
        runs = ctx.measure(cells)
    finally:
        ctx.close()
    events = [parse(json.loads(line)) for line in open(tmp_path / PROGRESS_FILE)]
    return ctx, runs, events, load


def _run(tmp_path, rounds, **plan_kw):
    _, runs, events, load = _measure(tmp_path, lambda plan, clock: FakeLoad(plan, rounds, clock), [CELL],
                                     **{"servers": ("uvloop",), **plan_kw})
    return runs[CELL.id], events, load


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
    assert [type(e) for e in events] == [PassStarted, RoundStarted, Window, RoundDone] * 6 + [CellDone]
    assert [e.pass_no for e in events if isinstance(e, RoundDone)] == list(range(1, 7))
    done = events[-1]
    assert (done.rounds, done.remeasured, done.stopped, done.figure, done.flags) == (6, 0, "stable", "msgs/s", ())
    assert done.interval.startswith(("±", "-")) and "%" in done.interval
    results = load_results(str(tmp_path))
    assert [r.round_no for r in results.cells[("uvloop", "closed-64B-c100")].results] == list(range(1, 7))
    assert [r.pass_no for r in results.cells[("uvloop", "closed-64B-c100")].results] == list(range(1, 7))


def test_a_noisy_cell_runs_to_its_most_rounds_and_says_so(tmp_path):
    run, events, _ = _run(tmp_path, _steady(spread=0.2), max_rounds=12)
    assert run.stopped == "max-rounds" and len(run.results) == 12
    assert "WIDE-CI" in events[-1].flags and events[-1].stopped == "max-rounds"


def test_an_open_loop_p99_out_of_reach_of_its_target_leaves_at_its_minimum():
    from sockbench.bench.suite.session import out_of_reach

    plan = Plan(servers=("uvloop",), min_rounds=6, max_rounds=30, ci=0.03, ci_p99=0.10)
    open_cell = Cell("uvloop", "open", 64, 100, load_pct=50)
    # p99s spread as on the 2-core VM: half-width about 40% after 6 rounds, 6 * 4**2 = 96 rounds > 30
    wide = [_result(0.0 + 1000, p99=p, cell=open_cell) for p in (60, 65, 70, 90, 130, 300)]
    assert stop_reason(plan, CellStats(open_cell, wide, ci_target=0.10), 0, 1e9) == "out-of-reach"
    # within reach: 12% after 10 rounds asks 14.4 rounds, so the cell goes on
    assert not out_of_reach(0.12, 10, 0.10, 30) and out_of_reach(0.40, 6, 0.10, 30)
    assert not out_of_reach(float("inf"), 6, 0.10, 30) and not out_of_reach(0.08, 6, 0.10, 30)
    # a closed-loop rate as wide keeps its rounds: its interval at 6 rounds is its whole range
    noisy = [_result(1000.0 * (1 + 0.2 * (-1) ** k)) for k in range(6)]
    assert stop_reason(plan, CellStats(CELL, noisy), 0, 1e9) is None


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
    run, events, _ = _run(tmp_path, iter(rounds), min_rounds=5)
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


# --- passes: the rounds of every cell interleaved ------------------------------------------------------


class CellLoad:
    """``run_load``'s stand-in for many cells: each server's figure (steady, or noisy), p99 in open loop."""

    def __init__(self, plan, clock, rates, noisy=(), interrupt_after=None):
        self.plan = plan
        self.clock = clock
        self.rates = rates
        self.noisy = set(noisy)
        self.rng = random.Random(7)
        self.specs = []
        self.interrupt_after = interrupt_after

    def __call__(self, spec, on_window=None):
        if self.interrupt_after is not None and len(self.specs) >= self.interrupt_after:
            raise KeyboardInterrupt
        self.specs.append(spec)
        cell = Cell(spec.server, spec.mode, spec.size, spec.conns, spec.depth,
                    0 if spec.mode == "closed" else 50, spec.protocol)
        self.clock.now += self.plan.round_estimate_s(cell)
        spread = 0.2 if spec.server in self.noisy else 0.004
        msgs = self.rates[spec.server] * (1 + self.rng.uniform(-spread, spread))
        if spec.mode == "open":
            return _result(spec.rate, p99=100.0 * (1 + self.rng.uniform(-spread, spread)), cell=cell)
        return _result(msgs, cell=cell)


def _passes(tmp_path, rates, noisy=(), interrupt_after=None, seed=5, **plan_kw):
    return _measure(tmp_path, lambda plan, clock: CellLoad(plan, clock, rates, noisy, interrupt_after),
                    **{"servers": tuple(rates), "seed": seed, **plan_kw})


def test_every_pass_runs_the_open_cells_in_a_fresh_seeded_order(tmp_path):
    rates = {"selectors": 30_000.0, "uvloop": 90_000.0, "cython": 200_000.0, "trio": 40_000.0}
    ctx, runs, events, load = _passes(tmp_path / "a", rates, noisy=("trio",), max_rounds=10)
    passes = [e for e in events if isinstance(e, PassStarted)]
    assert [p.pass_no for p in passes] == list(range(1, len(passes) + 1)) and all(p.seed == 5 for p in passes)
    # each pass is the recorded order of the cells still open, drawn from the seed and the pass number
    ids = sorted(c.id for c in ctx.cells)
    assert passes[0].order == tuple(session.pass_order(5, 1, ids)) and sorted(passes[0].order) == ids
    assert len({p.order for p in passes[:6]}) > 1  # fresh orders
    started = [e.cell for e in events if isinstance(e, RoundStarted)]
    assert started[:4] == list(passes[0].order)
    # the steady cells leave at their first interval narrow enough (6 rounds); the noisy one stays to its most
    assert {k: (r.stopped, len(r.results)) for k, r in runs.items()} == {
        "selectors:closed-64B-c100": ("stable", 6), "uvloop:closed-64B-c100": ("stable", 6),
        "cython:closed-64B-c100": ("stable", 6), "trio:closed-64B-c100": ("max-rounds", 10)}
    assert [len(p.order) for p in passes] == [4] * 6 + [1] * 4
    # every round says its pass; the seed is in meta.json when the folder has one
    results = load_results(str(tmp_path / "a"))
    assert all(r.pass_no == r.round_no for r in results.results)
    # the same seed draws the same orders
    _, _, again, _ = _passes(tmp_path / "b", rates, noisy=("trio",), max_rounds=10)
    assert [e.order for e in again if isinstance(e, PassStarted)] == [p.order for p in passes]


def test_open_loop_cells_join_once_their_peak_is_known(tmp_path):
    rates = {"selectors": 30_000.0, "uvloop": 90_000.0}
    ctx, runs, events, load = _passes(tmp_path, rates, open_pcts=(50,))
    from sockbench.bench.suite.plan import PEAK_ROUNDS

    for server, rate in rates.items():
        run = runs[f"{server}:open-64B-c100-50pct"]
        peak = [r.throughput.msgs_per_s for r in runs[f"{server}:closed-64B-c100"].results[:PEAK_ROUNDS]]
        assert run.joined == PEAK_ROUNDS + 1 and run.peak == pytest.approx(statistics.median(peak))
        assert run.rate == pytest.approx(run.peak / 2) and run.peak_from.startswith("closed-loop cell")
        assert all(r.cell.peak_msgs_per_s == run.peak for r in run.results)
        assert {s.rate for s in load.specs if s.server == server and s.mode == "open"} == {run.rate}
        assert [r.pass_no for r in run.results][0] == PEAK_ROUNDS + 1
    # no calibration run: the closed-loop cells gave the peaks
    assert all(s.mode == "closed" or s.rate for s in load.specs) and not (tmp_path / "calibration").exists()


def test_the_run_budget_ends_the_passes_but_never_the_minimum_rounds(tmp_path):
    rates = {"selectors": 30_000.0, "uvloop": 90_000.0}
    plan = Plan(servers=("a",))
    per_round = plan.round_estimate_s(CELL)
    # room for 5 passes of 2 cells and a little more: the noisy cells stop at the budget after their minimum
    _, runs, events, load = _passes(tmp_path, rates, noisy=tuple(rates), run_budget_s=11 * per_round)
    assert {r.stopped for r in runs.values()} == {"budget"}
    assert all(len(r.results) >= plan.min_rounds for r in runs.values())
    assert len(load.specs) <= 12
    _, runs, _, load = _passes(tmp_path / "tiny", rates, noisy=tuple(rates), run_budget_s=1.0)
    assert all(len(r.results) == plan.min_rounds for r in runs.values())  # the minimum always runs


def test_a_ctrl_c_stops_the_passes_and_keeps_what_was_measured(tmp_path):
    rates = {"selectors": 30_000.0, "uvloop": 90_000.0}
    ctx, runs, events, load = _passes(tmp_path, rates, interrupt_after=5)
    assert ctx.interrupted and sum(len(r.results) for r in runs.values()) == 5
    assert len(os.listdir(tmp_path / "raw")) == 5 and all(r.stopped is None for r in runs.values())


def test_a_round_whose_client_ran_slow_is_unseen_and_measured_again():
    from dataclasses import replace as dc_replace

    from sockbench.bench.load.unseen import client_slowdown, with_client_slowdown
    from sockbench.bench.schema import Client
    from sockbench.thresholds import CLIENT_SLOWDOWN

    def with_client(r, cpu_s, ops=10_000):
        return dc_replace(r, client=Client(user_s=cpu_s * 0.6, sys_s=cpu_s * 0.4, reads=ops // 2, writes=ops // 2, waits=0))

    earlier = [with_client(_result(100_000.0), 0.1), with_client(_result(101_000.0), 0.102)]
    same = with_client(_result(99_000.0), 0.103)
    slow = with_client(_result(80_000.0), 0.1 * CLIENT_SLOWDOWN * 1.05)
    assert client_slowdown(same, []) is None  # no earlier round: no reference
    assert client_slowdown(same, earlier[:1]) == pytest.approx(0.103 / 0.1, abs=1e-3)  # one round is a reference
    assert client_slowdown(same, earlier) == pytest.approx(0.103 / 0.1, abs=1e-3)  # the least: the CPU's speed
    kept = with_client_slowdown(same, earlier)
    assert not kept.disturbed and kept.interference.client_slowdown < CLIENT_SLOWDOWN
    flagged = with_client_slowdown(slow, earlier)
    assert flagged.interference.unseen and flagged.disturbed
    assert flagged.interference.client_slowdown == pytest.approx(CLIENT_SLOWDOWN * 1.05, rel=1e-3)
    # open loop: the polling client is always busy, its CPU says nothing of the CPU's speed
    opened = dc_replace(slow, workload=dc_replace(slow.workload, mode="open"))
    assert client_slowdown(opened, earlier) is None


def test_an_open_loop_p99_is_held_to_its_own_target(tmp_path):
    """``ci_p99`` is the open loop's target, ``ci`` the closed loop's; a plan without it holds both to ``ci``."""
    plan = Plan(servers=("uvloop",), sizes=(64,), conns=(100,), ci=0.03, ci_p99=0.10)
    assert plan.ci_for("open") == 0.10 and plan.ci_for("closed") == plan.ci_for("connect") == 0.03
    assert Plan(servers=("uvloop",), ci=0.05).ci_for("open") == 0.05
    assert RunPlan.from_json({k: v for k, v in plan.to_json().items() if k != "ci_p99"}).ci_for("open") == 0.03
    with pytest.raises(UsageError, match="--ci-p99 must be above 0%"):
        Plan(servers=("uvloop",), ci_p99=1.5)


class ScriptedLoad:
    """Per server, what its successive rounds give: (msgs/s, disturbed, the client's CPU seconds per 10,000
    operations); the last entry repeats.  A fake clock moves by each round's length."""

    def __init__(self, plan, clock, scripts):
        self.plan, self.clock, self.scripts = plan, clock, {k: list(v) for k, v in scripts.items()}
        self.specs = []

    def __call__(self, spec, on_window=None):
        from dataclasses import replace as dc_replace

        from sockbench.bench.schema import Client

        self.specs.append(spec)
        self.clock.now += self.plan.round_estimate_s(CELL)
        script = self.scripts[spec.server]
        msgs, disturbed, cpu_s = script.pop(0) if len(script) > 1 else script[0]
        r = _result(msgs, disturbed=disturbed, cell=Cell(spec.server, "closed", 64, 100))
        return dc_replace(r, client=Client(user_s=cpu_s * 0.6, sys_s=cpu_s * 0.4, reads=5_000, writes=5_000, waits=0))


def _scripted(tmp_path, scripts, **plan_kw):
    _, runs, events, load = _measure(tmp_path, lambda plan, clock: ScriptedLoad(plan, clock, scripts),
                                     **{"servers": tuple(scripts), "seed": 5, **plan_kw})
    return runs, events, load


def test_a_disturbed_attempt_is_measured_again_in_a_later_pass(tmp_path):
    """A slow stretch of the host outlasts an attempt made at once: the round waits for the next pass."""
    scripts = {"uvloop": [(50_000.0, True, 0.1), (100_000.0, False, 0.1)], "cython": [(200_000.0, False, 0.1)]}
    runs, events, load = _scripted(tmp_path, scripts)
    done = [(e.pass_no, e.cell.split(":")[0], e.round, e.attempt, e.kept) for e in events if isinstance(e, RoundDone)]
    assert (1, "uvloop", 1, 1, False) in done
    assert (2, "uvloop", 1, 2, True) in done and not any(d[:2] == (1, "uvloop") and d[4] for d in done)
    uv = runs["uvloop:closed-64B-c100"]
    assert uv.stopped == "stable" and sorted(r.round_no for r in uv.results) == list(range(1, 7))
    assert (tmp_path / "raw" / "uvloop__closed-64B-c100__r1__disturbed1.json").exists()


def test_rounds_a_slowed_host_ran_in_are_set_aside_once_the_cells_median_shows_it(tmp_path):
    """A cell's first three rounds ran while the host took CPU: judged against each other they read clean; once
    the cell's own median shows their client needed 1.3 times the CPU per operation, they are set aside and
    measured again, and the cell leaves with clean rounds only."""
    slow, fast = (75_000.0, False, 0.13), (100_000.0, False, 0.10)
    runs, events, load = _scripted(tmp_path, {"uvloop": [slow, slow, slow, fast]})
    run = runs["uvloop:closed-64B-c100"]
    assert run.stopped == "stable" and len(run.results) == 6
    assert all(r.throughput.msgs_per_s == 100_000.0 and not r.disturbed for r in run.results)
    assert len(run.discarded) == 3 and all(r.interference.unseen and r.disturbed for r in run.discarded)
    assert all(r.interference.client_slowdown == pytest.approx(1.3, rel=1e-3) for r in run.discarded)
    raw = sorted(os.listdir(tmp_path / "raw"))
    aside = [f for f in raw if "__disturbed" in f]
    assert len(aside) == 3 and len(raw) == 9
    set_aside = [e for e in events if isinstance(e, RoundSetAside)]
    assert sorted(e.round for e in set_aside) == [1, 2, 3] and all(e.client_slowdown == pytest.approx(1.3) for e in set_aside)
    cell = load_results(str(tmp_path)).cells[("uvloop", "closed-64B-c100")]
    assert (len(cell.results), cell.remeasured, cell.disturbed) == (6, 3, False) and 75_000.0 not in cell.msgs


def test_a_round_judged_slow_with_no_room_to_measure_it_again_is_kept_and_flagged(tmp_path):
    slow, fast = (75_000.0, False, 0.13), (100_000.0, False, 0.10)
    runs, events, load = _scripted(tmp_path, {"uvloop": [slow, fast]}, remeasure=0)
    run = runs["uvloop:closed-64B-c100"]
    flagged = [r for r in run.results if r.disturbed]
    assert len(flagged) == 1 and flagged[0].round_no == 1 and not run.discarded
    on_disk = json.load(open(tmp_path / "raw" / "uvloop__closed-64B-c100__r1.json"))
    assert on_disk["interference"]["unseen"] is True and on_disk["interference"]["client_slowdown"] == 1.3
