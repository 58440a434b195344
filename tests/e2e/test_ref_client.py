"""The reference C client of the calibration tools (``bench/calibrate/ref_client.c``).

What the tools rely on, checked against real servers and against a small
faulty one in this process: every protocol runs clean against the ``cython``
server; a wrong byte, a wrong header, a closed connection and a stall are each
caught and counted by kind; ``--marks`` announces the window and
``--server-pid`` reads the server's CPU; ``--hold`` keeps the connections
until stdin closes; bad arguments are exit 2, a refused connection exit 1,
each with one line.  The build is cached by the hash of the source and headers.
Its JSON line is read as the tools read it, through ``common.RefResult``,
which refuses a line that lacks any of the client's keys.
"""

import shutil
import socket
import subprocess
import time

import pytest

from fault_server import FaultServer, made_and_closed
from sockbench.bench.calibrate.common import REF_CLIENT_SOURCE, RefResult, build_ref_client, ref_client_command
from sockbench.servers import protocols, registry
from sockbench.servers.process import ServerProcess

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="no C compiler")

KINDS = ("mismatch", "protocol", "eof", "io", "stall")


@pytest.fixture(scope="module")
def client():
    return build_ref_client()


def _run(client, address, timeout=30, **options):
    cmd = ref_client_command(client, address, **options)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    return lines, RefResult.parse(lines[-1])


class _FaultyServer(FaultServer):
    """Answers as the protocol says (``servers.protocols``' decoders), with one fault in the answer stream."""

    def __init__(self, protocol, fault, at=0):
        self.protocol, self.at = protocol, at
        super().__init__(fault)

    def _serve(self, c):
        decoder = None if self.protocol == "raw" else protocols.make_decoder(self.protocol)
        sent = 0
        with c:
            for data in self._reads(c):
                if self.fault == "close":
                    return
                if self.fault == "blackhole":
                    continue
                out = data if decoder is None else decoder.feed(data)
                if self.fault == "flip" and sent <= self.at < sent + len(out):
                    out = self._flip(out, self.at - sent)
                sent += len(out)
                if not self._send(c, out):
                    return


@pytest.fixture
def faulty():
    yield from made_and_closed(_FaultyServer)


@pytest.mark.parametrize("protocol", protocols.PROTOCOLS)
def test_every_protocol_runs_clean_against_the_cython_server(client, protocol):
    ok, why = registry.SERVERS["cython"].availability()
    if not ok:
        pytest.skip(f"cython: {why}")
    with ServerProcess("cython", extra_args=("--protocol", protocol)) as server:
        lines, r = _run(client, server.address, protocol=protocol, conns=10, size=100, depth=4, warmup=0.1,
                        duration=0.3, server_pid=server.pid, marks=True)
    assert lines[0] == "window"
    assert r.protocol == protocol and (r.conns, r.size, r.depth) == (10, 100, 4)
    assert r.msgs > 0 and r.bytes == r.msgs * 100 and r.wire_bytes >= r.bytes
    assert r.errors.by_kind == {k: 0 for k in KINDS} and r.error == "" and r.conns_alive == 10
    assert 0.25 < r.window_s < 1.0
    assert 0 < r.latency_min_us <= r.latency_us.mean <= r.latency_us.max
    assert r.throughput.msgs_per_s == r.msgs / r.window_s and r.client.user_s + r.client.sys_s > 0
    srv = r.server
    assert srv.user_s is not None and srv.sys_s is not None and srv.runtime_s > 0


@pytest.mark.parametrize(
    "protocol, at, kind",
    [
        ("raw", 1000, "mismatch"),
        ("frame", 1, "protocol"),      # the length prefix of the first answer
        ("frame", 6, "mismatch"),      # its payload
        ("json", 5, "protocol"),       # its JSON header
    ],
)
def test_a_wrong_byte_is_caught_and_counted_by_kind(client, faulty, protocol, at, kind):
    server = faulty(protocol, "flip", at)
    _, r = _run(client, server.address, protocol=protocol, conns=1, size=64, depth=4, warmup=0, duration=0.3)
    assert r.errors.count(kind) == 1 and r.errors.total == 1, r
    assert r.error.startswith("connection 0: a wrong answer")
    assert r.conns_alive == 0


def test_a_server_that_closes_is_an_eof_error(client, faulty):
    server = faulty("raw", "close")
    _, r = _run(client, server.address, conns=3, warmup=0, duration=0.3)
    assert r.errors.count("eof") == 3 and r.conns_alive == 0
    assert "the server closed it" in r.error


def test_a_stall_is_an_error_and_hold_keeps_the_connections_until_stdin_closes(client, faulty):
    server = faulty("frame", "blackhole")
    cmd = ref_client_command(client, server.address, protocol="frame", conns=2, warmup=0, duration=5, stall=0.3,
                             hold=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = RefResult.parse(proc.stdout.readline())
        assert r.errors.count("stall") == 1 and r.error.startswith("stalled: no answer for 0.3 s, 2 connections")
        assert r.window_s < 2, "a stall stops the run"
        time.sleep(0.3)
        assert proc.poll() is None, "held until stdin closes"
        proc.stdin.close()
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--protocol", "nope", "127.0.0.1", "1"], "--protocol takes raw, frame or json"),
        (["--conns", "0", "127.0.0.1", "1"], "bad --conns 0"),
        (["127.0.0.1"], "give HOST and PORT"),
        (["localhost", "1"], "HOST must be an IPv4 address"),
    ],
)
def test_bad_arguments_are_exit_2_with_the_reason_first(client, args, message):
    r = subprocess.run([client, *args], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0].startswith(f"ref_client: {message}"), r.stderr


def test_a_refused_connection_is_exit_1_with_one_line(client):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = subprocess.run([client, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f"ref_client: connect 127.0.0.1:{port}: Connection refused"


def test_the_build_is_cached_and_keyed_by_its_source(client, tmp_path):
    assert build_ref_client() == client
    src = tmp_path / "ref_client.c"
    with open(REF_CLIENT_SOURCE) as f:
        src.write_text(f.read() + "\n/* changed */\n")
    other = build_ref_client(str(src))
    assert other != client
    assert subprocess.run([other, "--frobnicate"], capture_output=True, timeout=10).returncode == 2
