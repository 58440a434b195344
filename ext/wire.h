/*
 * wire.h: the framed wire protocols (frame, json) in C, header-only.
 *
 * Shared by the Cython modules (declared in ext/wire.pxd through
 * `cdef extern from "wire.h" nogil:`) and by the reference C client
 * (bench/calibrate/ref_client.c), so that a server, the load generator and the
 * reference client parse and build messages with the very same code.
 *
 * Why header-only and static inline: the hot loops call these per message,
 * directly (no function-pointer table, no run-time import between extension
 * modules), and each user compiles its own copy.  Nothing here allocates,
 * touches Python, or copies a request: the callers own every buffer.  The
 * wire spec is the docstring of sockbench.servers.protocols; the design (what
 * is strict, why the answer is rebuilt) is the docstring of ext/wire.pyx.
 *
 * API (everything named wire__* is a helper):
 *   wire_frame_scan            complete frames at the start of a buffer, or a length over the limit
 *   wire_json_message          the state of the json message at the start of a buffer
 *   wire_json_parse_header     a request header: the flat object, then the required keys
 *   wire_json_parse_object     the strict flat-JSON object parser alone (an answer has no byteorder)
 *   wire_json_check_request    the required keys and content-length of a parsed request header
 *   wire_json_response_header  the answer's prefix + header
 *   wire_json_request_header   a client's request prefix + header
 *   wire_unescape              a validated string's raw text, decoded to UTF-8
 */
#ifndef SOCKBENCH_WIRE_H
#define SOCKBENCH_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>

enum {
    WIRE_FRAME_PREFIX = 4,        /* frame: 4-byte big-endian payload length */
    WIRE_JSON_PREFIX = 2,         /* json: 2-byte big-endian header length */
    WIRE_JSON_HEADER_MAX = 65535,
    WIRE_REQUEST_HEADER_CAP = 142 /* wire_json_request_header needs this much room */
};

/* wire_value_t.kind */
enum {
    WIRE_ABSENT = 0,
    WIRE_STRING = 1,              /* a string whose raw text has no backslash */
    WIRE_STRING_ESC = 2,          /* a string with escapes in its raw text */
    WIRE_INT = 3                  /* an integer that fits in int64_t */
};

/* what a look at one message found */
enum {
    WIRE_MALFORMED = -1,
    WIRE_NEED_MORE = 0,
    WIRE_COMPLETE = 1
};

typedef struct {
    uint32_t off;   /* where the raw text starts in the header (for a string: after the quote) */
    uint32_t len;   /* raw text length (for a string: without the quotes) */
    int kind;       /* WIRE_ABSENT, WIRE_STRING, WIRE_STRING_ESC or WIRE_INT */
    int64_t ival;   /* the value of a WIRE_INT */
} wire_value_t;

typedef struct {
    wire_value_t byteorder;
    wire_value_t content_type;
    wire_value_t content_encoding;
    wire_value_t content_length;
    wire_value_t request_id;
    const char *error;  /* why it was rejected (a static string), or NULL */
} wire_header_t;


/* --- frame ---------------------------------------------------------------------------------- */

static inline uint64_t wire__be32(const unsigned char *p) {
    return ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | (uint64_t)p[3];
}

/* Walk the complete frames at the start of p[0:n].  *consumed gets their total
 * size (the answer: a frame is answered by itself) and *need the size the
 * message after them needs, counted from p + *consumed (4, or 4 + its length).
 * Returns the number of complete frames, or WIRE_MALFORMED when a length is
 * over max_message (*consumed then covers the frames before it). */
static inline ssize_t wire_frame_scan(const unsigned char *p, size_t n, uint64_t max_message,
                                      size_t *consumed, size_t *need) {
    size_t pos = 0;
    ssize_t count = 0;
    for (;;) {
        if (n - pos < WIRE_FRAME_PREFIX) {
            *need = WIRE_FRAME_PREFIX;
            break;
        }
        uint64_t length = wire__be32(p + pos);
        if (length > max_message) {
            *consumed = pos;
            *need = WIRE_FRAME_PREFIX;
            return WIRE_MALFORMED;
        }
        if (n - pos - WIRE_FRAME_PREFIX < length) {
            *need = WIRE_FRAME_PREFIX + (size_t)length;
            break;
        }
        pos += WIRE_FRAME_PREFIX + (size_t)length;
        count++;
    }
    *consumed = pos;
    return count;
}


/* --- json: strings ---------------------------------------------------------------------------- */

static inline size_t wire__skip_ws(const unsigned char *p, size_t i, size_t n) {
    while (i < n && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t'))
        i++;
    return i;
}

static inline int wire__hexval(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The 4 hex digits at p[i:i+4] into *out; -1 if they are not. */
static inline int wire__hex4(const unsigned char *p, size_t i, size_t n, uint32_t *out) {
    uint32_t v = 0;
    if (n - i < 4) return -1;
    for (int k = 0; k < 4; k++) {
        int d = wire__hexval(p[i + k]);
        if (d < 0) return -1;
        v = (v << 4) | (uint32_t)d;
    }
    *out = v;
    return 0;
}

static inline int wire__is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

/* Validate the escape whose backslash is at p[i]; returns the index after it, or -1 with *error. */
static inline ssize_t wire__scan_escape(const unsigned char *p, size_t i, size_t n, const char **error) {
    uint32_t cp, lo;
    if (i + 1 >= n) {
        *error = "JSON header has an unterminated string";
        return -1;
    }
    unsigned char c1 = p[i + 1];
    if (c1 == '"' || c1 == '\\' || c1 == '/' || c1 == 'b' || c1 == 'f' || c1 == 'n' || c1 == 'r' || c1 == 't')
        return (ssize_t)(i + 2);
    if (c1 != 'u') {
        *error = "JSON header has an invalid escape in a string";
        return -1;
    }
    if (wire__hex4(p, i + 2, n, &cp) < 0) {
        *error = "JSON header has an invalid \\uXXXX escape";
        return -1;
    }
    i += 6;
    if (cp >= 0xDC00 && cp <= 0xDFFF) {
        *error = "JSON header has a lone low surrogate escape";
        return -1;
    }
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        /* a high surrogate must be followed by a low one */
        if (n - i < 6 || p[i] != '\\' || p[i + 1] != 'u' || wire__hex4(p, i + 2, n, &lo) < 0
                || lo < 0xDC00 || lo > 0xDFFF) {
            *error = "JSON header has a lone high surrogate escape";
            return -1;
        }
        i += 6;
    }
    return (ssize_t)i;
}

/* The length of the UTF-8 sequence (lead byte >= 0x80) at p[i], or 0 if it is
 * invalid: as strict as Python's decoder (no overlong forms, no encoded
 * surrogates, nothing above U+10FFFF). */
static inline size_t wire__utf8_seq(const unsigned char *p, size_t i, size_t n) {
    unsigned char c = p[i];
    if (c >= 0xC2 && c <= 0xDF)
        return (n - i >= 2 && wire__is_cont(p[i + 1])) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n - i < 3 || !wire__is_cont(p[i + 1]) || !wire__is_cont(p[i + 2])) return 0;
        unsigned char c1 = p[i + 1];
        return ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0)) ? 0 : 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n - i < 4 || !wire__is_cont(p[i + 1]) || !wire__is_cont(p[i + 2]) || !wire__is_cont(p[i + 3]))
            return 0;
        unsigned char c1 = p[i + 1];
        return ((c == 0xF0 && c1 < 0x90) || (c == 0xF4 && c1 >= 0x90)) ? 0 : 4;
    }
    return 0;
}

/* Validate the string whose text starts at p[i] (after the opening quote).
 * Returns the index of the closing quote (*escaped: whether it holds a
 * backslash), or -1 with *error set. */
static inline ssize_t wire__scan_string(const unsigned char *p, size_t i, size_t n, int *escaped,
                                        const char **error) {
    *escaped = 0;
    while (i < n) {
        unsigned char c = p[i];
        if (c == '"') return (ssize_t)i;
        if (c == '\\') {
            *escaped = 1;
            ssize_t next = wire__scan_escape(p, i, n, error);
            if (next < 0) return -1;
            i = (size_t)next;
        } else if (c < 0x20) {
            *error = "JSON header has a control character inside a string";
            return -1;
        } else if (c < 0x80) {
            i++;
        } else {
            size_t k = wire__utf8_seq(p, i, n);
            if (k == 0) {
                *error = "JSON header is not valid UTF-8";
                return -1;
            }
            i += k;
        }
    }
    *error = "JSON header has an unterminated string";
    return -1;
}

static inline size_t wire__utf8(uint32_t cp, unsigned char *out) {
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Decode the (validated) escape at p[*i] (the backslash); advance *i past it. */
static inline uint32_t wire__escape_cp(const unsigned char *p, size_t *i) {
    unsigned char c1 = p[*i + 1];
    uint32_t cp = 0, lo = 0;
    *i += 2;
    switch (c1) {
    case 'b': return 8;
    case 'f': return 12;
    case 'n': return 10;
    case 'r': return 13;
    case 't': return 9;
    case 'u': break;
    default: return c1; /* " \ / */
    }
    wire__hex4(p, *i, *i + 4, &cp);
    *i += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        wire__hex4(p, *i + 2, *i + 6, &lo);
        *i += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    return cp;
}

/* Decode a validated string's raw text p[0:n] to UTF-8 into out.  Returns its
 * length, or cap + 1 if it is longer than cap. */
static inline size_t wire_unescape(const unsigned char *p, size_t n, unsigned char *out, size_t cap) {
    size_t i = 0, o = 0;
    unsigned char tmp[4];
    while (i < n) {
        if (p[i] != '\\') {
            if (o >= cap) return cap + 1;
            out[o++] = p[i++];
            continue;
        }
        size_t k = wire__utf8(wire__escape_cp(p, &i), tmp);
        if (o + k > cap) return cap + 1;
        memcpy(out + o, tmp, k);
        o += k;
    }
    return o;
}

/* Re-escape a validated string's raw text as json.dumps(ensure_ascii=False)
 * writes it.  Never longer than n: every character that needs an escape in the
 * output needed one at least as long in the input. */
static inline size_t wire__reescape(const unsigned char *p, size_t n, unsigned char *out) {
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, o = 0;
    while (i < n) {
        if (p[i] != '\\') {
            out[o++] = p[i++];
            continue;
        }
        uint32_t cp = wire__escape_cp(p, &i);
        if (cp == '"' || cp == '\\') {
            out[o++] = '\\';
            out[o++] = (unsigned char)cp;
        } else if (cp < 0x20) {
            out[o++] = '\\';
            switch (cp) {
            case 8: out[o++] = 'b'; break;
            case 12: out[o++] = 'f'; break;
            case 10: out[o++] = 'n'; break;
            case 13: out[o++] = 'r'; break;
            case 9: out[o++] = 't'; break;
            default:
                out[o++] = 'u';
                out[o++] = '0';
                out[o++] = '0';
                out[o++] = (unsigned char)hex[cp >> 4];
                out[o++] = (unsigned char)hex[cp & 15];
            }
        } else {
            o += wire__utf8(cp, out + o);
        }
    }
    return o;
}


/* --- json: the header parser ------------------------------------------------------------------ */

/* The integer at p[i] (a minus or a digit) into *out: returns the index after it, or -1 with *error. */
static inline ssize_t wire__scan_int(const unsigned char *p, size_t i, size_t n, int64_t *out,
                                     const char **error) {
    int neg = 0;
    uint64_t mag = 0, limit;
    if (p[i] == '-') {
        neg = 1;
        i++;
    }
    if (i >= n || p[i] < '0' || p[i] > '9') {
        *error = "JSON header has an invalid number";
        return -1;
    }
    limit = (uint64_t)0x7FFFFFFFFFFFFFFF + (uint64_t)neg;
    if (p[i] == '0') {
        i++;
    } else {
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            uint64_t d = p[i] - '0';
            if (mag > (limit - d) / 10) {
                *error = "JSON header has an integer outside the 64-bit range";
                return -1;
            }
            mag = mag * 10 + d;
            i++;
        }
    }
    if (i < n && (p[i] == '.' || p[i] == 'e' || p[i] == 'E')) {
        *error = "JSON header has a float; only strings and integers are accepted";
        return -1;
    }
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return (ssize_t)i;
}

/* The header field a (decoded) key names, or NULL for an unknown key. */
static inline wire_value_t *wire__slot(wire_header_t *h, const unsigned char *key, size_t n) {
    if (n == 9 && memcmp(key, "byteorder", 9) == 0) return &h->byteorder;
    if (n == 10 && memcmp(key, "request-id", 10) == 0) return &h->request_id;
    if (n == 12 && memcmp(key, "content-type", 12) == 0) return &h->content_type;
    if (n == 14 && memcmp(key, "content-length", 14) == 0) return &h->content_length;
    if (n == 16 && memcmp(key, "content-encoding", 16) == 0) return &h->content_encoding;
    return NULL;
}

/* The key at p[i] (its opening quote) and the ':' after it: *slot gets the
 * field it names (NULL if unknown).  Returns the index after the ':' and its
 * whitespace, or -1 with h->error. */
static inline ssize_t wire__parse_key(const unsigned char *p, size_t i, size_t n, wire_header_t *h,
                                      wire_value_t **slot) {
    unsigned char keybuf[24];
    int escaped;
    if (i >= n || p[i] != '"') {
        h->error = "JSON header is not valid JSON: expected a string key";
        return -1;
    }
    size_t ks = i + 1;
    ssize_t end = wire__scan_string(p, ks, n, &escaped, &h->error);
    if (end < 0) return -1;
    size_t kn = (size_t)end - ks;
    if (escaped) {
        /* keys are compared decoded: "content\u002dlength" is content-length */
        kn = wire_unescape(p + ks, kn, keybuf, sizeof(keybuf));
        *slot = wire__slot(h, keybuf, kn);
    } else {
        *slot = wire__slot(h, p + ks, kn);
    }
    i = wire__skip_ws(p, (size_t)end + 1, n);
    if (i >= n || p[i] != ':') {
        h->error = "JSON header is not valid JSON: expected ':'";
        return -1;
    }
    i = wire__skip_ws(p, i + 1, n);
    if (i >= n) {
        h->error = "JSON header is not valid JSON: expected a value";
        return -1;
    }
    return (ssize_t)i;
}

/* The value at p[i]: a string or an integer, nothing else.  Returns the index after it, or -1 with *error. */
static inline ssize_t wire__parse_value(const unsigned char *p, size_t i, size_t n, wire_value_t *v,
                                        const char **error) {
    ssize_t end;
    int escaped;
    if (p[i] == '"') {
        end = wire__scan_string(p, i + 1, n, &escaped, error);
        if (end < 0) return -1;
        v->off = (uint32_t)(i + 1);
        v->len = (uint32_t)((size_t)end - i - 1);
        v->kind = escaped ? WIRE_STRING_ESC : WIRE_STRING;
        v->ival = 0;
        return end + 1;
    }
    if (p[i] == '-' || (p[i] >= '0' && p[i] <= '9')) {
        end = wire__scan_int(p, i, n, &v->ival, error);
        if (end < 0) return -1;
        v->off = (uint32_t)i;
        v->len = (uint32_t)((size_t)end - i);
        v->kind = WIRE_INT;
        return end;
    }
    *error = "JSON header has a value that is not a string or an integer";
    return -1;
}

/* Parse one flat JSON object (the header text p[0:n], without its length
 * prefix) into h: every value a string or an integer, unknown keys validated
 * and skipped, the last of duplicate keys wins.  No key is required here.
 * Returns 0, or -1 with h->error set. */
static inline int wire_json_parse_object(const unsigned char *p, size_t n, wire_header_t *h) {
    wire_value_t *slot, v;
    ssize_t next;
    memset(h, 0, sizeof(*h)); /* every field WIRE_ABSENT, no error */
    size_t i = wire__skip_ws(p, 0, n);
    if (i >= n || p[i] != '{') {
        h->error = "JSON header is not a JSON object";
        return -1;
    }
    i = wire__skip_ws(p, i + 1, n);
    if (i < n && p[i] == '}') {
        i++;
    } else {
        for (;;) {
            next = wire__parse_key(p, i, n, h, &slot);
            if (next < 0) return -1;
            next = wire__parse_value(p, (size_t)next, n, &v, &h->error);
            if (next < 0) return -1;
            if (slot != NULL) *slot = v;
            i = wire__skip_ws(p, (size_t)next, n);
            if (i < n && p[i] == ',') {
                i = wire__skip_ws(p, i + 1, n);
                continue;
            }
            if (i < n && p[i] == '}') {
                i++;
                break;
            }
            h->error = "JSON header is not valid JSON: expected ',' or '}'";
            return -1;
        }
    }
    if (wire__skip_ws(p, i, n) != n) {
        h->error = "JSON header is not valid JSON: extra data after the object";
        return -1;
    }
    return 0;
}

/* The checks a request header passes after wire_json_parse_object: the
 * required keys, and a content-length that is an integer in 0..max_message.
 * Returns 0, or -1 with h->error set. */
static inline int wire_json_check_request(wire_header_t *h, uint64_t max_message) {
    if (h->byteorder.kind == WIRE_ABSENT)
        h->error = "JSON header is missing required key 'byteorder'";
    else if (h->content_length.kind == WIRE_ABSENT)
        h->error = "JSON header is missing required key 'content-length'";
    else if (h->content_type.kind == WIRE_ABSENT)
        h->error = "JSON header is missing required key 'content-type'";
    else if (h->content_encoding.kind == WIRE_ABSENT)
        h->error = "JSON header is missing required key 'content-encoding'";
    else if (h->content_length.kind != WIRE_INT)
        h->error = "content-length is not an integer";
    else if (h->content_length.ival < 0)
        h->error = "content-length is negative";
    else if ((uint64_t)h->content_length.ival > max_message)
        h->error = "content-length is over the limit";
    else
        return 0;
    return -1;
}

/* Parse and validate one request header (the JSON text, without its length
 * prefix).  Returns 0, or -1 with h->error set. */
static inline int wire_json_parse_header(const unsigned char *p, size_t n, uint64_t max_message,
                                         wire_header_t *h) {
    if (wire_json_parse_object(p, n, h) < 0) return -1;
    return wire_json_check_request(h, max_message);
}

/* The message that starts at p (n bytes there).  WIRE_COMPLETE: *need is its
 * whole size and h its parsed header (value offsets are relative to
 * p + WIRE_JSON_PREFIX).  WIRE_NEED_MORE: *need is how many bytes from p the
 * next decision needs (a header is parsed and validated as soon as it is
 * complete, so content-length is checked before any content is buffered).
 * WIRE_MALFORMED: h->error says why. */
static inline int wire_json_message(const unsigned char *p, size_t n, uint64_t max_message,
                                    wire_header_t *h, size_t *need) {
    if (n < WIRE_JSON_PREFIX) {
        *need = WIRE_JSON_PREFIX;
        return WIRE_NEED_MORE;
    }
    size_t hlen = ((size_t)p[0] << 8) | p[1];
    if (hlen == 0) {
        h->error = "JSON header length is 0";
        return WIRE_MALFORMED;
    }
    if (n < WIRE_JSON_PREFIX + hlen) {
        *need = WIRE_JSON_PREFIX + hlen;
        return WIRE_NEED_MORE;
    }
    if (wire_json_parse_header(p + WIRE_JSON_PREFIX, hlen, max_message, h) < 0)
        return WIRE_MALFORMED;
    size_t total = WIRE_JSON_PREFIX + hlen + (size_t)h->content_length.ival;
    *need = total;
    return n >= total ? WIRE_COMPLETE : WIRE_NEED_MORE;
}


/* --- json: building headers ------------------------------------------------------------------- */

static inline size_t wire__put(unsigned char *out, const char *s, size_t n) {
    memcpy(out, s, n);
    return n;
}

static inline size_t wire__put_uint(unsigned char *out, uint64_t v) {
    unsigned char tmp[20];
    size_t k = 0;
    do {
        tmp[k++] = (unsigned char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t j = 0; j < k; j++) out[j] = tmp[k - 1 - j];
    return k;
}

static inline size_t wire__put_int(unsigned char *out, int64_t v) {
    if (v < 0) {
        out[0] = '-';
        return 1 + wire__put_uint(out + 1, 0 - (uint64_t)v);
    }
    return wire__put_uint(out, (uint64_t)v);
}

static inline size_t wire__put_value(unsigned char *out, const unsigned char *hdr, const wire_value_t *v) {
    size_t o;
    if (v->kind == WIRE_INT) return wire__put_int(out, v->ival);
    out[0] = '"';
    if (v->kind == WIRE_STRING) {
        memcpy(out + 1, hdr + v->off, v->len);
        o = 1 + v->len;
    } else {
        o = 1 + wire__reescape(hdr + v->off, v->len, out + 1);
    }
    out[o] = '"';
    return o + 1;
}

static inline void wire__put_prefix(unsigned char *out, size_t jlen) {
    out[0] = (unsigned char)(jlen >> 8);
    out[1] = (unsigned char)(jlen & 0xFF);
}

/* Write the answer's 2-byte prefix and JSON header into out (cap bytes) for
 * the request header hdr parsed into h.  Returns the bytes written, or -1 if
 * cap is below a safe bound (request header + 2 + 128 is always enough).  The
 * result is never longer than the request's own prefix + header. */
static inline ssize_t wire_json_response_header(const unsigned char *hdr, const wire_header_t *h,
                                                uint64_t content_length, unsigned char *out, size_t cap) {
    /* The worst case, before re-escaping (which never grows a string):
       prefix 2 + keys and punctuation 88 + three raw values + 20 digits. */
    size_t bound = 2 + 88 + h->content_type.len + h->content_encoding.len + 20 + 2;
    size_t o = 2;
    if (h->request_id.kind != WIRE_ABSENT) bound += h->request_id.len + 2;
    if (bound > cap) return -1;
    o += wire__put(out + o, "{\"content-type\":", 16);
    o += wire__put_value(out + o, hdr, &h->content_type);
    o += wire__put(out + o, ",\"content-encoding\":", 20);
    o += wire__put_value(out + o, hdr, &h->content_encoding);
    o += wire__put(out + o, ",\"content-length\":", 18);
    o += wire__put_uint(out + o, content_length);
    if (h->request_id.kind != WIRE_ABSENT) {
        o += wire__put(out + o, ",\"request-id\":", 14);
        o += wire__put_value(out + o, hdr, &h->request_id);
    }
    out[o++] = '}';
    if (o - 2 > WIRE_JSON_HEADER_MAX) return -1;
    wire__put_prefix(out, o - 2);
    return (ssize_t)o;
}

/* A client's request prefix + header (byteorder little, content-encoding
 * binary, the content-type of the tutorial's client) for content_length bytes,
 * with an integer request-id unless request_id < 0.  Returns the bytes
 * written, or -1 if cap < WIRE_REQUEST_HEADER_CAP. */
static inline ssize_t wire_json_request_header(uint64_t content_length, int64_t request_id,
                                               unsigned char *out, size_t cap) {
    size_t o = 2;
    if (cap < WIRE_REQUEST_HEADER_CAP) return -1;
    o += wire__put(out + o, "{\"byteorder\":\"little\",\"content-type\":\"binary/custom-client-binary-type\",", 72);
    o += wire__put(out + o, "\"content-encoding\":\"binary\",\"content-length\":", 45);
    o += wire__put_uint(out + o, content_length);
    if (request_id >= 0) {
        o += wire__put(out + o, ",\"request-id\":", 14);
        o += wire__put_int(out + o, request_id);
    }
    out[o++] = '}';
    wire__put_prefix(out, o - 2);
    return (ssize_t)o;
}

#endif /* SOCKBENCH_WIRE_H */
