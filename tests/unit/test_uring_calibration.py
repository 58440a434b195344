"""The io_uring calibration tool's arithmetic on made-up points: the ratios of medians, the table, the perf parsers
and rooms, and its bad input (the runs themselves are real load runs: python -m sockbench.bench.calibrate.uring)."""

import pytest

from sockbench.bench.calibrate import uring as cal
from sockbench.servers import iouring


def _pt(server, engine, rnd, msgs, s_us, c_us, valid=True, client_bound=False, disturbed=False):
    return cal.Point(conns=100, size=64, depth=1, server=server, engine=engine, round=rnd, msgs_per_s=msgs,
                     server_user_us=s_us * 0.1, server_sys_us=s_us * 0.9, client_user_us=c_us * 0.1,
                     client_sys_us=c_us * 0.9, p99_us=900.0, client_bound=client_bound, limited_by=None, valid=valid,
                     invalid_reason=None if valid else "1 connection(s) reset or closed by the server",
                     disturbed=disturbed, attempts=1)


@pytest.fixture
def points():
    out = []
    for rnd, k in enumerate((1.0, 1.1, 0.9), start=1):
        out += [_pt("cython", "epoll", rnd, 100e3 * k, 5.0 * k, 6.0 * k),
                _pt("cython", "uring", rnd, 110e3 * k, 5.0 * k, 5.0 * k),
                _pt("cython-uring", "epoll", rnd, 105e3 * k, 4.0 * k, 6.0 * k, client_bound=True),
                _pt("cython-uring", "uring", rnd, 120e3 * k, 4.5 * k, 4.8 * k)]
    out.append(_pt("cython-uring", "uring", 4, 1.0, 99.0, 99.0, valid=False))  # an invalid round: left out
    return out


def test_the_ratios_are_of_medians_over_valid_rounds(points):
    w = cal.Workload(*cal.HEADLINE)
    r = cal.ratios(points, w)
    assert r["server"]["epoll"] == pytest.approx(4.0 / 5.0) and r["server"]["uring"] == pytest.approx(4.5 / 5.0)
    assert r["client"]["cython"] == pytest.approx(5.0 / 6.0) and r["client"]["cython-uring"] == pytest.approx(4.8 / 6.0)
    assert r["msgs"]["uring"] == pytest.approx(120 / 110)


def test_the_table_shows_spreads_flags_and_the_ratios(points):
    text = cal.table(points, [cal.Workload(*cal.HEADLINE)], cal.SERVERS, ("epoll", "uring"))
    assert "-- 100 conns x 64B x depth 1" in text
    assert "100,000 [90,000..110,000]" in text
    assert "CLIENT-BOUND 3/3" in text and "INVALID 1/4" in text
    assert "uring/epoll server CPU/msg: 0.80x (engine epoll)" in text
    assert "uring/epoll engine client CPU/msg: 0.83x (cython)" in text


def test_perf_output_is_read_and_added_up_by_room():
    stat = """# started on Fri
 Performance counter stats for process id '123':

          1,998.12 msec task-clock                       #    0.999 CPUs utilized
            12,345      context-switches                 #    6.178 K/sec
           400,000      syscalls:sys_enter_io_uring_enter #  200 K/sec
"""
    counts = cal._parse_perf_stat(stat)
    assert counts["task-clock"] == 1998.12 and counts["context-switches"] == 12345
    assert counts["syscalls:sys_enter_io_uring_enter"] == 400000
    report = """# Samples: 6K of event 'cpu-clock:ppp'
#
    10.50%  [k] tcp_sendmsg_locked
     5.00%  [k] io_submit_sqes
     4.00%  [k] do_syscall_64
     3.00%  [k] ep_poll_callback
     2.00%  [k] _copy_to_iter
     1.50%  [.] _run
     1.00%  [k] schedule
     0.50%  [k] mystery_function
"""
    symbols = cal._parse_perf_report(report)
    assert symbols[0] == (0.105, "k", "tcp_sendmsg_locked") and len(symbols) == 8
    rooms = cal.rooms(symbols)
    assert rooms == pytest.approx({"TCP/IP": 0.105, "io_uring": 0.05, "syscall entry/exit": 0.04, "epoll": 0.03,
                                   "copies": 0.02, "user space": 0.015, "scheduler/idle": 0.01, "other kernel": 0.005})


def test_bad_input_is_one_line_and_exit_2(capsys, monkeypatch):
    assert cal.main(["--servers", "no-such-server"]) == 2
    assert capsys.readouterr().err.startswith("uring: unknown server 'no-such-server'")
    assert cal.main(["--engines", "kqueue"]) == 2
    assert "unknown --engine 'kqueue'" in capsys.readouterr().err
    why = iouring.refusal(1)
    monkeypatch.setattr(iouring, "kernel_support", lambda: (False, why, {"errno": 1}))
    monkeypatch.setattr(iouring, "availability", lambda: (False, why))
    assert cal.main(["--servers", "cython", "--engines", "uring"]) == 2
    assert capsys.readouterr().err.strip() == f"uring: --engine uring: {why}"
