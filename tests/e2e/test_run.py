"""``sockbench run`` end to end: the real pipeline (pytest-benchmark suite -> harness -> servers -> report).

Each test runs the ``--quick`` matrix, cut to two servers so the run stays
short, as a separate ``python -m sockbench`` process, the way a user or CI
runs it: a complete run; a run stopped with Ctrl-C; and a run stopped with
SIGTERM (what ``timeout`` and a cancelled CI job send), after which no
process of the run may be left.  A run's processes are found by a mark in
their environment that only this run's processes inherit
(``SOCKBENCH_TEST_RUN``), beside the session's ``SOCKBENCH_TEST_SESSION``.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from PIL import Image

from conftest import command_line, kill_left, marked_processes
from sockbench.bench.report.document import protocol_cost_rows
from sockbench.bench.report.plots import PLOTS
from sockbench.bench.report.store import is_discarded, load_results
from sockbench.bench.suite.plan import Plan
from sockbench.bench.suite.progress import RoundDone, RoundSetAside, Window, parse
from sockbench.cli import main

pytestmark = pytest.mark.slow

E2E_SERVERS = ["asyncio-protocol", "uvloop"]
#: the environment mark of one test's ``sockbench run`` and every process under it
RUN_ENV = "SOCKBENCH_TEST_RUN"


def _log_tail(out, n=40):
    try:
        with open(os.path.join(out, "pytest.log")) as f:
            return "\n--- pytest.log ---\n" + "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _sockbench(*args, mark=None):
    env = dict(os.environ, **({RUN_ENV: mark} if mark else {}))
    return subprocess.Popen([sys.executable, "-m", "sockbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _marked(mark):
    """``{pid: command line}`` of the live processes whose environment carries this run's mark."""
    marked = marked_processes(f"{RUN_ENV}={mark}")
    return {pid: command_line(argv) for pid, (argv, state) in marked.items() if state != b"Z"}


def _interrupt_after_rounds(proc, out, sig, mid_run=lambda: None):
    """Once two rounds are in, ``mid_run()``, then ``sig`` to the run: its ``(stdout, stderr)`` when it has ended.

    A run that outlives the test (a failed check, a timeout) is killed by its pid.
    """
    try:
        _wait_for_rounds(proc, out, 2)
        mid_run()
        proc.send_signal(sig)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _rounds_in(out):
    return [f for f in glob.glob(os.path.join(out, "raw", "*.json")) if not is_discarded(f)]


def _wait_for_rounds(proc, out, n, timeout=60):
    """Until ``n`` rounds are in raw/ (attempts set aside because they were disturbed are not rounds)."""
    deadline = time.monotonic() + timeout
    while len(_rounds_in(out)) < n:
        assert proc.poll() is None and time.monotonic() < deadline, _log_tail(out)
        time.sleep(0.05)


def test_run_quick_end_to_end(tmp_path):
    out = str(tmp_path / "quick")
    # with one json cell per server (not in --quick by default): the framed path end to end
    proc = _sockbench("run", "--quick", "--servers", *E2E_SERVERS, "--protocols", "json", "--out", out)
    stdout, stderr = proc.communicate(timeout=180)  # a hang guard, not a speed target
    assert proc.returncode == 0, stdout + stderr + _log_tail(out)
    assert f"report: {os.path.join(out, 'report.html')}" in stdout
    results = load_results(out)
    plan = Plan.load(os.path.join(out, "plan.json"))
    assert not plan.adaptive and len(results.cells) == len(plan.cells()) == len(E2E_SERVERS) * 3
    assert len(results.results) == len(plan.cells()) * plan.min_rounds
    for c in results.cells.values():
        assert len(c.results) == plan.min_rounds and c.median > 0 and not c.invalid, c.cell
        if c.cell.mode == "open":
            peak = c.results[0].cell.peak_msgs_per_s
            assert c.results[0].workload.rate == pytest.approx(peak * c.cell.load_pct / 100)
        # measured on this shared machine, a round may be disturbed: then it was measured again, or is flagged
        assert all(r.interference is not None and r.fairness is not None for r in c.results)
        assert ("DISTURBED" in c.flags()) == any(r.disturbed for r in c.results)
        assert all(r.disturbed for r in c.discarded)
    for c in results.cells.values():
        assert all(r.workload.protocol == c.cell.protocol == r.cell.protocol for r in c.results)
    assert {c.workload_id for c in results.cells.values() if c.cell.protocol == "json"} == {"closed-64B-c10-json"}
    # every load announced its window before it opened, so the runner kept its display still through it
    events = [parse(json.loads(line)) for line in open(os.path.join(out, "progress.jsonl"))]
    rounds = [i for i, ev in enumerate(events) if isinstance(ev, RoundDone)]
    # a kept round that later rounds showed slowed by CPU the guest cannot see is set aside, and measured again
    set_aside = sum(isinstance(ev, RoundSetAside) for ev in events)
    assert sum(events[i].kept for i in rounds) - set_aside == len(results.results)
    assert len(rounds) == len(glob.glob(os.path.join(out, "raw", "*.json")))
    for i in rounds:
        window = next(ev for ev in reversed(events[:i]) if isinstance(ev, (Window, RoundDone)))
        assert isinstance(window, Window) and window.end_ns > window.start_ns > 0
    md = open(os.path.join(out, "report.md")).read()
    for name, title in PLOTS:
        path = os.path.join(out, "plots", name)
        if name == "throughput_vs_conns.png":
            # --quick measures one connection count: no curve of one point, a note naming the plot that has them
            assert not os.path.exists(path) and f"**{title}**: not drawn (one connection count measured (10)" in md
            continue
        with Image.open(path) as im:
            im.verify()
    ((_, rows),) = protocol_cost_rows(results)
    assert [(r[0][0], r[0][1]) for r in rows] == [(s, p) for s in E2E_SERVERS for p in ("raw", "json")]
    assert json.load(open(os.path.join(out, "meta.json")))["status"] == "complete"
    # pytest-benchmark's own JSON and storage, with everything in extra_info: its rounds are the kept rounds
    pb = json.load(open(os.path.join(out, "pytest-benchmark.json")))
    assert len(pb["benchmarks"]) == len(results.cells)
    for b in pb["benchmarks"]:
        info = b["extra_info"]
        assert len(info["per_round"]) == info["rounds"] == b["stats"]["rounds"] == plan.min_rounds
        assert info["stopped"] == "fixed"
        assert {"msgs_per_s_median", "latency_us", "server_cpu_us_per_msg", "flags", "valid", "client_bound",
                "figure_ci", "remeasured"} <= set(info)
        if info["mode"] == "closed":  # the message clock: ops is msgs/s
            assert b["stats"]["median"] == pytest.approx(1 / info["msgs_per_s_median"], rel=1e-6)
    saved = glob.glob(os.path.join(out, "benchmarks", "*", "0001_sockbench.json"))
    assert saved
    # (one file: pytest-benchmark cannot load the same file twice, it pops its stats on the first read)
    cmp_ = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare", saved[0]],
                          capture_output=True, text=True, timeout=60)
    assert cmp_.returncode == 0 and "test_echo[" in cmp_.stdout, cmp_.stderr
    # compared with itself, 3 rounds against 3: no interval, so no verdict either way and no failure
    assert main(["compare", out, out, "--fail-above", "5%"]) == 0
    # plain parameters: pytest-benchmark's own tools group by them
    meta = json.load(open(os.path.join(out, "meta.json")))
    for b in pb["benchmarks"]:
        assert b["params"]["server"] in E2E_SERVERS and "UNSERIALIZABLE" not in json.dumps(b["params"])
        if b["params"]["mode"] == "open":  # open loop times the mean latency: pytest-benchmark never averages p99s
            assert b["stats"]["median"] == pytest.approx(
                sorted(r["latency_us"]["mean"] for r in b["extra_info"]["per_round"])[1] / 1e6, rel=1e-6)
    assert pb["commit_info"]["id"] == meta["commit"] and pb["commit_info"]["dirty"] == meta["dirty"]
    assert meta["machine"]["versions"]["uvloop"] and "compiler" in meta["machine"]["versions"]
    # (the module has no __main__ guard: `python -m pytest_benchmark.cli` would print nothing and exit 0)
    grouped = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()",
                              "--storage", "file://" + os.path.join(out, "benchmarks"), "compare", "--group-by=param:server"],
                             capture_output=True, text=True, timeout=60)
    assert grouped.returncode == 0, grouped.stderr
    for server in E2E_SERVERS:
        assert f"benchmark 'server={server}'" in grouped.stdout
    # the formats, one .hgrm per cell, a CSV row per round, the CI export
    for c in results.cells.values():
        assert os.path.getsize(os.path.join(out, "hgrm", f"{c.cell.server}__{c.cell.workload_id}.hgrm")) > 0
    assert len(open(os.path.join(out, "results.csv")).read().splitlines()) == 1 + len(results.results)
    assert len(json.load(open(os.path.join(out, "ci", "p99_us.json")))) == len(results.cells)


def test_run_ctrl_c_keeps_finished_rounds(tmp_path):
    out = str(tmp_path / "cut")
    proc = _sockbench("run", "--quick", "--servers", *E2E_SERVERS, "--out", out)
    stdout, stderr = _interrupt_after_rounds(proc, out, signal.SIGINT)
    why = stdout + stderr + _log_tail(out)
    assert proc.returncode == 130, why
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["status"] == "interrupted" and meta["signal"] == "SIGINT", why
    assert meta["finished_rounds"] >= 2 and meta["finished_runs"] >= meta["finished_rounds"], why
    assert "INCOMPLETE: this run was interrupted" in open(os.path.join(out, "report.md")).read()
    # the report can be rebuilt from what was kept
    assert main(["report", out]) == 0


def test_run_sigterm_stops_every_process_and_writes_the_report(tmp_path):
    out = str(tmp_path / "term")
    mark = uuid.uuid4().hex
    proc = _sockbench("run", "--quick", "--servers", *E2E_SERVERS, "--out", out, mark=mark)

    def mid_run():
        running = _marked(mark)
        # mid-run: the runner, the pytest child, and the round in flight's server and load process
        assert len(running) >= 2 and proc.pid in running, running

    try:
        stdout, stderr = _interrupt_after_rounds(proc, out, signal.SIGTERM, mid_run)
    finally:
        # the run's processes still alive 3 s after it ended (one the runner stopped may still be exiting)
        left = kill_left(lambda: _marked(mark), grace_s=3.0)
    why = stdout + stderr + _log_tail(out)
    assert not left, f"processes of the run left after SIGTERM: {left}"
    assert proc.returncode == 128 + signal.SIGTERM, why
    meta = json.load(open(os.path.join(out, "meta.json")))
    assert meta["status"] == "interrupted" and meta["signal"] == "SIGTERM", why
    assert os.path.getsize(os.path.join(out, "report.html")) > 0
    assert "INCOMPLETE: this run was interrupted" in open(os.path.join(out, "report.md")).read()
