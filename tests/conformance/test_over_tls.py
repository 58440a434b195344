"""TLS: what every server with a TLS form must do with bad input over TLS, and the command line's TLS errors.

The stream checks (echo byte for byte, half-close as close_notify, resets,
bounded memory, stop within 2 s) run over TLS in test_echo.py, parametrized
from the registry with the plain ones; this module holds what only TLS has:
a plaintext client on a TLS port, a ClientHello that is garbage, a handshake
that stalls halfway, a flood of 1,000 handshakes, ``--idle-timeout`` over TLS,
the framed protocols over TLS, and certificates and keys that are missing,
not what they claim, or do not match; and the load's side (a TLS client on a
plaintext port, a plain one on a TLS port).  Each fault costs its own
connection and at most one line, and the server keeps serving.
"""

import os
import struct
import time

import pytest

from conftest import _require_available, _require_tls, tls_server
from echo_client import (
    client_hello,
    connect,
    echo_concurrently,
    one_line_error,
    open_conn,
    payload,
    sockbench_cli,
    stderr_lines,
    tls_handshake_flood,
)
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.servers.tls import client_context

#: the handshake timeout the stalled-handshake check runs servers with
HANDSHAKE_S = 0.5
IDLE_S = 0.5


@pytest.fixture(params=registry.tls_names())
def tls_server_name(request):
    name = request.param
    _require_available(name)
    _require_tls(name)
    return name


@pytest.fixture
def tls_proc(tls_server_name, tls_files):
    """A fresh TLS server (tcp) for one test, with a short handshake timeout; stopped by pid afterwards."""
    proc = tls_server(tls_server_name, "tcp", tls_files, extra_args=("--tls-handshake-timeout", str(HANDSHAKE_S)))
    with proc:
        yield proc


def _still_serves(proc):
    with open_conn(proc) as s:
        data = payload(70_000, seed=9)
        assert echo_concurrently(s, data) == data, f"{proc.name} stopped serving TLS"


def _peer(sock):
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _closed_by_server(sock, within_s):
    """True when the server closes ``sock`` (end of file or a reset) within ``within_s``; what it sent is ignored."""
    sock.settimeout(within_s)
    end = time.monotonic() + within_s
    try:
        while time.monotonic() < end:
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


# --- bad input to a TLS server -----------------------------------------------------------------


def test_a_plaintext_client_on_a_tls_port_costs_one_line_and_its_connection(tls_proc):
    with connect(tls_proc.address) as plain:
        plain.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _closed_by_server(plain, 5), "the server kept a plaintext client's connection open"
        peer = _peer(plain)
    lines = stderr_lines(tls_proc, at_least=1)
    assert len(lines) == 1, lines
    assert f"closing {peer}: TLS handshake failed: " in lines[0], lines
    _still_serves(tls_proc)
    assert tls_proc.alive()


def test_garbage_in_place_of_a_client_hello_costs_one_line(tls_proc):
    garbage = b"\x16\x03\x01" + struct.pack(">H", 512) + payload(512, seed=3)
    with connect(tls_proc.address) as s:
        s.sendall(garbage)
        assert _closed_by_server(s, 5)
        peer = _peer(s)
    lines = stderr_lines(tls_proc, at_least=1)
    assert len(lines) == 1 and f"closing {peer}: TLS handshake failed: " in lines[0], lines
    _still_serves(tls_proc)


def test_a_handshake_that_stalls_halfway_is_closed_after_the_timeout_with_one_line(tls_proc):
    hello = client_hello(client_context())
    with connect(tls_proc.address) as stalled:
        stalled.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        peer = _peer(stalled)
        _still_serves(tls_proc)  # meanwhile everyone else is served
        t0 = time.monotonic()
        assert _closed_by_server(stalled, HANDSHAKE_S + 5), "a stalled handshake was never closed"
        assert time.monotonic() - t0 < HANDSHAKE_S + 3
    lines = stderr_lines(tls_proc, at_least=1)
    assert len(lines) == 1, lines
    assert f"closing {peer}: TLS handshake not complete within {HANDSHAKE_S:g} s (--tls-handshake-timeout)" in lines[0]
    _still_serves(tls_proc)


def test_a_peer_that_leaves_before_its_hello_says_nothing(tls_proc):
    for _ in range(5):
        connect(tls_proc.address).close()  # a port check: connect and go
    _still_serves(tls_proc)
    assert stderr_lines(tls_proc, within_s=0.3) == []


@pytest.mark.slow
def test_a_flood_of_1000_handshakes_is_served_and_the_server_goes_on(tls_server_name, tls_files):
    # the default handshake timeout (10 s): the flood opens its 1,000 connections before it starts any handshake
    with tls_server(tls_server_name, "tcp", tls_files) as proc:
        completed, failed = tls_handshake_flood(proc.address, 1000, client_context(), deadline_s=120)
        assert (completed, failed) == (1000, 0), f"{completed} of 1000 handshakes completed, {failed} closed"
        _still_serves(proc)
        assert stderr_lines(proc, within_s=0.2) == [], "a served flood is not an error"


# --- limits and the protocols over TLS -----------------------------------------------------------


@pytest.mark.slow
def test_idle_timeout_over_tls_closes_a_quiet_connection_with_one_line(tls_server_name, tls_files):
    with tls_server(tls_server_name, "tcp", tls_files, extra_args=("--idle-timeout", str(IDLE_S))) as proc:
        with open_conn(proc) as quiet:
            assert echo_concurrently(quiet, b"hello") == b"hello"
            peer = _peer(quiet)
            quiet.settimeout(IDLE_S + 5)
            t0 = time.monotonic()
            try:
                assert quiet.recv(1) == b""
            except ConnectionResetError:
                pass
            assert time.monotonic() - t0 < IDLE_S + 3
        lines = stderr_lines(proc, at_least=1)
        assert len(lines) == 1 and f"closing {peer}: no complete message for {IDLE_S:g} s" in lines[0], lines


def _tls_framed_cases():
    return [(name, proto) for name, spec in registry.SERVERS.items() for proto in spec.tls if proto != "raw"]


@pytest.mark.parametrize("case", _tls_framed_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def test_the_framed_protocols_over_tls(case, tls_files):
    name, proto = case
    _require_available(name)
    _require_tls(name)
    with tls_server(name, "tcp", tls_files, extra_args=("--protocol", proto)) as proc:
        with open_conn(proc) as s:
            if proto == "frame":
                msg = struct.pack(">I", 5000) + payload(5000, seed=1)
                assert echo_concurrently(s, msg * 3) == msg * 3
            else:
                s.sendall(b"\x00\x02{}")  # a header without content-length: malformed
                assert s.recv(1) == b""
    if proto == "json":
        assert any("malformed message" in ln for ln in stderr_lines(proc, at_least=1))


# --- the command line ----------------------------------------------------------------------------


def _tls_cli_server():
    return next(iter(registry.tls_names()))


@pytest.mark.parametrize("case", ["missing-cert", "not-a-cert", "missing-key", "not-a-key", "mismatched-key", "cert-alone"])
def test_bad_certificate_files_are_one_line_exit_2(case, tmp_path, tls_files):
    cert, key = tls_files
    other = tmp_path / "other"
    from sockbench.servers.tls import ensure_certificate

    _, other_key = ensure_certificate(str(other))
    text = tmp_path / "text.pem"
    text.write_text("not a certificate\n")
    args = {"missing-cert": ("--cert", str(tmp_path / "nope.pem"), "--key", key),
            "not-a-cert": ("--cert", str(text), "--key", key),
            "missing-key": ("--cert", cert, "--key", str(tmp_path / "nope.pem")),
            "not-a-key": ("--cert", cert, "--key", str(text)),
            "mismatched-key": ("--cert", cert, "--key", other_key),
            "cert-alone": ("--cert", cert)}[case]
    says = {"missing-cert": "no such file", "not-a-cert": "is not a PEM certificate", "missing-key": "no such file",
            "not-a-key": "is not a PEM private key", "mismatched-key": "does not match the certificate",
            "cert-alone": "--cert and --key go together"}[case]
    for name in registry.tls_names():
        if not registry.get(name).tls_availability()[0]:
            continue
        r = sockbench_cli("serve", name, "--tls", *args)
        line = one_line_error(r)
        assert r.returncode == 2 and says in line, (name, line)


@pytest.mark.parametrize("args, says", [
    (("--tls-version", "1.2"), "--tls-version applies with --tls"),
    (("--tls", "--tls-version", "1.1"), "invalid choice"),
    (("--tls", "--tls-cipher", "NOPE"), "bad --tls-cipher 'NOPE' for TLS 1.3"),
    (("--tls", "--tls-version", "1.2", "--tls-cipher", "NOPE"), "selects no TLS 1.2 cipher"),
    (("--tls", "--transport", "udp"), "--tls applies to tcp, tcp6, unix"),
    (("--tls", "--tls-handshake-timeout", "0"), "bad --tls-handshake-timeout"),
])
def test_bad_tls_options_are_one_line_exit_2(args, says):
    r = sockbench_cli("serve", "selectors", *args)
    assert r.returncode == 2 and says in one_line_error(r)


def test_servers_says_which_serve_tls():
    import json

    r = sockbench_cli("servers", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    for name, spec in registry.SERVERS.items():
        tls = rows[name]["tls"]
        assert (tls is not None) == spec.serves_tls
        if tls is not None:
            assert tls["protocols"] == list(spec.tls) and tls["available"] == spec.tls_availability()[0]


def _load_error(r):
    """A load that stopped before measuring: exit 2, one line on stderr, no traceback (stdout has said what it loads)."""
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_a_tls_load_on_a_plaintext_port_is_one_line_exit_2():
    with ServerProcess("selectors") as plain:
        host, port = plain.address
        r = sockbench_cli("load", "--target", f"{host}:{port}", "--tls", "--duration", "0.2", "--warmup", "0",
                          "--json", os.devnull)
    line = _load_error(r)
    assert "TLS handshake" in line and "serving TLS" in line, line


def test_a_plain_load_on_a_tls_port_is_one_line_exit_2(tls_files):
    with tls_server("selectors", "tcp", tls_files) as proc:
        host, port = proc.address
        r = sockbench_cli("load", "--target", f"{host}:{port}", "--duration", "0.2", "--warmup", "0",
                          "--json", os.devnull)
        assert proc.alive()
    line = _load_error(r)
    assert "load it with --tls" in line, line


def test_the_load_speaks_raw_only_over_tls():
    r = sockbench_cli("load", "selectors", "--tls", "--protocol", "json", "--duration", "0.2")
    assert r.returncode == 2 and "the load speaks raw over TLS" in one_line_error(r)
