"""The C wire code (``ext/wire.h``, wrapped by ``sockbench.ext.wire``) against the Python oracle.

The ``cython`` server decides with this C code what the Python servers decide
with ``sockbench.servers.protocols``; here the two are held to the same
answers: accept or reject, the values extracted, and the answer header byte
for byte.  Hypothesis drives both with well-formed headers, JSON-shaped noise,
escapes and mutated bytes.
"""

import json
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from sockbench.servers.protocols import (
    FrameDecoder,
    JsonDecoder,
    ProtocolError,
    encode_json_request,
    json_response,
    parse_json_header,
)

wire = pytest.importorskip("sockbench.ext.wire", reason="the Cython extensions are not built")

KNOWN = ("byteorder", "content-type", "content-encoding", "content-length", "request-id")
MAX = 1 << 20


def c_parse(raw, max_message=MAX):
    try:
        return wire.parse_header_py(raw, max_message)
    except ValueError:
        return None


def py_parse(raw, max_message=MAX):
    try:
        header, _ = parse_json_header(raw, max_message)
    except ProtocolError:
        return None
    return header


def check_agreement(raw, max_message=MAX):
    """The C parser and the oracle agree on ``raw``; returns whether it was accepted."""
    py = py_parse(raw, max_message)
    c = c_parse(raw, max_message)
    if py is None:
        assert c is None, f"C accepts what the oracle rejects: {raw!r} -> {c}"
        return False
    assert c is not None, f"C rejects what the oracle accepts: {raw!r}: {wire_error(raw, max_message)}"
    assert c == {k: py[k] for k in KNOWN if k in py}
    # the answer header, byte for byte, as the Python servers build it (content of length 0)
    want = json_response(py, b"")
    got = wire.response_header_py(raw, 0, max_message)
    assert got == want
    assert len(wire.response_header_py(raw, None, max_message)) <= len(raw) + 2, "answer longer than request"
    return True


def wire_error(raw, max_message=MAX):
    try:
        wire.parse_header_py(raw, max_message)
    except ValueError as e:
        return str(e)
    return None


def good(**extra):
    h = {"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8", "content-length": 5}
    h.update(extra)
    return h


def dumps(obj, **kw):
    return json.dumps(obj, **kw).encode("utf-8")


# --- fixed cases -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, accepted",
    [
        (dumps(good()), True),
        (b' \t\r\n' + dumps(good()) + b' \n', True),
        (dumps(good(), indent=2), True),
        (dumps(good(**{"request-id": "r-1"})), True),
        (dumps(good(**{"request-id": -(1 << 63)})), True),
        (dumps(good(**{"request-id": (1 << 63) - 1})), True),
        (dumps(good(**{"request-id": 1 << 63})), False),
        (dumps(good(**{"request-id": -(1 << 63) - 1})), False),
        (dumps(good(**{"x": 123456789012345678901234567890})), False),
        (dumps(good(**{"request-id": 1.5})), False),
        (dumps(good(**{"x": 1e5})), False),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": 5e0'), False),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": 05'), False),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": -0'), True),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": -'), False),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": 5.'), False),
        (dumps(good(**{"x": True})), False),
        (dumps(good(**{"x": None})), False),
        (dumps(good(**{"x": [1]})), False),
        (dumps(good(**{"x": {}})), False),
        (dumps(good()).replace(b"}", b', "x": NaN}'), False),
        (dumps(good()).replace(b"}", b', "x": -Infinity}'), False),
        (dumps(good()).replace(b"}", b',}'), False),
        (dumps(good()).replace(b"{", b'{,'), False),
        (dumps(good()) + b"{}", False),
        (b"\xef\xbb\xbf" + dumps(good()), False),  # a BOM is not JSON whitespace
        (dumps(good()).replace(b"text/plain", b"\\u00e9\\ud83d\\ude00\\n\\t\\b\\f\\r\\\"\\\\\\/\\u0001\\u001F"), True),
        (dumps(good()).replace(b"text/plain", b"\\ud800"), False),
        (dumps(good()).replace(b"text/plain", b"\\udc00"), False),
        (dumps(good()).replace(b"text/plain", b"\\ud800\\u0041"), False),
        (dumps(good()).replace(b"text/plain", b"\\ud83d\\ude0"), False),
        (dumps(good()).replace(b"text/plain", b"\\x41"), False),
        (dumps(good()).replace(b"text/plain", b"\\u12g4"), False),
        (dumps(good()).replace(b"text/plain", b"tab\there"), False),  # raw control character
        (dumps(good()).replace(b"text/plain", b"del\x7f"), True),
        (dumps(good()).replace(b"text/plain", "é😀".encode()), True),
        (dumps(good()).replace(b"text/plain", b"\xc0\x80"), False),  # overlong
        (dumps(good()).replace(b"text/plain", b"\xed\xa0\x80"), False),  # encoded surrogate
        (dumps(good()).replace(b"text/plain", b"\xf4\x90\x80\x80"), False),  # above U+10FFFF
        (dumps(good()).replace(b"text/plain", b"\xe2\x82"), False),  # truncated
        (dumps(good()).replace(b"content-length", b"content\\u002dlength"), True),  # keys compare decoded
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": 5, "content-length": -1'), False),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": -1, "content-length": 7'), True),
        (dumps(good()).replace(b'"content-length": 5', b'"content-length": 5, "content-length": "7"'), False),
        (dumps(good(**{"content-type": 7})), True),
        (dumps(good(**{"content-length": MAX})), True),
        (dumps(good(**{"content-length": MAX + 1})), False),
        (dumps([good()]), False),
        (b'"x"', False),
        (b"", False),
        (b"{", False),
        (b"{}", False),
    ],
)
def test_fixed_cases(raw, accepted):
    assert check_agreement(raw) == accepted


def test_duplicate_key_last_value_wins():
    raw = b'{"byteorder":"b","content-type":"a","content-type":"z","content-encoding":"e","content-length":3}'
    assert wire.parse_header_py(raw)["content-type"] == "z"
    check_agreement(raw)


def test_request_builder_matches_the_tutorial_client():
    for n in (0, 5, 64, 65536, MAX):
        assert wire.request_header_py(n) == encode_json_request(b"x" * n)[: -n or None]
        for rid in (0, 7, 123456789):
            assert wire.request_header_py(n, rid) == encode_json_request(b"x" * n, request_id=rid)[: -n or None]


def test_frame_scan():
    frames = b"".join(struct.pack(">I", len(p)) + p for p in (b"", b"a", b"abc"))
    assert wire.frame_scan_py(frames) == (3, len(frames), 4)
    assert wire.frame_scan_py(frames + b"\x00\x00") == (3, len(frames), 4)
    assert wire.frame_scan_py(frames + struct.pack(">I", 10) + b"12") == (3, len(frames), 14)
    assert wire.frame_scan_py(b"") == (0, 0, 4)
    with pytest.raises(ValueError):
        wire.frame_scan_py(frames + struct.pack(">I", 11), 10)
    assert wire.frame_scan_py(struct.pack(">I", 10) + b"x" * 10, 10) == (1, 14, 4)


def test_json_message_states():
    req = encode_json_request(b"hello", request_id=1)
    hlen = struct.unpack(">H", req[:2])[0]
    assert wire.json_message_py(b"") == (False, 2)
    assert wire.json_message_py(req[:1]) == (False, 2)
    assert wire.json_message_py(req[:2]) == (False, 2 + hlen)
    assert wire.json_message_py(req[: 2 + hlen]) == (False, len(req))
    assert wire.json_message_py(req) == (True, len(req))
    assert wire.json_message_py(req + b"more") == (True, len(req))
    with pytest.raises(ValueError, match="length is 0"):
        wire.json_message_py(b"\x00\x00{}")
    with pytest.raises(ValueError, match="over the limit"):
        wire.json_message_py(req, 4)  # the header is checked before any content arrives


# --- fuzzing against the oracle ------------------------------------------------------------------

scalar = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(1 << 64), max_value=1 << 64),
    st.integers(min_value=-5, max_value=MAX + 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=4)
key = st.sampled_from(KNOWN + ("x", "content-length ", "Content-Type")) | st.text(max_size=6)


flat = st.text(max_size=10) | st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(-3, 3)


@st.composite
def headers(draw):
    """Mostly-valid headers: the required keys, mostly with good values, plus extra keys, mostly flat."""

    def some_value():
        return draw(flat if draw(st.integers(0, 5)) else value)

    h = {}
    for k in KNOWN:
        if draw(st.integers(0, 12)) == 0:
            continue  # sometimes a required key is missing
        h[k] = draw(st.integers(0, 100)) if k == "content-length" and draw(st.integers(0, 5)) else some_value()
    for _ in range(draw(st.integers(0, 3))):
        h[draw(key)] = some_value()
    pairs = list(h.items())
    if pairs and draw(st.integers(0, 4)) == 0:  # a duplicate key, raw
        pairs.insert(draw(st.integers(0, len(pairs))), (draw(st.sampled_from(KNOWN)), some_value()))
    sep_item = draw(st.sampled_from([",", ", ", " ,\n", "\t,\r"]))
    sep_key = draw(st.sampled_from([":", ": ", " :\t"]))
    ascii_only = draw(st.booleans())
    body = sep_item.join(json.dumps(k, ensure_ascii=ascii_only) + sep_key + json.dumps(v, ensure_ascii=ascii_only) for k, v in pairs)
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


def mutate(data, flips, cut, insert):
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    if cut is not None and buf:
        del buf[cut % len(buf):]
    if insert is not None:
        pos, junk = insert
        p = pos % (len(buf) + 1)
        buf[p:p] = junk
    return bytes(buf)


json_noise = st.text(alphabet='{}[]":,-0123456789.eE \t\n\\ubdfnrtaAxX\u00e9\ud800\udc00\x01\x7f', max_size=40).map(
    lambda s: s.encode("utf-8", "surrogatepass")
)
tokens = st.lists(st.sampled_from([b"{", b"}", b'"', b":", b",", b"\\u", b"d83d", b"de00", b"dc00", b"\\", b"-", b"0", b"9",
                                   b'"byteorder"', b'"content-length"', b'"content-type"', b'"content-encoding"',
                                   b" ", b"1", b"e", b".", b"\xc3", b"\xa9", b"\xff", b'"a"']), max_size=30).map(b"".join)

mutated = st.builds(
    mutate,
    headers(),
    st.lists(st.tuples(st.integers(0, 1 << 12), st.integers(0, 255)), max_size=2),
    st.one_of(st.none(), st.integers(0, 1 << 12)),
    st.one_of(st.none(), st.tuples(st.integers(0, 1 << 12), st.binary(max_size=4) | st.sampled_from([b"\\u", b"\\ud800", b'"', b"-", b".5", b"e1"]))),
)


@settings(max_examples=examples(600), deadline=None)
@given(raw=headers())
def test_fuzz_generated_headers(raw):
    check_agreement(raw)


@settings(max_examples=examples(600), deadline=None)
@given(raw=mutated | json_noise | tokens | st.binary(max_size=40))
def test_fuzz_mutated_and_noise(raw):
    check_agreement(raw)


@settings(max_examples=examples(300), deadline=None)
@given(raw=headers(), max_message=st.integers(0, 200))
def test_fuzz_limit(raw, max_message):
    check_agreement(raw, max_message)


@settings(max_examples=examples(300), deadline=None)
@given(data=st.binary(max_size=64) | st.lists(st.binary(max_size=12), max_size=5).map(
    lambda ps: b"".join(struct.pack(">I", len(p)) + p for p in ps)), max_message=st.integers(0, 16))
def test_fuzz_frame_scan_matches_decoder(data, max_message):
    d = FrameDecoder(max_message)
    out = d.feed(data)
    if d.error:
        with pytest.raises(ValueError):
            wire.frame_scan_py(data, max_message)
        return
    count, consumed, need = wire.frame_scan_py(data, max_message)
    assert data[:consumed] == out
    rest = data[consumed:]
    assert need == (4 if len(rest) < 4 else 4 + struct.unpack(">I", rest[:4])[0])


@settings(max_examples=examples(300), deadline=None)
@given(content=st.binary(max_size=20), rid=st.none() | st.integers(0, 1000), cut=st.integers(0, 400))
def test_fuzz_json_message_matches_decoder(content, rid, cut):
    req = encode_json_request(content, request_id=rid)
    part = req[:cut]
    d = JsonDecoder(MAX)
    answered = bool(d.feed(part))
    complete, need = wire.json_message_py(part)
    assert complete == answered
    assert need <= len(req) and (complete or need > len(part))


# --- the cython server answers with exactly these bytes -----------------------------------------


def test_cython_server_answers_json_byte_for_byte_like_the_oracle():
    """Escapes, non-ASCII, integer values, a duplicate key: the answer bytes are the Python servers'."""
    from sockbench.servers import registry
    from sockbench.servers.process import ServerProcess

    if "json" not in registry.SERVERS["cython"].protocols or not registry.SERVERS["cython"].availability()[0]:
        pytest.skip("the cython server does not speak json here")
    headers = [
        dumps(good(**{"request-id": "r\\\"1\u00e9"}), ensure_ascii=True),
        dumps(good(**{"content-type": "a\nb\u0001c/\ud83d\ude00", "request-id": -(1 << 63)}), ensure_ascii=True),
        dumps(good(**{"content-type": 7, "content-encoding": "é", "x": "y"}), ensure_ascii=False),
        b'{"byteorder":"b","content-type":"a","content-type":"z","content-encoding":"e","content-length":5}',
    ]
    stream = b"".join(struct.pack(">H", len(h)) + h + b"12345" for h in headers)
    want = JsonDecoder(MAX).feed(stream)
    with ServerProcess("cython", extra_args=("--protocol", "json")) as server:
        import socket

        with socket.create_connection(server.address, timeout=10) as s:
            s.sendall(stream)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
    assert got == want


@pytest.mark.parametrize("protocol", ["frame", "json"])
def test_pipelined_load_is_answered_correctly(protocol):
    """The benchmark's C client (100 conns x 16 in flight) checks every answer byte; a short run must be clean."""
    import shutil

    from sockbench.servers import registry
    from sockbench.bench.calibrate.common import build_ref_client
    from sockbench.bench.calibrate.framed import c_cell
    from sockbench.servers.process import ServerProcess

    if not (shutil.which("gcc") or shutil.which("cc")):
        pytest.skip("no C compiler for the load client")
    if protocol not in registry.SERVERS["cython"].protocols or not registry.SERVERS["cython"].availability()[0]:
        pytest.skip("the cython server does not speak the framed protocols here")
    client = build_ref_client()
    cpus = sorted(os.sched_getaffinity(0))
    for attempt in range(3):
        with ServerProcess("cython", extra_args=("--protocol", protocol)) as server:
            cell = c_cell(client, server, protocol, conns=100, depth=16, size=64, warmup=0.2, duration=0.5,
                          client_cpu=cpus[-1])
            assert server.alive() and server.stderr_text() == ""
        # A wrong answer or a closed connection fails at once.  A stall (no answer
        # for 1 s) is retried: on a machine shared with other load runs, the
        # server's CPU can be taken from it that long (seen with uvloop too).
        if cell.valid or "no answer" not in cell.invalid_reason:
            break
    assert cell.valid, cell.invalid_reason
    assert cell.msgs_per_s > 0
