"""Every server under faults and bad input: one line, nothing lost, no process dies for one bad peer.

Each test runs against every registered server (or every one that speaks the
protocol involved), through ``sockbench serve`` as users start it.  Only
loopback is ever connected to; the bind-all test starts a server on 0.0.0.0
or ``::`` and stops it at once, sending it nothing.
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import _framed_cases, _require_available
from echo_client import (
    assert_check,
    connect,
    connect_burst,
    echo_concurrently,
    exchange,
    listen_overflows,
    one_line_error,
    payload,
    read_exact,
    sockbench_cli,
    stderr_lines,
)
from sockbench.procfs import read_rss_bytes
from sockbench.servers import registry
from sockbench.servers.contract import system_backlog
from sockbench.servers.process import ServerProcess
from sockbench.servers.protocols import FrameDecoder, JsonDecoder, encode_frame, encode_json_request

MiB = 1 << 20


def _speaking(protocol, python_only=False):
    return [name for name, spec in registry.SERVERS.items()
            if protocol in spec.protocols and not (python_only and spec.build_hint)]


@pytest.fixture(params=_speaking("json"))
def json_server_name(request):
    _require_available(request.param)
    return request.param


@pytest.fixture(params=_speaking("json", python_only=True))
def python_json_server_name(request):
    _require_available(request.param)
    return request.param


@pytest.fixture(params=_framed_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def framed_case(request):
    _require_available(request.param[0])
    return request.param


def _request(protocol, content, request_id=None):
    return encode_frame(content) if protocol == "frame" else encode_json_request(content, request_id=request_id)


def _answer(protocol, request):
    """What a correct server answers to ``request`` (the oracle's bytes)."""
    decoder = FrameDecoder() if protocol == "frame" else JsonDecoder()
    return decoder.feed(request)


def _closed_by_server(sock, timeout=5.0):
    """True if the server closes ``sock`` (EOF or reset) within ``timeout``, reading and dropping anything before it."""
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 16):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        return False
    return True


def _still_open(sock):
    """True if the server has not closed ``sock`` (nothing to read, no EOF); leaves it blocking."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def _client_port(sock):
    return sock.getsockname()[1]


# --- a JSON header nested a thousand deep ---------------------------------------------------------

NESTED = struct.pack(">H", 990) + b"[" * 990


def test_a_deeply_nested_json_header_costs_one_line_and_its_own_connection(json_server_name):
    with ServerProcess(json_server_name, extra_args=("--protocol", "json")) as server:
        with connect(server.address) as other:
            before = encode_json_request(b"before", request_id=1)
            other.sendall(before)
            assert read_exact(other, len(_answer("json", before))) == _answer("json", before)
            with connect(server.address) as bad:
                bad.sendall(NESTED)
                assert _closed_by_server(bad), "the connection with the nested header stays open"
                port = _client_port(bad)
            lines = stderr_lines(server, at_least=1)
            time.sleep(0.2)
            lines = stderr_lines(server)
            assert server.alive(), f"{json_server_name} died: {server.stderr_text()[-800:]}"
            assert len(lines) == 1, f"one line for the nested header, got {lines}"
            assert f"closing 127.0.0.1:{port}: malformed message: JSON header is not a JSON object" in lines[0], lines
            # the connection that was open all along is still served, and so is a new one
            after = encode_json_request(b"after", request_id=2)
            other.sendall(after)
            assert read_exact(other, len(_answer("json", after))) == _answer("json", after)
        assert exchange(server.address, after) == _answer("json", after)
        assert server.stop() == 0, server.stop_evidence


def test_a_nested_object_value_is_malformed_not_a_crash(json_server_name):
    deep = b'{"byteorder":' * 2000 + b'"little"' + b"}" * 2000
    with ServerProcess(json_server_name, extra_args=("--protocol", "json")) as server:
        assert exchange(server.address, struct.pack(">H", len(deep)) + deep) == b""
        lines = stderr_lines(server, at_least=1)
        assert len(lines) == 1 and "malformed message" in lines[0], lines
        assert "Traceback" not in server.stderr_text()
        assert server.alive()


# --- one exception boundary per connection ------------------------------------------------------

_INJECT = textwrap.dedent('''
    # test only: the JSON header parser raises on a header that holds "boom", as a bug would
    import sockbench.servers.protocols as protocols

    _parse = protocols.parse_json_header

    def parse_json_header(raw, max_message=protocols.DEFAULT_MAX_MESSAGE):
        if b"boom" in bytes(raw):
            raise RuntimeError("boom (injected by the test)")
        return _parse(raw, max_message)

    protocols.parse_json_header = parse_json_header
''')


def test_an_unexpected_error_closes_only_its_connection_with_one_line(python_json_server_name, tmp_path):
    """A bug that raises while one connection is served costs that connection and one line, nothing more."""
    (tmp_path / "sitecustomize.py").write_text(_INJECT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with ServerProcess(python_json_server_name, extra_args=("--protocol", "json"), env=env) as server:
        with connect(server.address) as other:
            hello = encode_json_request(b"hello", request_id=1)
            other.sendall(hello)
            assert read_exact(other, len(_answer("json", hello))) == _answer("json", hello)
            for _ in range(3):
                assert exchange(server.address, encode_json_request(b"x", request_id="boom")) == b""
            lines = stderr_lines(server, at_least=3)
            time.sleep(0.2)
            lines = stderr_lines(server)
            assert len(lines) == 3, f"one line per failed connection, got {lines}"
            assert all("unexpected error: RuntimeError: boom (injected by the test)" in ln for ln in lines), lines
            assert "Traceback" not in server.stderr_text()
            assert server.alive()
            other.sendall(hello)
            assert read_exact(other, len(_answer("json", hello))) == _answer("json", hello)
        assert exchange(server.address, hello) == _answer("json", hello)
        assert server.stop() == 0, server.stop_evidence


# --- out of file descriptors --------------------------------------------------------------------

NOFILE = 64


@pytest.mark.slow
def test_out_of_descriptors_pauses_accepting_and_says_so_at_most_once_a_second(server_name):
    with ServerProcess(server_name, nofile=NOFILE) as server:
        socks = []
        try:
            for _ in range(200):  # they all connect: the listen queue holds what the server cannot take yet
                socks.append(connect(server.address, timeout=5))
            for s in socks[:20]:
                assert echo_concurrently(s, b"first") == b"first"
            t0 = time.monotonic()
            time.sleep(2.0)  # out of descriptors all this while
            lines = stderr_lines(server, at_least=1)
            elapsed = time.monotonic() - t0
            assert server.alive(), f"{server_name} died: {server.stderr_text()[-800:]}"
            assert 1 <= len(lines) <= 2 + int(elapsed), f"one line, then at most one a second: {lines}"
            assert all("cannot accept connections" in ln and "EMFILE" in ln for ln in lines), lines
            for s in socks[:20]:
                assert echo_concurrently(s, b"still served") == b"still served"
            # descriptors come free: the connections that waited are accepted, none was reset
            for s in socks[:150]:
                s.close()
            for s in socks[150:]:
                assert echo_concurrently(s, b"late") == b"late"
        finally:
            for s in socks:
                s.close()
        assert server.stop() == 0, server.stop_evidence


# --- the listen backlog -------------------------------------------------------------------------


def test_backlog_option_is_used_and_recorded(server_name):
    with ServerProcess(server_name, extra_args=("--backlog", "128")) as server:
        assert server.ready["backlog"] == 128
        with connect(server.address) as s:
            assert echo_concurrently(s, b"ok") == b"ok"


def test_a_backlog_above_the_system_maximum_is_capped_with_one_line():
    most = system_backlog()
    with ServerProcess("selectors", extra_args=("--backlog", str(most + 1))) as server:
        assert server.ready["backlog"] == most
        lines = stderr_lines(server, at_least=1)
        assert len(lines) == 1 and "net.core.somaxconn" in lines[0], lines


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bad_backlog_is_one_line_exit_2(value):
    r = sockbench_cli("serve", "selectors", "--backlog", value)
    assert r.returncode == 2 and "bad --backlog" in one_line_error(r), r.stderr


@pytest.mark.slow
def test_a_burst_of_1000_connects_waits_in_the_listen_queue(server):
    """The server is stopped (SIGSTOP): only its listen queue can take the burst, and it must take all of it."""
    burst = 1000
    if system_backlog() < burst:
        pytest.skip(f"net.core.somaxconn is {system_backlog()} here, below the burst of {burst}")
    overflows = listen_overflows()
    os.kill(server.pid, signal.SIGSTOP)
    try:
        socks, completed = connect_burst(server.address, burst, within_s=0.5)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    try:
        grown = None if overflows is None else listen_overflows() - overflows
        assert completed == burst, (
            f"{burst - completed} of {burst} connects did not complete within 0.5 s (the SYN retry is 1 s): "
            f"the listen queue is shorter than the burst (ListenOverflows +{grown} on this machine meanwhile)"
        )
        for s in socks[:: burst // 4]:
            s.setblocking(True)
            s.settimeout(20)
            assert echo_concurrently(s, b"queued") == b"queued"
    finally:
        for s in socks:
            s.close()


# --- memory after abrupt peers and after many connections ---------------------------------------

_PEER = textwrap.dedent('''
    import socket, sys, time
    host, port = sys.argv[1], int(sys.argv[2])
    socks = [socket.create_connection((host, port)) for _ in range(100)]
    data = b"x" * (1 << 20)
    for s in socks:
        s.setblocking(False)
    end = time.monotonic() + 0.5
    while time.monotonic() < end:  # write until the server stops reading; read nothing back
        for s in socks:
            try:
                s.send(data)
            except BlockingIOError:
                pass
        time.sleep(0.02)
    print("ready", flush=True)
    sys.stdin.read()
''')


def _fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def _wait_fds(pid, at_most, timeout=15.0):
    end = time.monotonic() + timeout
    while _fd_count(pid) > at_most:
        assert time.monotonic() < end, f"the server still holds {_fd_count(pid)} descriptors, {at_most} expected"
        time.sleep(0.05)


@pytest.mark.slow
def test_abruptly_killed_peers_leave_no_memory_behind(server_name, tmp_path):
    """Rounds of a peer process that holds 100 connections with unread echoes and is SIGKILLed.

    The server runs with its garbage collector disabled (a ``sitecustomize``
    of the test's), so what a round leaves in reference cycles stays there:
    the connections must be freed by their reference counts alone.  The first
    rounds take the allocator to its high-water mark; after that, RSS must
    stay there (one round left in cycles is about 100 MB).
    """
    (tmp_path / "sitecustomize.py").write_text("import gc\ngc.disable()  # test only: no cycle is ever collected\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    with ServerProcess(server_name, env=env) as server:
        host, port = server.address
        base_fds = _fd_count(server.pid)
        rss = []
        for _ in range(4):
            peer = subprocess.Popen([sys.executable, "-c", _PEER, host, str(port)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE)
            try:
                assert peer.stdout.readline() == b"ready\n"
            finally:
                peer.kill()
                peer.wait()
                peer.stdout.close()
                peer.stdin.close()
            _wait_fds(server.pid, base_fds + 2)
            time.sleep(0.3)
            rss.append(read_rss_bytes(server.pid))
        assert server.alive()
    grown = rss[-1] - rss[1]
    assert grown < 64 * MiB, f"RSS after each round: {[r // MiB for r in rss]} MiB: the connections' memory stays"


@pytest.mark.slow
def test_memory_returns_after_1000_connections_close(server):
    """1,000 connections come and go: descriptors and RSS return (``sockbench check``'s ``descriptors``)."""
    assert_check("descriptors", server)


# --- --idle-timeout -----------------------------------------------------------------------------

IDLE_S = 0.5


def _idle_line(port, host="127.0.0.1"):
    peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return f"closing {peer}: no complete message for {IDLE_S:g} s (--idle-timeout)"


@pytest.mark.slow
def test_idle_timeout_closes_a_quiet_connection_with_one_line_and_keeps_a_busy_one(server_name):
    with ServerProcess(server_name, extra_args=("--idle-timeout", str(IDLE_S))) as server:
        quiet = connect(server.address)
        busy = connect(server.address)
        try:
            t0 = time.monotonic()
            time.sleep(0.3)
            assert _still_open(quiet), "closed before its idle timeout"
            while time.monotonic() - t0 < 3 * IDLE_S:  # a message every 0.1 s: never idle
                assert echo_concurrently(busy, b"tick") == b"tick"
                time.sleep(0.1)
            assert _closed_by_server(quiet, timeout=2.0), "the quiet connection is still open"
            lines = stderr_lines(server, at_least=1)
            assert len(lines) == 1, lines
            assert _idle_line(_client_port(quiet)) in lines[0], lines
            assert echo_concurrently(busy, b"still here") == b"still here"
        finally:
            quiet.close()
            busy.close()
        assert server.stop() == 0, server.stop_evidence


@pytest.mark.slow
def test_idle_timeout_closes_a_peer_that_stops_inside_a_message_or_trickles_it(framed_case):
    name, protocol = framed_case
    with ServerProcess(name, extra_args=("--protocol", protocol, "--idle-timeout", str(IDLE_S))) as server:
        request = _request(protocol, payload(100_000, seed=5))
        half = connect(server.address)
        trickle = connect(server.address)
        steady = connect(server.address)
        try:
            half.sendall(request[: len(request) // 2])  # then silence: the half-open peer
            t0 = time.monotonic()
            sent = 0
            while time.monotonic() - t0 < 3 * IDLE_S:
                try:
                    trickle.send(request[sent : sent + 10])  # bytes keep coming, a message never completes
                except OSError:
                    break
                sent += 10
                steady.sendall(request)
                assert read_exact(steady, len(_answer(protocol, request))) == _answer(protocol, request)
                time.sleep(0.05)
            assert _closed_by_server(half, timeout=2.0)
            assert _closed_by_server(trickle, timeout=2.0)
            lines = stderr_lines(server, at_least=2)
            assert len(lines) == 2, lines
            for sock in (half, trickle):
                assert any(_idle_line(_client_port(sock)) in ln for ln in lines), lines
            steady.sendall(request)
            assert read_exact(steady, len(_answer(protocol, request))) == _answer(protocol, request)
        finally:
            for s in (half, trickle, steady):
                s.close()
        assert server.alive()


def test_peers_are_spelled_host_port_in_brackets_for_ipv6(server_name):
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("::1 is not configured here")
    with ServerProcess(server_name, host="::1", extra_args=("--idle-timeout", str(IDLE_S))) as server:
        with socket.create_connection(("::1", server.ready["port"]), timeout=10) as quiet:
            assert _closed_by_server(quiet, timeout=3.0)
            lines = stderr_lines(server, at_least=1)
            assert len(lines) == 1 and _idle_line(_client_port(quiet), host="::1") in lines[0], lines


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_bad_idle_timeout_is_one_line_exit_2(value):
    r = sockbench_cli("serve", "selectors", "--idle-timeout", value)
    assert r.returncode == 2 and "bad --idle-timeout" in one_line_error(r), r.stderr


def test_the_cython_server_takes_idle_timeouts_its_32_bit_clocks_can_hold():
    _require_available("cython")
    r = sockbench_cli("serve", "cython", "--idle-timeout", "3000000")
    assert r.returncode == 2 and "--idle-timeout is at most 2000000 s" in one_line_error(r), r.stderr


# --- --max-buffered -----------------------------------------------------------------------------


def test_max_buffered_closes_the_connection_that_would_exceed_it(framed_case):
    name, protocol = framed_case
    with ServerProcess(name, extra_args=("--protocol", protocol, "--max-buffered", "64k")) as server:
        first = _request(protocol, payload(50_000, seed=1))
        second = _request(protocol, payload(50_000, seed=2))
        a = connect(server.address)
        b = connect(server.address)
        try:
            a.sendall(first[:30_000])  # 30 KB held for a
            time.sleep(0.3)
            b.sendall(second[:40_000])  # b would take the total over 64 KiB
            assert _closed_by_server(b), "the connection that went over --max-buffered is still open"
            lines = stderr_lines(server, at_least=1)
            assert len(lines) == 1, lines
            assert (f"closing 127.0.0.1:{_client_port(b)}: partial messages would hold more than 65536 bytes "
                    f"in all (--max-buffered)") in lines[0], lines
            # a loses nothing: its message completes once b's bytes are released
            a.sendall(first[30_000:])
            assert read_exact(a, len(_answer(protocol, first))) == _answer(protocol, first)
        finally:
            a.close()
            b.close()
        assert server.alive()


def test_max_buffered_with_raw_is_one_line_exit_2():
    r = sockbench_cli("serve", "selectors", "--max-buffered", "1m")
    assert r.returncode == 2 and "--max-buffered applies to --protocol frame and json" in one_line_error(r), r.stderr


# --- binding every interface --------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_binding_every_interface_warns_in_one_line(server_name, host):
    if host == "::":
        try:
            socket.socket(socket.AF_INET6).close()
        except OSError:
            pytest.skip("no IPv6 here")
    server = ServerProcess(server_name, host=host, port=0)
    try:
        server.start()  # and stopped at once: nothing is ever sent to it
    finally:
        rc = server.stop()
    lines = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
    assert rc == 0
    assert len(lines) == 1, lines
    assert "every interface" in lines[0] and "reachable from the network" in lines[0], lines


def test_binding_loopback_says_nothing_on_stderr(server):
    with connect(server.address) as s:
        assert echo_concurrently(s, b"quiet") == b"quiet"
    assert server.stop() == 0, server.stop_evidence
    assert server.stderr_text() == ""


# --- ports --------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_a_port_outside_0_to_65535_is_one_line_exit_2(port):
    r = sockbench_cli("serve", "selectors", "--port", port)
    assert r.returncode == 2
    line = one_line_error(r)
    assert f"bad --port {port!r}" in line and "0 to 65535" in line, line
