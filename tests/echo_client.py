"""Small, careful echo clients for the conformance suite: ``sockbench.bench.check.client``'s, and the CLI helpers.

The clients are the checks' own (one implementation, shared with ``sockbench
check``); ``assert_check`` runs one of the library's checks against a server a
test started, so a conformance test and ``sockbench check`` judge a server the
same way.  Everything is bounded in time: every socket has a timeout, and
every loop a deadline, so a misbehaving server fails a test instead of hanging it.
"""

import selectors
import ssl
import subprocess
import sys
import time

import pytest

from sockbench.bench.check.base import FAIL, NA, Subject, run_one
from sockbench.bench.check.client import (  # noqa: F401  (re-exported for the tests)
    TIMEOUT_S, StreamPattern, TlsConn, connect, connect_burst, echo_concurrently, exchange, many_connections_echo,
    payload, read_exact, read_to_eof, send_without_reading, server_socket_option,
)
from sockbench.bench.check.runner import select_checks

__all__ = [
    "payload",
    "connect",
    "read_exact",
    "read_to_eof",
    "exchange",
    "send_without_reading",
    "echo_concurrently",
    "StreamPattern",
    "server_socket_option",
    "many_connections_echo",
    "sockbench_cli",
    "one_line_error",
    "connect_burst",
    "listen_overflows",
    "stderr_lines",
    "assert_check",
    "client_hello",
    "tls_handshake_flood",
]


def assert_check(name, server, protocol="raw", max_message=16 * 1024 * 1024):
    """Run ``sockbench check``'s check ``name`` against ``server`` (a started ``ServerProcess``); fail with what it
    saw, skip with why it does not apply.  Returns its note."""
    (c,) = select_checks([name])
    tls = getattr(server, "tls", None)
    options = {"tls": tls} if tls is not None else {}
    outcome = run_one(c, Subject(server.endpoint, protocol, server, server.name, max_message, options))
    if outcome.status == FAIL:
        over = server.transport + (" over TLS" if tls is not None else "")
        pytest.fail(f"{server.name} over {over}: {name}: {outcome.detail}", pytrace=False)
    if outcome.status == NA:
        pytest.skip(f"{name}: {outcome.detail}")
    return outcome.detail


def open_conn(server, timeout=TIMEOUT_S):
    """A connection to a started ``ServerProcess``: over TLS when the fixture made it serve TLS (``server.tls``)."""
    return connect(server.address, timeout=timeout, tls=getattr(server, "tls", None))


def sockbench_cli(*args, timeout=20):
    """Run ``python -m sockbench ARGS`` to completion; returns the ``CompletedProcess`` (text)."""
    return subprocess.run([sys.executable, "-m", "sockbench", *args], capture_output=True, text=True, timeout=timeout)


def one_line_error(result):
    """Check that a command failed with exactly one line on stderr, no traceback and nothing on stdout; return the line."""
    assert result.returncode != 0, f"exit status 0; stderr: {result.stderr!r}"
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), f"not one line: {result.stderr!r}"
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == "", f"stdout: {result.stdout[:200]!r}"
    return result.stderr[:-1]


def listen_overflows():
    """The kernel's TcpExt ListenOverflows counter (every listener of this network namespace), or None."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:]))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def stderr_lines(server, at_least=0, within_s=2.0):
    """The server's stderr lines, waiting up to ``within_s`` for there to be ``at_least`` of them."""
    end = time.monotonic() + within_s
    while True:
        lines = [ln for ln in server.stderr_text().splitlines() if ln.strip()]
        if len(lines) >= at_least or time.monotonic() > end:
            return lines
        time.sleep(0.02)


def client_hello(ctx):
    """The first flight of a TLS client (its ClientHello record), as ``ctx`` would send it."""
    inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inb, outb, server_side=False)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outb.read()


def tls_handshake_flood(addr, count, ctx, deadline_s=TIMEOUT_S):
    """``count`` TLS handshakes at once: every connection opened first, then all driven by one selector.

    Returns ``(completed, failed)``: handshakes done, and connections the server closed or reset before theirs was.
    Bounded by ``deadline_s``; every socket is closed on the way out.
    """
    sel = selectors.DefaultSelector()
    conns = {}
    completed = failed = 0
    try:
        for _ in range(count):
            s = connect(addr, timeout=deadline_s)
            s.setblocking(False)
            inb, outb = ssl.MemoryBIO(), ssl.MemoryBIO()
            conns[s] = (ctx.wrap_bio(inb, outb, server_side=False), inb, outb)
            sel.register(s, selectors.EVENT_WRITE)
        end = time.monotonic() + deadline_s
        while sel.get_map() and time.monotonic() < end:
            for key, _ in sel.select(0.5):
                s = key.fileobj
                obj, inb, outb = conns[s]
                try:
                    data = s.recv(65536) if key.events == selectors.EVENT_READ else None
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data == b"":
                    failed += 1
                    sel.unregister(s)
                    continue
                if data:
                    inb.write(data)
                try:
                    obj.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                except ssl.SSLError:
                    failed += 1
                    sel.unregister(s)
                    continue
                out = outb.read()
                if out:
                    s.setblocking(True)
                    s.sendall(out)
                    s.setblocking(False)
                if done:
                    completed += 1
                    sel.unregister(s)
                elif key.events != selectors.EVENT_READ:
                    sel.modify(s, selectors.EVENT_READ)
    finally:
        sel.close()
        for s in conns:
            s.close()
    return completed, failed
