"""The calibration tools' shared helpers, their records and reports: their logic, without a benchmark.

The figures of a real run are not asserted (timings belong to the scripts);
what is checked is that the reference client's line is read into its record,
that the summaries follow from the numbers, that invalid runs stay out of
them, that bad input is one line before anything starts, and that each
script's ``--json`` document keeps its published keys (built here from
synthetic figures), so that a renamed field is caught.
"""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from sockbench.bench.calibrate import common, framed, pacing_check, server_cpu, vs_reference
from sockbench.bench.schema import (
    Client, CpuPerMsg, Errors, Latency, LoadResult, ServerProc, Throughput, Timeseries, Workload,
)
from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import write_json_atomic
from sockbench.thresholds import CLIENT_BOUND_UTIL, SERVER_BOUND_UTIL

KINDS = ("mismatch", "protocol", "eof", "io", "stall")


def _ref_line(**changes):
    """A line as ``ref_client`` prints it (``report()`` in ref_client.c), with ``changes``."""
    d = {"protocol": "frame", "conns": 10, "size": 64, "depth": 4, "msgs": 20000, "bytes": 1280000,
         "wire_bytes": 1360000, "total_msgs": 26000, "window_s": 2.0, "rtt_mean_us": 40.0, "rtt_min_us": 9.5,
         "rtt_max_us": 900.0, "user_s": 0.25, "sys_s": 0.75,
         "server": {"user_s": 0.1, "sys_s": 0.5, "runtime_s": 0.61},
         "errors": {k: 0 for k in KINDS}, "error": "", "conns_alive": 10, "stuck": 0}
    d.update(changes)
    return json.dumps(d)


def test_the_reference_clients_line_is_read_into_the_schemas_parts():
    r = common.RefResult.parse(_ref_line())
    assert (r.protocol, r.conns, r.size, r.depth) == ("frame", 10, 64, 4)
    assert (r.msgs, r.bytes, r.wire_bytes, r.total_msgs, r.window_s) == (20000, 1280000, 1360000, 26000, 2.0)
    assert (r.throughput.msgs_per_s, r.throughput.bytes_per_s, r.throughput.wire_bytes_per_s) == (10000.0, 640000.0,
                                                                                                  680000.0)
    assert (r.latency_us.count, r.latency_us.mean, r.latency_us.max, r.latency_min_us) == (20000, 40.0, 900.0, 9.5)
    assert r.latency_us.p50 is None, "the client keeps no histogram"
    assert (r.client.user_s, r.client.sys_s, r.client.cpu_util) == (0.25, 0.75, 0.5)
    assert r.client.us_per_msg.user == pytest.approx(12.5) and r.client.us_per_msg.sys == pytest.approx(37.5)
    assert r.server == common.RefServerCpu(user_s=0.1, sys_s=0.5, runtime_s=0.61)
    assert r.errors.total == 0 and r.errors.by_kind == {k: 0 for k in KINDS} and r.error == ""
    assert (r.conns_alive, r.stuck) == (10, 0)


def test_the_reference_clients_errors_server_and_empty_window():
    r = common.RefResult.parse(_ref_line(errors={**{k: 0 for k in KINDS}, "mismatch": 2, "stall": 1},
                                         error="connection 0: a wrong answer", server=None, msgs=0, window_s=0.0))
    assert r.errors.total == 3 and r.errors.count("mismatch") == 2 and r.errors.count("stall") == 1
    assert r.error == "connection 0: a wrong answer"
    assert r.server is None, "no --server-pid"
    assert r.throughput.msgs_per_s is None and r.client.cpu_util is None, "no window, no rate"
    assert r.client.us_per_msg.user is None, "no message, no CPU per message"
    unread = common.RefResult.parse(_ref_line(server={"user_s": None, "sys_s": None, "runtime_s": None}))
    assert unread.server == common.RefServerCpu()


@pytest.mark.parametrize("line, message", [
    ("", "printed no JSON result"),
    ("[1, 2]", "printed no JSON result"),
    ('{"protocol": "raw"}', "result is malformed"),
    (_ref_line(errors=None), "result is malformed"),
])
def test_a_line_that_is_not_the_clients_result_is_one_error(line, message):
    with pytest.raises(SockbenchError, match=message) as e:
        common.RefResult.parse(line)
    assert "\n" not in str(e.value)


def test_field_names_name_a_records_fields():
    f = common.field_names(common.Spread)
    assert (f.median, f.min, f.max, f.n) == ("median", "min", "max", "n")
    with pytest.raises(AttributeError):
        f.mean


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


# --- the --json documents keep their published keys ------------------------------------------------

SPREAD_KEYS = {"median", "min", "max", "n"}


def _written(tmp_path, doc):
    """The document as a user reads it back: through the atomic writer and ``json.load``."""
    path = tmp_path / "out.json"
    write_json_atomic(path, doc)
    return json.loads(path.read_text())


def _closed_result(msgs_per_s=50000.0):
    return LoadResult(server="cython", workload=Workload(mode="closed", conns=100, size=64, depth=8, duration_s=2.0),
                      throughput=Throughput(msgs_per_s=msgs_per_s, bytes_per_s=msgs_per_s * 64),
                      latency_us=Latency(count=100000, p50=30.0, p90=40.0, p99=80.0, p999=120.0, max=300.0, mean=33.0),
                      errors=Errors(), valid=True,
                      server_proc=ServerProc(user_s=0.2, sys_s=1.6, us_per_msg=CpuPerMsg(user=2.0, sys=16.0),
                                             cpus=[0], cpu_util=0.9),
                      client=Client(cpu_util=0.8, user_s=0.4, sys_s=1.2, us_per_msg=CpuPerMsg(user=4.0, sys=12.0),
                                    msgs_per_write=6.5))


def test_vs_reference_json_keys(monkeypatch, tmp_path):
    monkeypatch.setattr(vs_reference, "run_load", lambda spec: _closed_result())
    harness = vs_reference.run_harness(("127.0.0.1", 1), 100, 64, 8, 0.1, 2.0, 1)
    assert harness == vs_reference.HarnessFigures(msgs_per_s=50000.0, cpu_us_per_msg=pytest.approx(16.0),
                                                  cpu_util=0.8, msgs_per_write=6.5, p50_us=30.0, p99_us=80.0)
    monkeypatch.setattr(vs_reference, "run_ref_client", lambda *a, **k: common.RefResult.parse(_ref_line()))
    ref = vs_reference.run_reference("/x", ("127.0.0.1", 1), 100, 64, 8, 0.1, 2.0, 1)
    assert ref == vs_reference.RefFigures(msgs_per_s=10000.0, cpu_us_per_msg=50.0, cpu_util=0.5)

    class Server:
        address = ("127.0.0.1", 1)

        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(vs_reference, "check_cpus", lambda *a: None)
    monkeypatch.setattr(vs_reference, "build_ref_client", lambda: "/x")
    monkeypatch.setattr(vs_reference, "ServerProcess", Server)
    monkeypatch.setattr(vs_reference, "run_harness", lambda *a: harness)
    monkeypatch.setattr(vs_reference, "run_reference", lambda *a: ref)
    doc = _written(tmp_path, vs_reference.json_document(vs_reference.compare("cython", 2, 0.1, 2.0), {"hostname": "h"}))
    assert set(doc) == {"server", "rounds", "warmup_s", "duration_s", "workloads", "machine"}
    w = doc["workloads"][0]
    assert set(w) == {"conns", "size", "depth", "rounds", "harness_msgs_per_s", "ref_msgs_per_s",
                      "harness_cpu_us_per_msg", "ref_cpu_us_per_msg", "ratio_msgs", "ratio_cpu_per_msg",
                      "harness_msgs_per_write", "harness_cpu_util", "ref_cpu_util"}
    assert set(w["ratio_msgs"]) == SPREAD_KEYS and w["ratio_msgs"]["median"] == 5.0
    r = w["rounds"][0]
    assert set(r) == {"harness", "ref", "ratio_msgs", "ratio_cpu_per_msg"}
    assert set(r["harness"]) == {"msgs_per_s", "cpu_us_per_msg", "cpu_util", "msgs_per_write", "p50_us", "p99_us"}
    assert set(r["ref"]) == {"msgs_per_s", "cpu_us_per_msg", "cpu_util"}


def test_pacing_check_figures_and_json_keys(tmp_path):
    # 100 msgs per 0.1 s interval at 1,000 msgs/s: on schedule, no drift, no lag
    r = LoadResult(server="cython", workload=Workload(mode="open", conns=50, size=64, rate=1000.0, duration_s=2.0),
                   throughput=Throughput(msgs_per_s=1000.0, target_rate=1000.0, achieved_rate=1001.0,
                                         pacing_error=0.001, behind=False),
                   latency_us=Latency(count=2000, p50=20.0, p99=60.0), errors=Errors(), valid=True,
                   service_us=Latency(count=2000, p50=15.0, p99=50.0),
                   client=Client(cpu_util=0.4, polling=True, busy_util=0.1),
                   timeseries=Timeseries(interval_s=0.1, warmup_intervals=5, sent=[7] * 5 + [100] * 20 + [3]))
    m = pacing_check.pacing_metrics(r)
    assert (m.first_half_rate, m.second_half_rate, m.half_drift, m.max_lag_ms) == (1000.0, 1000.0, 0.0, 0.0)
    assert m.slope_drift == pytest.approx(0.0) and m.client_busy_util == 0.1 and m.service_p99_us == 50.0
    (doc,) = _written(tmp_path, pacing_check.json_document([m]))
    assert set(doc) == {"target_rate", "achieved_rate", "pacing_error", "first_half_rate", "second_half_rate",
                        "half_drift", "slope_drift", "max_lag_ms", "latency_p50_us", "latency_p99_us",
                        "service_p99_us", "client_cpu_util", "client_busy_util", "behind", "valid"}
    assert {key for key, _ in pacing_check.SUMMARY} <= set(doc)


def test_server_cpu_json_keys(monkeypatch, tmp_path):
    server = type("Server", (), {"name": "cython", "address": ("127.0.0.1", 1), "pid": 42})()
    monkeypatch.setattr(server_cpu, "run_ref_client", lambda *a, **k: common.RefResult.parse(_ref_line()))
    runs = [server_cpu.run_cell("/x", server, cell, 0.1, 2.0, 1, repeat=0) for cell in server_cpu.CELLS]
    run = runs[0]
    assert (run.msgs_per_s, run.mb_per_s, run.elapsed_s) == (10000.0, 0.64, 2.0)
    assert (run.user_us_per_msg, run.sys_us_per_msg) == (pytest.approx(5.0), pytest.approx(25.0))
    assert (run.server_util, run.client_util, run.valid) == (pytest.approx(0.3), 0.5, True)
    summary = server_cpu.summarize(runs + [replace(r, server="uvloop") for r in runs])
    meta = server_cpu.Meta(started_at="t", wall_s=1.0, machine="m", machine_info={"hostname": "h"}, repeats=1,
                           warmup_s=0.1, duration_s=2.0, server_cpu=0, client_cpu=1, command="c")
    doc = _written(tmp_path, server_cpu.json_document(runs, summary, meta))
    assert set(doc) == {"schema", "meta", "runs", "summary"} and doc["schema"] == 1
    assert set(doc["meta"]) == {"started_at", "wall_s", "machine", "machine_info", "repeats", "warmup_s",
                                "duration_s", "server_cpu", "client_cpu", "command"}
    assert set(doc["runs"][0]) == {
        "server", "cell", "conns", "size", "repeat", "msgs", "bytes", "elapsed_s", "rtt_mean_us", "rtt_min_us",
        "rtt_max_us", "server_user_s", "server_sys_s", "server_runtime_s", "client_user_s", "client_sys_s", "errors",
        "conns_alive", "msgs_per_s", "mb_per_s", "user_us_per_msg", "sys_us_per_msg", "total_us_per_msg",
        "runtime_us_per_msg", "server_util", "client_util", "errors_total", "valid"}
    assert doc["runs"][0]["errors"] == {k: 0 for k in KINDS}
    assert set(doc["summary"]) == {"table", "ratios", "targets"}
    row = doc["summary"]["table"][0]
    assert set(row) == {"server", "cell", "user_us_per_msg", "sys_us_per_msg", "total_us_per_msg",
                        "runtime_us_per_msg", "msgs_per_s", "mb_per_s", "rtt_mean_us", "server_util", "client_util",
                        "msgs_per_cpu_s", "errors", "excluded"}
    assert set(row["msgs_per_s"]) == SPREAD_KEYS
    assert set(doc["summary"]["ratios"][0]) == {"cell", "vs"} | SPREAD_KEYS
    targets = doc["summary"]["targets"]
    assert {frozenset(t) for t in targets} == {frozenset({"target", "value", "met"}),
                                               frozenset({"target", "value", "met", "client_bound", "starved"})}
    assert all(("client_bound" in t) == ("throughput" in t["target"]) for t in targets)


def test_framed_json_keys(monkeypatch, tmp_path):
    monkeypatch.setattr(framed, "run_load", lambda spec: _closed_result())
    run = framed.harness_cell("cython", "frame", 100, 64, 16, 0.1, 2.0, 0, 1)
    assert run == framed.Run(valid=True, invalid_reason=None, limited_by=None, msgs_per_s=50000.0, server_user_us=2.0,
                             server_sys_us=16.0, server_total_us=18.0, server_util=0.9, client_us=16.0, client_util=0.8)
    cells = {("cython", "frame"): [run, _framed_run(5.0, valid=False)], ("uvloop", "frame"): [_framed_run(400.0)] * 2}
    summary = framed.summarize(cells, ["frame"], _framed_settings("harness"))
    doc = _written(tmp_path, framed.json_document(summary, cells, {"hostname": "h"}))
    assert set(doc) == {"summary", "machine", "runs"} and set(doc["runs"]) == {"cython/frame", "uvloop/frame"}
    assert set(doc["runs"]["cython/frame"][1]) == {"valid", "invalid_reason", "limited_by", "msgs_per_s",
                                                   "server_user_us", "server_sys_us", "server_total_us",
                                                   "server_util", "client_us", "client_util"}
    s = doc["summary"]
    assert set(s) == {"cells", "ratios", "ceilings", "settings"}
    assert set(s["cells"]["cython/frame"]) == {"msgs_per_s", "server_user_us", "server_sys_us", "server_total_us",
                                               "server_util", "client_us", "client_util", "invalid", "limited_by"}
    assert set(s["cells"]["cython/frame"]["msgs_per_s"]) == SPREAD_KEYS
    assert set(s["ratios"][0]) == {"protocol", "metric", "target", "per_repeat", "stats", "met"}
    assert [r["metric"] for r in s["ratios"]] == ["msgs_per_s", "server_user_us"]
    assert set(s["ceilings"][0]) == {"protocol", "per_repeat", "stats", "target", "reachable"}
    assert set(s["settings"]) == {"client", "repeats", "duration", "warmup", "conns", "size", "depth", "server_cpu",
                                  "client_cpu", "started_at", "machine"}
