"""The datagram contract: every registered server whose transports include udp, through ``sockbench serve --transport udp``.

One datagram in, the same datagram back to its sender, whole (0 B to the
largest UDP payload, 65,507 B), for many peers at once; a stop signal ends the
server with status 0 within 2 s; garbage, bursts and peers that vanish cost
at most their own datagrams.  ``frame``/``json`` over udp, and
``--idle-timeout``, are one-line usage errors (a datagram is already one
message, and there is no connection to time out).
"""

import os
import signal
import socket
import time

import pytest

from conftest import _require_available
from echo_client import assert_check, one_line_error, payload, sockbench_cli
from sockbench.servers import registry
from sockbench.servers.contract import MAX_DATAGRAM
from sockbench.servers.process import ServerProcess

UDP_SERVERS = [name for name, spec in registry.SERVERS.items() if "udp" in spec.transports]
SIZES = [1, 2, 64, 1400, 1472, 1473, 8192, 65000, MAX_DATAGRAM]
RECV_TIMEOUT_S = 5.0


def _serving(name):
    _require_available(name)
    proc = ServerProcess(name, transport="udp").start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module", params=UDP_SERVERS)
def udp_server(request):
    """One udp server per name, shared by this module's tests that leave it serving."""
    yield from _serving(request.param)


@pytest.fixture(params=UDP_SERVERS)
def fresh_udp_server(request):
    """A udp server of its own, for a test that stops it."""
    yield from _serving(request.param)


def _flow(proc):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(RECV_TIMEOUT_S)
    s.connect(proc.address)
    return s


def _echo(s, data):
    s.send(data)
    got = s.recv(MAX_DATAGRAM + 1)
    assert got == data, f"{len(data)} B sent, {len(got)} B came back" if len(got) != len(data) else "bytes differ"


def test_registry_lists_the_datagram_servers():
    assert {"blocking", "selectors", "asyncio-protocol", "uvloop", "cython"} <= set(UDP_SERVERS)
    for name in UDP_SERVERS:
        assert registry.SERVERS[name].transports[-1] == "udp"


def test_ready_line(udp_server):
    ready = udp_server.ready
    assert ready["transport"] == "udp" and ready["host"] == "127.0.0.1" and ready["port"] > 0
    assert "backlog" not in ready, "a datagram socket has no listen backlog"


@pytest.mark.parametrize("size", SIZES)
def test_echo_each_size(udp_server, size):
    with _flow(udp_server) as s:
        _echo(s, payload(size, seed=size))


def test_an_empty_datagram_is_echoed(udp_server):
    assert_check("udp-empty", udp_server)


def test_many_flows_each_get_their_own(udp_server):
    assert_check("udp-flows", udp_server)


def test_no_datagram_lost_duplicated_or_reordered(udp_server):
    """4,000 numbered datagrams, 32 in flight, on loopback (``udp-loss``): none lost, duplicated, reordered, corrupt."""
    assert_check("udp-loss", udp_server)


def test_a_burst_is_answered_and_in_order_per_flow(udp_server):
    # 64 datagrams of 256 B (about 1 KiB each in the kernel's accounting) fit the default socket
    # buffers of both sides: nothing may be lost on loopback, and one socket's queue keeps the order
    with _flow(udp_server) as s:
        data = [payload(256, seed=i) for i in range(64)]
        for d in data:
            s.send(d)
        got = [s.recv(MAX_DATAGRAM + 1) for _ in data]
        assert got == data


def test_garbage_and_vanished_peers_do_not_take_it_down(udp_server):
    assert_check("udp-garbage", udp_server)


def test_sigterm_exits_zero_within_two_seconds(fresh_udp_server):
    with _flow(fresh_udp_server) as s:
        _echo(s, b"before")
    t0 = time.monotonic()
    os.kill(fresh_udp_server.proc.pid, signal.SIGTERM)
    rc = fresh_udp_server.proc.wait(timeout=5)
    assert rc == 0
    assert time.monotonic() - t0 < 2.0


def test_sigint_while_flooded_exits_zero(fresh_udp_server):
    with _flow(fresh_udp_server) as s:
        s.setblocking(False)
        for _ in range(2000):
            try:
                s.send(b"f" * 1000)
            except BlockingIOError:
                break
        t0 = time.monotonic()
        os.kill(fresh_udp_server.proc.pid, signal.SIGINT)
        assert fresh_udp_server.proc.wait(timeout=5) == 0
        assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("protocol", ["frame", "json"])
def test_framed_protocols_over_udp_are_one_line(protocol):
    _require_available("selectors")
    r = sockbench_cli("serve", "selectors", "--transport", "udp", "--protocol", protocol)
    line = one_line_error(r)
    assert r.returncode == 2 and "udp" in line and "--protocol raw" in line


def test_idle_timeout_over_udp_is_one_line():
    r = sockbench_cli("serve", "blocking", "--transport", "udp", "--idle-timeout", "5")
    line = one_line_error(r)
    assert r.returncode == 2 and "--idle-timeout" in line


def test_a_server_without_a_datagram_form_says_so():
    stream_only = [n for n, s in registry.SERVERS.items() if "udp" not in s.transports]
    if not stream_only:
        pytest.skip("every server has a datagram form")
    r = sockbench_cli("serve", stream_only[0], "--transport", "udp")
    line = one_line_error(r)
    assert r.returncode == 2 and "udp" in line
