"""The framed wire protocols every Python server speaks: ``raw``, ``frame`` and ``json``.

A raw byte echo is mostly kernel work; real services parse messages.  These
two protocols add that per-message work, identically in every server:

``frame``
    A 4-byte big-endian length N, then N payload bytes.  Each complete request
    is answered with one frame carrying the same payload.  A partial frame is
    never answered.  N above ``max_message`` is malformed.

``json``
    The application protocol of the classic Python socket tutorial: a 2-byte
    big-endian header length H (1..65535), then H bytes of a UTF-8 JSON object
    with ``byteorder``, ``content-type``, ``content-encoding`` and
    ``content-length``, then ``content-length`` bytes of content.  The answer
    has the same shape: a freshly built header with ``content-type``,
    ``content-encoding`` and ``content-length`` (and ``request-id``, copied
    when the request has one), then the same content.  Malformed: H = 0; a
    header that is not UTF-8 JSON or not an object; a required key missing;
    ``content-length`` missing, negative, not an integer, or above
    ``max_message``.  The header is a *flat* object: every value is a string
    or an integer in the int64 range; a nested object or array, a float,
    ``true``/``false``/``null``, ``NaN``/``Infinity`` or a lone surrogate
    escape is malformed too (that is what the C parser of the ``cython``
    server accepts, and the oracle here decides the same way).  Nesting is
    refused before the ``json`` module sees the header: its decoder recurses
    once per level, and a header of a thousand ``[`` would raise
    ``RecursionError`` instead of a malformed-message error.

Truncated input followed by EOF is malformed too.  A malformed message ends
its own connection only (the server logs one line to stderr, worded by
``contract.log_closing``, and closes it).

The decoders here are sans-I/O, like the tutorial's ``Message`` class with its
``_recv_buffer``, ``process_protoheader``, ``process_jsonheader`` and
``process_request`` steps: ``feed(bytes)`` returns the bytes to send back (all
complete answers, concatenated, including those that came before a malformed
message in the same chunk) and never raises; after a malformed message it sets
``error`` (one line saying what was wrong) and answers nothing more.  ``eof()``
sets ``error`` if a message was cut short, and returns it.  ``buffered`` is the
number of bytes of a partial message held (what ``--max-buffered`` counts).  Each server drives
them from its own I/O model, and the conformance suite uses them as the oracle.
"""

import json
import re
import struct
import sys

# the table itself is the core's: ext/ is built from it (setup.py writes ext/protocols.h)
from sockbench.protocol_table import DEFAULT_MAX_MESSAGE, PROTOCOLS

__all__ = [
    "PROTOCOLS",
    "DEFAULT_MAX_MESSAGE",
    "ProtocolError",
    "FrameDecoder",
    "JsonDecoder",
    "make_decoder",
    "parse_json_header",
    "json_response",
    "encode_frame",
    "encode_json_request",
]

REQUIRED_HEADERS = ("byteorder", "content-length", "content-type", "content-encoding")

_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class ProtocolError(ValueError):
    """A malformed message: the connection that sent it is closed."""


# --- frame --------------------------------------------------------------------------------------


def encode_frame(payload):
    return _U32.pack(len(payload)) + payload


class _Decoder:
    __slots__ = ("max_message", "error", "_buf")

    def __init__(self, max_message=DEFAULT_MAX_MESSAGE):
        self.max_message = max_message
        self.error = None
        self._buf = bytearray()

    def _partial(self):
        return bool(self._buf)

    @property
    def buffered(self):
        """Bytes of a partial message held now."""
        return len(self._buf)

    def eof(self):
        """The peer closed its side: a message cut short is an error.  Returns ``error``."""
        if self.error is None and self._partial():
            self.error = "connection closed inside a message"
        return self.error


class FrameDecoder(_Decoder):
    """Finds complete frames; since an answer is the very same frame, it returns the consumed bytes."""

    __slots__ = ("_need",)

    def __init__(self, max_message=DEFAULT_MAX_MESSAGE):
        super().__init__(max_message)
        self._need = 4  # bytes the buffer must hold before the next decision

    def feed(self, data):
        if self.error is not None:
            return b""
        buf = self._buf
        if not buf and len(data) < 4:
            buf += data
            return b""
        if buf:
            buf += data
            data = buf
        if len(data) < self._need:
            return b""
        view = memoryview(data)
        pos, end = 0, len(data)
        while end - pos >= 4:
            (n,) = _U32.unpack_from(view, pos)
            if n > self.max_message:
                self.error = f"frame length {n} is over the limit of {self.max_message} bytes"
                break
            if end - pos - 4 < n:
                self._need = 4 + n
                break
            pos += 4 + n
        else:
            self._need = 4
        out = bytes(view[:pos])
        rest = bytes(view[pos:]) if self.error is None else b""
        view.release()
        self._buf = bytearray(rest)
        return out


# --- json ---------------------------------------------------------------------------------------


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _reject_float(text):
    raise ProtocolError(f"JSON header has a float ({text}); only strings and integers are accepted")


def _reject_constant(name):
    raise ProtocolError(f"JSON header has {name}; only strings and integers are accepted")


def _flat_object(pairs):
    """``object_pairs_hook``: every pair (duplicates too) must hold a string or an int64."""
    for key, value in pairs:
        t = type(value)
        if t is int:
            if not _INT64_MIN <= value <= _INT64_MAX:
                raise ProtocolError(f"JSON header value of {key!r} is an integer outside the 64-bit range")
        elif t is not str:
            raise ProtocolError(f"JSON header value of {key!r} is a {t.__name__}; only strings and integers are accepted")
    return dict(pairs)


def _flat_object_no_lone_surrogates(pairs):
    """``_flat_object``, and no string may hold a lone surrogate (only a ``\\u`` escape can make one)."""
    for key, value in pairs:
        try:
            key.encode("utf-8")
            if type(value) is str:
                value.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError(f"JSON header has a lone surrogate escape in {key!r}") from None
    return _flat_object(pairs)


# built once: ``json.loads`` with hooks would build a new decoder on every call
_FLAT_DECODER = json.JSONDecoder(object_pairs_hook=_flat_object, parse_float=_reject_float, parse_constant=_reject_constant)
_FLAT_DECODER_CHECKING = json.JSONDecoder(
    object_pairs_hook=_flat_object_no_lone_surrogates, parse_float=_reject_float, parse_constant=_reject_constant
)


# A JSON string as the json module scans one (quote, characters and escapes, quote), and
# also one left open at the end of the text, so that every quote starts at most one scan:
# linear time on any input.  Used only to find the brackets that lie outside strings.
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.?)*+"?', re.DOTALL)


def _reject_nesting(text):
    """Raise ``ProtocolError`` if ``text`` has a ``[`` or a second ``{`` outside its strings.

    A flat object has exactly one ``{`` and no ``[`` outside strings, so this
    refuses nothing the flat-object rule accepts, and the ``json`` module
    below never recurses more than one level.
    """
    if "[" not in text and text.count("{") <= 1:
        return  # nothing can nest: the common case costs two scans at C speed
    outside = _JSON_STRING.sub("", text)
    if "[" not in outside and outside.count("{") <= 1:
        return
    if not outside.lstrip(" \t\r\n").startswith("{"):
        raise ProtocolError("JSON header is not a JSON object")
    raise ProtocolError("JSON header is not a flat object: it holds a nested object or array")


def parse_json_header(raw, max_message=DEFAULT_MAX_MESSAGE):
    """Decode and validate a request header; return ``(header_dict, content_length)``.

    Strict, like the C parser of the ``cython`` server (``ext/wire.h``), and
    deciding exactly as it does: one JSON object whose values are all strings
    or integers in the int64 range (no nested values, floats, true, false,
    null, NaN or Infinity, also not under a key given twice), and no lone
    surrogate escape in any string.  Duplicate keys: the last value wins.
    Nesting is refused before the ``json`` module is called (see ``_reject_nesting``).
    """
    try:
        text = raw.decode("utf-8")
        _reject_nesting(text)
        header = (_FLAT_DECODER_CHECKING if "\\u" in text else _FLAT_DECODER).decode(text)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError(f"JSON header is not valid UTF-8 JSON: {e}") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"JSON header is a {type(header).__name__}, not an object")
    for key in REQUIRED_HEADERS:
        if key not in header:
            raise ProtocolError(f"JSON header is missing required key {key!r}")
    length = header["content-length"]
    if type(length) is not int:
        raise ProtocolError(f"content-length {length!r} is not an integer")
    if length < 0:
        raise ProtocolError(f"content-length {length} is negative")
    if length > max_message:
        raise ProtocolError(f"content-length {length} is over the limit of {max_message} bytes")
    return header, length


def _dumps(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(header, content):
    """The answer to a request: a fresh header (request-id copied if present), then the content."""
    resp = {
        "content-type": header["content-type"],
        "content-encoding": header["content-encoding"],
        "content-length": len(content),
    }
    if "request-id" in header:
        resp["request-id"] = header["request-id"]
    raw = _dumps(resp)
    return _U16.pack(len(raw)) + raw + content


def encode_json_request(content, request_id=None, content_type="binary/custom-client-binary-type"):
    """A request as the tutorial's client builds it (used by tests and tools)."""
    header = {
        "byteorder": sys.byteorder,
        "content-type": content_type,
        "content-encoding": "binary",
        "content-length": len(content),
    }
    if request_id is not None:
        header["request-id"] = request_id
    raw = _dumps(header)
    return _U16.pack(len(raw)) + raw + content


class JsonDecoder(_Decoder):
    """The tutorial's Message state machine, sans-I/O: protoheader, then JSON header, then content."""

    __slots__ = ("_header", "_length")

    def __init__(self, max_message=DEFAULT_MAX_MESSAGE):
        super().__init__(max_message)
        self._header = None  # the parsed header of the message whose content we wait for
        self._length = 0

    def _partial(self):
        return bool(self._buf) or self._header is not None

    def feed(self, data):
        if self.error is not None:
            return b""
        buf = self._buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        view = memoryview(buf)
        try:
            while True:
                if self._header is None:
                    if end - pos < 2:
                        break
                    (hlen,) = _U16.unpack_from(view, pos)
                    if hlen == 0:
                        raise ProtocolError("JSON header length is 0")
                    if end - pos - 2 < hlen:
                        break
                    self._header, self._length = parse_json_header(bytes(view[pos + 2 : pos + 2 + hlen]), self.max_message)
                    pos += 2 + hlen
                if end - pos < self._length:
                    break
                out.append(json_response(self._header, bytes(view[pos : pos + self._length])))
                pos += self._length
                self._header = None
        except ProtocolError as e:
            self.error = str(e)
        finally:
            view.release()
        if self.error is not None:
            buf.clear()
        elif pos:
            del buf[:pos]
        return b"".join(out)


def make_decoder(protocol, max_message=DEFAULT_MAX_MESSAGE):
    """The decoder for a protocol, or None for ``raw`` (echo the bytes as they come)."""
    if protocol == "raw":
        return None
    if protocol == "frame":
        return FrameDecoder(max_message)
    if protocol == "json":
        return JsonDecoder(max_message)
    raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
