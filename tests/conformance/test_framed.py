"""The framed protocols (``frame`` and ``json``), for every server that speaks them.

Answers are checked by meaning (the payload, the header fields), not by the
exact bytes of the JSON header, so servers are free to format JSON their own way.
The fuzzed streams include JSON headers nested thousands deep and headers of
up to 65535 bytes: malformed (nested) or not, they cost their own connection
only, the same way in every server and in the oracle.
"""

import json
import random
import socket
import struct
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TEST_MAX_MESSAGE, examples
from echo_client import connect, echo_concurrently, exchange, one_line_error, payload, read_to_eof, sockbench_cli
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.servers.protocols import (
    FrameDecoder,
    JsonDecoder,
    encode_frame,
    encode_json_request,
)

REQUIRED = ("byteorder", "content-type", "content-encoding", "content-length")


def _json_header(obj):
    raw = json.dumps(obj).encode()
    return struct.pack(">H", len(raw)) + raw


def _good_header(length, **extra):
    return {"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8", "content-length": length, **extra}


def parse_frames(data):
    """Split a stream of frames; a trailing partial frame is an error."""
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 4, f"partial frame header at {pos}"
        (n,) = struct.unpack_from(">I", data, pos)
        assert len(data) - pos - 4 >= n, f"partial frame at {pos}: {n} announced"
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def parse_json_messages(data):
    """Split a stream of json-protocol messages into (header, content) pairs, checking each header."""
    out, pos = [], 0
    while pos < len(data):
        (hlen,) = struct.unpack_from(">H", data, pos)
        header = json.loads(data[pos + 2 : pos + 2 + hlen].decode("utf-8"))
        assert isinstance(header, dict)
        n = header["content-length"]
        start = pos + 2 + hlen
        content = data[start : start + n]
        assert len(content) == n, f"partial content at {start}"
        out.append((header, content))
        pos = start + n
    return out


def requests_for(protocol, payloads, ids=True):
    if protocol == "frame":
        return [encode_frame(p) for p in payloads]
    return [encode_json_request(p, request_id=(i if ids else None)) for i, p in enumerate(payloads)]


def answers(protocol, data):
    """What a stream of answers means: a list of payloads (frame) or of (request-id, type, encoding, content) (json)."""
    if protocol == "frame":
        return parse_frames(data)
    result = []
    for header, content in parse_json_messages(data):
        assert set(header) <= {"content-type", "content-encoding", "content-length", "request-id"}, header
        result.append((header.get("request-id"), header["content-type"], header["content-encoding"], content))
    return result


def oracle(protocol, stream, max_message=TEST_MAX_MESSAGE):
    """What a correct server answers to ``stream`` followed by EOF, and whether it is malformed."""
    decoder = FrameDecoder(max_message) if protocol == "frame" else JsonDecoder(max_message)
    out = decoder.feed(stream)
    return answers(protocol, out), decoder.eof() is not None


# --- valid traffic ---------------------------------------------------------------------------


def test_pipelined_messages_answered_in_order(framed_server):
    rng = random.Random(11)
    sizes = [0, 1, 64, 1000, 4096, 65536, 300_000] + [rng.randrange(0, 5000) for _ in range(200)]
    payloads = [payload(n, seed=i) for i, n in enumerate(sizes)]
    reqs = requests_for(framed_server.protocol, payloads)
    stream = b"".join(reqs)
    with connect(framed_server.address) as s:
        # send in random cuts, so that messages straddle reads on the server
        reader = None
        if s.family == socket.AF_UNIX:
            # no receive buffer over AF_UNIX: the answers are read while sending, or the kernel
            # (not the server) stalls both directions once both send buffers are full
            got_box = []
            reader = threading.Thread(target=lambda: got_box.append(read_to_eof(s, limit=len(stream) * 2)), daemon=True)
            reader.start()
        else:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pos = 0
        while pos < len(stream):
            step = rng.choice([1, 3, 7, 100, 4096, 70000])
            s.sendall(stream[pos : pos + step])
            pos += step
        s.shutdown(socket.SHUT_WR)
        if reader is None:
            got = read_to_eof(s, limit=len(stream) * 2)
        else:
            reader.join(30)
            assert got_box, "no end of the answers within 30 s"
            got = got_box[0]
    want, _ = oracle(framed_server.protocol, stream)
    assert answers(framed_server.protocol, got) == want
    assert len(want) == len(payloads)


@pytest.mark.slow
def test_partial_message_is_not_answered(framed_server):
    req = requests_for(framed_server.protocol, [b"complete-me"])[0]
    with connect(framed_server.address, timeout=5) as s:
        s.sendall(req[:-1])
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(1)
        s.settimeout(5)
        s.sendall(req[-1:])
        want, _ = oracle(framed_server.protocol, req)
        got = b""
        while True:
            got += s.recv(65536)
            try:
                if answers(framed_server.protocol, got) == want:
                    break
            except (AssertionError, struct.error, ValueError, KeyError):
                continue


def test_json_answer_copies_request_id_and_types():
    """Checked on the oracle: the answer header is fresh, the request-id is copied only if present."""
    d = JsonDecoder()
    out = d.feed(encode_json_request(b"abc", request_id="r-1", content_type="text/json") + encode_json_request(b"", request_id=None))
    (h1, c1), (h2, c2) = parse_json_messages(out)
    assert h1 == {"content-type": "text/json", "content-encoding": "binary", "content-length": 3, "request-id": "r-1"}
    assert c1 == b"abc"
    assert "request-id" not in h2 and c2 == b""


# --- malformed input: that connection only -----------------------------------------------------

_BIG = TEST_MAX_MESSAGE + 1

MALFORMED = {
    "frame": {
        "over-limit": struct.pack(">I", _BIG) + b"x" * 16,
        "truncated-then-eof": encode_frame(b"0123456789")[:9],
        "truncated-header-then-eof": b"\x00\x00",
    },
    "json": {
        "header-length-0": b"\x00\x00" + b"{}",
        "not-json": struct.pack(">H", 9) + b"not json!",
        "not-utf8": struct.pack(">H", 2) + b"\xff\xfe",
        "not-an-object": _json_header([1, 2, 3]),
        "missing-content-length": _json_header({k: "x" for k in REQUIRED if k != "content-length"}),
        "negative-content-length": _json_header(_good_header(-1)),
        "string-content-length": _json_header(_good_header("5")),
        "float-content-length": _json_header(_good_header(5.0)),
        "bool-content-length": _json_header(_good_header(True)),
        "over-limit": _json_header(_good_header(_BIG)),
        "truncated-content-then-eof": _json_header(_good_header(10)) + b"12345",
        "truncated-header-then-eof": _json_header(_good_header(10))[:7],
    },
}


def test_malformed_message_closes_only_its_connection(framed_server):
    """Every malformed case of the server's protocol, each on its own connection, one server."""
    proto = framed_server.protocol
    earlier = len([ln for ln in framed_server.stderr_text().splitlines() if ln.strip()])  # the module's server
    good = requests_for(proto, [b"before"])[0]
    other_payloads = [payload(5000, seed=k) for k in range(3)]
    other_reqs = requests_for(proto, other_payloads)
    with connect(framed_server.address) as other:
        # another client has half a message in the server while the bad ones arrive
        other.sendall(other_reqs[0][:100])
        time.sleep(0.05)
        for name, bad in MALFORMED[proto].items():
            want, malformed = oracle(proto, good + bad)
            assert malformed, f"{name}: the case must be malformed per the oracle"
            got = exchange(framed_server.address, good + bad)
            assert answers(proto, got) == want, f"{name}: answers before the malformed message are kept, nothing after"
            assert framed_server.alive(), f"{name}: the server died: {framed_server.stderr_text()[-500:]}"
        # the other client loses nothing
        other.sendall(other_reqs[0][100:] + b"".join(other_reqs[1:]))
        other.shutdown(socket.SHUT_WR)
        rest = read_to_eof(other, limit=1 << 20)
        assert answers(proto, rest) == oracle(proto, b"".join(other_reqs))[0]
    expected = len(MALFORMED[proto])
    deadline = time.monotonic() + 2
    log = []
    while time.monotonic() < deadline:
        log = [ln for ln in framed_server.stderr_text().splitlines() if ln.strip()][earlier:]
        if len(log) >= expected:
            break
        time.sleep(0.02)
    assert len(log) == expected, f"one stderr line per malformed connection, got {log}"
    assert all("malformed" in ln for ln in log), log


@pytest.mark.slow
def test_raw_still_echoes_with_protocol_servers_running(framed_server):
    """The same server name on the default protocol is unaffected by the framed one."""
    with ServerProcess(framed_server.name) as raw:
        with connect(raw.address) as s:
            data = payload(100_000, seed=3)
            assert echo_concurrently(s, data) == data


# --- fuzzing: the decoders, then every server -------------------------------------------------


def _valid_stream(protocol, sizes, ids):
    payloads = [payload(n, seed=n * 31 + i) for i, n in enumerate(sizes)]
    return b"".join(requests_for(protocol, payloads, ids=ids))


def _mutate(data, flips, cut, insert):
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    if cut is not None and buf:
        del buf[cut % len(buf) :]
    if insert is not None and buf:
        pos, junk = insert
        buf[pos % len(buf) : pos % len(buf)] = junk
    return bytes(buf)


_CLOSERS = {b"[": b"]", b'{"a":': b"}", b'{"byteorder":[': b"]}", b" [ ": b" ] "}


def _nested(opener, depth, closed, after):
    """A json message whose header nests ``depth`` deep (truncated to the 65535 a header can hold).

    A good request comes before it (its answer is kept) and maybe after it (never answered).
    """
    body = opener * depth
    if closed:
        body += b"1" + _CLOSERS[opener] * depth
    body = body[:65535]
    stream = encode_json_request(b"before", request_id=0) + struct.pack(">H", len(body)) + body
    return stream + encode_json_request(b"after", request_id=1) if after else stream


def _long(length, escaped, content):
    """A good json request whose header is ``length`` characters of one string value longer than usual."""
    raw = json.dumps({**_good_header(len(content)), "request-id": "é" * length}, ensure_ascii=escaped).encode()
    raw = raw[:65535] if len(raw) > 65535 else raw
    return struct.pack(">H", len(raw)) + raw + content


#: JSON headers nested up to thousands of levels (a flat object is all the protocol allows), and
#: headers up to the 65535 bytes a 2-byte length can announce
json_extremes = st.builds(
    _nested, st.sampled_from(list(_CLOSERS)), st.integers(1, 3000), st.booleans(), st.booleans()
) | st.builds(_long, st.integers(0, 32_700), st.booleans(), st.binary(max_size=100))

streams = json_extremes | st.builds(
    _mutate,
    st.builds(
        _valid_stream,
        st.sampled_from(["frame", "json"]),
        st.lists(st.integers(0, 3000), max_size=6),
        st.booleans(),
    ),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
    st.one_of(st.none(), st.integers(0, 1 << 16)),
    st.one_of(st.none(), st.tuples(st.integers(0, 1 << 16), st.binary(max_size=20))),
) | st.binary(max_size=200)


@settings(max_examples=examples(300), deadline=None)
@given(data=streams, protocol=st.sampled_from(["frame", "json"]), cuts=st.lists(st.integers(1, 500), max_size=20))
def test_decoders_do_not_depend_on_how_input_is_cut(data, protocol, cuts):
    whole, whole_bad = oracle(protocol, data)
    decoder = FrameDecoder(TEST_MAX_MESSAGE) if protocol == "frame" else JsonDecoder(TEST_MAX_MESSAGE)
    out, pos = bytearray(), 0
    for c in cuts:
        out += decoder.feed(data[pos : pos + c])
        pos += c
    out += decoder.feed(data[pos:])
    assert answers(protocol, bytes(out)) == whole
    assert (decoder.eof() is not None) == whole_bad


@pytest.mark.slow
@settings(max_examples=examples(25), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=streams)
def test_fuzzed_input_never_crashes_hangs_or_misanswers(framed_server, data):
    want, _ = oracle(framed_server.protocol, data)
    t0 = time.monotonic()
    got = exchange(framed_server.address, data, timeout=5)
    assert time.monotonic() - t0 < 5, "the server hung on this input"
    assert answers(framed_server.protocol, got) == want
    assert framed_server.alive(), framed_server.stderr_text()[-500:]


def test_unsupported_protocol_or_bad_size_is_one_line():
    for name, spec in registry.SERVERS.items():
        missing = [p for p in ("frame", "json") if p not in spec.protocols]
        if not missing:
            continue
        r = sockbench_cli("serve", name, "--protocol", missing[0])
        assert r.returncode == 2, (name, r.stderr)
        assert "does not speak" in one_line_error(r)
    r = sockbench_cli("serve", "selectors", "--max-message", "lots")
    assert r.returncode == 2 and "bad --max-message" in one_line_error(r), r.stderr
