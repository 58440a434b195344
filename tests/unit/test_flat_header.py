"""The flat-header rule at its extremes: nesting thousands deep, and headers of up to 65535 bytes.

``protocols.parse_json_header`` refuses nesting before the ``json`` module
sees a header (whose decoder recurses once per level), and the C parser of
the ``cython`` server (``ext/wire.h``) never recurses at all.  Here both are
held to the same decision on such headers, and the Python one to a bounded
time on inputs built to make a string scanner backtrack.
"""

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import examples
from sockbench.servers.protocols import JsonDecoder, ProtocolError, parse_json_header

wire = pytest.importorskip("sockbench.ext.wire", reason="the Cython extensions are not built")

MAX = 1 << 20
GOOD = {"byteorder": "little", "content-type": "text/plain", "content-encoding": "utf-8", "content-length": 5}


def py_decision(raw):
    try:
        return parse_json_header(raw, MAX)[0]
    except ProtocolError:
        return None


def c_decision(raw):
    try:
        return wire.parse_header_py(raw, MAX)
    except ValueError:
        return None


def agree(raw):
    py, c = py_decision(raw), c_decision(raw)
    assert (py is None) == (c is None), f"oracle {'rejects' if py is None else 'accepts'}, C does not: {raw[:80]!r}..."
    if py is not None:
        assert c == {k: py[k] for k in c}
    return py is not None


CLOSERS = {b"[": b"]", b'{"a":': b"}", b'{"byteorder":[': b"]}", b'{"content-length":{"x":': b"}}"}


@pytest.mark.parametrize("depth", [1, 2, 100, 990, 5000, 13000])
@pytest.mark.parametrize("opener", list(CLOSERS))
def test_nesting_of_any_depth_is_malformed_in_both(opener, depth):
    assert not agree((opener * depth)[:65535])
    assert not agree((opener * depth + b"1" + CLOSERS[opener] * depth)[:65535])


def test_the_nested_header_of_the_report_is_one_malformed_message():
    decoder = JsonDecoder(MAX)
    assert decoder.feed(b"\x03\xde" + b"[" * 990) == b""
    assert decoder.error == "JSON header is not a JSON object"


def test_brackets_inside_strings_are_not_nesting():
    raw = json.dumps({**GOOD, "content-type": "[{[{text}]}]", "request-id": "{\"[\\\"{"}).encode()
    assert agree(raw)
    assert py_decision(raw)["content-type"] == "[{[{text}]}]"


@pytest.mark.parametrize("length", [0, 1000, 30_000, 32_700])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_long_headers_up_to_65535_bytes(length, ascii_only):
    raw = json.dumps({**GOOD, "request-id": "é" * length}, ensure_ascii=ascii_only).encode()
    if len(raw) > 65535:
        raw = raw[:65535]  # what a 2-byte length can announce: cut, so malformed
        assert not agree(raw)
    else:
        assert agree(raw)


@pytest.mark.parametrize("text", [b'"\\' * 30_000 + b"[", b'"a' * 30_000 + b"[", b"\\" * 60_000 + b"[", b'{"' + b'\\"' * 30_000])
def test_the_string_scan_is_linear_on_adversarial_input(text):
    t0 = time.monotonic()
    assert py_decision(text) is None
    assert time.monotonic() - t0 < 0.5


nested = st.builds(
    lambda opener, depth, tail: (opener * depth + tail)[:65535],
    st.sampled_from([b"[", b"{", b'{"a":', b' {"b" : [ ', b'{"byteorder":"x","a":']),
    st.integers(1, 4000),
    st.binary(max_size=20) | st.sampled_from([b"", b"1", b'"x"', b"]", b"}", b"]}" * 50]),
)
long_strings = st.builds(
    lambda n, ch, key: json.dumps({**GOOD, key: ch * n}, ensure_ascii=False).encode()[:65535],
    st.integers(0, 40_000),
    st.sampled_from(["x", "é", "\\", '"', "[", "{", "\u2028"]),
    st.sampled_from(["request-id", "content-type", "unknown"]),
)


@settings(max_examples=examples(300), deadline=None)
@given(raw=nested | long_strings)
def test_fuzz_nested_and_long_headers_agree(raw):
    agree(raw)
