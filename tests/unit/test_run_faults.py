"""Tests of ``sockbench run`` under faults: a disk that fills, an output folder that cannot be written, a
file-descriptor limit too low for the plan.

A full disk is not made for real: ``OSError(ENOSPC)`` is injected at the writer, in the suite's session
(the child's side) and in the runner (the parent's side), and the suite itself is a stand-in child that
behaves as the real one does when a write fails.  The file-descriptor limit is real: a child process of
the test lowers its own RLIMIT_NOFILE before it runs the command.
"""

import errno
import glob
import json
import os
import resource
import subprocess
import sys

import pytest

from sockbench.bench.schema import (
    ERROR_KINDS, Cell, Errors, Fairness, Interference, Latency, LoadResult, Throughput, Workload,
)
from sockbench.bench.suite import runner, session
from sockbench.bench.suite.plan import Plan
from sockbench.bench.suite.session import ENV_STATUS_FD, WRITE_FAILED_EXIT, SuiteContext
from sockbench.cli import main

CELL = Cell("selectors", "closed", 64, 10)
SAMPLE_RAW = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "results", "sample", "raw", "*.json")))[0]
ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _one_line(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc != 0 and len(lines) == 1 and lines[0].startswith("sockbench: ") and "Traceback" not in err, err
    return rc, lines[0]


def _result(msgs=100_000.0):
    return LoadResult(
        server=CELL.server,
        workload=Workload(mode=CELL.mode, conns=CELL.conns, size=CELL.size, duration_s=0.3),
        throughput=Throughput(msgs_per_s=msgs),
        latency_us=Latency(count=0),
        errors=Errors.of(dict.fromkeys(ERROR_KINDS, 0)),
        valid=True,
        interference=Interference(server_foreign=0.0, client_foreign=0.0, disturbed=False),
        fairness=Fairness.of([100] * CELL.conns),
    )


# --- item: a disk that fills while the suite runs -------------------------------------------------


def test_the_suite_stops_at_the_first_result_it_cannot_write(tmp_path, monkeypatch):
    plan = Plan(servers=("selectors",), sizes=(64,), conns=(10,), open_pcts=(), protocols=(), min_rounds=5,
                max_rounds=5, cell_budget_s=1000.0)
    writes = []
    real = session.write_json_atomic

    def filling(path, obj):
        if len(writes) == 2:
            raise ENOSPC
        writes.append(path)
        real(path, obj)

    monkeypatch.setattr(session, "write_json_atomic", filling)
    r, w = os.pipe()
    monkeypatch.setenv(ENV_STATUS_FD, str(w))
    ctx = SuiteContext(plan, str(tmp_path), run=lambda spec, on_window=None: _result())
    try:
        with pytest.raises(pytest.exit.Exception) as exc:
            ctx.measure([CELL])
    finally:
        ctx.close()
        os.close(w)
    failed = os.path.join(str(tmp_path), "raw", "selectors__closed-64B-c10__r3.json")
    line = f"cannot write {failed}: No space left on device"
    assert exc.value.returncode == WRITE_FAILED_EXIT and str(exc.value.msg) == line
    assert os.read(r, 4096).decode() == line + "\n"
    os.close(r)
    # the rounds written before are there, whole, and nothing half-written is left
    assert sorted(os.listdir(tmp_path / "raw")) == ["selectors__closed-64B-c10__r1.json", "selectors__closed-64B-c10__r2.json"]
    for f in writes:
        assert LoadResult.from_json(json.load(open(f)), f).throughput.msgs_per_s == 100_000.0


# the stand-in suite: one round written, then the disk is full; it says so down the status pipe as the real one does
FAKE_SUITE = f"""
import os, shutil, sys
out = os.environ["SOCKBENCH_OUT"]
os.makedirs(os.path.join(out, "raw"))
shutil.copy({SAMPLE_RAW!r}, os.path.join(out, "raw", "selectors__closed-64B-c10__r1.json"))
os.write(int(os.environ["{ENV_STATUS_FD}"]),
         ("cannot write " + os.path.join(out, "raw", "selectors__closed-64B-c10__r2.json") + ": No space left on device\\n").encode())
sys.exit({WRITE_FAILED_EXIT})
"""


def test_run_says_in_one_line_what_it_could_not_write_and_keeps_the_rest(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "suite_command", lambda out: [sys.executable, "-c", FAKE_SUITE])
    out = str(tmp_path / "run")
    rc, line = _one_line(capsys, ["run", "--servers", "selectors", "--rounds", "3", "--open-loads", "none",
                                  "--protocols", "none", "--out", out])
    raw = os.path.join(out, "raw")
    assert rc == 1
    assert line == (f"sockbench: cannot write {raw}/selectors__closed-64B-c10__r2.json: No space left on device; the run "
                    f"stopped there; the 1 load run already in {raw} are kept; `sockbench report {out}` rebuilds the "
                    f"report once there is room")
    with open(SAMPLE_RAW, "rb") as a, open(os.path.join(raw, "selectors__closed-64B-c10__r1.json"), "rb") as b:
        assert a.read() == b.read()
    assert json.load(open(os.path.join(out, "meta.json")))["pytest_exit"] == WRITE_FAILED_EXIT


def test_run_says_when_its_own_files_cannot_be_written(tmp_path, capsys, monkeypatch):
    def full(path, obj):
        raise ENOSPC

    monkeypatch.setattr(runner, "write_json_atomic", full)
    out = str(tmp_path / "run")
    rc, line = _one_line(capsys, ["run", "--servers", "selectors", "--quick", "--out", out])
    assert rc == 1 and line == f"sockbench: cannot write {out}/meta.json: No space left on device"


def test_an_unwritable_out_is_refused_before_anything_runs(tmp_path, capsys, monkeypatch):
    import tempfile

    def full(*a, **kw):
        raise ENOSPC

    monkeypatch.setattr(tempfile, "mkstemp", full)
    monkeypatch.setattr(runner, "suite_command", lambda out: pytest.fail("the suite must not start"))
    out = str(tmp_path / "run")
    rc, line = _one_line(capsys, ["run", "--servers", "selectors", "--quick", "--out", out])
    assert rc == 2 and line == f"sockbench: cannot write --out {out}/meta.json: No space left on device; choose another path"
    assert not os.path.exists(out)  # the folder made for it is gone again


# --- item: the file-descriptor limit --------------------------------------------------------------


def _run_limited(soft, hard, argv):
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    return subprocess.run([sys.executable, "-m", "sockbench", *argv], preexec_fn=limit, capture_output=True, text=True,
                          timeout=120)


def test_a_hard_limit_below_one_connection_says_so_and_not_more_procs(tmp_path):
    p = _run_limited(64, 64, ["run", "--servers", "selectors", "--conns", "200", "--out", str(tmp_path / "never")])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("sockbench: the file-descriptor limit (ulimit -Hn) is 64, below the 65 even one "
                               "connection needs")
    assert "raise it to at least 264" in p.stderr and "--procs" not in p.stderr
    assert not os.path.exists(tmp_path / "never")


def test_a_hard_limit_below_the_plan_says_how_many_connections_fit(tmp_path):
    p = _run_limited(150, 150, ["run", "--servers", "selectors", "--conns", "200", "--open-loads", "none",
                                "--protocols", "none", "--out", str(tmp_path / "never")])
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert ("200 connections need 264 file descriptors per process but the limit (ulimit -Hn) is 150; raise it "
            "(ulimit -n 264") in p.stderr
    assert "keep every cell to 86 connections or fewer (--conns)" in p.stderr and "--procs" not in p.stderr
    # the protocol section's 100 connections are named with the way to leave them out
    p = _run_limited(150, 150, ["run", "--servers", "selectors", "--conns", "10", "--out", str(tmp_path / "never")])
    assert "--protocols none leaves it out" in p.stderr, p.stderr
    assert not os.path.exists(tmp_path / "never")


def test_a_low_soft_limit_is_raised_for_the_run(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 264:
        pytest.skip(f"the hard limit here ({hard}) is below what the check needs")
    code = ("import resource; from sockbench.bench.suite.runner import build_plan, check_fd_limit; "
            "plan = build_plan(servers=['selectors'], conns=['200']); "
            "print(check_fd_limit(plan), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    p = subprocess.run([sys.executable, "-c", code], preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["264", "264"], p.stderr


# --- item: the reason a load run failed reaches stderr ----------------------------------------------

FAILING_SUITE = """
print("F")
print("E   sockbench.errors.SockbenchError: out of file descriptors after 57 connections: Too many open files")
print("E   sockbench.errors.SockbenchError: a later, consequential error")
raise SystemExit(1)
"""


def test_no_round_finished_names_the_first_error_of_the_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runner, "suite_command", lambda out: [sys.executable, "-c", FAILING_SUITE])
    out = str(tmp_path / "run")
    rc, line = _one_line(capsys, ["run", "--servers", "selectors", "--quick", "--out", out])
    assert rc == 1
    assert line == (f"sockbench: no round finished (failed, pytest exit 1, 0 load runs set aside as disturbed); the first "
                    f"error: out of file descriptors after 57 connections: Too many open files; nothing to report; see "
                    f"{out}/pytest.log")


# --- item: a run started from a test that runs under pytest-xdist ----------------------------------


def test_the_suite_runs_without_an_outer_xdist_workers_variables(tmp_path, monkeypatch):
    # pytest-benchmark turns itself off in a process that says it is an xdist worker: no pytest-benchmark.json
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_TESTRUNUID", "0123")
    monkeypatch.setenv("SOCKBENCH_SOMETHING_OF_THE_USER", "kept")
    env = runner.suite_env(str(tmp_path), 7)
    assert not any(k.startswith("PYTEST_XDIST_") for k in env)
    assert env["SOCKBENCH_SOMETHING_OF_THE_USER"] == "kept" and env[ENV_STATUS_FD] == "7"
    assert env[session.ENV_OUT] == str(tmp_path) and env[session.ENV_PLAN] == str(tmp_path / "plan.json")
