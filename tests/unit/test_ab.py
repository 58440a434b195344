"""``sockbench ab``'s rules on a synthetic load: pairs by pass, the verdicts, stopping, the folder, bad input.

``FakeLoad`` stands in for ``run_load``: each side's msgs/s is its base rate times a drift common to every
round of one pass (the machine's state then) and a little noise of its own, so the pairs are what a real
``ab`` pairs, and a fake clock moves by a round's length.
"""

import json
import os
import random

import pytest

from sockbench.bench.schema import ERROR_KINDS, Errors, Fairness, Interference, Latency, LoadResult, Throughput, Workload
from sockbench.bench.suite.ab import AB_FILE, INVALID, AbPlan, AbRun, AbSide, check_targets
from sockbench.bench.suite.progress import PassStarted, parse
from sockbench.errors import UsageError
from sockbench.servers.targets import resolve_target


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


class FakeLoad:
    def __init__(self, clock, rates, noise=0.003, disturbed=(), invalid=(), seed=2):
        self.clock, self.rates, self.noise = clock, rates, noise
        self.rng = random.Random(seed)
        self.drift = {}
        self.calls = []
        self.disturbed = list(disturbed)
        self.invalid = set(invalid)

    def __call__(self, side, spec):
        self.clock.now += spec.warmup_s + spec.duration_s + 0.05
        n = len(self.calls) // 4  # about one pass every 4 rounds: the drift moves between passes
        drift = self.drift.setdefault(n, self.rng.uniform(0.85, 1.15))
        self.calls.append((side.side, spec.size))
        disturbed = bool(self.disturbed) and self.disturbed.pop(0)
        msgs = self.rates[side.side] * drift * (1 + self.rng.uniform(-self.noise, self.noise))
        valid = side.side not in self.invalid
        return LoadResult(
            server=spec.server or "x", workload=Workload(mode="closed", conns=spec.conns, size=spec.size,
                                                         duration_s=spec.duration_s),
            throughput=Throughput(msgs_per_s=msgs), latency_us=Latency(count=10, p99=100.0),
            errors=Errors.of(dict.fromkeys(ERROR_KINDS, 0)), valid=valid,
            invalid_reason=None if valid else "the server exited (status 1) during the run",
            interference=Interference(server_foreign=0.0, client_foreign=0.0, disturbed=disturbed),
            fairness=Fairness.of([10] * spec.conns))


def _ab(tmp_path, rates, **kw):
    plan_kw = {k: kw.pop(k) for k in list(kw) if k in AbPlan.__dataclass_fields__}
    plan = AbPlan(seed=11, **plan_kw)
    clock = Clock()
    load = FakeLoad(clock, rates, **kw)
    a, b = AbSide("A", resolve_target("uvloop")), AbSide("B", resolve_target("uvloop"))
    out = str(tmp_path / "ab")
    runner = AbRun(a, b, plan, out, log=lambda line: None, run=load, clock=clock, argv=["sockbench", "ab"])
    rows = runner.run()
    return runner, rows, load, out


def test_the_same_server_twice_reads_same_and_stops_once_decided(tmp_path):
    runner, rows, load, out = _ab(tmp_path, {"A": 100_000.0, "B": 100_000.0})
    assert [r.verdict for r in rows] == ["same", "same"]
    # the drift between passes is +-15%, far above the threshold: only the pairing makes "same" possible
    assert all(0.99 < r.ratio.estimate < 1.01 and r.ratio.paired for r in rows)
    assert runner.passes == 8 and all(r.pairs == 8 for r in rows)  # decided at 99% at the minimum pairs
    files = sorted(os.listdir(os.path.join(out, "raw")))
    assert len(files) == 2 * 2 * 8 and "A-uvloop__closed-64B-c100__r1.json" in files
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["kind"] == "sockbench-ab" and meta["seed"] == 11 and meta["baseline"] == "A-uvloop"
    assert meta["targets"]["B"]["label"] == "B-uvloop" and meta["plan"]["servers"] == ["A-uvloop", "B-uvloop"]
    assert meta["status"] == "complete"
    ab = json.load(open(os.path.join(out, AB_FILE)))
    assert [r["verdict"] for r in ab["rows"]] == ["same", "same"] and ab["seed"] == 11
    passes = [parse(json.loads(line)) for line in open(os.path.join(out, "progress.jsonl"))]
    orders = [e.order for e in passes if isinstance(e, PassStarted)]
    assert len(orders) == 8 and len(set(orders)) > 1  # the workloads and the sides in a fresh order each pass
    assert all(sorted(o) == sorted(orders[0]) for o in orders)


def test_a_ten_percent_slower_b_reads_slower_with_the_ratio_close_to_it(tmp_path):
    _, rows, _, _ = _ab(tmp_path, {"A": 100_000.0, "B": 90_000.0})
    assert [r.verdict for r in rows] == ["slower", "slower"]
    assert all(abs(r.ratio.estimate - 0.9) < 0.005 and r.ratio.hi < 0.95 for r in rows)
    assert all(r.change_ci[1] < -0.05 for r in rows)


def test_a_change_near_the_threshold_runs_to_the_budget_undecided(tmp_path):
    runner, rows, load, _ = _ab(tmp_path, {"A": 100_000.0, "B": 95_000.0}, noise=0.03, max_pairs=12, budget_s=1000.0)
    assert runner.passes == 12 and any(r.verdict == "undecided (needs more rounds)" for r in rows)
    runner, rows, load, _ = _ab(tmp_path / "b", {"A": 100_000.0, "B": 95_000.0}, noise=0.03, budget_s=15.0)
    assert runner.passes == 8  # the minimum pairs always run; then the budget stops the rounds


def test_a_disturbed_round_is_measured_again_and_a_pair_left_disturbed_is_left_out(tmp_path):
    # the first round is disturbed three times: measured again twice, then kept, disturbed
    runner, rows, load, out = _ab(tmp_path, {"A": 100_000.0, "B": 100_000.0}, disturbed=[True, True, True])
    assert runner.discarded == 2 and len(load.calls) == 2 * 2 * runner.passes + 2
    assert sorted(r.left_out for r in rows) == [0, 1] and sorted(r.pairs for r in rows) == [runner.passes - 1,
                                                                                           runner.passes]
    assert len([f for f in os.listdir(os.path.join(out, "raw")) if "disturbed" in f]) == 2


def test_an_invalid_round_makes_its_workload_invalid(tmp_path):
    _, rows, _, _ = _ab(tmp_path, {"A": 100_000.0, "B": 100_000.0}, invalid=("B",))
    assert {r.verdict for r in rows} == {INVALID} and all("server exited" in r.reason for r in rows)


def test_targets_must_share_a_transport_and_a_protocol():
    plan = AbPlan()
    tcp, unix = resolve_target("127.0.0.1:7000"), resolve_target("unix:/tmp/echo.sock")
    with pytest.raises(UsageError, match=r"A \(127.0.0.1:7000\) speaks tcp and B \(unix:/tmp/echo.sock\) unix"):
        check_targets(AbSide("A", tcp), AbSide("B", unix), plan)
    assert check_targets(AbSide("A", resolve_target("uvloop")), AbSide("B", unix), plan) == "unix"
    with pytest.raises(UsageError, match="does not speak --protocol json"):
        check_targets(AbSide("A", resolve_target("uvloop")), AbSide("B", resolve_target("cython-protocol")),
                      AbPlan(protocol="json"))
    with pytest.raises(UsageError, match="unknown server 'nosuch'"):
        resolve_target("nosuch")
    with pytest.raises(UsageError, match="--min-pairs must be at least 6"):
        AbPlan(min_pairs=5)
