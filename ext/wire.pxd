# The C declarations of ext/wire.h: the framed wire protocols (frame, json) in C.
#
# Every ext/ module that parses or builds messages cimports them from here
# (``from wire cimport ...``); the code itself is static inline C in wire.h,
# which the reference C client (bench/calibrate/ref_client.c) includes too.
# wire.h says why it is header-only; ext/wire.pyx explains the design.

from libc.stdint cimport uint32_t, int64_t, uint64_t


cdef extern from "wire.h" nogil:
    enum:
        WIRE_FRAME_PREFIX
        WIRE_JSON_PREFIX
        WIRE_JSON_HEADER_MAX
        WIRE_REQUEST_HEADER_CAP

        # wire_value_t.kind
        WIRE_ABSENT
        WIRE_STRING
        WIRE_STRING_ESC
        WIRE_INT

        # what a look at one message found
        WIRE_MALFORMED
        WIRE_NEED_MORE
        WIRE_COMPLETE

    ctypedef struct wire_value_t:
        uint32_t off
        uint32_t len
        int kind
        int64_t ival

    ctypedef struct wire_header_t:
        wire_value_t byteorder
        wire_value_t content_type
        wire_value_t content_encoding
        wire_value_t content_length
        wire_value_t request_id
        const char* error

    ssize_t wire_frame_scan(const unsigned char* p, size_t n, uint64_t max_message,
                            size_t* consumed, size_t* need)
    int wire_json_parse_object(const unsigned char* p, size_t n, wire_header_t* h)
    int wire_json_check_request(wire_header_t* h, uint64_t max_message)
    int wire_json_parse_header(const unsigned char* p, size_t n, uint64_t max_message, wire_header_t* h)
    int wire_json_message(const unsigned char* p, size_t n, uint64_t max_message,
                          wire_header_t* h, size_t* need)
    ssize_t wire_json_response_header(const unsigned char* hdr, const wire_header_t* h,
                                      uint64_t content_length, unsigned char* out, size_t cap)
    ssize_t wire_json_request_header(uint64_t content_length, int64_t request_id,
                                     unsigned char* out, size_t cap)
    size_t wire_unescape(const unsigned char* p, size_t n, unsigned char* out, size_t cap)
