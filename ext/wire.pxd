# The C-level wire protocols (``frame`` and ``json``), header-only: every ext/
# module that needs them cimports this file (``from wire cimport ...``) and
# gets its own copy of these ``cdef inline ... noexcept nogil`` functions.
#
# Why header-only: setup.py maps ext/ onto the package ``sockbench.ext``, so a
# pxd here is found as the top-level module ``wire``; exported (non-inline)
# cdef functions would make each user import a module named ``wire`` at run
# time to fetch their pointers, which does not exist.  Inline functions and
# types need no run-time import at all, and the hot loops call them directly
# (no function-pointer table), which is what a per-message parser wants.
#
# Nothing here allocates, touches Python, or copies a request: the callers (the
# epoll server, the load generator, the test wrappers in ext/wire.pyx) own every
# buffer.  The wire spec is the docstring of ``sockbench.servers.protocols``;
# the design is explained in the docstring of ext/wire.pyx.
#
# API (the rest are helpers):
#   wire_frame_scan            complete frames at the start of a buffer, or a length over the limit
#   wire_json_message          the state of the json message at the start of a buffer
#   wire_json_parse_header     the strict flat-JSON header parser
#   wire_json_response_header  the answer's prefix + header
#   wire_json_request_header   a client's request prefix + header

from libc.stdint cimport uint32_t, int64_t, uint64_t
from libc.string cimport memcpy, memcmp


cdef enum:
    WIRE_FRAME_PREFIX = 4        # frame: 4-byte big-endian payload length
    WIRE_JSON_PREFIX = 2         # json: 2-byte big-endian header length
    WIRE_JSON_HEADER_MAX = 65535

    # wire_value_t.kind
    WIRE_ABSENT = 0
    WIRE_STRING = 1              # a string whose raw text has no backslash
    WIRE_STRING_ESC = 2          # a string with escapes in its raw text
    WIRE_INT = 3                 # an integer that fits in int64_t

    # what a look at one message found
    WIRE_MALFORMED = -1
    WIRE_NEED_MORE = 0
    WIRE_COMPLETE = 1


ctypedef struct wire_value_t:
    uint32_t off        # where the raw text starts in the header (for a string: after the quote)
    uint32_t len        # raw text length (for a string: without the quotes)
    int kind            # WIRE_ABSENT, WIRE_STRING, WIRE_STRING_ESC or WIRE_INT
    int64_t ival        # the value of a WIRE_INT


ctypedef struct wire_header_t:
    wire_value_t byteorder
    wire_value_t content_type
    wire_value_t content_encoding
    wire_value_t content_length
    wire_value_t request_id
    const char* error   # why it was rejected (a static string), or NULL


# --- frame ---------------------------------------------------------------------------------------

# Walk the complete frames at the start of ``p[0:n]``.  ``*consumed`` gets their
# total size (the answer: a frame is answered by itself) and ``*need`` the size
# the message after them needs, counted from ``p + *consumed`` (4, or 4 + its
# length).  Returns the number of complete frames, or WIRE_MALFORMED when a
# length is over ``max_message`` (``*consumed`` then covers the frames before it).

cdef inline Py_ssize_t wire_frame_scan(const unsigned char* p, size_t n, uint64_t max_message,
                                size_t* consumed, size_t* need) noexcept nogil:
    cdef size_t pos = 0
    cdef Py_ssize_t count = 0
    cdef uint64_t length
    while True:
        if n - pos < WIRE_FRAME_PREFIX:
            need[0] = WIRE_FRAME_PREFIX
            break
        length = ((<uint64_t>p[pos] << 24) | (<uint64_t>p[pos + 1] << 16)
                  | (<uint64_t>p[pos + 2] << 8) | <uint64_t>p[pos + 3])
        if length > max_message:
            consumed[0] = pos
            need[0] = WIRE_FRAME_PREFIX
            return WIRE_MALFORMED
        if n - pos - WIRE_FRAME_PREFIX < length:
            need[0] = WIRE_FRAME_PREFIX + <size_t>length
            break
        pos += WIRE_FRAME_PREFIX + <size_t>length
        count += 1
    consumed[0] = pos
    return count


# --- json: the header parser --------------------------------------------------------------------


cdef inline size_t _skip_ws(const unsigned char* p, size_t i, size_t n) noexcept nogil:
    while i < n and (p[i] == c' ' or p[i] == c'\n' or p[i] == c'\r' or p[i] == c'\t'):
        i += 1
    return i


cdef inline int _hexval(unsigned char c) noexcept nogil:
    if c >= c'0' and c <= c'9':
        return c - c'0'
    if c >= c'a' and c <= c'f':
        return c - c'a' + 10
    if c >= c'A' and c <= c'F':
        return c - c'A' + 10
    return -1


cdef inline int _hex4(const unsigned char* p, size_t i, size_t n, uint32_t* out) noexcept nogil:
    """The 4 hex digits at ``p[i:i+4]``; -1 if they are not."""
    cdef int k, d
    cdef uint32_t v = 0
    if n - i < 4:
        return -1
    for k in range(4):
        d = _hexval(p[i + k])
        if d < 0:
            return -1
        v = (v << 4) | <uint32_t>d
    out[0] = v
    return 0


cdef inline int _is_cont(unsigned char c) noexcept nogil:
    return (c & 0xC0) == 0x80


cdef inline Py_ssize_t _scan_string(const unsigned char* p, size_t i, size_t n, int* escaped,
                             const char** error) noexcept nogil:
    """Validate the string whose text starts at ``p[i]`` (after the opening quote).

    Returns the index of the closing quote, or -1 with ``error`` set.
    """
    cdef unsigned char c, c1
    cdef uint32_t cp, lo
    escaped[0] = 0
    while i < n:
        c = p[i]
        if c == c'"':
            return <Py_ssize_t>i
        if c == c'\\':
            escaped[0] = 1
            if i + 1 >= n:
                break
            c1 = p[i + 1]
            if (c1 == c'"' or c1 == c'\\' or c1 == c'/' or c1 == c'b' or c1 == c'f'
                    or c1 == c'n' or c1 == c'r' or c1 == c't'):
                i += 2
                continue
            if c1 != c'u':
                error[0] = b"JSON header has an invalid escape in a string"
                return -1
            if _hex4(p, i + 2, n, &cp) < 0:
                error[0] = b"JSON header has an invalid \\uXXXX escape"
                return -1
            i += 6
            if cp >= 0xDC00 and cp <= 0xDFFF:
                error[0] = b"JSON header has a lone low surrogate escape"
                return -1
            if cp >= 0xD800 and cp <= 0xDBFF:
                if (n - i < 6 or p[i] != c'\\' or p[i + 1] != c'u'
                        or _hex4(p, i + 2, n, &lo) < 0 or lo < 0xDC00 or lo > 0xDFFF):
                    error[0] = b"JSON header has a lone high surrogate escape"
                    return -1
                i += 6
            continue
        if c < 0x20:
            error[0] = b"JSON header has a control character inside a string"
            return -1
        if c < 0x80:
            i += 1
            continue
        # UTF-8, as strictly as Python's decoder: no overlong forms, no
        # encoded surrogates, nothing above U+10FFFF
        if c >= 0xC2 and c <= 0xDF:
            if n - i >= 2 and _is_cont(p[i + 1]):
                i += 2
                continue
        elif c >= 0xE0 and c <= 0xEF:
            if n - i >= 3 and _is_cont(p[i + 1]) and _is_cont(p[i + 2]):
                c1 = p[i + 1]
                if not ((c == 0xE0 and c1 < 0xA0) or (c == 0xED and c1 >= 0xA0)):
                    i += 3
                    continue
        elif c >= 0xF0 and c <= 0xF4:
            if n - i >= 4 and _is_cont(p[i + 1]) and _is_cont(p[i + 2]) and _is_cont(p[i + 3]):
                c1 = p[i + 1]
                if not ((c == 0xF0 and c1 < 0x90) or (c == 0xF4 and c1 >= 0x90)):
                    i += 4
                    continue
        error[0] = b"JSON header is not valid UTF-8"
        return -1
    error[0] = b"JSON header has an unterminated string"
    return -1


cdef inline size_t _utf8(uint32_t cp, unsigned char* out) noexcept nogil:
    if cp < 0x80:
        out[0] = <unsigned char>cp
        return 1
    if cp < 0x800:
        out[0] = <unsigned char>(0xC0 | (cp >> 6))
        out[1] = <unsigned char>(0x80 | (cp & 0x3F))
        return 2
    if cp < 0x10000:
        out[0] = <unsigned char>(0xE0 | (cp >> 12))
        out[1] = <unsigned char>(0x80 | ((cp >> 6) & 0x3F))
        out[2] = <unsigned char>(0x80 | (cp & 0x3F))
        return 3
    out[0] = <unsigned char>(0xF0 | (cp >> 18))
    out[1] = <unsigned char>(0x80 | ((cp >> 12) & 0x3F))
    out[2] = <unsigned char>(0x80 | ((cp >> 6) & 0x3F))
    out[3] = <unsigned char>(0x80 | (cp & 0x3F))
    return 4


cdef inline uint32_t _escape_cp(const unsigned char* p, size_t* i) noexcept nogil:
    """Decode the (validated) escape at ``p[*i]`` (the backslash); advance ``*i`` past it."""
    cdef unsigned char c1 = p[i[0] + 1]
    cdef uint32_t cp = 0, lo = 0
    i[0] += 2
    if c1 == c'b':
        return 8
    if c1 == c'f':
        return 12
    if c1 == c'n':
        return 10
    if c1 == c'r':
        return 13
    if c1 == c't':
        return 9
    if c1 != c'u':
        return c1  # " \ /
    _hex4(p, i[0], i[0] + 4, &cp)
    i[0] += 4
    if cp >= 0xD800 and cp <= 0xDBFF:
        _hex4(p, i[0] + 2, i[0] + 6, &lo)
        i[0] += 6
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
    return cp


cdef inline size_t _unescape(const unsigned char* p, size_t n, unsigned char* out, size_t cap) noexcept nogil:
    """Decode a validated string's raw text to UTF-8.  Returns its length, or cap + 1 if over ``cap``."""
    cdef size_t i = 0, o = 0
    cdef unsigned char tmp[4]
    cdef size_t k
    cdef uint32_t cp
    while i < n:
        if p[i] != c'\\':
            if o >= cap:
                return cap + 1
            out[o] = p[i]
            o += 1
            i += 1
            continue
        cp = _escape_cp(p, &i)
        k = _utf8(cp, tmp)
        if o + k > cap:
            return cap + 1
        memcpy(out + o, tmp, k)
        o += k
    return o


cdef inline size_t _reescape(const unsigned char* p, size_t n, unsigned char* out) noexcept nogil:
    """Re-escape a validated string's raw text as ``json.dumps(ensure_ascii=False)`` writes it.

    Never longer than ``n``: every character that needs an escape in the
    output needed one at least as long in the input.
    """
    cdef size_t i = 0, o = 0
    cdef uint32_t cp
    while i < n:
        if p[i] != c'\\':
            out[o] = p[i]
            o += 1
            i += 1
            continue
        cp = _escape_cp(p, &i)
        if cp == c'"' or cp == c'\\':
            out[o] = c'\\'
            out[o + 1] = <unsigned char>cp
            o += 2
        elif cp < 0x20:
            out[o] = c'\\'
            if cp == 8:
                out[o + 1] = c'b'
            elif cp == 12:
                out[o + 1] = c'f'
            elif cp == 10:
                out[o + 1] = c'n'
            elif cp == 13:
                out[o + 1] = c'r'
            elif cp == 9:
                out[o + 1] = c't'
            else:
                out[o + 1] = c'u'
                out[o + 2] = c'0'
                out[o + 3] = c'0'
                out[o + 4] = (b"0123456789abcdef")[cp >> 4]
                out[o + 5] = (b"0123456789abcdef")[cp & 15]
                o += 4
            o += 2
        else:
            o += _utf8(cp, out + o)
    return o


cdef inline Py_ssize_t _scan_int(const unsigned char* p, size_t i, size_t n, int64_t* out,
                          const char** error) noexcept nogil:
    """The integer at ``p[i]`` (a minus or a digit): returns the index after it, or -1."""
    cdef int neg = 0
    cdef uint64_t mag = 0, limit, d
    if p[i] == c'-':
        neg = 1
        i += 1
    if i >= n or p[i] < c'0' or p[i] > c'9':
        error[0] = b"JSON header has an invalid number"
        return -1
    limit = <uint64_t>0x7FFFFFFFFFFFFFFF + <uint64_t>neg
    if p[i] == c'0':
        i += 1
    else:
        while i < n and p[i] >= c'0' and p[i] <= c'9':
            d = p[i] - c'0'
            if mag > (limit - d) // 10:
                error[0] = b"JSON header has an integer outside the 64-bit range"
                return -1
            mag = mag * 10 + d
            i += 1
    if i < n and (p[i] == c'.' or p[i] == c'e' or p[i] == c'E'):
        error[0] = b"JSON header has a float; only strings and integers are accepted"
        return -1
    if neg:
        out[0] = <int64_t>(0 - mag)
    else:
        out[0] = <int64_t>mag
    return <Py_ssize_t>i


cdef inline wire_value_t* _slot(wire_header_t* h, const unsigned char* key, size_t n) noexcept nogil:
    """The header field a (decoded) key names, or NULL for an unknown key."""
    if n == 9 and memcmp(key, b"byteorder", 9) == 0:
        return &h.byteorder
    if n == 10 and memcmp(key, b"request-id", 10) == 0:
        return &h.request_id
    if n == 12 and memcmp(key, b"content-type", 12) == 0:
        return &h.content_type
    if n == 14 and memcmp(key, b"content-length", 14) == 0:
        return &h.content_length
    if n == 16 and memcmp(key, b"content-encoding", 16) == 0:
        return &h.content_encoding
    return NULL


# Parse and validate one header (the JSON text, without its length prefix).
# Returns 0, or -1 with ``h.error`` set.
cdef inline int wire_json_parse_header(const unsigned char* p, size_t n, uint64_t max_message,
                                wire_header_t* h) noexcept nogil:
    cdef size_t i, ks, kn
    cdef Py_ssize_t end
    cdef int escaped
    cdef unsigned char keybuf[24]
    cdef wire_value_t* slot
    cdef wire_value_t v
    h.byteorder.kind = WIRE_ABSENT
    h.content_type.kind = WIRE_ABSENT
    h.content_encoding.kind = WIRE_ABSENT
    h.content_length.kind = WIRE_ABSENT
    h.request_id.kind = WIRE_ABSENT
    h.error = NULL
    i = _skip_ws(p, 0, n)
    if i >= n or p[i] != c'{':
        h.error = b"JSON header is not a JSON object"
        return -1
    i = _skip_ws(p, i + 1, n)
    if i < n and p[i] == c'}':
        i += 1
    else:
        while True:
            # key
            if i >= n or p[i] != c'"':
                h.error = b"JSON header is not valid JSON: expected a string key"
                return -1
            ks = i + 1
            end = _scan_string(p, ks, n, &escaped, &h.error)
            if end < 0:
                return -1
            kn = <size_t>end - ks
            if escaped:
                kn = _unescape(p + ks, kn, keybuf, sizeof(keybuf))
                slot = _slot(h, keybuf, kn)
            else:
                slot = _slot(h, p + ks, kn)
            i = _skip_ws(p, <size_t>end + 1, n)
            if i >= n or p[i] != c':':
                h.error = b"JSON header is not valid JSON: expected ':'"
                return -1
            i = _skip_ws(p, i + 1, n)
            if i >= n:
                h.error = b"JSON header is not valid JSON: expected a value"
                return -1
            # value: a string or an integer, nothing else
            if p[i] == c'"':
                end = _scan_string(p, i + 1, n, &escaped, &h.error)
                if end < 0:
                    return -1
                v.off = <uint32_t>(i + 1)
                v.len = <uint32_t>(<size_t>end - i - 1)
                v.kind = WIRE_STRING_ESC if escaped else WIRE_STRING
                v.ival = 0
                i = <size_t>end + 1
            elif p[i] == c'-' or (p[i] >= c'0' and p[i] <= c'9'):
                end = _scan_int(p, i, n, &v.ival, &h.error)
                if end < 0:
                    return -1
                v.off = <uint32_t>i
                v.len = <uint32_t>(<size_t>end - i)
                v.kind = WIRE_INT
                i = <size_t>end
            else:
                h.error = b"JSON header has a value that is not a string or an integer"
                return -1
            if slot != NULL:
                slot[0] = v  # a duplicate key: the last value wins
            i = _skip_ws(p, i, n)
            if i < n and p[i] == c',':
                i = _skip_ws(p, i + 1, n)
                continue
            if i < n and p[i] == c'}':
                i += 1
                break
            h.error = b"JSON header is not valid JSON: expected ',' or '}'"
            return -1
    if _skip_ws(p, i, n) != n:
        h.error = b"JSON header is not valid JSON: extra data after the object"
        return -1
    if h.byteorder.kind == WIRE_ABSENT:
        h.error = b"JSON header is missing required key 'byteorder'"
        return -1
    if h.content_length.kind == WIRE_ABSENT:
        h.error = b"JSON header is missing required key 'content-length'"
        return -1
    if h.content_type.kind == WIRE_ABSENT:
        h.error = b"JSON header is missing required key 'content-type'"
        return -1
    if h.content_encoding.kind == WIRE_ABSENT:
        h.error = b"JSON header is missing required key 'content-encoding'"
        return -1
    if h.content_length.kind != WIRE_INT:
        h.error = b"content-length is not an integer"
        return -1
    if h.content_length.ival < 0:
        h.error = b"content-length is negative"
        return -1
    if <uint64_t>h.content_length.ival > max_message:
        h.error = b"content-length is over the limit"
        return -1
    return 0


# The message that starts at ``p`` (``n`` bytes there).  WIRE_COMPLETE:
# ``*need`` is its whole size and ``h`` its parsed header (value offsets are
# relative to ``p + WIRE_JSON_PREFIX``).  WIRE_NEED_MORE: ``*need`` is how many
# bytes from ``p`` the next decision needs (a header is parsed and validated as
# soon as it is complete, so ``content-length`` is checked before any content
# is buffered).  WIRE_MALFORMED: ``h.error`` says why.
cdef inline int wire_json_message(const unsigned char* p, size_t n, uint64_t max_message,
                           wire_header_t* h, size_t* need) noexcept nogil:
    cdef size_t hlen, total
    if n < WIRE_JSON_PREFIX:
        need[0] = WIRE_JSON_PREFIX
        return WIRE_NEED_MORE
    hlen = (<size_t>p[0] << 8) | p[1]
    if hlen == 0:
        h.error = b"JSON header length is 0"
        return WIRE_MALFORMED
    if n < WIRE_JSON_PREFIX + hlen:
        need[0] = WIRE_JSON_PREFIX + hlen
        return WIRE_NEED_MORE
    if wire_json_parse_header(p + WIRE_JSON_PREFIX, hlen, max_message, h) < 0:
        return WIRE_MALFORMED
    total = WIRE_JSON_PREFIX + hlen + <size_t>h.content_length.ival
    need[0] = total
    return WIRE_COMPLETE if n >= total else WIRE_NEED_MORE


# --- json: building headers ---------------------------------------------------------------------


cdef inline size_t _put(unsigned char* out, const char* s, size_t n) noexcept nogil:
    memcpy(out, s, n)
    return n


cdef inline size_t _put_uint(unsigned char* out, uint64_t v) noexcept nogil:
    cdef unsigned char tmp[20]
    cdef size_t k = 0, j
    while True:
        tmp[k] = <unsigned char>(c'0' + v % 10)
        k += 1
        v //= 10
        if v == 0:
            break
    for j in range(k):
        out[j] = tmp[k - 1 - j]
    return k


cdef inline size_t _put_int(unsigned char* out, int64_t v) noexcept nogil:
    if v < 0:
        out[0] = c'-'
        return 1 + _put_uint(out + 1, 0 - <uint64_t>v)
    return _put_uint(out, <uint64_t>v)


cdef inline size_t _put_value(unsigned char* out, const unsigned char* hdr, const wire_value_t* v) noexcept nogil:
    cdef size_t o
    if v.kind == WIRE_INT:
        return _put_int(out, v.ival)
    out[0] = c'"'
    if v.kind == WIRE_STRING:
        memcpy(out + 1, hdr + v.off, v.len)
        o = 1 + v.len
    else:
        o = 1 + _reescape(hdr + v.off, v.len, out + 1)
    out[o] = c'"'
    return o + 1


# Write the answer's 2-byte prefix and JSON header into ``out`` (``cap`` bytes)
# for the request header ``hdr`` parsed into ``h``.  Returns the bytes written,
# or -1 if ``cap`` is below a safe bound (request header + 2 + 128 is always
# enough).  The result is never longer than the request's own prefix + header.
cdef inline Py_ssize_t wire_json_response_header(const unsigned char* hdr, const wire_header_t* h,
                                          uint64_t content_length, unsigned char* out,
                                          size_t cap) noexcept nogil:
    # The worst case, before re-escaping (which never grows a string):
    # prefix 2 + keys and punctuation 88 + three raw values + 20 digits.
    cdef size_t bound = 2 + 88 + h.content_type.len + h.content_encoding.len + 20 + 2
    cdef size_t o = 2, jlen
    if h.request_id.kind != WIRE_ABSENT:
        bound += h.request_id.len + 2
    if bound > cap:
        return -1
    o += _put(out + o, b'{"content-type":', 16)
    o += _put_value(out + o, hdr, &h.content_type)
    o += _put(out + o, b',"content-encoding":', 20)
    o += _put_value(out + o, hdr, &h.content_encoding)
    o += _put(out + o, b',"content-length":', 18)
    o += _put_uint(out + o, content_length)
    if h.request_id.kind != WIRE_ABSENT:
        o += _put(out + o, b',"request-id":', 14)
        o += _put_value(out + o, hdr, &h.request_id)
    out[o] = c'}'
    o += 1
    jlen = o - 2
    if jlen > WIRE_JSON_HEADER_MAX:
        return -1
    out[0] = <unsigned char>(jlen >> 8)
    out[1] = <unsigned char>(jlen & 0xFF)
    return <Py_ssize_t>o


# A client's request prefix + header (byteorder little, content-encoding
# binary, the content-type of the tutorial's client) for ``content_length``
# bytes, with an integer request-id unless ``request_id`` < 0.  Returns the
# bytes written, or -1 if ``cap`` < 142.
cdef inline Py_ssize_t wire_json_request_header(uint64_t content_length, int64_t request_id,
                                         unsigned char* out, size_t cap) noexcept nogil:
    cdef size_t o = 2
    if cap < 2 + 140:
        return -1
    o += _put(out + o, b'{"byteorder":"little","content-type":"binary/custom-client-binary-type",', 72)
    o += _put(out + o, b'"content-encoding":"binary","content-length":', 45)
    o += _put_uint(out + o, content_length)
    if request_id >= 0:
        o += _put(out + o, b',"request-id":', 14)
        o += _put_int(out + o, request_id)
    out[o] = c'}'
    o += 1
    out[0] = <unsigned char>((o - 2) >> 8)
    out[1] = <unsigned char>((o - 2) & 0xFF)
    return <Py_ssize_t>o
