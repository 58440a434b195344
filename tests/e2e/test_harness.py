"""The load harness: short real runs, a broken echo server, faults, and the exact HDR merge.

Every run here is short (0.5 s measured after 0.2 s of warmup) and checks
facts that do not depend on the machine's speed: bytes verified, figures
coherent, errors counted by kind.  Speed belongs to bench/, not here.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from fault_server import FaultServer, made_and_closed
from sockbench.servers import registry
from sockbench.bench.load import hdr
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.bench.schema import SCHEMA_VERSION, Errors, Fairness, LoadResult
from sockbench.errors import SockbenchError, UsageError
from sockbench.servers.process import ServerProcess

loadgen = pytest.importorskip("sockbench.ext.loadgen", reason="the load generator is not built (pip install -e .)")

SHORT = dict(duration_s=0.5, warmup_s=0.2)

RESULT_KEYS = {
    "schema", "server", "workload", "throughput", "latency_us", "errors", "valid", "client_bound",
    "invalid_reason", "server_proc", "client", "timeseries", "hdr", "machine", "started_at", "interference",
    "fairness",
}


def _check_coherent(r, spec):
    assert isinstance(r, LoadResult)
    d = r.to_json()
    assert set(RESULT_KEYS) <= set(d)
    # serialisable as is, and the JSON reads back into the same result
    assert LoadResult.from_json(json.loads(json.dumps(d))) == r
    assert r.schema == d["schema"] == SCHEMA_VERSION
    assert r.valid, r.invalid_reason
    assert r.limited_by in (None, "client", "server", "both")
    assert r.errors == Errors(total=0, by_kind={"connect": 0, "reset": 0, "timeout": 0, "mismatch": 0, "protocol": 0})
    t = r.throughput
    assert t.msgs_per_s > 0
    assert t.bytes_per_s == pytest.approx(t.msgs_per_s * spec.size)
    lat = r.latency_us
    assert 0 < lat.p50 <= lat.p90 <= lat.p99 <= lat.p999 <= lat.max
    # one latency per message completed in the window (connect mode: per cycle; connect latency per connection)
    per_msg = r.cycle_us if spec.mode == "connect" else lat
    assert per_msg.count == round(t.msgs_per_s * spec.duration_s)
    # the encoded histogram decodes to the same count (the exact-merge path)
    assert hdr.merge_encoded([r.hdr]).get_total_count() == lat.count
    ts = r.timeseries
    assert ts.warmup_intervals == 2
    assert sum(ts.msgs[ts.warmup_intervals:]) >= per_msg.count
    for k in ("mode", "conns", "size", "depth", "rate", "duration_s", "warmup_s", "procs"):
        assert k in d["workload"]
    assert r.workload.protocol == spec.protocol
    # the foreign load on the run's CPUs was measured (a share of them), the client's side always
    i = r.interference
    assert i is not None and 0 <= i.client_foreign <= 1 and 0 <= i.client_steal <= 1
    assert (i.server_foreign is None) == (spec.server is None)
    f = r.fairness
    if spec.mode == "connect":
        assert f is None  # a connection carries one message
    else:  # every connection served; the per-connection counts add up to the window's messages
        assert f.conns == spec.conns and f.starved == 0
        assert f.min * spec.conns <= per_msg.count <= f.max * spec.conns and 0 < f.jain <= 1
    if spec.protocol == "raw":
        assert t.wire_bytes_per_s == t.bytes_per_s
    else:  # the framing and headers come on top of the payload
        assert t.wire_bytes_per_s > t.bytes_per_s


# --- every registered server -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", registry.available_names())
def test_short_closed_run_against_every_server(name):
    spec = LoadSpec(server=name, mode="closed", conns=4, size=100, depth=3, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    assert r.server == name
    sp = r.server_proc
    assert sp.user_s is not None and sp.user_s + sp.sys_s >= 0
    assert sp.cpu_source in ("schedstat", "ticks")
    assert sp.rss_peak_bytes > 1 << 20
    assert r.client.user_s + r.client.sys_s > 0


def test_ctrl_c_while_a_server_starts_never_orphans_it(monkeypatch):
    import sockbench.servers.process as proc

    started = []
    real = subprocess.Popen

    def popen_then_ctrl_c(*args, **kw):
        p = real(*args, **kw)
        started.append(p)
        # lands after the fork, before the caller holds the handle; sent to this thread, which holds it, so that
        # no other thread of the test process (a test's leftover) can take it first
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        return p

    monkeypatch.setattr(proc.subprocess, "Popen", popen_then_ctrl_c)
    # Python raises KeyboardInterrupt only if SIGINT was not ignored when it started, and a shell starts a
    # background job (`pytest &`, a CI wrapper) with SIGINT ignored: the test installs Python's handler itself
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            proc.ServerProcess("selectors").start()
        (p,) = started
        assert p.poll() is not None, "the server was left running"
    finally:
        signal.signal(signal.SIGINT, old)
        for p in started:  # whatever failed above, no server outlives the test (the next ones look for theirs)
            if p.poll() is None:
                p.kill()
                p.wait()


def test_server_cpu_takes_the_exact_total_and_the_ticks_split():
    from sockbench.bench.load.harness import server_cpu

    # 3 + 1 ticks of 10 ms; 0.0437 s exact over two threads (one new): the total is the scheduler's, split 3:1
    user, sys_, source = server_cpu((1.00, 2.00, {7: 5.0}), (1.03, 2.01, {7: 5.04, 9: 0.0037}))
    assert source == "schedstat"
    assert user + sys_ == pytest.approx(0.0437) and user / sys_ == pytest.approx(3.0)
    # thread 9 ended in the window and took its runtime with it: the ticks, which keep it, win
    assert server_cpu((1.0, 2.0, {7: 5.0, 9: 1.0}), (1.1, 2.0, {7: 5.1})) == (pytest.approx(0.1), 0.0, "ticks")
    # a thread came and went inside the window: the exact total falls 50 ms short of the ticks
    assert server_cpu((1.0, 2.0, {7: 5.0}), (1.1, 2.0, {7: 5.05})) == (pytest.approx(0.1), 0.0, "ticks")
    # no tick at all: nothing to split the exact total by
    assert server_cpu((1.0, 2.0, {7: 5.0}), (1.0, 2.0, {7: 5.004})) == (0.0, 0.0, "ticks")
    # samples without the exact figures keep the ticks
    assert server_cpu((1.0, 2.0), (1.5, 2.5)) == (0.5, 0.5, "ticks")


def test_server_samples_from_the_load_loop():
    from sockbench.bench.load.harness import _server_sample, server_cpu
    from sockbench.procfs import TICK_S

    # as a load process reports them over its JSON pipe (thread ids become strings), runtimes in ns
    s0 = {"utime_ticks": 100, "stime_ticks": 300, "overflow": False, "threads": {"41": 5_000_000_000}}
    s1 = {"utime_ticks": 101, "stime_ticks": 303, "overflow": False, "threads": {"41": 5_041_000_000}}
    c0, c1 = _server_sample(s0), _server_sample(s1)
    assert c0 == (pytest.approx(100 * TICK_S), pytest.approx(300 * TICK_S), {41: 5.0})
    user, sys_, source = server_cpu(c0, c1)
    assert source == "schedstat" and user + sys_ == pytest.approx(0.041)
    # too many threads to read them all: the ticks only
    over = dict(s1, overflow=True)
    assert server_cpu(c0, _server_sample(over))[2] == "ticks"
    assert _server_sample(None) is None


def test_two_processes_open_and_json_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    spec = LoadSpec(server="selectors", mode="open", conns=4, size=64, rate=2000.0, procs=2, **SHORT)
    r = run_load(spec, json_path=path)
    _check_coherent(r, spec)
    assert json.loads(path.read_text()) == r.to_json()
    t = r.throughput
    assert t.target_rate == 2000.0
    assert t.achieved_rate == pytest.approx(2000.0, rel=0.02)
    assert t.behind is False
    svc = r.service_us
    assert svc.count == r.latency_us.count
    # latency counts from the intended send time, service time from the actual one
    assert svc.p50 <= r.latency_us.p50 + 1
    # two processes share one client CPU: they sleep between sends, and CPU time is their load
    assert r.client.polling is False and r.client.busy_util is None


def test_open_loop_with_a_cpu_per_process_polls_and_reports_its_busy_share():
    spec = LoadSpec(server="selectors", mode="open", conns=4, size=64, rate=2000.0, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    cl = r.client
    assert cl.polling is True
    # a polling client is on its CPU whenever nobody else is: its own time and the foreign time fill the CPU
    assert cl.cpu_util + r.interference.client_foreign >= 0.9, "a polling client stays on its CPU"
    # 2,000 msgs/s leave the client idle most of the time: busy, not CPU time, decides client_bound
    assert 0 < cl.busy_util < 0.5 and r.client_bound is False
    assert r.throughput.achieved_rate == pytest.approx(2000.0, rel=0.02)


def test_an_open_loop_connection_with_nothing_to_send_is_not_starved():
    # 30 msgs/s over 20 connections: most have no message in the 0.5 s window, and that is no starvation
    spec = LoadSpec(server="selectors", mode="open", conns=20, size=64, rate=30.0, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    f = r.fairness
    assert f.min == 0 and f.starved == 0 and f.max >= 1


def test_connect_mode():
    spec = LoadSpec(server="selectors", mode="connect", conns=2, size=32, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    assert r.throughput.conns_per_s == r.throughput.msgs_per_s > 0
    assert r.cycle_us.p50 >= r.latency_us.p50


# --- a broken echo server: wrong bytes make the run invalid -----------------------------------


class _TestServer(FaultServer):
    """A tiny threaded echo server in the test process, with a fault to inject."""

    def __init__(self, fault):
        self.first_recv = []
        self.freeze_at = time.monotonic() + 0.6  # fault "freeze": answers stop from then on
        super().__init__(fault)

    def _reads(self, c):
        """What ``c`` sends, read by read (``FaultServer._reads``); the first read's size goes to first_recv."""
        for n, data in enumerate(super()._reads(c)):
            if n == 0:
                self.first_recv.append(len(data))
            yield data

    def _serve(self, c):
        seen = 0
        with c:
            for data in self._reads(c):
                if self.fault == "blackhole" or (self.fault == "freeze" and time.monotonic() > self.freeze_at):
                    continue
                if self.fault in ("alter", "drop") and seen <= 1000 < seen + len(data):
                    i = 1000 - seen
                    data = self._flip(data, i) if self.fault == "alter" else data[:i] + data[i + 1 :]
                seen += len(data)
                if not self._send(c, data):
                    return


@pytest.fixture
def make_server():
    yield from made_and_closed(_TestServer)


@pytest.mark.parametrize("fault", ["alter", "drop"])
def test_broken_echo_server_is_invalid(make_server, fault):
    srv = make_server(fault)
    r = run_load(LoadSpec(target=srv.address, conns=3, size=64, depth=2, **SHORT))
    assert r.valid is False
    assert r.errors.by_kind["mismatch"] == 3, "every connection passes offset 1000 and is caught"
    assert "mismatch" in r.invalid_reason
    assert r.errors.total >= 3


def test_coalescing_depth_messages_leave_in_one_write(make_server):
    srv = make_server("echo")
    r = run_load(LoadSpec(target=srv.address, conns=2, size=64, depth=8, **SHORT))
    assert r.valid, r.invalid_reason
    # the first 8 messages of each connection went out as one write, so they arrive as one segment (the
    # connections before them: the harness's probe, one short plain message)
    assert srv.first_recv[-2:] == [8 * 64, 8 * 64]
    assert r.client.msgs_per_write >= 1.0


def test_connections_never_answered_are_starved_whatever_the_timeout(make_server):
    srv = make_server("blackhole")
    r = run_load(LoadSpec(target=srv.address, conns=3, size=64, **SHORT))  # the 5 s timeout never fires
    assert r.valid is False and r.errors.total == 0
    assert r.invalid_reason == "starved: 3 of 3 connections completed no message"
    assert r.fairness == Fairness(conns=3, min=0, median=0.0, max=0, jain=0.0, starved=3)


def test_unanswered_messages_time_out_and_the_run_still_ends(make_server):
    srv = make_server("blackhole")
    t0 = time.monotonic()
    r = run_load(LoadSpec(target=srv.address, conns=2, size=64, timeout_s=0.2, duration_s=0.5, warmup_s=0.1))
    assert time.monotonic() - t0 < 5
    assert r.valid is False
    assert r.errors.by_kind["timeout"] == 2
    assert r.throughput.msgs_per_s == 0
    assert r.latency_us.p50 is None


# --- framed protocols (frame, json) ----------------------------------------------------------

FRAMED = [(name, proto) for name in registry.available_names() for proto in ("frame", "json")
          if proto in registry.get(name).protocols]


@pytest.mark.slow
@pytest.mark.parametrize("name,proto", FRAMED)
def test_short_framed_run_against_every_server_that_speaks_it(name, proto):
    spec = LoadSpec(server=name, protocol=proto, mode="closed", conns=4, size=100, depth=3, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    assert r.server == name


@pytest.mark.slow
def test_framed_open_and_connect_modes():
    spec = LoadSpec(server="selectors", protocol="json", mode="open", conns=3, size=64, rate=1500.0, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    assert r.throughput.achieved_rate == pytest.approx(1500.0, rel=0.02)
    spec = LoadSpec(server="selectors", protocol="frame", mode="connect", conns=2, size=32, **SHORT)
    _check_coherent(run_load(spec), spec)


@pytest.mark.slow
def test_framed_payloads_that_span_many_reads_and_split_headers():
    # 200 kB payloads arrive in many reads; 1-byte payloads pack many answers (and split headers) per read
    for size, depth in ((200_000, 2), (1, 40)):
        spec = LoadSpec(server="selectors", protocol="json", conns=3, size=size, depth=depth, **SHORT)
        _check_coherent(run_load(spec), spec)


class _FramedTestServer(_TestServer):
    """A framed server in the test process (the oracle's encoders), with one fault at message 5 of each connection.

    Faults: ``length`` (frame: the length prefix says one byte more, and one more
    byte follows; json: content-length one more, same), ``content`` (a flipped
    payload byte), ``request-id`` (json: one more than the request's), ``swap``
    (answers 5 and 6 swapped: reordering), or ``none``.
    """

    FAULT_AT = 5

    def __init__(self, protocol, fault):
        self.protocol = protocol
        self.requests = []  # (header or None, payload, wire size) of the first request of each connection
        super().__init__(fault)

    def _answer(self, header, payload, i):
        from sockbench.servers import protocols

        if i == self.FAULT_AT and self.fault == "content":
            payload = payload[:10] + bytes([payload[10] ^ 0x55]) + payload[11:]
        if self.protocol == "frame":
            if i == self.FAULT_AT and self.fault == "length":
                return (len(payload) + 1).to_bytes(4, "big") + payload + b"x"
            return protocols.encode_frame(payload)
        header = dict(header)
        if i == self.FAULT_AT and self.fault == "request-id":
            header["request-id"] += 1
        if i == self.FAULT_AT and self.fault == "length":
            payload += b"x"
        return protocols.json_response(header, payload)

    def _serve(self, c):
        buf = b""
        i = 0
        held = None
        with c:
            for data in self._reads(c):
                buf += data
                out = []
                while True:
                    if self.protocol == "frame":
                        if len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
                            break
                        n = int.from_bytes(buf[:4], "big")
                        header, payload, buf = None, buf[4 : 4 + n], buf[4 + n :]
                        wire = 4 + n
                    else:
                        if len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                            break
                        h = int.from_bytes(buf[:2], "big")
                        header = json.loads(buf[2 : 2 + h])
                        n = header["content-length"]
                        if len(buf) < 2 + h + n:
                            break
                        payload, buf = buf[2 + h : 2 + h + n], buf[2 + h + n :]
                        wire = 2 + h + n
                    if i == 0:
                        self.requests.append((header, payload, wire))
                    answer = self._answer(header, payload, i)
                    if self.fault == "swap" and i == self.FAULT_AT:
                        held = answer
                    else:
                        out.append(answer)
                        if held is not None:
                            out.append(held)
                            held = None
                    i += 1
                if not self._send(c, b"".join(out)):
                    return


@pytest.fixture
def make_framed_server():
    yield from made_and_closed(_FramedTestServer)


@pytest.mark.slow
@pytest.mark.parametrize("proto", ["frame", "json"])
def test_framed_requests_are_the_wire_spec_and_the_answers_are_verified(make_framed_server, proto):
    srv = make_framed_server(proto, "none")
    spec = LoadSpec(target=srv.address, protocol=proto, conns=3, size=64, depth=8, **SHORT)
    r = run_load(spec)
    _check_coherent(r, spec)
    # the first request of each connection: its payload is that connection's pattern from offset 0
    t = loadgen.pattern_table()
    starts = {(c * loadgen.STRIDE) % loadgen.PERIOD for c in range(3)}
    assert sorted(t.index(payload) for _, payload, _ in srv.requests) == sorted(starts)
    for header, payload, wire in srv.requests:
        if proto == "json":
            assert header == {"byteorder": "little", "content-type": "binary/custom-client-binary-type",
                              "content-encoding": "binary", "content-length": 64, "request-id": 0}
        else:
            assert wire == 4 + 64
    # coalesced: the first 8 requests of a connection (request-ids 0-7: the same size) left in one write
    assert srv.first_recv[:3] == [8 * srv.requests[0][2]] * 3


@pytest.mark.parametrize("proto,fault,kind", [
    ("frame", "length", "protocol"),
    ("frame", "content", "mismatch"),
    ("frame", "swap", "mismatch"),        # same framing, but the payloads of another offset
    ("json", "length", "protocol"),
    ("json", "content", "mismatch"),
    ("json", "request-id", "protocol"),
    ("json", "swap", "protocol"),         # caught by the request-id before the content
])
def test_broken_framed_server_is_invalid(make_framed_server, proto, fault, kind):
    srv = make_framed_server(proto, fault)
    r = run_load(LoadSpec(target=srv.address, protocol=proto, conns=3, size=64, depth=2, **SHORT))
    assert r.valid is False
    assert r.errors.by_kind[kind] == 3, f"every connection reaches message 5 and is caught: {r.errors}"
    assert r.errors.total == 3
    assert f"({kind})" in r.invalid_reason


def test_unsupported_protocol_for_a_server_is_one_line_before_anything_starts():
    raw_only = [n for n in registry.available_names() if registry.get(n).protocols == ("raw",)]
    if not raw_only:
        pytest.skip("every available server speaks every protocol")
    name = raw_only[0]
    with pytest.raises(UsageError, match=f"server '{name}' does not speak --protocol json; it speaks raw"):
        run_load(LoadSpec(server=name, protocol="json", **SHORT))
    p = subprocess.run(
        [sys.executable, "-m", "sockbench", "load", name, "--protocol", "frame", "--duration", "0.3"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"sockbench: server '{name}' does not speak --protocol frame; it speaks raw"
    ]
    assert "Traceback" not in p.stderr + p.stdout
    with pytest.raises(UsageError, match="unknown protocol 'xml'; use one of raw, frame, json"):
        LoadSpec(server="selectors", protocol="xml").validate()
    with pytest.raises(UsageError, match="limited to 16 MiB"):
        LoadSpec(server="selectors", protocol="frame", size=17 << 20).validate()


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stall_shorter_than_the_timeout_still_makes_the_run_invalid(make_server):
    # answers stop ~0.35 s into the measured window; the 5 s timeout never fires in a 1.6 s window
    srv = make_server("freeze")
    r = run_load(LoadSpec(target=srv.address, conns=2, size=64, depth=2, duration_s=1.6, warmup_s=0.2))
    assert r.valid is False
    assert r.errors.total == 0
    assert r.throughput.msgs_per_s > 0
    assert r.timeseries.longest_idle_s >= 1.0
    assert r.invalid_reason.startswith("stalled: no message completed for ")


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_refused_connection_is_one_clear_line():
    port = _closed_port()
    p = subprocess.run(
        [sys.executable, "-m", "sockbench", "load", "--target", f"127.0.0.1:{port}", "--duration", "0.3", "--warmup", "0"],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 1
    assert p.stderr.strip().splitlines() == [
        f"sockbench: connection refused by 127.0.0.1:{port}: is an echo server listening there?"
    ]
    assert "Traceback" not in p.stderr + p.stdout


def test_refused_connection_api_raises():
    with pytest.raises(SockbenchError, match=r"connection refused by 127\.0\.0\.1:\d+"):
        run_load(LoadSpec(target=("127.0.0.1", _closed_port()), **SHORT))


def test_server_killed_mid_run_gives_an_invalid_result(tmp_path):
    path = tmp_path / "killed.json"
    with ServerProcess("selectors", cpus=(0,)) as server:
        killer = threading.Timer(0.45, os.kill, (server.pid, signal.SIGKILL))
        killer.start()
        try:
            r = run_load(LoadSpec(target=server.address, conns=3, duration_s=1.0, warmup_s=0.2), json_path=path)
        finally:
            killer.cancel()
    assert r.valid is False
    assert r.errors.by_kind["reset"] == 3
    assert "reset or closed" in r.invalid_reason
    written = LoadResult.from_json(json.loads(path.read_text()))
    assert written.valid is False, "the result is written even when invalid"
    assert written == r


def children():
    """The pids of this process's children, whichever thread started them."""
    kids = set()
    for tid in os.listdir(f"/proc/{os.getpid()}/task"):
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                kids.update(int(x) for x in f.read().split())
        except OSError:
            continue
    return kids


def _child_pid(*words, before, deadline_s=10.0):
    """The pid of this process's child whose argv holds every one of ``words``, started (by another thread)
    since ``before`` (``children()`` then): a child of an earlier test is never taken for the one awaited."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        for pid in sorted(children() - before):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if all(w.encode() in argv for w in words):
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no child process with {words} appeared")


def _wait_for(box, key, deadline_s=30.0):
    """Until another thread put ``key`` into ``box``."""
    end = time.monotonic() + deadline_s
    while key not in box:
        assert time.monotonic() < end, f"{key!r} never came"
        time.sleep(0.01)
    return box[key]


def test_server_started_by_the_harness_dying_mid_run_is_reported(tmp_path):
    path = tmp_path / "died.json"
    out, window = {}, {}
    before = children()
    t = threading.Thread(target=lambda: out.update(r=run_load(
        LoadSpec(server="selectors", conns=2, duration_s=2.0, warmup_s=0.2), json_path=path,
        on_window=lambda start_ns, end_ns: window.update(start=start_ns))))
    t.start()
    pid = _child_pid("serve", "selectors", before=before)
    # 0.6 s into the 2 s measured window, however long the start took on a busy machine
    kill_at = _wait_for(window, "start") + int((0.2 + 0.6) * 1e9)
    time.sleep(max(0.0, (kill_at - time.monotonic_ns()) / 1e9))
    os.kill(pid, signal.SIGKILL)
    t.join(30)
    r = out["r"]
    assert r.valid is False
    assert "the server exited (status -9) during the run" in r.invalid_reason
    assert LoadResult.from_json(json.loads(path.read_text())).invalid_reason == r.invalid_reason
    # the exit status is a field, and the rates are over the time actually measured, not the whole window
    assert r.server_proc.exit_status == -9
    window_msgs = sum(r.timeseries.msgs[r.timeseries.warmup_intervals:])
    assert window_msgs > 0 and 0 < r.throughput.measured_s < 1.9
    assert r.throughput.msgs_per_s == pytest.approx(window_msgs / r.throughput.measured_s, rel=1e-9)
    assert r.client_bound is False and r.limited_by != "client"


@pytest.mark.slow
def test_a_hung_load_process_is_killed_at_the_hard_timeout(make_server, monkeypatch):
    from sockbench.bench.load import harness

    monkeypatch.setattr(harness, "HARD_TIMEOUT_GRACE_S", 1.0)
    srv = make_server("echo")
    out = {}
    t = threading.Thread(target=lambda: out.update(r=run_load(
        LoadSpec(target=srv.address, conns=2, duration_s=0.5, warmup_s=0.2, timeout_s=0.5))))
    t0 = time.monotonic()
    before = children()
    t.start()
    pid = _child_pid("-m", "sockbench.bench.load.worker", before=before)
    time.sleep(0.3)
    os.kill(pid, signal.SIGSTOP)  # hung: it will never report
    t.join(30)
    r = out["r"]
    assert time.monotonic() - t0 < 10
    assert r.valid is False
    assert "load process 0 hung; killed at the hard timeout" in r.invalid_reason
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


def test_json_to_stdout_and_summary_to_stderr():
    p = subprocess.run(
        [sys.executable, "-m", "sockbench", "load", "selectors", "--conns", "2", "--size", "1k",
         "--duration", "0.3", "--warmup", "0.1", "--json", "-"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    r = LoadResult.from_json(d)
    assert r.to_json() == d, "stdout is exactly one result's JSON"
    assert r.valid and r.workload.size == 1024
    assert "msgs/s" in p.stderr


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="open mode needs --rate"):
        LoadSpec(server="selectors", mode="open").validate()
    with pytest.raises(UsageError, match="exactly one"):
        LoadSpec().validate()
    with pytest.raises(UsageError, match="unknown mode"):
        LoadSpec(server="selectors", mode="sideways").validate()
    with pytest.raises(UsageError, match="procs"):
        LoadSpec(server="selectors", conns=1, procs=2).validate()
    with pytest.raises(UsageError, match="in flight"):
        LoadSpec(server="selectors", conns=1000, depth=100_000).validate()
    with pytest.raises(UsageError, match="rate applies to open mode only"):
        LoadSpec(server="selectors", rate=10.0).validate()


def test_more_connections_than_the_fd_limit_fail_before_starting():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= 1_000_000:
        pytest.skip("no finite hard RLIMIT_NOFILE below the largest allowed --conns")
    with pytest.raises(UsageError, match="RLIMIT_NOFILE"):
        run_load(LoadSpec(target=("127.0.0.1", _closed_port()), conns=hard + 1))


# --- histograms ------------------------------------------------------------------------------


def _samples(n, seed):
    rng = random.Random(seed)
    # latencies from 1 µs to ~1 s, log-spread, plus a few exact edges
    return [int(10 ** rng.uniform(3, 9)) for _ in range(n)] + [1, 1023, 2048, 10**11]


def test_loop_records_exactly_like_hdrhistogram():
    values = _samples(20000, 1)
    mine = hdr.from_buckets(loadgen.bucket_counts(values, hdr.LAYOUT))
    ref = hdr.new_histogram()
    for v in values:
        ref.record_value(min(v, hdr.HIGHEST_NS))
    assert mine.get_total_count() == ref.get_total_count() == len(values)
    for idx in range(hdr.LAYOUT.counts_len):
        assert mine.get_count_at_index(idx) == ref.get_count_at_index(idx)


def test_merging_two_processes_equals_one_histogram_of_all_samples():
    a, b = _samples(30000, 2), _samples(10000, 3)
    blobs = [hdr.from_buckets(loadgen.bucket_counts(part, hdr.LAYOUT)).encode() for part in (a, b)]
    merged = hdr.merge_encoded(blobs)
    whole = hdr.from_buckets(loadgen.bucket_counts(a + b, hdr.LAYOUT))
    assert merged.get_total_count() == whole.get_total_count() == len(a) + len(b)
    for pct in (0, 1, 10, 50, 90, 99, 99.9, 99.99, 100):
        assert merged.get_value_at_percentile(pct) == whole.get_value_at_percentile(pct)
    assert hdr.summary_us(merged) == hdr.summary_us(whole)


def test_pattern_table_repeats_with_its_period():
    t = loadgen.pattern_table()
    assert len(t) == loadgen.PERIOD + loadgen.WINDOW
    assert t[: loadgen.WINDOW] == t[loadgen.PERIOD :]
    assert len(set(t[:4096])) > 200, "pseudo-random, not a constant"


def test_load_command_protocol_option():
    p = subprocess.run(
        [sys.executable, "-m", "sockbench", "load", "selectors", "--protocol", "json", "--conns", "2", "--depth", "2",
         "--duration", "0.3", "--warmup", "0.1", "--json", "-"],
        capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 0, p.stderr
    r = LoadResult.from_json(json.loads(p.stdout))
    assert r.valid and r.workload.protocol == "json" and r.workload.size == 64
    assert "wire MB/s" in p.stderr
