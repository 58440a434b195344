"""``sockbench load`` over udp: short real runs against the cython and selectors datagram servers.

Every run is short (0.5 s after 0.2 s of warmup) and checks facts that do not
depend on the machine's speed: a valid result with a ``datagrams`` part whose
counts add up, latency per received echo, the JSON read back, and the bad
input a datagram run refuses in one line.
"""

import json
import socket

import pytest

from echo_client import one_line_error, sockbench_cli
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.bench.schema import LoadResult
from sockbench.endpoints import Endpoint
from sockbench.errors import SockbenchError
from sockbench.servers import registry

pytest.importorskip("sockbench.ext.udpgen", reason="the UDP load generator is not built (pip install -e .)")

SHORT = dict(duration_s=0.5, warmup_s=0.2, timeout_s=1.0, server_cpus=(0,), client_cpus=(0,))


def _need(name):
    ok, why = registry.SERVERS[name].availability()
    if not ok:
        pytest.skip(f"{name}: {why}")


def _check(r, spec):
    d = r.to_json()
    assert LoadResult.from_json(json.loads(json.dumps(d))) == r
    assert r.valid, r.invalid_reason
    assert r.workload.transport == "udp"
    g = r.datagrams
    assert g is not None and g.sent > 0
    assert g.received + g.lost == g.sent
    assert g.corrupt == 0
    assert d["datagrams"]["loss_share"] == g.lost / g.sent
    assert r.throughput.msgs_per_s > 0
    assert r.throughput.bytes_per_s == pytest.approx(r.throughput.msgs_per_s * spec.size)
    assert r.latency_us.count == round(r.throughput.msgs_per_s * spec.duration_s)
    assert 0 < r.latency_us.p50 <= r.latency_us.p99 <= r.latency_us.max
    assert r.fairness is not None and r.fairness.conns == spec.conns and r.fairness.starved == 0


@pytest.mark.parametrize("server", ["cython", "selectors"])
def test_closed_loop(server):
    _need(server)
    spec = LoadSpec(server=server, transport="udp", mode="closed", conns=4, depth=2, size=64, **SHORT)
    _check(run_load(spec), spec)


@pytest.mark.parametrize("server", ["cython", "selectors"])
def test_open_loop(server):
    _need(server)
    spec = LoadSpec(server=server, transport="udp", mode="open", conns=3, rate=3000.0, size=1000, **SHORT)
    r = run_load(spec)
    _check(r, spec)
    assert r.service_us is not None and r.throughput.achieved_rate > 0
    # a polling client (its own CPU list) measured its stalls, however many the shared CPU caused
    assert r.client.polling and r.client.stalls is not None and r.client.longest_stall_s is not None
    # the udp loop counts its epoll_wait calls (a polling loop: one a pass) as the stream loop does
    assert r.client.waits > 0


def test_cli_json_and_summary(tmp_path):
    _need("cython")
    out = tmp_path / "r.json"
    p = sockbench_cli("load", "cython", "--transport", "udp", "--conns", "2", "--size", "200", "--duration", "0.5",
                      "--warmup", "0.2", "--timeout", "1", "--server-cpus", "0", "--client-cpus", "0",
                      "--json", str(out), timeout=60)
    assert p.returncode == 0, p.stderr
    assert "datagrams:" in p.stdout and "lost" in p.stdout
    d = json.loads(out.read_text())
    assert d["workload"]["transport"] == "udp" and d["datagrams"]["sent"] > 0


@pytest.mark.parametrize("args, words", [
    (("--size", "65508"), "65,507"),
    (("--protocol", "frame"), "--protocol raw"),
    (("--mode", "connect"), "connect"),
])
def test_cli_bad_input_is_one_line(args, words):
    p = sockbench_cli("load", "cython", "--transport", "udp", *args)
    line = one_line_error(p)
    assert p.returncode == 2 and words in line


def test_nothing_listening_is_one_clear_error():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a port nobody serves now
    spec = LoadSpec(target=Endpoint("udp", "127.0.0.1", port), **SHORT)
    with pytest.raises(SockbenchError) as e:
        run_load(spec)
    assert "udp" in str(e.value) and "\n" not in str(e.value)
