"""The one conformance suite: every registered server, every check.

Each test takes ``server`` (a fresh ``sockbench serve NAME --port 0`` process)
or ``server_name``, both parametrized over the registry in conftest.py.
"""

import os
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from echo_client import (
    StreamPattern,
    connect,
    echo_concurrently,
    many_connections_echo,
    one_line_error,
    payload,
    read_exact,
    read_to_eof,
    send_without_reading,
    server_socket_option,
    sockbench_cli,
)
from sockbench.procfs import read_rss_bytes
from sockbench.servers import registry
from sockbench.servers.contract import system_backlog
from sockbench.servers.process import ServerProcess

MiB = 1 << 20
SIZES = [1, 2, 100, 1460, 4096, 65535, 65537, 256 * 1024 + 3, MiB, 4 * MiB]


# --- the process contract -------------------------------------------------------------------


def test_ready_line_and_stdout(server_name):
    proc = ServerProcess(server_name).start()
    try:
        ready = proc.ready
        assert set(ready) == {"event", "server", "transport", "host", "port", "pid", "backlog"}
        assert ready["server"] == server_name and ready["transport"] == "tcp"
        assert ready["host"] == "127.0.0.1", "the default bind is loopback"
        assert isinstance(ready["port"], int) and ready["port"] > 0
        assert ready["pid"] == proc.proc.pid, "the pid is the process that serves"
        assert ready["backlog"] == system_backlog(), "the default backlog is the system's maximum"
        with connect(proc.address) as s:
            assert echo_concurrently(s, b"ping") == b"ping"
    finally:
        rc = proc.stop()
    rest = proc.proc.stdout.read() if not proc.proc.stdout.closed else b""
    assert rc == 0
    assert rest == b"", f"nothing but the ready line goes to stdout, got {rest[:200]!r}"


def test_ipv6_loopback(server_name):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        socket.socket(socket.AF_INET6).close()
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 is not configured here")
    with ServerProcess(server_name, host="::1") as proc:
        assert proc.ready["host"] == "::1"
        with socket.create_connection(("::1", proc.ready["port"]), timeout=10) as s:
            data = payload(100_000, seed=6)
            assert echo_concurrently(s, data) == data


def test_tcp_nodelay_on_accepted_sockets(server):
    with connect(server.address) as s:
        assert echo_concurrently(s, b"x") == b"x"  # the server has accepted by now
        value = server_socket_option(server.pid, s, socket.IPPROTO_TCP, socket.TCP_NODELAY)
    if value is None:
        pytest.skip("pidfd_getfd(2) is not permitted here; cannot inspect the server's socket")
    assert value != 0, "accepted sockets must have TCP_NODELAY"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_with_50_connections_exits_0_within_2s(server, sig):
    socks = []
    try:
        for i in range(50):
            s = connect(server.address)
            socks.append(s)
        # a third of them mid-transfer: their echo is pending because we do not read it
        for i, s in enumerate(socks):
            if i % 3 == 0:
                send_without_reading(s, payload(2 * MiB, seed=i))
            else:
                s.sendall(b"hello")
        for i, s in enumerate(socks):
            if i % 3:
                assert read_exact(s, 5) == b"hello"
        t0 = time.monotonic()
        os.kill(server.pid, sig)
        try:
            rc = server.proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{server.name} did not exit within 2 s of {sig.name}")
        elapsed = time.monotonic() - t0
        assert rc == 0, f"exit status {rc}; stderr: {server.stderr_text()[-500:]}"
        assert elapsed < 2.0
        # and its connections are closed, not left dangling
        idle = socks[1]
        idle.settimeout(2.0)
        try:
            assert idle.recv(1) == b""
        except ConnectionResetError:
            pass
    finally:
        for s in socks:
            s.close()


# --- echo correctness ------------------------------------------------------------------------


def test_echo_byte_for_byte(server):
    with connect(server.address) as s:
        for i, size in enumerate(SIZES):
            data = payload(size, seed=i)
            got = echo_concurrently(s, data)
            assert len(got) == size
            assert got == data, f"echo of {size} bytes differs"


@pytest.mark.slow
@pytest.mark.parametrize("size", [1, 4096, 65537, MiB, 4 * MiB], ids=lambda n: f"{n}B")
def test_send_everything_before_reading(server, size):
    """The client writes its whole message before reading a byte: no deadlock."""
    data = payload(size, seed=size)
    with connect(server.address, timeout=15) as s:
        try:
            s.sendall(data)
        except socket.timeout:
            pytest.fail(f"{server.name} stopped reading before {size} bytes were accepted (deadlock)")
        assert read_exact(s, size) == data


def test_200_concurrent_connections(server):
    bad = many_connections_echo(server.address, count=200, size=16 * 1024 + 7)
    assert bad == [], f"connections with a wrong or missing echo: {bad[:20]}"


def test_half_close_flushes_then_closes(server):
    data = payload(3 * MiB + 11, seed=42)
    with connect(server.address) as s:
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        got = read_to_eof(s, limit=len(data))
        sender.join(10)
    assert got == data, f"got {len(got)} of {len(data)} bytes before the server closed"


def test_half_close_right_after_a_small_message(server):
    with connect(server.address) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        assert read_to_eof(s, limit=100) == b"last words"


@pytest.mark.slow
def test_reset_mid_stream_disturbs_nobody(server):
    with connect(server.address) as steady:
        first = payload(100_000, seed=1)
        assert echo_concurrently(steady, first) == first
        # a client that writes a lot, reads nothing, and resets: the server has echo pending for it
        rude = connect(server.address)
        send_without_reading(rude, payload(4 * MiB, seed=2))
        time.sleep(0.1)
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rude.close()  # RST
        time.sleep(0.1)
        assert server.alive(), f"{server.name} died after a reset: {server.stderr_text()[-500:]}"
        second = payload(MiB, seed=3)
        assert echo_concurrently(steady, second) == second
    with connect(server.address) as fresh:
        assert echo_concurrently(fresh, b"still here") == b"still here"


@pytest.mark.slow
def test_bounded_memory_when_client_does_not_read(server):
    """A client writes 256 MiB without reading: the server's RSS grows by < 64 MiB, and nothing is lost."""
    total = 256 * MiB
    chunk = MiB
    pattern = StreamPattern(seed=7)
    with connect(server.address, timeout=60) as s:
        assert echo_concurrently(s, b"warm") == b"warm"
        base_rss = read_rss_bytes(server.pid)
        sent = [0]

        def writer():
            try:
                while sent[0] < total:
                    sent[0] += s.send(pattern.chunk(sent[0], min(chunk, total - sent[0])))
            except OSError:
                pass

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        # wait until the writer stalls (the server stopped reading) or everything went out
        last, still_since = -1, time.monotonic()
        end = time.monotonic() + 30
        while time.monotonic() < end and sent[0] < total:
            time.sleep(0.05)
            if sent[0] != last:
                last, still_since = sent[0], time.monotonic()
            elif time.monotonic() - still_since > 0.5:
                break
        grown = read_rss_bytes(server.pid) - base_rss
        stalled_at = sent[0]
        assert stalled_at < total, "256 MiB went out unread: the server (or the kernel) buffered it all"
        assert grown < 64 * MiB, f"RSS grew by {grown / MiB:.1f} MiB with {stalled_at / MiB:.1f} MiB unread"
        # now read everything back, in order, while the writer finishes
        got = 0
        end = time.monotonic() + 60
        while got < total:
            assert time.monotonic() < end, f"echo stalled at {got} of {total} bytes"
            data = s.recv(MiB)
            assert data, f"EOF after {got} of {total} bytes"
            assert data == pattern.chunk(got, len(data)), f"wrong bytes at offset {got}"
            got += len(data)
        t.join(10)


# --- bad input to the command line ------------------------------------------------------------


def test_unknown_server_name_is_one_line_exit_2():
    r = sockbench_cli("serve", "no-such-server")
    line = one_line_error(r)
    assert r.returncode == 2
    assert "no-such-server" in line and "blocking" in line and "uvloop" in line


def test_port_in_use_is_one_line(server_name):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        r = sockbench_cli("serve", server_name, "--port", str(port))
    finally:
        holder.close()
    line = one_line_error(r)
    assert f"127.0.0.1:{port}" in line and "in use" in line


def test_servers_lists_every_name():
    r = sockbench_cli("servers")
    assert r.returncode == 0, r.stderr
    for name, spec in registry.SERVERS.items():
        line = next((ln for ln in r.stdout.splitlines() if ln.split() and ln.split()[0] == name), None)
        assert line is not None, f"{name} missing from `sockbench servers`"
        ok, why = spec.availability()
        assert ("available" in line) if ok else ("not" in line or "missing" in line)
