"""The UDP load's datagram header and its loss accounting, driven by hand (no socket, no clock).

``udpgen.encode`` builds a datagram with the loop's own header code, and
``udpgen.Ledger`` runs the loop's own ``on_sent`` / ``judge`` / ``sweep``
over a sequence of sends, echoes and times, so each count is checked exactly.
"""

import struct

import pytest

from sockbench.bench.load import datagram
from sockbench.bench.load.spec import LoadSpec
from sockbench.bench.schema import Datagrams, LoadResult
from sockbench.errors import UsageError
from sockbench.servers.contract import MAX_DATAGRAM

udpgen = pytest.importorskip("sockbench.ext.udpgen", reason="the Cython extensions are not built")
from sockbench.ext import loadgen  # noqa: E402  (after the skip: built together)

TABLE = loadgen.pattern_table()
SIZE = 64
TIMEOUT = 1_000


def _dgram(seq, t, flow=7, size=SIZE):
    return udpgen.encode(flow, seq, t, size, TABLE)


def _ledger(**kw):
    return udpgen.Ledger(kw.pop("size", SIZE), kw.pop("timeout", TIMEOUT), TABLE, flow=kw.pop("flow", 7), **kw)


# --- the header --------------------------------------------------------------------------------


def test_constants_agree_with_their_python_twins():
    assert udpgen.HEADER == datagram.HEADER_SIZE
    assert udpgen.MAX_DATAGRAM == MAX_DATAGRAM == 65507
    assert udpgen.ERROR_KINDS == loadgen.ERROR_KINDS


def test_header_layout():
    d = _dgram(seq=0x0102030405, t=123456789, flow=42, size=100)
    assert len(d) == 100
    magic, flow, seq, t = struct.unpack("=IIQq", d[:24])
    assert (magic, flow, seq, t) == (udpgen.MAGIC, 42, 0x0102030405, 123456789)


def test_payload_depends_on_flow_and_sequence():
    a, b, c = _dgram(1, 0, flow=1), _dgram(2, 0, flow=1), _dgram(1, 0, flow=2)
    assert a[24:] != b[24:] and a[24:] != c[24:]
    # the payload is the pattern table's slice at (flow * STRIDE + seq * size) % PERIOD
    off = (1 * loadgen.STRIDE + 2 * SIZE) % loadgen.PERIOD
    assert b[24:] == TABLE[off:off + SIZE - 24]


def test_header_only_and_largest_sizes():
    assert len(_dgram(0, 0, size=24)) == 24
    assert len(_dgram(0, 0, size=MAX_DATAGRAM)) == MAX_DATAGRAM
    for bad in (23, MAX_DATAGRAM + 1):
        with pytest.raises(ValueError):
            _dgram(0, 0, size=bad)


# --- the accounting ---------------------------------------------------------------------------


def test_every_echo_received():
    led = _ledger(depth=4)
    led.send(4, 100)
    assert [led.echo(_dgram(s, 100), 150) for s in range(4)] == ["received"] * 4
    assert led.counts() == {"sent": 4, "received": 4, "lost": 0, "duplicates": 0, "out_of_order": 0, "late": 0,
                            "corrupt": 0}
    assert led.due == 8, "closed loop: each answer sends the next"
    assert led.in_flight == 0 and led.base == 4


def test_loss_after_the_timeout_only():
    led = _ledger()
    led.send(3, 100)
    led.echo(_dgram(1, 100), 200)
    led.sweep(100 + TIMEOUT)  # exactly the timeout: not yet
    assert led.counts()["lost"] == 0
    led.sweep(101 + TIMEOUT)
    c = led.counts()
    assert (c["sent"], c["received"], c["lost"]) == (3, 1, 2)
    assert led.in_flight == 0 and led.base == 3


def test_sweep_stops_at_the_first_young_datagram():
    led = _ledger()
    led.send(2, 100)
    led.send(2, 900)
    led.sweep(1500)  # the first two are past the timeout, the last two are not
    assert led.counts()["lost"] == 2 and led.in_flight == 2 and led.base == 2


def test_duplicate_out_of_order_and_late():
    led = _ledger()
    led.send(3, 100)
    assert led.echo(_dgram(2, 100), 110) == "received"
    assert led.echo(_dgram(0, 100), 120) == "received"  # below 2, answered first: out of order
    assert led.echo(_dgram(0, 100), 130) == "duplicate"
    led.sweep(2000)  # 1 is lost
    assert led.echo(_dgram(1, 100), 2100) == "late"
    assert led.counts() == {"sent": 3, "received": 2, "lost": 1, "duplicates": 1, "out_of_order": 1, "late": 1,
                            "corrupt": 0}


def test_corrupt_echoes_answer_nothing():
    led = _ledger()
    led.send(2, 100)
    flipped = bytearray(_dgram(0, 100))
    flipped[40] ^= 0x01
    cases = [
        bytes(flipped),                      # one payload bit
        _dgram(0, 100)[:-1],                 # one byte short
        _dgram(0, 100) + b"x",               # one byte long
        _dgram(0, 100, flow=8),              # another flow's
        _dgram(0, 101),                      # a send time that is not its own
        _dgram(5, 100),                      # a sequence number never sent
        b"\x00" * SIZE,                      # no magic
    ]
    assert [led.echo(c, 150) for c in cases] == ["corrupt"] * len(cases)
    assert led.counts()["corrupt"] == len(cases) and led.counts()["received"] == 0
    led.finish(200)  # the end of the drain: what is still in flight is lost
    c = led.counts()
    assert (c["sent"], c["received"], c["lost"]) == (2, 0, 2)


def test_the_window_attributes_by_send_time():
    led = _ledger(warm_end_ns=1_000, end_ns=2_000, timeout=10_000)
    led.send(1, 500)    # warmup: not counted
    led.send(1, 1_500)  # inside
    led.send(1, 2_500)  # after the window: not counted
    for s, t in ((0, 500), (1, 1_500), (2, 2_500)):
        led.echo(_dgram(s, t), t + 10)
    c = led.counts()
    assert (c["sent"], c["received"], c["lost"]) == (1, 1, 0)


def test_received_plus_lost_is_sent():
    led = _ledger(cap=64, timeout=50)
    t = 0
    for step in range(200):
        t += 10
        if led.in_flight < 8 and led.base + 64 > led.base + led.in_flight + 1:
            try:
                led.send(1, t)
            except ValueError:
                pass
        if step % 3 == 0:
            seq = led.base
            led.echo(_dgram(seq, t - 10), t)  # some match, some are corrupt (wrong send time): both fine
        led.sweep(t)
    led.finish(t + 1)
    c = led.counts()
    assert c["received"] + c["lost"] == c["sent"] > 0


def test_the_ring_refuses_more_than_it_holds():
    led = _ledger(cap=4)
    led.send(4, 0)
    with pytest.raises(ValueError):
        led.send(1, 0)


def test_ring_size_bounds():
    assert udpgen.ring_size(udpgen.MODE_CLOSED, 1, 0, 5, 0.1) == 256
    assert udpgen.ring_size(udpgen.MODE_CLOSED, 100, 0, 5, 0.1) == 6400
    assert udpgen.ring_size(udpgen.MODE_OPEN, 1, 10_000, 1.0, 0.1) == int(10_000 * 1.2 * 1.25)
    assert udpgen.ring_size(udpgen.MODE_OPEN, 1, 1e9, 5, 0.1) == 1 << 20


# --- the spec and the result -------------------------------------------------------------------


@pytest.mark.parametrize("kw, words", [
    ({"size": 65508}, "65,507"),
    ({"size": 16}, "header"),
    ({"protocol": "frame"}, "--protocol raw"),
    ({"protocol": "json"}, "--protocol raw"),
    ({"mode": "connect"}, "connect"),
])
def test_spec_refuses_what_udp_cannot_do(kw, words):
    with pytest.raises(UsageError) as e:
        LoadSpec(server="cython", transport="udp", server_cpus=(0,), client_cpus=(0,), **kw).validate()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_datagrams_round_trip_and_loss_share():
    d = Datagrams.of([{"sent": 10, "received": 9, "lost": 1, "duplicates": 2}, {"sent": 10, "received": 10, "lost": 0}])
    assert (d.sent, d.received, d.lost, d.duplicates) == (20, 19, 1, 2)
    assert d.loss_share == 0.05
    j = d.to_json()
    assert j["loss_share"] == 0.05 and Datagrams.from_json(j) == d
    assert Datagrams(0, 0, 0).loss_share is None
    assert "1 lost (5.000%)" in datagram.summary_line(d)


def test_results_with_datagrams_load_in_the_report(tmp_path):
    import json
    import os

    from report_fixture import make_results  # the report tests' results folder
    from sockbench.bench.report.store import load_results

    path = make_results(str(tmp_path / "run"), servers=("selectors",))
    raw = os.path.join(path, "raw")
    names = sorted(os.listdir(raw))
    with open(os.path.join(raw, names[0])) as f:
        d = json.load(f)
    assert "datagrams" not in d, "a stream result has no datagrams part"
    d["datagrams"] = Datagrams(sent=100, received=97, lost=3, out_of_order=1).to_json()
    with open(os.path.join(raw, names[0]), "w") as f:
        json.dump(d, f)
    results = load_results(path)
    assert not results.skipped, results.skipped_lines()
    with_loss = [r for r in results.results if r.datagrams is not None]
    assert len(with_loss) == 1 and with_loss[0].datagrams.loss_share == 0.03
    assert with_loss[0].to_json()["datagrams"] == d["datagrams"]


def test_corrupt_makes_a_run_invalid_loss_does_not():
    assert datagram.invalid_reasons(Datagrams(10, 5, 5)) == []
    assert "corrupt" in datagram.invalid_reasons(Datagrams(10, 5, 5, corrupt=2))[0]
    assert datagram.invalid_reasons(None) == []
