"""The load from several hosts, in process: the clock arithmetic, the choice of hosts, the split, the merge.

No Dask and no network here: the coordinator's decisions are pure functions
of what the scheduler and the hosts hand back (tests/e2e/test_cluster.py runs
the real thing in network namespaces).
"""

import json
import random
from dataclasses import replace

import pytest

from sockbench.bench.load import hdr
from sockbench.bench.load.clock import ClockSample, best, sample, too_large
from sockbench.bench.load.cluster import host_specs, merge, pick_hosts
from sockbench.bench.load.harness import ServerWindow, build_result
from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.schema import (
    Client, ClockOffset, ERROR_KINDS, HostPart, LoadResult, ProcResult, WorkerCpu, csv_columns, merge_stalls,
)
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError, UsageError


def test_ntp_offset_is_the_host_clock_against_the_midpoint():
    # the host's clock runs 3 ms ahead; the exchange took 2 ms each way
    s = sample(t0_ns=1_000_000_000, t1_ns=1_005_000_000, t3_ns=1_004_000_000)
    assert s.offset_s == pytest.approx(0.003) and s.delay_s == pytest.approx(0.004)


def test_the_shortest_round_trip_wins():
    got = [ClockSample(0.010, 0.020), ClockSample(0.001, 0.002), ClockSample(-0.005, 0.015)]
    assert best(got) == ClockSample(0.001, 0.002)


def test_an_offset_is_too_large_only_beyond_its_bound():
    # 1% of a 5 s window is 50 ms
    assert not too_large(ClockSample(0.049, 0.001), 5.0)
    assert too_large(ClockSample(-0.060, 0.002), 5.0)
    # known only within +-10 ms: 55 ms might be 45 ms
    assert not too_large(ClockSample(0.055, 0.020), 5.0)


def test_hosts_by_name_and_unknown_names_list_the_workers():
    workers = {"b": "tcp://10.0.0.2:1", "a": "tcp://10.0.0.1:1"}
    assert pick_hosts(workers) == [("a", "tcp://10.0.0.1:1"), ("b", "tcp://10.0.0.2:1")]
    assert pick_hosts(workers, ["b"]) == [("b", "tcp://10.0.0.2:1")]
    with pytest.raises(UsageError, match=r"--hosts c: no worker of that name; the workers are a, b"):
        pick_hosts(workers, ["a", "c"])
    with pytest.raises(SockbenchError, match="no Dask worker"):
        pick_hosts({})


def test_connections_split_between_hosts_and_procs_per_host():
    spec = LoadSpec(target=("10.0.0.9", 7), conns=5, procs=2, mode="open", rate=1000.0)
    specs = host_specs(spec, ("10.0.0.9", 7), [("a", "x"), ("b", "y")])
    assert [s.conns for s in specs] == [3, 2] and [s.procs for s in specs] == [2, 2]
    assert sum(s.rate for s in specs) == pytest.approx(1000.0)
    with pytest.raises(UsageError, match="each host needs a connection"):
        host_specs(LoadSpec(target=("h", 7), conns=1), ("h", 7), [("a", "x"), ("b", "y")])


def _proc(values_ns, index=0, late_ns=1000):
    h = hdr.new_histogram()
    for v in values_ns:
        h.record_value(v)
    ts = [len(values_ns) // 2, len(values_ns) - len(values_ns) // 2]
    return ProcResult(
        index=index, cpus=[1], mode=0, msgs=len(values_ns), rx_bytes=64 * len(values_ns),
        rx_wire_bytes=64 * len(values_ns), sent_window=0, cycles=0, msgs_queued=len(values_ns), writes=len(values_ns),
        reads=len(values_ns), errors={k: 0 for k in ERROR_KINDS}, first_error_ns=None, first_error_kind=None,
        ended_early=False, alive_at_end=1, hdr1=hdr.encode_text(h), hdr1_sum_ns=sum(values_ns),
        hdr2=hdr.encode_text(hdr.new_histogram()), hdr2_sum_ns=0, ts_msgs=ts, ts_sent=None, user_s=0.2, sys_s=0.3,
        cpu_window_s=1.0, due=None, polling=False, idle_s=None, server_cpu=None, conn_msgs=[len(values_ns)],
        starved=0, start_late_ns=late_ns,
    )


def _answer(spec, procs):

    rs = {p.index: p for p in procs}
    r = build_result(spec, None, Endpoint("tcp", "10.0.0.9", 7), "2026-01-01T00:00:00Z", rs, [], ServerWindow())
    return {"result": r.to_json(), "procs": [p.to_json() for p in procs], "problems": [],
            "worker_cpu": {"user_s": 0.0, "sys_s": 0.01, "span_s": 1.2, "util": 0.004}}


def test_merge_is_exact_and_keeps_every_host():
    rng = random.Random(7)
    a = [rng.randint(10_000, 2_000_000) for _ in range(3000)]
    b = [rng.randint(10_000, 50_000_000) for _ in range(1000)]
    spec = LoadSpec(target=("10.0.0.9", 7), conns=2, procs=1, duration_s=1.0, warmup_s=0.0, interval_s=0.5)
    chosen = [("a", "tcp://a:1"), ("b", "tcp://b:1")]
    specs = host_specs(spec, ("10.0.0.9", 7), chosen)
    answers = {"a": _answer(specs[0], [_proc(a, late_ns=2000)]), "b": _answer(specs[1], [_proc(b, late_ns=5000)])}
    clocks = {"a": ClockOffset(0.0001, 0.001), "b": ClockOffset(-0.0002, 0.002)}
    r = merge(spec, None, Endpoint("tcp", "10.0.0.9", 7), "2026-01-01T00:00:00Z", chosen, specs, answers, [], ServerWindow(), clocks)
    whole = hdr.new_histogram()
    for v in a + b:
        whole.record_value(v)
    assert r.valid and r.latency_us.count == len(a) + len(b)
    assert r.latency_us == hdr.summary_us(whole, sum(a + b) / len(a + b))
    assert r.throughput.msgs_per_s == len(a) + len(b)
    assert [h.name for h in r.hosts] == ["a", "b"] and [h.latency_us.count for h in r.hosts] == [len(a), len(b)]
    assert r.hosts[1].start_late_s == pytest.approx(5e-6) and r.hosts[0].clock == clocks["a"]
    assert r.hosts[0].worker_cpu == WorkerCpu(user_s=0.0, sys_s=0.01, span_s=1.2, util=0.004)
    assert r.client.user_s == pytest.approx(0.4) and r.client.cpu_util == pytest.approx(0.5) and r.client.cpus is None
    assert r.workload.conns == 2 and r.workload.procs == 1
    # it survives its JSON
    back = LoadResult.from_json(r.to_json())
    assert back.hosts == r.hosts and back.to_json() == r.to_json()


def test_a_host_that_died_invalidates_and_is_named_and_the_rest_is_kept():
    spec = LoadSpec(target=("10.0.0.9", 7), conns=2, procs=1, duration_s=1.0, warmup_s=0.0, interval_s=0.5)
    chosen = [("a", "tcp://a:1"), ("b", "tcp://b:1")]
    specs = host_specs(spec, ("10.0.0.9", 7), chosen)
    answers = {"a": _answer(specs[0], [_proc([20_000] * 100)])}
    problems = ["host b (tcp://b:1) died during the run; its figures are lost"]
    r = merge(spec, None, Endpoint("tcp", "10.0.0.9", 7), None, chosen, specs, answers, problems, ServerWindow(), {})
    assert not r.valid and "host b (tcp://b:1) died" in r.invalid_reason
    assert r.latency_us.count == 100 and r.hosts[0].valid
    assert r.hosts[1] == HostPart(name="b", address="tcp://b:1", conns=1, procs=1, valid=False,
                                  invalid_reason="its result was lost")


def test_run_cluster_rounds_go_through_the_coordinator():
    from sockbench.bench.load.cluster import run_cluster_load
    from sockbench.bench.suite.plan import Plan
    from sockbench.bench.suite.session import _load_runner

    assert _load_runner(Plan(servers=("cython",))) is None  # a local run: the suite keeps its processes (pools)
    plan = Plan(servers=("cython",), extra={"cluster": {"scheduler": "tcp://10.0.0.1:8786", "hosts": ["a"]}})
    runner = Plan.from_dict(plan.to_dict())  # as the suite's child reads it back
    run = _load_runner(runner)
    assert run.func is run_cluster_load and run.keywords == {"scheduler": "tcp://10.0.0.1:8786", "hosts": ["a"]}


def test_the_tuned_workers_periodic_jobs_stay_slow_and_quiet():
    # the idle worker's CPU is its periodic jobs: each must run far less often than Dask's defaults, and the
    # tick's "event loop was unresponsive" limit must exceed the tick itself, or every tick writes a log line
    parse_timedelta = pytest.importorskip("dask.utils", reason="needs the [cluster] extra").parse_timedelta

    from sockbench.bench.load.cluster import HEARTBEAT_S, WORKER_CONFIG

    def seconds(key):
        return parse_timedelta(WORKER_CONFIG[key])

    assert WORKER_CONFIG["distributed.worker.profile.enabled"] is False
    assert seconds("distributed.admin.tick.limit") > seconds("distributed.admin.tick.interval") >= 1
    assert seconds("distributed.admin.tick.cycle") >= 1
    assert seconds("distributed.admin.system-monitor.interval") >= 1
    assert seconds("distributed.worker.memory.monitor-interval") >= 1
    assert HEARTBEAT_S >= 2


@pytest.mark.parametrize("args, message", [
    (["--window", "5"], "--window 5 is shorter than two heartbeats"),
    (["--window", "0"], "--window"),
    (["--windows", "x"], "--windows"),
])
def test_worker_idle_bad_input_is_one_line_and_exit_2(args, message):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "sockbench.bench.calibrate.worker_idle", *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


# --- a polling client's stalls: summed over load processes and hosts, the longest kept ----------------


def _polling(values_ns, stalls, stall_s, longest_s, index=0):
    return replace(_proc(values_ns, index=index), polling=True, idle_s=0.5, stalls=stalls, stall_s=stall_s,
                   longest_stall_s=longest_s)


def _spec(procs):
    return LoadSpec(target=("10.0.0.9", 7), conns=procs, procs=procs, duration_s=1.0, warmup_s=0.0, interval_s=0.5)


def test_the_merge_sums_counts_and_times_and_keeps_the_longest():
    parts = [Client(stalls=3, stall_s=0.004, longest_stall_s=0.002), Client(),
             Client(stalls=2, stall_s=0.010, longest_stall_s=0.008), Client(stalls=0, stall_s=0.0, longest_stall_s=0.0)]
    stalls, total, longest = merge_stalls(parts)
    assert stalls == 5 and total == pytest.approx(0.014) and longest == pytest.approx(0.008)
    # nobody polled: nothing was measured, which is not zero
    assert merge_stalls([Client(), Client()]) == (None, None, None)


def test_a_run_adds_up_its_load_processes_and_the_result_keeps_them():

    rs = {0: _polling([20_000] * 100, 3, 0.004, 0.002), 1: _polling([20_000] * 100, 2, 0.010, 0.008, index=1)}
    r = build_result(_spec(2), None, Endpoint("tcp", "10.0.0.9", 7), "2026-01-01T00:00:00Z", rs, [], ServerWindow())
    c = r.client
    assert c.polling and c.stalls == 5 and c.stall_s == pytest.approx(0.014) and c.longest_stall_s == 0.008
    assert LoadResult.from_json(json.loads(json.dumps(r.to_json()))).client == c
    # a client that did not poll measured none: the fields are None and its JSON has no such keys
    quiet = build_result(_spec(1), None, Endpoint("tcp", "10.0.0.9", 7), None, {0: _proc([20_000] * 100)}, [],
                          ServerWindow())
    assert (quiet.client.stalls, quiet.client.stall_s, quiet.client.longest_stall_s) == (None, None, None)
    assert not {"stalls", "stall_s", "longest_stall_s"} & set(quiet.to_json()["client"])


def test_a_cluster_sums_every_host_and_each_host_keeps_its_own():
    spec = LoadSpec(target=("10.0.0.9", 7), conns=4, procs=2, duration_s=1.0, warmup_s=0.0, interval_s=0.5)
    chosen = [("a", "tcp://a:1"), ("b", "tcp://b:1")]
    specs = host_specs(spec, ("10.0.0.9", 7), chosen)
    values = [random.Random(3).randint(10_000, 90_000) for _ in range(200)]
    answers = {
        "a": _answer(specs[0], [_polling(values, 4, 0.006, 0.003), _polling(values, 1, 0.001, 0.001, index=1)]),
        "b": _answer(specs[1], [_polling(values, 2, 0.030, 0.025), _polling(values, 0, 0.0, 0.0, index=1)]),
    }
    r = merge(spec, None, Endpoint("tcp", "10.0.0.9", 7), None, chosen, specs, answers, [], ServerWindow(), {})
    assert [(h.client.stalls, h.client.longest_stall_s) for h in r.hosts] == [(5, 0.003), (2, 0.025)]
    assert r.hosts[0].client.stall_s == pytest.approx(0.007) and r.hosts[1].client.stall_s == pytest.approx(0.030)
    assert r.client.stalls == 7 and r.client.stall_s == pytest.approx(0.037) and r.client.longest_stall_s == 0.025
    assert LoadResult.from_json(r.to_json()).hosts == r.hosts


# --- a counter of the load loop reaches the result by its declaration alone -------------------------------


def test_the_loops_wait_count_is_summed_over_processes_and_hosts_and_written_where_measured():
    rs = {i: replace(_proc([20_000] * 100, index=i), waits=w) for i, w in enumerate((40, 60))}
    wire = ProcResult.from_json(json.loads(json.dumps(rs[1].to_json())))
    assert wire == rs[1] and wire.waits == 60  # the load process's JSON line carries it under the same name
    r = build_result(_spec(2), None, Endpoint("tcp", "10.0.0.9", 7), None, rs, [], ServerWindow())
    assert r.client.waits == 100 and r.to_json()["client"]["waits"] == 100
    assert LoadResult.from_json(json.loads(json.dumps(r.to_json()))).client.waits == 100
    assert dict(csv_columns())["client_waits"](r) == 100
    # a load process that did not count them (an older host) is left out; none counted: not written at all
    assert build_result(_spec(2), None, Endpoint("tcp", "10.0.0.9", 7), None, {**rs, 1: _proc([1] * 10, index=1)},
                        [], ServerWindow()).client.waits == 40
    quiet = build_result(_spec(1), None, Endpoint("tcp", "10.0.0.9", 7), None, {0: _proc([20_000] * 100)}, [],
                         ServerWindow())
    assert quiet.client.waits is None and "waits" not in quiet.to_json()["client"]
    # a cluster: the total is every host's load processes', each host keeps its own
    spec = LoadSpec(target=("10.0.0.9", 7), conns=4, procs=2, duration_s=1.0, warmup_s=0.0, interval_s=0.5)
    chosen = [("a", "tcp://a:1"), ("b", "tcp://b:1")]
    specs = host_specs(spec, ("10.0.0.9", 7), chosen)
    answers = {"a": _answer(specs[0], list(rs.values())), "b": _answer(specs[1], [replace(p, waits=7) for p in rs.values()])}
    c = merge(spec, None, Endpoint("tcp", "10.0.0.9", 7), None, chosen, specs, answers, [], ServerWindow(), {})
    assert c.client.waits == 114 and [h.client.waits for h in c.hosts] == [100, 14]
