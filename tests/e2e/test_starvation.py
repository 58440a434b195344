"""A server that cannot accept every connection starves the rest: the run is invalid, however short.

``sockbench serve cython`` under a limit of 64 file descriptors accepts about
60 of 200 connections; the others complete their handshake in the kernel and
wait in the backlog, so no connect fails and no message times out within the
5 s per-message timeout.  Only the per-connection counts of the window show
that most connections were never served.
"""

import json
import os
import re
import resource
import signal
import subprocess
import sys

import pytest

from sockbench.bench.schema import LoadResult
from sockbench.servers import registry

ok, why = registry.get("cython").availability()
if not ok:
    pytest.skip(f"cython: {why}", allow_module_level=True)

CONNS = 200


@pytest.fixture
def small_server():
    """``sockbench serve cython`` with RLIMIT_NOFILE 64 (``ulimit -n 64``): ``(host, port)``; killed by pid after."""

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    p = subprocess.Popen([sys.executable, "-m", "sockbench", "serve", "cython"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, preexec_fn=limit)
    try:
        ready = json.loads(p.stdout.readline())
        assert ready["event"] == "ready", ready
        yield ready["host"], ready["port"]
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        p.stdout.close()


def _load(address, duration_s, tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run(
        [sys.executable, "-m", "sockbench", "load", "--target", f"{address[0]}:{address[1]}", "--conns", str(CONNS),
         "--duration", str(duration_s), "--warmup", "0.5", "--json", str(out)],
        capture_output=True, text=True, timeout=60 + duration_s,
    )
    return p, LoadResult.from_json(json.loads(out.read_text()))


def _check_starved(p, r):
    assert p.returncode == 1, p.stderr
    m = re.search(rf"sockbench: invalid run: starved: (\d+) of {CONNS} connections completed no message", p.stderr)
    assert m, p.stderr
    n = int(m.group(1))
    # 64 descriptors: at most ~60 connections accepted, the rest never served
    assert CONNS - 64 <= n < CONNS
    assert r.valid is False and r.fairness.starved == n and r.fairness.min == 0 and r.fairness.max > 0
    assert r.errors.by_kind["connect"] == 0, "every connection was made: it waits in the backlog"
    assert f"STARVED: {n} of {CONNS} connections" in p.stdout


def test_a_server_short_of_descriptors_starves_connections_in_a_short_run(small_server, tmp_path):
    p, r = _load(small_server, 1, tmp_path)
    _check_starved(p, r)
    assert r.errors.total == 0, "no message timed out: only the counts tell"


@pytest.mark.slow
def test_and_in_a_longer_run(small_server, tmp_path):
    p, r = _load(small_server, 3, tmp_path)
    _check_starved(p, r)
