"""Shared fixtures: every registered server, started through ``sockbench serve`` on port 0.

``server_name`` is parametrized over ``sockbench.servers.registry.SERVERS``, so a server
added to the registry gets every conformance check with no change here.  A
server that is not available on this machine (say, an install that skipped the
Cython build) is skipped with the registry's reason, unless
``SOCKBENCH_REQUIRE_ALL=1`` (set by CI), where that is a failure.
"""

import os

import pytest

from sockbench.servers import registry
from sockbench.servers.process import ServerProcess


def _require_all():
    return os.environ.get("SOCKBENCH_REQUIRE_ALL", "") not in ("", "0")


@pytest.fixture(params=registry.names())
def server_name(request):
    name = request.param
    ok, why = registry.SERVERS[name].availability()
    if not ok:
        if _require_all():
            pytest.fail(f"{name}: {why}")
        pytest.skip(f"{name}: {why}")
    return name


@pytest.fixture
def server(server_name):
    """A fresh server process for one test; always stopped by pid afterwards."""
    proc = ServerProcess(server_name).start()
    try:
        yield proc
    finally:
        proc.stop()


def _framed_cases():
    return [
        (name, proto) for name, spec in registry.SERVERS.items() for proto in spec.protocols if proto != "raw"
    ]


#: the limit the protocol tests run servers with, so "over the limit" is cheap to send
TEST_MAX_MESSAGE = 1 << 20


@pytest.fixture(params=_framed_cases(), ids=lambda c: f"{c[0]}-{c[1]}")
def framed_server(request):
    """A fresh server speaking ``frame`` or ``json`` (every server x every protocol it speaks)."""
    name, proto = request.param
    ok, why = registry.SERVERS[name].availability()
    if not ok:
        if _require_all():
            pytest.fail(f"{name}: {why}")
        pytest.skip(f"{name}: {why}")
    proc = ServerProcess(name, extra_args=("--protocol", proto, "--max-message", str(TEST_MAX_MESSAGE)))
    proc.protocol = proto
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
