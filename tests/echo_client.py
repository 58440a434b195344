"""Small, careful echo clients for the conformance suite: ``sockbench.bench.check.client``'s, and the CLI helpers.

The clients are the checks' own (one implementation, shared with ``sockbench
check``); ``assert_check`` runs one of the library's checks against a server a
test started, so a conformance test and ``sockbench check`` judge a server the
same way.  Everything is bounded in time: every socket has a timeout, and
every loop a deadline, so a misbehaving server fails a test instead of hanging it.
"""

import subprocess
import sys
import time

import pytest

from sockbench.bench.check.base import FAIL, NA, Subject, run_one
from sockbench.bench.check.client import (  # noqa: F401  (re-exported for the tests)
    TIMEOUT_S, StreamPattern, connect, connect_burst, echo_concurrently, exchange, many_connections_echo, payload,
    read_exact, read_to_eof, send_without_reading, server_socket_option,
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
]


def assert_check(name, server, protocol="raw", max_message=16 * 1024 * 1024):
    """Run ``sockbench check``'s check ``name`` against ``server`` (a started ``ServerProcess``); fail with what it
    saw, skip with why it does not apply.  Returns its note."""
    (c,) = select_checks([name])
    outcome = run_one(c, Subject(server.endpoint, protocol, server, server.name, max_message))
    if outcome.status == FAIL:
        pytest.fail(f"{server.name} over {server.transport}: {name}: {outcome.detail}", pytrace=False)
    if outcome.status == NA:
        pytest.skip(f"{name}: {outcome.detail}")
    return outcome.detail


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
