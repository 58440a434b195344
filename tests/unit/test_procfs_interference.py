"""The foreign-load arithmetic on synthetic /proc/stat counters, and fairness from the loop's counts.

The counters are in clock ticks (``TICK_S``, 10 ms), as the load loop reads
them; each case says what ran on the CPUs and checks what is made of it.
"""

import os

import pytest

from sockbench.bench.load.interference import interference, side_time
from sockbench.bench.schema import ProcResult
from sockbench.bench.schema import Fairness
from sockbench.procfs import TICK_S
from sockbench.thresholds import DISTURBED_SHARE

T0 = 5_000_000_000


def _edge(t_s, cpus):
    """One ``cpu_stat`` edge: ``cpus`` is ``{cpu: {column: ticks}}``, the columns not named are 0."""
    order = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {"t_ns": T0 + int(t_s * 1e9), "cpus": {c: [cols.get(k, 0) for k in order] for c, cols in cpus.items()}}


def _window(elapsed_s, per_cpu):
    """Two edges ``elapsed_s`` apart; ``per_cpu``: ``{cpu: {column: ticks in the window}}``."""
    base = {c: {"user": 1000, "system": 500, "idle": 9000, "iowait": 10, "softirq": 70, "steal": 3} for c in per_cpu}
    later = {c: {k: base[c].get(k, 0) + per_cpu[c].get(k, 0) for k in set(base[c]) | set(per_cpu[c])} for c in per_cpu}
    return [_edge(0, base), _edge(elapsed_s, later)]


def test_a_quiet_window_reads_no_foreign_load():
    # 1 s; the server was busy 0.6 s on CPU 0 (softirq inside its runtime), the client 0.7 s on CPU 1
    stat = _window(1.0, {0: {"system": 40, "softirq": 20, "idle": 40}, 1: {"user": 20, "system": 50, "idle": 30}})
    i = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.6, load_procs=[((1,), 0.7)], loadavg_1m=0.3)
    assert i.server_foreign == pytest.approx(0.0) and i.client_foreign == pytest.approx(0.0)
    assert i.server_steal == 0 and i.client_steal == 0 and i.loadavg_1m == 0.3 and i.disturbed is False


def test_a_hog_sharing_the_server_cpu_reads_its_share():
    # CPU 0 never idle; the server ran 0.5 s of the second: the other 0.5 s was someone else's
    stat = _window(1.0, {0: {"user": 60, "system": 40}, 1: {"system": 50, "idle": 50}})
    i = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.5, load_procs=[((1,), 0.5)])
    assert i.server_foreign == pytest.approx(0.5) and i.client_foreign == pytest.approx(0.0)
    assert i.disturbed is True


def test_the_threshold_is_a_share_of_one_cpu_beyond_the_counters_resolution():
    # two client CPUs; foreign work just at the threshold is within the idle clock's rounding (a tick per CPU)
    elapsed = 1.0
    for foreign_s, disturbed in ((DISTURBED_SHARE * elapsed, False), (DISTURBED_SHARE * elapsed + 2 * TICK_S + 0.001, True)):
        idle = round((1.0 - 0.4 - foreign_s / 2) / TICK_S, 6)
        stat = _window(elapsed, {0: {"idle": 50}, 1: {"idle": idle}, 2: {"idle": idle}})
        i = interference(stat, server_cpus=(0,), client_cpus=(1, 2), server_s=0.5,
                         load_procs=[((1,), 0.4), ((2,), 0.4)])
        assert i.client_foreign == pytest.approx(foreign_s / 2), foreign_s
        assert i.disturbed is disturbed, foreign_s
    st = side_time((1, 2), *_window(0.2, {1: {"idle": 20}, 2: {"idle": 20}}), own_s=0.0)
    assert st.resolution_s == pytest.approx(2 * TICK_S) and st.elapsed_s == pytest.approx(0.2)


def test_steal_is_reported_apart_and_disturbs():
    # the hypervisor took 0.1 s of CPU 1: not idle, not ours, not a process's either
    stat = _window(1.0, {0: {"system": 50, "idle": 50}, 1: {"system": 50, "idle": 40, "steal": 10}})
    i = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.5, load_procs=[((1,), 0.5)])
    assert i.client_steal == pytest.approx(0.1) and i.client_foreign == pytest.approx(0.0)
    assert i.disturbed is True


def test_interrupt_time_outside_the_tasks_is_the_runs_own_on_such_a_kernel():
    # with irq time accounting the softirq time (0.2 s) is in no task's runtime
    stat = _window(1.0, {0: {"system": 40, "softirq": 20, "idle": 40}, 1: {"system": 50, "idle": 50}})
    kw = dict(server_cpus=(0,), client_cpus=(1,), server_s=0.4, load_procs=[((1,), 0.5)])
    assert interference(stat, irq_is_own=True, **kw).server_foreign == pytest.approx(0.0)
    assert interference(stat, irq_is_own=False, **kw).server_foreign == pytest.approx(0.2)


def test_shared_cpus_read_their_union_and_target_runs_have_no_server_side():
    stat = _window(1.0, {0: {"system": 90, "idle": 10}, 1: {"system": 100}})
    # server and client on the same two CPUs: one figure for both
    i = interference(stat, server_cpus=(0, 1), client_cpus=(0, 1), server_s=0.9, load_procs=[((0,), 0.5), ((1,), 0.4)])
    assert i.server_foreign == i.client_foreign == pytest.approx((1.9 - 1.8) / 2)
    # --target: the server's CPUs are unknown; the client's side is still measured
    t = interference(stat, server_cpus=None, client_cpus=(1,), server_s=None, load_procs=[((1,), 0.7)])
    assert t.server_foreign is None and t.server_steal is None and t.client_foreign == pytest.approx(0.3)
    # the server's time unread: its side cannot be told
    u = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=None, load_procs=[((1,), 1.0)])
    assert u.server_foreign is None and u.client_foreign == pytest.approx(0.0)


def test_missing_counters_give_no_figures():
    stat = _window(1.0, {0: {"idle": 100}})
    assert interference(None, (0,), (1,), 0.1, []) is None
    assert interference([stat[0], None], (0,), (1,), 0.1, []) is None
    # CPU 1's line is missing: the client side is unknown, the server side stands
    i = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.0, load_procs=[])
    assert i.client_foreign is None and i.server_foreign == pytest.approx(0.0)
    assert side_time((1,), stat[0], stat[1], 0.0) is None


def test_the_loops_counts_become_fairness_and_its_cpu_lines_survive_json():
    rs = {"index": 0, "cpus": [1], "mode": 0, "msgs": 10, "rx_bytes": 0, "rx_wire_bytes": 0, "sent_window": 0,
          "cycles": 0, "msgs_queued": 0, "writes": 0, "reads": 0, "errors": {}, "first_error_ns": None,
          "first_error_kind": None, "ended_early": False, "alive_at_end": 3, "hdr1": None, "hdr1_sum_ns": 0,
          "hdr2": None, "hdr2_sum_ns": 0, "ts_msgs": [], "ts_sent": None, "user_s": 0.0, "sys_s": 0.0,
          "cpu_window_s": 0.0, "due": None, "polling": False, "idle_s": None, "server_cpu": None,
          "cpu_stat": [{"t_ns": 1, "cpus": {"0": [1] * 8}}, {"t_ns": 2, "cpus": {"0": [2] * 8}}],
          "conn_msgs": [6, 0, 4], "starved": 1}
    r = ProcResult.from_json(rs)  # as it comes over the JSON pipe: CPU numbers as strings
    assert r.cpu_stat[1]["cpus"] == {0: [2] * 8}
    from sockbench.bench.load.harness import _fairness
    from sockbench.bench.load.spec import LoadSpec

    f = _fairness(LoadSpec(server="selectors", conns=3), [r])
    assert f == Fairness(conns=3, min=0, median=4.0, max=6, jain=pytest.approx(100 / (3 * 52)), starved=1)
    assert _fairness(LoadSpec(server="selectors", conns=3, mode="connect"), [r]) is None
    # an open-loop connection with nothing asked of it completed nothing and is not starved: the loop says so
    assert Fairness.of([6, 0, 4], starved=0).starved == 0 and Fairness.of([6, 0, 4]).starved == 1


def test_the_runs_own_wakeups_are_not_foreign_when_no_other_process_ran():
    # an open-loop round: CPU 0 busy 0.55 s of 1 s, the server's runtime 0.37 s; the 0.18 s between is
    # leaving idle once per message, which no other process accounts for
    stat = _window(1.0, {0: {"system": 55, "idle": 45}, 1: {"system": 50, "idle": 50}})
    quiet = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.37, load_procs=[((1,), 0.5)],
                         process_s=lambda cpus: 0.0)
    assert quiet.server_foreign == 0.0 and quiet.disturbed is False
    uncapped = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.37, load_procs=[((1,), 0.5)])
    assert uncapped.server_foreign == pytest.approx(0.18) and uncapped.disturbed is True
    # a neighbour that did run there: the smaller of the two figures is kept
    busy = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.37, load_procs=[((1,), 0.5)],
                        process_s=lambda cpus: 0.12 if cpus == {0} else 0.0)
    assert busy.server_foreign == pytest.approx(0.12) and busy.disturbed is True


def test_foreign_process_time_leaves_the_run_out_and_counts_reaped_children():
    from sockbench.procfs import foreign_process_s

    me = os.getpid()
    # {pid: (ppid, ticks, reaped children's ticks, last cpu)}; pid 1 is an ancestor of this process
    before = {1: (0, 5, 100, 0), me: (1, 100, 0, 0), 9001: (me, 50, 0, 0), 9002: (1, 10, 0, 0),
              9003: (1, 10, 0, 1), 9004: (1, 5, 0, 0)}
    after = {1: (0, 9, 140, 0),       # an ancestor: its own time is the run's, the 40 ticks it reaped are not
             me: (1, 300, 80, 0),     # this process, and the load process it reaped: the run's own
             9001: (me, 90, 0, 0),    # a load process of this run (``own``)
             9002: (1, 40, 0, 0),     # a neighbour on CPU 0: 30 ticks
             9003: (1, 70, 0, 1),     # busy on CPU 1 only
             9004: (1, 25, 12, 0),    # a make and the compilers it reaped: 20 + 12
             9005: (1, 8, 0, 0)}      # started between the snapshots
    assert foreign_process_s(before, after, {0}, own=[9001]) == pytest.approx((40 + 30 + 32 + 8) * TICK_S)
    # reaped children may have run anywhere (a hog pinned to CPU 1, reaped by a parent last seen on CPU 0):
    # their 40 + 12 ticks count on CPU 1 as well
    assert foreign_process_s(before, after, {1}, own=[9001]) == pytest.approx((60 + 40 + 12) * TICK_S)


def test_the_runs_ancestors_end_at_the_command_that_started_it(monkeypatch):
    from sockbench.procfs import RUN_ROOT_ENV, process_family

    # 500 (this round) <- 400 (pytest) <- 300 (sockbench run) <- 200 (a shell) <- 1 (init, or a sandbox's agent)
    parents = {500: 400, 400: 300, 300: 200, 200: 1, 1: 0, 600: 1}
    monkeypatch.setenv(RUN_ROOT_ENV, "300")
    assert process_family(500, parents=parents) == {500, 400, 300}
    # the command itself is the root: none of its ancestors is the run's
    assert process_family(300, parents=parents) == {300}
    # without a root (the harness driven from a test), or one not above this process, every ancestor is
    monkeypatch.delenv(RUN_ROOT_ENV)
    assert process_family(500, parents=parents) == {500, 400, 300, 200, 1}
    monkeypatch.setenv(RUN_ROOT_ENV, "600")
    assert process_family(500, parents=parents) == {500, 400, 300, 200, 1}


def test_the_threads_that_held_the_cpus_in_long_slices_are_counted_and_named(monkeypatch):
    from sockbench.procfs import RUN_ROOT_ENV, foreign_stalls

    me = os.getpid()
    monkeypatch.setenv(RUN_ROOT_ENV, str(me))
    ms = 1_000_000
    # {tid: (pid, ppid, runtime ns, slices, last cpu, comm)}
    before = {
        10: (10, 2, 100 * ms, 50, 0, "kdamond.0"),
        11: (11, 2, 50 * ms, 10_000, 0, "rcu_preempt"),
        12: (12, 2, 10 * ms, 5, 1, "daemon"),
        20: (20, 1, 0, 0, 0, "load"),
        30: (30, 1, 0, 0, 0, "agent"),
        31: (30, 1, 10 * ms, 4, 1, "tokio-rt-worker"),
        me: (me, 1, 0, 0, 0, "sockbench"),
        40: (40, 2, 5 * ms, 5, 0, "old"),
    }
    after = {
        10: (10, 2, 112 * ms, 60, 0, "kdamond.0"),          # 12 ms in 10 slices on CPU 0: counted
        11: (11, 2, 52 * ms, 10_400, 0, "rcu_preempt"),      # 2 ms in 400 slices of 5 µs: delays no one
        12: (12, 2, 18 * ms, 7, 1, "daemon"),                # 8 ms, but on CPU 1
        20: (20, me, 300 * ms, 9, 0, "load"),                # the run's own (``own``)
        30: (30, 1, 0, 0, 0, "agent"),
        31: (30, 1, 30 * ms, 6, 0, "tokio-rt-worker"),       # init's thread, above the run's root: foreign
        me: (me, 1, 90 * ms, 20, 0, "sockbench"),            # this process: the run's
        40: (41, 2, 1 * ms, 1, 0, "new"),                    # a thread id used again: all its time is new
        50: (50, 2, 3 * ms, 2, 0, "born"),                   # born between the snapshots
    }
    seconds, threads = foreign_stalls(before, after, {0}, own=[20])
    assert [(t, p) for t, p, _ in threads] == [("tokio-rt-worker", 30), ("kdamond.0", 10), ("born", 50), ("new", 41)]
    assert seconds == pytest.approx(0.020 + 0.012 + 0.003 + 0.001)
    assert foreign_stalls(before, after, {1}, own=[20])[1] == [("tokio-rt-worker", 30, pytest.approx(0.020)),
                                                              ("daemon", 12, pytest.approx(0.008))]


def test_a_rounds_interference_carries_what_held_each_side():
    stat = _window(1.0, {0: {"system": 40, "idle": 60}, 1: {"system": 50, "idle": 50}})
    # kdamond was seen on CPU 0 before the window and on CPU 1 after it: each side counts it, the two together once
    held = {frozenset({0}): (0.012, [("kdamond.0", 84, 0.012)]),
            frozenset({1}): (0.042, [("tokio-rt-worker", 1, 0.028), ("kdamond.0", 84, 0.012), ("daemon", 7, 0.002)]),
            frozenset({0, 1}): (0.042, [("tokio-rt-worker", 1, 0.028), ("kdamond.0", 84, 0.012), ("daemon", 7, 0.002)])}
    i = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.4, load_procs=[((1,), 0.5)],
                     process_s=lambda cpus: 0.0, held=lambda cpus: held[frozenset(cpus)])
    assert (i.server_held_s, i.client_held_s, i.held_s) == (0.012, 0.042, 0.042)
    assert i.held_by == [{"thread": "tokio-rt-worker", "pid": 1, "s": 0.028},
                         {"thread": "kdamond.0", "pid": 84, "s": 0.012}, {"thread": "daemon", "pid": 7, "s": 0.002}]
    # shown, not a flag: 42 ms held in slices is 2-3% of a CPU, no disturbance by the share rule
    assert i.disturbed is False
    # not read: no figures
    i = interference(stat, server_cpus=(0,), client_cpus=(1,), server_s=0.4, load_procs=[((1,), 0.5)])
    assert i.server_held_s is None and i.client_held_s is None and i.held_s is None and i.held_by is None
