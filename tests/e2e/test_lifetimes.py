"""No process outlives the command that started it, and a stopped command keeps what it measured.

Each test runs ``python -m sockbench ...`` as a user does, with a mark in its
environment that every process under it inherits (``SOCKBENCH_TEST_LIFE``),
stops it with SIGTERM, SIGINT or SIGKILL, and then looks for what is left.
SIGKILL leaves the command no chance to stop anything: its children must end
by themselves (the kernel's parent-death signal).  How long each parent's
descendants take to go, over many runs, is ``bench/calibrate/stop_times.py``'s
table; here a bound of 2 s is only what makes a leak a failure.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from conftest import command_line, kill_left, marked_processes
from sockbench.bench.calibrate.stop_times import in_loop
from sockbench.bench.schema import LoadResult

pytest.importorskip("sockbench.ext.loadgen", reason="the load generator is not built (pip install -e .)")

MARK_ENV = "SOCKBENCH_TEST_LIFE"
#: what "nothing left" allows: a process signalled a moment ago may still be exiting
GONE_WITHIN_S = 2.0


def _start(*args, mark):
    env = dict(os.environ, **{MARK_ENV: mark})
    return subprocess.Popen([sys.executable, "-m", "sockbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _marked(mark):
    """``{pid: command line}`` of the live (not zombie) processes carrying ``mark``."""
    return {pid: command_line(argv) for pid, (argv, state) in marked_processes(f"{MARK_ENV}={mark}").items()
            if state != b"Z"}


def _until(what, timeout=60.0, proc=None):
    """Poll ``what()`` until it returns something true; fail after ``timeout`` or when ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while True:
        got = what()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended (status {proc.returncode}) first: {err[-2000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what.__name__}"
        time.sleep(0.02)


def _left_after(mark, seconds=GONE_WITHIN_S):
    """What of ``mark`` is still running ``seconds`` from now (then killed by pid, so that a failure leaks nothing)."""
    return kill_left(lambda: _marked(mark), grace_s=seconds)


def _load_process(mark):
    """The pid of a load process of ``mark`` inside its loop (its window open), or None."""
    return in_loop(f"{MARK_ENV}={mark}")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- sockbench load ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_load_stopped_in_its_window_writes_what_it_measured_and_leaves_nothing(tmp_path, sig, transport):
    path = tmp_path / "cut.json"
    mark = uuid.uuid4().hex
    proc = _start("load", "selectors", "--transport", transport, "--duration", "30", "--warmup", "0",
                  "--conns", "4", "--json", str(path), mark=mark)
    try:
        _until(lambda: _load_process(mark), proc=proc)  # the loop runs: the window is open (no warmup)
        time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        left = _left_after(mark)
    assert proc.returncode == 128 + sig, err
    assert not left, f"left running after {sig.name}: {left}"
    assert err.strip().splitlines()[-1] == f"sockbench: interrupted ({sig.name})", err
    assert "Traceback" not in err
    r = LoadResult.from_json(json.loads(path.read_text()))
    assert not r.valid and r.invalid_reason.startswith(f"interrupted by {sig.name} "), r.invalid_reason
    # the rates are over the seconds measured, not the 30 s asked for
    assert 0.3 < r.throughput.measured_s < 29 and r.throughput.msgs_per_s > 0
    msgs = sum(r.timeseries.msgs)
    assert msgs == pytest.approx(r.throughput.msgs_per_s * r.throughput.measured_s, rel=0.05, abs=50)
    assert r.latency_us.count > 0 and r.errors.by_kind["mismatch"] == 0
    assert f"interrupted by {sig.name}" in out + err  # the summary says so too


def test_load_killed_leaves_nothing_running_nor_a_socket_folder(tmp_path):
    mark = uuid.uuid4().hex
    proc = _start("load", "selectors", "--transport", "unix", "--duration", "30", "--warmup", "0",
                  "--json", str(tmp_path / "r.json"), mark=mark)
    try:
        _until(lambda: _load_process(mark), proc=proc)
        server = next(pid for pid, cmd in _marked(mark).items() if " serve " in cmd)
        folders = _unix_folders(server)
        proc.kill()  # it can stop nothing: its children go by themselves
        proc.wait()
    finally:
        left = _left_after(mark)
    assert not left, f"left running after the load was SIGKILLed: {left}"
    assert not any(os.path.exists(f) for f in folders), "the server's unix socket folder was left behind"
    assert not (tmp_path / "r.json").exists(), "SIGKILL leaves nothing to write with"


def _unix_folders(pid):
    """The private folders of the unix sockets ``pid`` listens on (``/proc/net/unix`` by its socket inodes)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    folders = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes:
                folders.add(os.path.dirname(parts[7]))
    assert folders, "the server listens on no unix socket"
    return folders


# --- sockbench check --------------------------------------------------------------------------------------


def test_check_stopped_writes_the_runs_that_finished(tmp_path):
    path = tmp_path / "check.json"
    mark = uuid.uuid4().hex
    # udp first (one quick check), then tcp: stopped while tcp's run is in flight
    proc = _start("check", "selectors", "--transport", "udp", "tcp", "--only", "udp-echo", "echo", "many-connections",
                  "--json", str(path), mark=mark)
    try:
        def checking_tcp():
            line = proc.stdout.readline()
            assert line, "check ended before its tcp run"
            return "over tcp" in line

        _until(checking_tcp, proc=None)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        left = _left_after(mark)
    assert proc.returncode == 143, err
    assert not left, f"left running after check was stopped: {left}"
    assert err.strip().splitlines()[-1] == "sockbench: interrupted (SIGTERM)", err
    doc = json.loads(path.read_text())
    assert [r["transport"] for r in doc["runs"]] == ["udp"], "the run that finished is written, the one cut is not"


# --- sockbench run ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_killed_takes_its_suite_with_it_and_the_suite_settles_meta(tmp_path):
    out = tmp_path / "killed"
    mark = uuid.uuid4().hex
    proc = _start("run", "--quick", "--servers", "selectors", "--out", str(out), mark=mark)
    try:
        _until(lambda: list((out / "raw").glob("*.json")) if (out / "raw").is_dir() else None, proc=proc)
        _until(lambda: _load_process(mark), proc=proc)  # a round in flight: its server and load process run
        proc.kill()
        proc.wait()
    finally:
        left = _left_after(mark, seconds=GONE_WITHIN_S + 1.0)  # the suite ends the round, then pytest ends
    assert not left, f"left running after `sockbench run` was SIGKILLed: {left}"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["status"] == "interrupted", meta["status"]
    assert list((out / "raw").glob("*.json")), "the rounds finished are kept"


# --- sockbench cluster-worker, and --cluster --------------------------------------------------------------


@pytest.fixture
def dask_scheduler():
    pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install -e '.[cluster]')")
    port = _free_port()
    p = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port",
                          str(port), "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return True
            except OSError:
                return False
        _until(listening, proc=None, timeout=60)
        p.address = f"tcp://127.0.0.1:{port}"
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _ready_line(proc):
    line = proc.stdout.readline()
    assert line.startswith("{"), proc.stderr.read() if proc.poll() is not None else line
    ready = json.loads(line)
    assert ready["event"] == "ready"
    return ready


@pytest.mark.slow
def test_cluster_worker_gives_up_on_an_unreachable_scheduler_in_one_line():
    pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install -e '.[cluster]')")
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "sockbench", "cluster-worker", "--scheduler",
                        f"tcp://127.0.0.1:{_free_port()}", "--connect-timeout", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0] and "within 1 s" in lines[0], r.stderr
    assert time.monotonic() - t0 < 30  # a hang guard: it never waits forever


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_cluster_worker_stops_on_a_signal_while_it_connects(sig):
    pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install -e '.[cluster]')")
    mark = uuid.uuid4().hex
    proc = _start("cluster-worker", "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "--connect-timeout", "600",
                  mark=mark)
    try:
        time.sleep(3.0)  # importing Dask and connecting (to nothing) by now; a signal must stop it either way
        t0 = time.monotonic()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        left = _left_after(mark)
    assert proc.returncode == 128 + sig, err
    assert err.strip().splitlines() == [f"sockbench: interrupted ({sig.name})"], err
    assert took < GONE_WITHIN_S and not left


@pytest.mark.slow
def test_cluster_worker_stops_on_sigterm_and_says_one_line_when_its_scheduler_goes(dask_scheduler):
    mark = uuid.uuid4().hex
    proc = _start("cluster-worker", "--scheduler", dask_scheduler.address, "--name", "w1", mark=mark)
    try:
        assert _ready_line(proc)["scheduler"] == dask_scheduler.address
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 143 and err.strip().splitlines() == ["sockbench: interrupted (SIGTERM)"], err
        proc = _start("cluster-worker", "--scheduler", dask_scheduler.address, "--name", "w2", mark=mark)
        _ready_line(proc)
        dask_scheduler.terminate()
        dask_scheduler.wait(10)
        out, err = proc.communicate(timeout=30)
    finally:
        left = _left_after(mark)
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [f"sockbench: lost the Dask scheduler at {dask_scheduler.address} (it stopped, "
                                        "or closed this worker); this worker stops"], err
    assert not left


@pytest.mark.slow
def test_cluster_worker_killed_mid_load_takes_its_load_processes_with_it(dask_scheduler, tmp_path):
    mark = uuid.uuid4().hex
    worker = _start("cluster-worker", "--scheduler", dask_scheduler.address, "--name", "h1", mark=mark)
    coordinator = None
    try:
        _ready_line(worker)
        # the coordinator starts the server here and loads it through the worker, which starts the load process
        coordinator = _start("load", "selectors", "--cluster", dask_scheduler.address, "--duration", "60",
                             "--warmup", "0", "--conns", "2", "--json", str(tmp_path / "r.json"), mark=uuid.uuid4().hex)

        load_pid = _until(lambda: in_loop(f"{MARK_ENV}={mark}", parent=worker.pid), proc=worker)
        worker.kill()
        worker.wait()
        left = _left_after(mark)
        assert not left, f"left running after the cluster-worker was SIGKILLed: {left} (load process {load_pid})"
    finally:
        for p in (worker, coordinator):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        _left_after(mark, 0)


@pytest.mark.slow
def test_run_cluster_reaches_the_scheduler_before_anything_runs(tmp_path):
    pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install -e '.[cluster]')")
    out = tmp_path / "never"
    r = subprocess.run([sys.executable, "-m", "sockbench", "run", "--quick", "--servers", "selectors", "--cluster",
                        f"tcp://127.0.0.1:{_free_port()}", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], r.stderr
    assert not out.exists(), "no results folder for a run that could not start"


@pytest.mark.slow
def test_run_cluster_names_a_host_that_is_not_there_before_anything_runs(dask_scheduler, tmp_path):
    out = tmp_path / "never"
    r = subprocess.run([sys.executable, "-m", "sockbench", "run", "--quick", "--servers", "selectors", "--cluster",
                        dask_scheduler.address, "--hosts", "nosuchhost", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("nosuchhost" in lines[0] or "no Dask worker is connected" in lines[0]), r.stderr
    assert not out.exists()


def test_reading_a_servers_stderr_while_it_writes_loses_nothing(tmp_path):
    """``stderr_text`` reads the file a server writes its stderr through with ``pread``: a seek would move the
    one offset both share, and a line written then would land over what came before (a stack dump's header
    was lost so, once in a suite)."""
    from sockbench.servers.command import Command
    from sockbench.servers.process import ServerProcess

    script = tmp_path / "chatty.py"
    script.write_text("import json, os, sys, time\n"
                      "print(json.dumps({'event': 'ready', 'host': '127.0.0.1', 'port': int(sys.argv[1]), "
                      "'pid': os.getpid()}), flush=True)\n"
                      "for i in range(3000):\n"
                      "    sys.stderr.write(f'line {i}\\n')\n"
                      "    sys.stderr.flush()\n"
                      "time.sleep(60)\n")
    expected = "".join(f"line {i}\n" for i in range(3000))
    with ServerProcess(command=Command.parse(f"{sys.executable} {script} {{port}}")) as server:
        deadline = time.monotonic() + 30
        reads = 0
        while "line 2999\n" not in server.stderr_text() and time.monotonic() < deadline:
            reads += 1
        assert server.stderr_text() == expected, f"after {reads} reads"
        assert server.stderr_text(len(expected) - 10) == "line 2999\n"
