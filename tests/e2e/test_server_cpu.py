"""The server-CPU benchmark script (bench/calibrate/server_cpu.py): its summary logic, its errors, and one tiny real run.

The figures themselves are not asserted (timings belong to the benchmark, not
to unit tests); what is checked is that the verdicts follow from the numbers,
that bad input is one line and exit 2, and that the C client compiles, talks
to a real server and verifies every byte.
"""

import json
import subprocess
import sys

import pytest

from sockbench.servers import registry
from sockbench.bench.calibrate import server_cpu


def _run(server, cell, rep, user, sys_, msgs_per_s, rtt=100.0, client_util=0.5, msgs=1000):
    """A ``Run`` with these figures; the rest follow from them (1 s window, 64 B messages)."""
    return server_cpu.Run(
        server=server, cell=cell, conns=100, size=64, repeat=rep, msgs=msgs, bytes=msgs * 64, elapsed_s=1.0,
        rtt_mean_us=rtt, rtt_min_us=rtt / 2, rtt_max_us=rtt * 2,
        server_user_s=user * msgs / 1e6, server_sys_s=sys_ * msgs / 1e6, server_runtime_s=(user + sys_) * msgs / 1e6,
        client_user_s=0.1, client_sys_s=0.4, errors={}, conns_alive=100,
        msgs_per_s=msgs_per_s, mb_per_s=msgs_per_s * 64 / 1e6,
        user_us_per_msg=user, sys_us_per_msg=sys_, total_us_per_msg=user + sys_, runtime_us_per_msg=user + sys_,
        server_util=0.9, client_util=client_util, errors_total=0,
    )


def test_summary_ratios_and_verdicts_follow_the_numbers():
    runs = []
    for rep in range(3):
        runs += [
            _run("cython", "cpu64", rep, 0.1, 6.0, 100_000 + rep, client_util=0.95),
            _run("uvloop", "cpu64", rep, 1.0, 6.5, 90_000),
            _run("asyncio-protocol", "cpu64", rep, 2.0 + rep, 7.0, 40_000),
            _run("cython", "pingpong", rep, 0.2, 11.0, 40_000, rtt=25.0 + rep),
            _run("uvloop", "pingpong", rep, 1.2, 12.0, 38_000, rtt=24.0 + rep),
        ]
    s = server_cpu.summarize(runs)
    assert s.table[("cython", "cpu64")].user_us_per_msg.median == pytest.approx(0.1)
    ratio = s.ratios[("cpu64", "uvloop")]
    assert ratio.median == pytest.approx(0.1)
    vs_asyncio = s.ratios[("cpu64", "asyncio-protocol")]
    assert (vs_asyncio.min, vs_asyncio.max) == (pytest.approx(0.1 / 4), pytest.approx(0.1 / 2))
    verdicts = {t.target.split(" (")[0]: t for t in s.targets}
    assert verdicts["cpu64: cython user CPU/msg <= 0.2x uvloop"].met
    assert verdicts["cpu64: cython user CPU/msg <= 0.1x asyncio-protocol"].met  # median 0.1/3
    assert verdicts["cpu64: cython total server CPU/msg is the lowest"].met
    tp = verdicts["cpu64: cython throughput is the highest"]
    assert tp.met and tp.client_bound, "client CPU 0.95 marks the run client-bound"
    # uvloop's median RTT is lower, but the ranges overlap: within the spread
    rtt = verdicts["pingpong: cython mean ping-pong round trip is the lowest"]
    assert rtt.met and "best is uvloop" in rtt.target
    md = server_cpu.render_markdown(s, server_cpu.Meta(started_at="t", wall_s=1.0, machine="m", machine_info={},
                                                       repeats=3, warmup_s=1, duration_s=5, server_cpu=0,
                                                       client_cpu=1, command="c"))
    assert "| cython | 0.100 [0.100..0.100] |" in md and "## Targets" in md


def test_a_run_without_any_echo_is_left_out_and_counted():
    runs = [_run("cython", "cpu64", rep, 0.1, 6.0, 100_000) for rep in range(3)]
    stalled = _run("cython", "cpu64", 3, float("nan"), float("nan"), 0.0, msgs=0)
    assert not stalled.valid, "no echo in the window, and no server CPU"
    s = server_cpu.summarize(runs + [stalled])
    row = s.table[("cython", "cpu64")]
    assert row.excluded == 1
    assert row.msgs_per_s.n == 3 and row.msgs_per_s.min == 100_000
    assert row.user_us_per_msg.median == pytest.approx(0.1)


def test_a_slower_server_outside_the_spread_fails_the_target():
    runs = []
    for rep in range(3):
        runs += [_run("cython", "pingpong", rep, 0.2, 11.0, 40_000, rtt=50.0 + rep),
                 _run("uvloop", "pingpong", rep, 1.2, 12.0, 38_000, rtt=20.0 + rep)]
    s = server_cpu.summarize(runs)
    (rtt,) = [t for t in s.targets if t.target.startswith("pingpong")]
    assert not rtt.met


@pytest.mark.parametrize(
    "args, message",
    [
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--servers", "nope"], "unknown server 'nope'"),
        (["--cells", "cpu64,warp"], "unknown cell 'warp'"),
        (["--server-cpu", "1", "--client-cpu", "1"], "must differ"),
        (["--duration", "0"], "--duration must be > 0"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    r = subprocess.run([sys.executable, "-m", "sockbench.bench.calibrate.server_cpu", *args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("server_cpu: ") and message in lines[0], r.stderr


@pytest.mark.slow
def test_a_tiny_real_run_checks_every_byte(tmp_path):
    ok, why = registry.SERVERS["cython"].availability()
    if not ok:
        pytest.skip(f"cython: {why}")
    out = tmp_path / "r.json"
    r = subprocess.run(
        [sys.executable, "-m", "sockbench.bench.calibrate.server_cpu", "--servers", "cython,selectors", "--cells", "cpu1k,pingpong",
         "--repeats", "1", "--duration", "0.3", "--warmup", "0.1", "--quiet", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and len(doc["runs"]) == 4
    for run in doc["runs"]:
        assert run["msgs"] > 0 and run["errors_total"] == 0 and run["conns_alive"] == run["conns"], run
    assert "## cpu1k: 100 conn(s) x 1024 B" in r.stdout
