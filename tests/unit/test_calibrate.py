"""The calibration tools' shared helpers and the framed report: their logic, without a benchmark.

The figures of a real run are not asserted (timings belong to the scripts);
what is checked is that the summaries follow from the numbers, that invalid
runs stay out of them, and that bad input is one line before anything starts.
"""

import os
import subprocess
import sys

import pytest

from sockbench.bench.calibrate import common, framed
from sockbench.errors import UsageError
from sockbench.thresholds import CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL


def test_spread_leaves_out_what_was_not_measured():
    assert common.spread([3.0, None, 1.0, float("nan"), 2.0]) == common.Spread(median=2.0, min=1.0, max=3.0, n=3)
    assert common.spread([None, float("nan")]) is None
    assert common.fmt_spread(common.spread([1000.0, 1500.0, 1234.0])) == "1,234 [1,000..1,500]"
    assert common.fmt_spread(None) == "-"


def test_the_server_and_the_client_need_two_cpus_of_their_own():
    cpus = sorted(os.sched_getaffinity(0))
    with pytest.raises(UsageError, match="must differ"):
        common.check_cpus(cpus[0], cpus[0])
    with pytest.raises(UsageError, match="is not a CPU this process may use"):
        common.check_cpus(cpus[0], 10_000)


def test_the_client_command_carries_every_option():
    cmd = common.ref_client_command("/x/ref_client", ("127.0.0.1", 5000), protocol="json", conns=3, size=100,
                                    depth=2, warmup=0.5, duration=2, server_pid=42, marks=True, stall=1.0, hold=True)
    assert cmd == ["/x/ref_client", "--protocol", "json", "--conns", "3", "--size", "100", "--depth", "2",
                   "--warmup", "0.5", "--duration", "2.0", "--server-pid", "42", "--marks", "--stall", "1.0",
                   "--hold", "127.0.0.1", "5000"]
    assert common.ref_client_command("c", ("h", 1)) == ["c", "--protocol", "raw", "--conns", "1", "--size", "64",
                                                       "--depth", "1", "--warmup", "1.0", "--duration", "5.0", "h",
                                                       "1"]


def test_the_machine_line_comes_from_the_machine_metadata():
    info = {"hostname": "box", "cores": 8, "kernel": "6.1.0", "python": "3.11.2"}
    line = common.machine_line(info)
    assert line.startswith("box ") and line.endswith(" 8 CPUs, Linux 6.1.0, Python 3.11.2")


def test_limited_by_uses_the_houses_thresholds():
    assert framed._limited_by(CLIENT_BOUND_UTIL, 0.1) == "client"
    assert framed._limited_by(0.1, SERVER_BOUND_UTIL) == "server"
    assert framed._limited_by(CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL) == "both"
    assert framed._limited_by(CLIENT_BOUND_UTIL - 0.01, None) is None


def _framed_run(msgs, valid=True):
    return framed.Run(valid=valid, invalid_reason=None if valid else "stalled: no message completed for 2.0 s",
                      limited_by=None, msgs_per_s=msgs, server_user_us=0.02, server_sys_us=0.4, server_total_us=0.42,
                      server_util=0.5, client_us=0.5, client_util=0.4)


def _framed_settings(client="c"):
    return framed.Settings(client=client, conns=100, size=64, depth=16, started_at="t", machine="m", server_cpu=0,
                           client_cpu=1, repeats=3, duration=3.0, warmup=1.0)


def test_framed_summary_leaves_invalid_runs_out_of_medians_and_ratios():
    run = _framed_run
    cells = {("cython", "frame"): [run(1000.0), run(900.0), run(800.0)],
             ("uvloop", "frame"): [run(400.0), run(5.0, valid=False), run(400.0)]}
    s = framed.summarize(cells, ["frame"])
    assert s.cells["uvloop/frame"].msgs_per_s == common.Spread(median=400.0, min=400.0, max=400.0, n=2)
    ratio = next(r for r in s.ratios if r.metric == "msgs_per_s")
    assert ratio.per_repeat == [2.5, 2.0] and ratio.stats.median == 2.25 and ratio.met is False
    # the kernel ceiling: uvloop's (0.02 + 0.4) µs/msg over cython's 0.4 µs/msg of kernel time, valid pairs only
    ceiling = s.ceilings[0]
    assert ceiling.per_repeat == [1.05, 1.05] and ceiling.reachable is False
    text = framed.render(s)
    assert "invalid uvloop/frame: stalled" in text and "target >= 2.5: NOT met" in text
    assert "kernel ceiling frame msgs/s ratio" in text and "out of this machine's reach" in text


def test_framed_report_title_says_which_client_measured():
    s = framed.summarize({("cython", "json"): []}, ["json"], _framed_settings())
    text = framed.render(s)
    assert text.startswith("# Framed protocols through the c client: 100 conns x 64 B x 16 in flight")
    assert "| cython/json | - | - |" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["--client", "python"], "invalid choice: 'python'"),
        (["--servers", "nope"], "bad --servers 'nope'"),
        (["--protocols", "xml"], "bad --protocols 'xml'"),
        (["--repeats", "0"], "must be >= 1"),
        (["--duration", "0"], "--duration must be > 0"),
    ],
)
def test_framed_bad_input_is_one_line_and_exit_2(args, message):
    r = subprocess.run([sys.executable, "-m", "sockbench.bench.calibrate.framed", *args], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("framed: ") and message in lines[0], r.stderr
