"""The one conformance suite: every registered server, every check.

Each test takes ``server`` (a fresh ``sockbench serve NAME --port 0`` process)
or ``server_name``, both parametrized over the registry in conftest.py, or,
for the echo checks that every stream transport must pass, plain and over TLS,
``stream_server`` (one process per server, transport and TLS, shared by this
module's tests) or ``fresh_stream_server`` (a process of its own); they reach
it with ``open_conn`` (or ``sockbench check``'s checks), which speak TLS to a
TLS server (a half-close is then close_notify).
"""

import os
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import stream_cases_with
from echo_client import (
    assert_check,
    connect,
    open_conn,
    echo_concurrently,
    one_line_error,
    payload,
    read_exact,
    send_without_reading,
    server_socket_option,
    sockbench_cli,
)
from sockbench.servers import registry
from sockbench.servers import process as process_module
from sockbench.servers.contract import RECV_SIZE, STACKS_SIGNAL, system_backlog
from sockbench.servers.process import ServerProcess

MiB = 1 << 20
SIZES = [1, 2, 100, 1460, 4096, 65535, 65537, 256 * 1024 + 3, MiB, 4 * MiB]


# --- the process contract -------------------------------------------------------------------


def test_ready_line_and_stdout(fresh_stream_server):
    proc = fresh_stream_server
    try:
        ready = proc.ready
        transport = proc.transport
        where = {"path"} if transport == "unix" else {"host", "port"}
        tls = {"tls"} if getattr(proc, "tls", None) is not None else set()
        assert set(ready) == {"event", "server", "transport", "pid", "backlog"} | where | tls
        if tls:
            assert ready["tls"]["version"] == "1.3" and os.path.exists(ready["tls"]["cert"])
        assert ready["server"] == proc.name and ready["transport"] == transport
        if transport == "unix":
            folder = os.path.dirname(ready["path"])
            assert stat.S_ISSOCK(os.lstat(ready["path"]).st_mode)
            assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, "a private directory of its own"
        else:
            assert ready["host"] == {"tcp": "127.0.0.1", "tcp6": "::1"}[transport], "the default bind is loopback"
            assert isinstance(ready["port"], int) and ready["port"] > 0
        assert ready["pid"] == proc.proc.pid, "the pid is the process that serves"
        assert ready["backlog"] == system_backlog(), "the default backlog is the system's maximum"
        with open_conn(proc) as s:
            assert echo_concurrently(s, b"ping") == b"ping"
    finally:
        rc = proc.stop()
    rest = proc.proc.stdout.read() if not proc.proc.stdout.closed else b""
    assert rc == 0, proc.stop_evidence
    assert rest == b"", f"nothing but the ready line goes to stdout, got {rest[:200]!r}"
    if transport == "unix":
        assert not os.path.exists(folder), "the socket and its private directory are removed on exit"


#: how faulthandler begins each thread's stack
STACK_HEADER = "(most recent call first):"


def test_the_stacks_signal_writes_every_thread_and_serves_on(server):
    """``STACKS_SIGNAL`` (what ``stop`` sends a server that ignored SIGTERM) writes its stacks and changes nothing."""
    with connect(server.address) as s:
        assert echo_concurrently(s, b"before") == b"before"
        os.kill(server.pid, STACKS_SIGNAL)
        deadline = time.monotonic() + 10.0
        while STACK_HEADER not in server.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert STACK_HEADER in server.stderr_text(), f"no stacks on stderr: {server.stderr_text()[-500:]!r}"
        assert 'File "' in server.stderr_text(), "a stack names the Python frames it is in"
        assert echo_concurrently(s, b"after") == b"after", "the connection it was serving goes on"
    with connect(server.address) as s:
        assert echo_concurrently(s, b"new") == b"new", "and it still accepts"
    assert server.stop() == 0, server.stop_evidence


def _deaf_to_sigterm(child_setup):
    """``child_setup`` for a server that never sees SIGTERM: blocked in the child, and a blocked mask survives exec."""
    def make(*args, **kwargs):
        setup = child_setup(*args, **kwargs)

        def deaf():
            setup()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

        return deaf

    return make


def test_a_server_that_ignores_sigterm_is_killed_and_what_it_was_doing_is_kept(server_name, monkeypatch):
    monkeypatch.setattr(process_module, "child_setup", _deaf_to_sigterm(process_module.child_setup))
    monkeypatch.setattr(process_module, "STOP_WAIT_S", 0.3)
    server = ServerProcess(server_name)  # not connected to: a thread-per-connection server unmasks SIGTERM then
    try:
        pid = server.start().pid
    finally:
        rc = server.stop()
    assert rc == -signal.SIGKILL and server.killed
    evidence = server.stop_evidence
    assert f"server {server_name!r} (pid {pid}) had not exited 0.3 s after SIGTERM" in evidence
    assert f"{pid} " in evidence.split("its threads", 1)[1], "each thread by its tid, the main thread's is the pid"
    assert STACK_HEADER in evidence and 'File "' in evidence, f"its Python stacks: {evidence[-800:]}"
    note = server.stop_note
    assert "\n" not in note and "ignored SIGTERM: killed with SIGKILL after 0.3 s" in note and str(pid) in note


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


def test_a_connection_left_idle_is_still_served(server):
    """Idle longer than any timeout a server keeps on its listener for itself (``blocking``: a kernel receive
    timeout, so that a stop signal is never missed; accepted sockets inherit it, and must lose it)."""
    with connect(server.address) as s:
        assert echo_concurrently(s, b"first") == b"first"
        time.sleep(0.5)
        assert echo_concurrently(s, b"after a pause") == b"after a pause"


def test_tcp_nodelay_on_accepted_sockets(server):
    with connect(server.address) as s:
        assert echo_concurrently(s, b"x") == b"x"  # the server has accepted by now
        value = server_socket_option(server.pid, s, socket.IPPROTO_TCP, socket.TCP_NODELAY)
    if value is None:
        pytest.skip("pidfd_getfd(2) is not permitted here; cannot inspect the server's socket")
    assert value != 0, "accepted sockets must have TCP_NODELAY"


def test_tcp_nodelay_over_tcp6_too(server_name):
    with ServerProcess(server_name, "tcp6") as server:
        with connect(server.address) as s:
            assert echo_concurrently(s, b"x") == b"x"
            value = server_socket_option(server.pid, s, socket.IPPROTO_TCP, socket.TCP_NODELAY)
    if value is None:
        pytest.skip("pidfd_getfd(2) is not permitted here; cannot inspect the server's socket")
    assert value != 0, "accepted IPv6 sockets must have TCP_NODELAY"


def _stop_signal_applies(transport, sig):
    """SIGINT over tcp only: it takes the same path as SIGTERM, so one transport shows it."""
    return sig == signal.SIGTERM or transport == "tcp"


@pytest.mark.slow
@stream_cases_with(
    "fresh_stream_server", "sig", [signal.SIGTERM, signal.SIGINT], _stop_signal_applies, value_id=lambda s: s.name
)
def test_stop_signal_with_50_connections_exits_0_within_2s(fresh_stream_server, sig):
    server = fresh_stream_server
    socks = []
    try:
        for i in range(50):
            s = open_conn(server)
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


def test_echo_byte_for_byte(stream_server):
    """1 B to 16 MiB on one connection (``sockbench check``'s ``echo``)."""
    assert_check("echo", stream_server)


def _unix_in_flight():
    """Bytes a client can write before reading over AF_UNIX: its send buffer, the server's read, the server's send buffer."""
    with open("/proc/sys/net/core/wmem_default") as f:
        return 2 * int(f.read()) + RECV_SIZE


def _fits_in_flight(transport, size):
    """Over unix, only what the kernel can hold in flight both ways (~672 KiB with the default buffers).

    An AF_UNIX stream has no receive buffer: what is in flight is charged to the
    sender's send buffer, so beyond both send buffers and the server's one read,
    any bounded-memory echo must stall.
    """
    return transport != "unix" or size <= _unix_in_flight()


@pytest.mark.slow
@stream_cases_with("stream_server", "size", [1, 4096, 65537, MiB, 4 * MiB], _fits_in_flight, value_id=lambda n: f"{n}B")
def test_send_everything_before_reading(stream_server, size):
    """The client writes its whole message before reading a byte: no deadlock."""
    server = stream_server
    data = payload(size, seed=size)
    with open_conn(server, timeout=15) as s:
        try:
            s.sendall(data)
        except socket.timeout:
            pytest.fail(f"{server.name} stopped reading before {size} bytes were accepted (deadlock)")
        assert read_exact(s, size) == data


def test_200_concurrent_connections(stream_server):
    assert_check("many-connections", stream_server)


def _expect_tls_half_close_gap(request, server):
    """Over TLS, a server whose library cannot finish a half-close is expected to fail the check (the registry
    says why); it still runs, so that a library that learns it shows as XPASS."""
    gap = registry.get(server.name).tls_half_close_gap
    if getattr(server, "tls", None) is not None and gap:
        request.applymarker(pytest.mark.xfail(reason=gap, strict=False))


def test_half_close_flushes_then_closes(stream_server, request):
    """3 MiB then a half-close, and a small message then a half-close (``half-close``); over TLS, close_notify."""
    _expect_tls_half_close_gap(request, stream_server)
    assert_check("half-close", stream_server)


@pytest.mark.slow
def test_reset_mid_stream_disturbs_nobody(stream_server):
    assert_check("abrupt-peers", stream_server)


@pytest.mark.slow
def test_bounded_memory_when_client_does_not_read(stream_server):
    """A client writes 128 MiB without reading: its writes stall, RSS grows by < 48 MiB, and nothing is lost."""
    assert_check("slow-reader", stream_server)


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


@pytest.mark.parametrize("case", ["long", "missing-dir", "not-a-socket", "with-port"])
def test_a_bad_unix_path_is_one_line_exit_2(case, tmp_path):
    path = {"long": str(tmp_path / ("s" * 110)), "missing-dir": str(tmp_path / "nowhere" / "e.sock"),
            "not-a-socket": str(tmp_path / "file"), "with-port": str(tmp_path / "e.sock")}[case]
    if case == "not-a-socket":
        (tmp_path / "file").write_text("keep me")
    extra = ("--port", "5000") if case == "with-port" else ()
    r = sockbench_cli("serve", "selectors", "--transport", "unix", "--path", path, *extra)
    line = one_line_error(r)
    assert r.returncode == 2
    assert {"long": "at most 107 bytes", "missing-dir": "does not exist", "not-a-socket": "is not a socket",
            "with-port": "a unix socket takes --path"}[case] in line
    if case == "not-a-socket":
        assert (tmp_path / "file").read_text() == "keep me"


def test_a_transport_the_server_lacks_is_one_line_exit_2():
    lacking = next(n for n, s in registry.SERVERS.items() if "udp" not in s.transports)
    for cmd in (("serve", lacking, "--transport", "udp"),
                ("load", lacking, "--transport", "udp", "--duration", "0.1")):
        r = sockbench_cli(*cmd)
        line = one_line_error(r)
        assert r.returncode == 2 and f"does not serve --transport udp" in line, line
    r = sockbench_cli("serve", "selectors", "--transport", "sctp")
    assert r.returncode == 2 and "bad --transport 'sctp'" in one_line_error(r)


@pytest.mark.parametrize("target, says", [
    ("[::1", "an IPv6 target is [V6]:PORT"),
    ("[::g]:80", "is not an IPv6 address"),
    ("[12345::1]:80", "is not an IPv6 address"),
    ("::1:80", "an IPv6 address goes in brackets"),
    ("unix:/" + "x" * 120, "at most 107 bytes"),
])
def test_a_malformed_target_is_one_line_exit_2(target, says):
    r = sockbench_cli("load", "--target", target, "--duration", "0.1")
    line = one_line_error(r)
    assert r.returncode == 2 and says in line, line


def test_a_stale_unix_socket_is_replaced_and_the_file_removed_on_exit(tmp_path):
    path = str(tmp_path / "e.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    with ServerProcess("selectors", "unix", path=path) as proc:
        assert proc.ready["path"] == path
        with connect(path) as s:
            assert echo_concurrently(s, b"fresh") == b"fresh"
    assert not os.path.exists(path)
