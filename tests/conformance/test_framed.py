"""The framed protocols (``frame`` and ``json``), for every server that speaks them.

Answers are checked by meaning (the payload, the header fields), not by the
exact bytes of the JSON header, so servers are free to format JSON their own way.
The fuzzed streams include JSON headers nested thousands deep and headers of
up to 65535 bytes: malformed (nested) or not, they cost their own connection
only, the same way in every server and in the oracle.
"""

import json
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TEST_MAX_MESSAGE, examples
from echo_client import assert_check, connect, echo_concurrently, exchange, one_line_error, payload, sockbench_cli
from sockbench.bench.check import framed as check_framed
from sockbench.servers import registry
from sockbench.servers.process import ServerProcess
from sockbench.servers.protocols import (
    FrameDecoder,
    JsonDecoder,
    encode_json_request,
)

REQUIRED = check_framed.REQUIRED
_json_header = check_framed.json_header
_good_header = check_framed.good_header
parse_frames = check_framed.parse_frames
parse_json_messages = check_framed.parse_json_messages
requests_for = check_framed.requests_for
answers = check_framed.answers
malformed_cases = check_framed.malformed_cases


def oracle(protocol, stream, max_message=TEST_MAX_MESSAGE):
    """What a correct server answers to ``stream`` followed by EOF, and whether it is malformed."""
    return check_framed.oracle(protocol, stream, max_message)


# --- valid traffic ---------------------------------------------------------------------------


def test_pipelined_messages_answered_in_order(framed_server):
    """207 messages in random cuts, answered in order (``sockbench check``'s ``framed-pipelining``)."""
    assert_check("framed-pipelining", framed_server, framed_server.protocol, TEST_MAX_MESSAGE)


@pytest.mark.slow
def test_partial_message_is_not_answered(framed_server):
    assert_check("framed-partial", framed_server, framed_server.protocol, TEST_MAX_MESSAGE)


def test_json_answer_copies_request_id_and_types():
    """Checked on the oracle: the answer header is fresh, the request-id is copied only if present."""
    d = JsonDecoder()
    out = d.feed(encode_json_request(b"abc", request_id="r-1", content_type="text/json") + encode_json_request(b"", request_id=None))
    (h1, c1), (h2, c2) = parse_json_messages(out)
    assert h1 == {"content-type": "text/json", "content-encoding": "binary", "content-length": 3, "request-id": "r-1"}
    assert c1 == b"abc"
    assert "request-id" not in h2 and c2 == b""


# --- malformed input: that connection only -----------------------------------------------------

def test_malformed_message_closes_only_its_connection(framed_server):
    """Every malformed case of the server's protocol, each on its own connection, one server (``malformed``):
    and one stderr line for each, saying so."""
    proto = framed_server.protocol
    earlier = len([ln for ln in framed_server.stderr_text().splitlines() if ln.strip()])  # the module's server
    assert_check("malformed", framed_server, proto, TEST_MAX_MESSAGE)
    expected = len(malformed_cases(proto, TEST_MAX_MESSAGE))
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
