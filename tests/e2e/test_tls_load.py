"""The load over TLS end to end: ``ext/tlsgen.pyx`` against real TLS servers, in every mode, and against a TLS
server that corrupts a byte (every echoed byte is still verified, through the decryption).

Real load runs, short (a fraction of a second each): they check what is counted and verified, never how fast.
"""

import socket
import ssl
import threading

import pytest

from fault_server import FaultServer, made_and_closed
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.servers import registry
from sockbench.servers.tls import TlsConfig, ensure_certificate

pytestmark = pytest.mark.skipif(
    registry.get("cython").tls_availability()[0] is False,
    reason="the TLS load and the cython server's TLS are not built here (no OpenSSL headers)",
)

SHORT = dict(duration_s=0.3, warmup_s=0.1, interval_s=0.05)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return ensure_certificate(str(tmp_path_factory.mktemp("tls")))


def _tls(cert, **kw):
    return TlsConfig(cert=cert[0], key=cert[1], **kw)


def _valid(r):
    assert r.valid, r.invalid_reason
    assert r.errors.total == 0
    return r


@pytest.mark.parametrize("server, transport", [("cython", "tcp"), ("cython", "unix"), ("uvloop", "tcp6")])
def test_closed_loop_over_tls_verifies_every_byte(server, transport, cert):
    r = _valid(run_load(LoadSpec(server=server, transport=transport, mode="closed", conns=8, size=300, depth=2,
                                 tls=_tls(cert, cipher="TLS_AES_128_GCM_SHA256"), **SHORT)))
    assert r.throughput.msgs_per_s > 0 and r.fairness.starved == 0
    assert r.workload.tls.version == "1.3" and r.identity().tls
    assert (r.tls.version, r.tls.cipher) == ("TLSv1.3", "TLS_AES_128_GCM_SHA256"), "the suite asked for is the one used"
    assert r.tls.handshakes is None, "closed loop shakes hands before the window"
    assert r.server_proc.us_per_msg.total is not None


def test_large_messages_span_records(cert):
    r = _valid(run_load(LoadSpec(server="cython", mode="closed", conns=2, size=100_000, tls=_tls(cert), **SHORT)))
    assert r.throughput.bytes_per_s == pytest.approx(r.throughput.msgs_per_s * 100_000)


def test_open_loop_over_tls_keeps_its_rate(cert):
    r = _valid(run_load(LoadSpec(server="cython", mode="open", conns=10, size=64, rate=2000.0, tls=_tls(cert),
                                 duration_s=0.5, warmup_s=0.1, interval_s=0.05)))
    assert r.throughput.achieved_rate == pytest.approx(2000.0, rel=0.1)
    assert r.service_us is not None and r.latency_us.count > 0


@pytest.mark.parametrize("version", ["1.3", "1.2"])
@pytest.mark.parametrize("resumption", [False, True])
def test_connect_mode_counts_full_and_resumed_handshakes(version, resumption, cert):
    r = _valid(run_load(LoadSpec(server="cython", mode="connect", conns=2, size=64,
                                 tls=_tls(cert, version=version, resumption=resumption), **SHORT)))
    t = r.tls
    assert t.version == f"TLSv{version}" and t.handshakes > 0
    assert t.handshakes_per_s == pytest.approx(t.handshakes / SHORT["duration_s"])
    if resumption:
        assert t.resumed >= t.handshakes - 2 * r.workload.conns, "after its first, every slot's connection resumes"
    else:
        assert t.resumed == 0
    assert r.identity().resumed == resumption


class _CorruptingTlsServer(FaultServer):
    """A TLS echo server that inverts one byte of the plaintext after ``fault`` bytes echoed on each connection."""

    def __init__(self, fault, cert):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*cert)
        super().__init__(fault)

    def _serve(self, c):
        try:
            t = self.ctx.wrap_socket(c, server_side=True)
        except OSError:
            c.close()
            return
        done = 0
        try:
            for data in self._reads(t):
                if done <= self.fault < done + len(data):
                    data = self._flip(data, self.fault - done)
                done += len(data)
                if not self._send(t, data):
                    return
        finally:
            t.close()


@pytest.fixture
def corrupting(cert):
    yield from made_and_closed(lambda fault: _CorruptingTlsServer(fault, cert))


def test_a_wrong_byte_under_tls_is_a_mismatch(corrupting, cert):
    srv = corrupting(5000)
    r = run_load(LoadSpec(target=srv.address, mode="closed", conns=2, size=64, tls=_tls(cert), **SHORT))
    assert not r.valid and r.errors.count("mismatch") >= 1, r.invalid_reason


def test_a_server_that_is_not_tls_is_refused_before_the_run():
    plain = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def echo():
        plain.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = plain.accept()
            except (TimeoutError, OSError):
                continue
            with c:
                c.settimeout(1)
                try:
                    c.sendall(c.recv(4096))  # the ClientHello, echoed: not what a TLS server answers
                except OSError:
                    pass

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    try:
        from sockbench.errors import UsageError

        with pytest.raises(UsageError, match="TLS handshake .* failed .* serving TLS"):
            run_load(LoadSpec(target=plain.getsockname(), mode="closed", conns=1, size=64, tls=TlsConfig(), **SHORT))
    finally:
        stop.set()
        t.join(2)
        plain.close()
