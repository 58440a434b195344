"""The framed wire protocols at C level: frame scanning, a strict flat-JSON header parser, the answer builder.

The code is C, in ``ext/wire.h`` (static inline functions, declared for
Cython in ``ext/wire.pxd``), shared by the epoll server
(``ext/epoll_echo.pyx``), the load generator (``ext/loadgen.pyx``) and the
reference C client (``bench/calibrate/ref_client.c``); the header says why
it is header-only.  This module holds only thin Python wrappers, for the
tests (they are how ``tests/unit/test_wire.py`` fuzzes this parser against
the Python oracle, ``sockbench.servers.protocols.parse_json_header``).  The
spec of both protocols is the docstring of ``sockbench.servers.protocols``.

Why it is built this way:

* **No allocation, no Python, no copies in the parser.**  A header is parsed
  where it lies; each value is recorded as a span of the raw text (offset,
  length, kind) plus, for an integer, its value.  The caller owns every
  buffer, so the same code serves a server (which parses inside the buffer it
  read into) and a client.
* **Strict, and decided in one pass.**  The header must be one JSON object
  (RFC 8259) whose values are all strings or integers: a flat object, which is
  what the protocol carries.  Rejected, with one static reason: anything that
  is not JSON, a top-level value that is not an object, nested objects or
  arrays, floats (a fraction or an exponent), ``true``/``false``/``null``,
  ``NaN``/``Infinity``, integers outside int64, invalid UTF-8 (overlong forms,
  encoded surrogates, code points above U+10FFFF), control characters inside
  strings, unknown escapes, and lone surrogates in ``\\uXXXX`` escapes (a high
  one must be followed by a low one).  Whitespace is RFC 8259's four
  characters.  Unknown keys are validated, then skipped.  A duplicate key is
  accepted and the last value wins, as in Python's ``json``.  The Python
  oracle makes exactly the same decisions (``parse_json_header`` checks what
  ``json.loads`` alone would let through), and the tests fuzz the two against
  each other.
* **Keys are compared decoded**, so ``"content\\u002dlength"`` is
  ``content-length``, as it is for ``json.loads``.
* **The answer header is rebuilt, not copied.**  It holds ``content-type``,
  ``content-encoding``, ``content-length`` and ``request-id`` (if present) in
  that order, with Python's ``json.dumps(..., ensure_ascii=False,
  separators=(",", ":"))`` formatting: a string without escapes is already in
  that form and is copied as is; one with escapes is decoded and re-escaped
  (``\\"``, ``\\\\``, the short forms ``\\b \\f \\n \\r \\t``, ``\\u00xx`` for
  other control characters, everything else as UTF-8).  So the C answer is
  byte for byte the Python servers' answer, and it is never longer than the
  request's header: an answer fits in the buffer its request came in.
* **Frames are answered by themselves**, so frame scanning only measures: the
  bytes of the complete frames are the answer.
"""

from libc.stdint cimport int64_t, uint64_t

from protocols cimport PROTO_DEFAULT_MAX_MESSAGE
from wire cimport (
    WIRE_JSON_HEADER_MAX, WIRE_MALFORMED, WIRE_COMPLETE,
    WIRE_ABSENT, WIRE_STRING, WIRE_INT,
    wire_value_t, wire_header_t,
    wire_frame_scan, wire_json_message, wire_json_parse_header,
    wire_json_response_header, wire_json_request_header, wire_unescape,
)

__all__ = [
    "frame_scan_py",
    "json_message_py",
    "parse_header_py",
    "response_header_py",
    "request_header_py",
    "JSON_HEADER_MAX",
    "DEFAULT_MAX_MESSAGE",
]

JSON_HEADER_MAX = WIRE_JSON_HEADER_MAX
#: the servers' default message limit, from the generated ext/protocols.h
DEFAULT_MAX_MESSAGE = PROTO_DEFAULT_MAX_MESSAGE

# --- thin Python wrappers, for the tests only ----------------------------------------------------


def frame_scan_py(const unsigned char[:] data, uint64_t max_message=DEFAULT_MAX_MESSAGE):
    """``(complete_frames, consumed, need)`` for ``data``; ValueError when a length is over the limit."""
    cdef size_t consumed = 0, need = 0
    cdef ssize_t count = wire_frame_scan(&data[0] if data.shape[0] else NULL, data.shape[0],
                                            max_message, &consumed, &need)
    if count == WIRE_MALFORMED:
        raise ValueError(f"frame length is over the limit of {max_message} bytes (after {consumed} bytes)")
    return count, consumed, need


def json_message_py(const unsigned char[:] data, uint64_t max_message=DEFAULT_MAX_MESSAGE):
    """``(complete, need)`` for the message at the start of ``data``; ValueError when malformed."""
    cdef wire_header_t h
    cdef size_t need = 0
    cdef int rc = wire_json_message(&data[0] if data.shape[0] else NULL, data.shape[0],
                                    max_message, &h, &need)
    if rc == WIRE_MALFORMED:
        raise ValueError(h.error.decode())
    return rc == WIRE_COMPLETE, need


cdef object _value_py(const unsigned char* p, const wire_value_t* v):
    cdef bytearray buf
    cdef size_t k
    if v.kind == WIRE_INT:
        return v.ival
    if v.kind == WIRE_STRING:
        return (<const char*>p)[v.off:v.off + v.len].decode("utf-8")
    buf = bytearray(v.len)
    k = wire_unescape(p + v.off, v.len, <unsigned char*><char*>buf, v.len)
    return bytes(buf[:k]).decode("utf-8")


def parse_header_py(const unsigned char[:] raw, uint64_t max_message=DEFAULT_MAX_MESSAGE):
    """Parse one JSON header (no length prefix) with the C parser.

    Returns a dict of the keys it knows (``byteorder``, ``content-type``,
    ``content-encoding``, ``content-length``, ``request-id``) that are present,
    decoded to str or int; raises ValueError with the parser's reason.
    """
    cdef wire_header_t h
    cdef const unsigned char* p = &raw[0] if raw.shape[0] else <const unsigned char*>b""
    if wire_json_parse_header(p, raw.shape[0], max_message, &h) < 0:
        raise ValueError(h.error.decode())
    out = {}
    if h.byteorder.kind != WIRE_ABSENT:
        out["byteorder"] = _value_py(p, &h.byteorder)
    if h.content_type.kind != WIRE_ABSENT:
        out["content-type"] = _value_py(p, &h.content_type)
    if h.content_encoding.kind != WIRE_ABSENT:
        out["content-encoding"] = _value_py(p, &h.content_encoding)
    out["content-length"] = h.content_length.ival
    if h.request_id.kind != WIRE_ABSENT:
        out["request-id"] = _value_py(p, &h.request_id)
    return out


def response_header_py(const unsigned char[:] raw, content_length=None, uint64_t max_message=DEFAULT_MAX_MESSAGE):
    """The answer's prefix + JSON header that the C builder writes for request header ``raw``."""
    cdef wire_header_t h
    cdef const unsigned char* p = &raw[0] if raw.shape[0] else <const unsigned char*>b""
    cdef bytearray out = bytearray(raw.shape[0] + 128)
    cdef ssize_t n
    if wire_json_parse_header(p, raw.shape[0], max_message, &h) < 0:
        raise ValueError(h.error.decode())
    n = wire_json_response_header(p, &h, h.content_length.ival if content_length is None else content_length,
                                  <unsigned char*><char*>out, len(out))
    if n < 0:
        raise ValueError("the answer header does not fit in the request's size")
    return bytes(out[:n])


def request_header_py(uint64_t content_length, int64_t request_id=-1):
    """The prefix + JSON header ``wire_json_request_header`` writes (a client's request)."""
    cdef unsigned char out[256]
    cdef ssize_t n = wire_json_request_header(content_length, request_id, out, sizeof(out))
    return (<char*>out)[:n]
