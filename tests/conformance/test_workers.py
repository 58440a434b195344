"""Every registered server with ``--workers 2``: one address, two serving processes, the same contract.

Each test starts ``sockbench serve NAME --workers 2`` as users do.  That the
kernel spreads connections over the workers is checked from outside: each
worker's open sockets (``/proc/PID/fd``) while 200 connections are held.
"""

import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import TEST_MAX_MESSAGE, _framed_cases, _require_available
from echo_client import echo_concurrently, one_line_error, payload, read_exact, sockbench_cli, stderr_lines
from sockbench.servers.process import ServerProcess
from sockbench.servers.protocols import FrameDecoder, JsonDecoder, encode_frame, encode_json_request

WORKERS = ("--workers", "2")
#: each worker is pinned to one of these: the test machine's first two CPUs (or its only one)
CPUS = sorted(os.sched_getaffinity(0))[:2]


def _connect(server, timeout=10.0):
    endpoint = server.endpoint
    s = socket.socket(endpoint.family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(endpoint.sockaddr())
    return s


def _sockets_of(pid):
    """How many sockets ``pid`` holds open (its listener among them)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def _start(name, transport="tcp", extra=()):
    return ServerProcess(name, transport, cpus=CPUS, extra_args=(*WORKERS, *extra)).start()


@pytest.fixture(params=["tcp", "unix"])
def workers_server(request, server_name):
    proc = _start(server_name, request.param)
    try:
        yield proc
    finally:
        proc.stop()


def test_the_ready_line_lists_two_serving_pids_pinned_to_a_cpu_each(workers_server):
    ready = workers_server.ready
    pids = ready["pids"]
    assert len(pids) == 2 and len(set(pids)) == 2, ready
    assert ready["pid"] == pids[0], "pid is the first worker's"
    for i, pid in enumerate(pids):
        assert os.sched_getaffinity(pid) == {CPUS[i % len(CPUS)]}, f"worker {i} is pinned to one CPU"
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        assert ppid == workers_server.proc.pid, "the workers are the serve process's children"


def _socket_inodes(pid):
    """The inodes of the sockets ``pid`` holds open."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(link[len("socket:["):-1])
    return out


def test_200_connections_echo_and_both_workers_serve(workers_server):
    """200 connections, each echoed and held open; then every worker holds some of them (tcp), or both
    workers wait on the one shared listening socket (unix).

    Over tcp the kernel spreads connections by a hash (``SO_REUSEPORT``), so
    both workers get some.  A shared unix socket has one queue and no
    balance: the worker that wakes first takes the connection, and on a busy
    machine one may take them all.  Stopping one worker (SIGSTOP) does not
    force the other to serve either: a worker stopped while it sleeps in a
    blocking accept() stays on the socket's queue of waiters, and the kernel
    may hand the next connection's wakeup to it.  So over unix the test shows
    that both workers hold the same listening socket, and that every one of
    the 200 connections is served by one of them.
    """
    pids = workers_server.pids
    base = {pid: _sockets_of(pid) for pid in pids}
    unix = workers_server.transport == "unix"
    if unix:
        shared = _socket_inodes(pids[0]) & _socket_inodes(pids[1])
        assert shared, "over unix both workers must hold the one listening socket"
    socks = []
    try:
        for i in range(200):
            s = _connect(workers_server)
            socks.append(s)
            data = payload(1000 + i % 7, seed=i)
            assert echo_concurrently(s, data) == data
        held = {pid: _sockets_of(pid) - base[pid] for pid in pids}
        assert sum(held.values()) == 200, held
        if not unix:
            assert all(n > 0 for n in held.values()), f"one worker served every connection: {held}"
    finally:
        for s in socks:
            s.close()


def test_stop_signal_stops_every_worker_within_2s(workers_server):
    pids = workers_server.pids
    socks = [_connect(workers_server) for _ in range(20)]
    try:
        for s in socks:
            assert echo_concurrently(s, b"hello") == b"hello"
        t0 = time.monotonic()
        os.kill(workers_server.proc.pid, signal.SIGTERM)
        try:
            rc = workers_server.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{workers_server.name} --workers 2 did not exit within 2 s of SIGTERM")
        assert rc == 0, workers_server.stderr_text()[-500:]
        assert time.monotonic() - t0 < 2.0
        for pid in pids:
            assert not os.path.exists(f"/proc/{pid}"), f"worker {pid} outlived the server"
    finally:
        for s in socks:
            s.close()


def _ended(pid, within_s=2.0):
    """True once ``pid`` (another process's child) has ended within ``within_s``: gone, or a zombie."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


def test_a_killed_supervisor_takes_its_workers_and_the_socket_folder_with_it(workers_server):
    pids = workers_server.pids
    folder = os.path.dirname(workers_server.ready["path"]) if workers_server.transport == "unix" else None
    os.kill(workers_server.proc.pid, signal.SIGKILL)  # it cannot pass anything on
    workers_server.proc.wait()
    try:
        left = [pid for pid in pids if not _ended(pid)]
        assert not left, f"worker(s) {left} outlived their SIGKILLed supervisor by 2 s"
        if folder:
            deadline = time.monotonic() + 2.0
            while os.path.exists(folder) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert not os.path.exists(folder), "the unix socket's private folder was left behind"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_killed_worker_is_one_line_and_the_other_goes_on_serving(workers_server):
    first, second = workers_server.pids
    os.kill(second, signal.SIGKILL)
    lines = stderr_lines(workers_server, at_least=1)
    assert len(lines) == 1 and f"worker {second}" in lines[0] and "SIGKILL" in lines[0], lines
    assert "1 of 2 workers still serve" in lines[0], lines
    assert workers_server.alive()
    for i in range(50):  # every new connection reaches the live worker: none hangs in a dead one's queue
        with _connect(workers_server, timeout=5.0) as s:
            assert echo_concurrently(s, b"still here %d" % i) == b"still here %d" % i
    assert workers_server.stop() == 0, workers_server.stop_evidence
    assert not os.path.exists(f"/proc/{first}")


@pytest.fixture(params=_framed_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def framed_workers(request):
    name, protocol = request.param
    _require_available(name)
    proc = _start(name, extra=("--protocol", protocol, "--max-message", str(TEST_MAX_MESSAGE)))
    proc.protocol = protocol
    try:
        yield proc
    finally:
        proc.stop()


def test_framed_protocols_are_answered_by_every_worker(framed_workers):
    protocol = framed_workers.protocol
    socks = []
    try:
        for i in range(40):
            content = payload(100 + i, seed=i)
            request = encode_frame(content) if protocol == "frame" else encode_json_request(content, request_id=i)
            answer = (FrameDecoder() if protocol == "frame" else JsonDecoder()).feed(request)
            s = _connect(framed_workers)
            socks.append(s)
            s.sendall(request)
            assert read_exact(s, len(answer)) == answer
    finally:
        for s in socks:
            s.close()


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_worker_count_is_one_line_exit_2(value):
    r = sockbench_cli("serve", "selectors", "--workers", value)
    assert r.returncode == 2 and "--workers" in one_line_error(r), r.stderr


def test_more_workers_than_cpus_warn_in_one_line():
    with ServerProcess("selectors", cpus=CPUS[:1], extra_args=("--workers", "2")) as server:
        lines = stderr_lines(server, at_least=1)
        assert len(lines) == 1 and "2 workers on 1 CPU" in lines[0] and "share" in lines[0], lines
        assert all(os.sched_getaffinity(pid) == {CPUS[0]} for pid in server.pids)
        with _connect(server) as s:
            assert echo_concurrently(s, b"shared") == b"shared"


def test_a_server_that_is_not_there_is_one_line_with_workers():
    r = sockbench_cli("serve", "no-such-server", "--workers", "2")
    assert r.returncode == 2 and "unknown server" in one_line_error(r), r.stderr
