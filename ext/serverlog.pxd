# The C servers' log lines: one write(2) each, worded as servers/contract.py words them.
#
# ext/epoll_echo.pyx, ext/tls_echo.pyx and ext/uring_echo.pyx write the same lines as every Python
# server (``sockbench serve NAME: closing HOST:PORT: REASON``, the accept
# pause's line), from inside their nogil loops, where there is no Python and
# no stdio: a line is built in a stack buffer with ``put_str``/``put_num``/
# ``put_peer`` and written whole with one ``write(2)`` (``log_line``), so that
# lines of several processes never interleave.  ``cdef inline`` in a .pxd, as
# serveloop.pxd: Cython pastes them into each module.

from libc.stdint cimport uint64_t

from posix cimport (
    EMFILE, ENFILE, ENOBUFS,
    write, strerror,
    getpeername, sockaddr, sockaddr_storage, sockaddr_in, sockaddr_in6, socklen_t,
    AF_INET, AF_INET6, AF_UNIX, ntohs, inet_ntop,
)
cimport posix


cdef enum:
    ACCEPT_LOG_EVERY_MS = 1000   # at most one line a second about failing accepts (``log_accept_pause``)


cdef inline size_t put_str(char* out, size_t o, size_t cap, const char* s) noexcept nogil:
    """Append the C string ``s`` to ``out[:cap]`` at ``o``; the new end (cut short at ``cap``)."""
    while s[0] != 0 and o < cap:
        out[o] = s[0]
        o += 1
        s += 1
    return o


cdef inline size_t put_num(char* out, size_t o, size_t cap, uint64_t v) noexcept nogil:
    """Append ``v`` in decimal."""
    cdef char tmp[24]
    cdef int k = 0
    while True:
        tmp[k] = <char>(48 + v % 10)
        k += 1
        v //= 10
        if v == 0:
            break
    while k > 0 and o < cap:
        k -= 1
        out[o] = tmp[k]
        o += 1
    return o


cdef inline size_t put_peer(char* line, size_t o, size_t cap, int fd) noexcept nogil:
    """The peer of ``fd`` as ``contract.format_peer`` spells it: HOST:PORT, [V6]:PORT, a unix peer."""
    cdef char host[64]
    cdef sockaddr_storage ss
    cdef socklen_t sl = sizeof(ss)
    if getpeername(fd, <sockaddr*>&ss, &sl) == 0:
        if ss.ss_family == AF_INET and inet_ntop(AF_INET, &(<sockaddr_in*>&ss).sin_addr, host, sizeof(host)) != NULL:
            o = put_str(line, o, cap, host)
            o = put_str(line, o, cap, b":")
            return put_num(line, o, cap, ntohs((<sockaddr_in*>&ss).sin_port))
        if ss.ss_family == AF_INET6 and inet_ntop(AF_INET6, &(<sockaddr_in6*>&ss).sin6_addr, host, sizeof(host)) != NULL:
            o = put_str(line, o, cap, b"[")
            o = put_str(line, o, cap, host)
            o = put_str(line, o, cap, b"]:")
            return put_num(line, o, cap, ntohs((<sockaddr_in6*>&ss).sin6_port))
        if ss.ss_family == AF_UNIX:  # a client's unix socket has no name: the path is the server's
            return put_str(line, o, cap, b"a unix peer")
    o = put_str(line, o, cap, b"fd ")
    return put_num(line, o, cap, <uint64_t>fd)


cdef inline void log_line(char* line, size_t o) noexcept nogil:
    """Write ``line[:o]`` and its newline with one write(2), no stdio; errno is left as it was.

    ``line`` must have room for one byte past ``o``.
    """
    cdef int saved = posix.errno
    line[o] = 10  # the line always ends with its newline, even if cut short
    write(2, line, o + 1)
    posix.errno = saved


cdef inline void log_closing(const char* name, int fd, const char* what, const char* reason) noexcept nogil:
    """``sockbench serve NAME: closing PEER: WHAT REASON``, worded as ``contract.log_closing``."""
    cdef char line[640]
    cdef size_t cap = sizeof(line) - 1
    cdef size_t o = put_str(line, 0, cap, b"sockbench serve ")
    o = put_str(line, o, cap, name)
    o = put_str(line, o, cap, b": closing ")
    o = put_peer(line, o, cap, fd)
    o = put_str(line, o, cap, b": ")
    o = put_str(line, o, cap, what)
    o = put_str(line, o, cap, reason)
    log_line(line, o)


cdef inline const char* accept_errno(int err, const char** hint) noexcept nogil:
    """The name of an accept() failure that pauses accepting, and in ``hint`` what to do (``contract._ACCEPT_HINTS``)."""
    cdef const char* name
    if err == EMFILE:
        name, hint[0] = b"EMFILE", b"raise the open-file limit (ulimit -n)"
    elif err == ENFILE:
        name, hint[0] = b"ENFILE", b"the system's file table is full (fs.file-max)"
    elif err == ENOBUFS:
        name, hint[0] = b"ENOBUFS", b"the kernel is out of socket memory"
    else:
        name, hint[0] = b"ENOMEM", b"the kernel is out of memory"
    return name


cdef inline void log_accept_error(const char* name, int err, uint64_t unsaid) noexcept nogil:
    """The accept pause's line, worded as ``contract.AcceptErrors`` (``log_accept_pause`` keeps it to one a second)."""
    cdef char line[512]
    cdef size_t cap = sizeof(line) - 1
    cdef size_t o
    cdef const char* hint
    o = put_str(line, 0, cap, b"sockbench serve ")
    o = put_str(line, o, cap, name)
    o = put_str(line, o, cap, b": cannot accept connections: ")
    o = put_str(line, o, cap, strerror(err))
    o = put_str(line, o, cap, b" (")
    o = put_str(line, o, cap, accept_errno(err, &hint))
    o = put_str(line, o, cap, b"); ")
    o = put_str(line, o, cap, hint)
    o = put_str(line, o, cap, b"; accepting pauses while it lasts, open connections are still served")
    if unsaid:
        o = put_str(line, o, cap, b" (")
        o = put_num(line, o, cap, unsaid)
        o = put_str(line, o, cap, b" more times since the last line)")
    log_line(line, o)


cdef inline void log_accept_pause(const char* name, int err, uint64_t now_ms, uint64_t* next_ms,
                                  uint64_t* unsaid) noexcept nogil:
    """``log_accept_error`` now, then at most one line a second while it lasts, as ``contract.AcceptErrors``.

    ``next_ms`` (when the next line may go) and ``unsaid`` (failures since the
    last line) are the caller's, zero at first.
    """
    if now_ms < next_ms[0]:
        unsaid[0] += 1
        return
    log_accept_error(name, err, unsaid[0])
    next_ms[0] = now_ms + ACCEPT_LOG_EVERY_MS
    unsaid[0] = 0


cdef inline const char* frame_too_long(char* out, size_t cap, const unsigned char* p, uint64_t max_message) noexcept nogil:
    """The reason for a frame length over the limit (the length is at ``p``), worded as the oracle's."""
    cdef uint64_t length = ((<uint64_t>p[0] << 24) | (<uint64_t>p[1] << 16)
                            | (<uint64_t>p[2] << 8) | <uint64_t>p[3])
    cdef size_t o = put_str(out, 0, cap - 1, b"frame length ")
    o = put_num(out, o, cap - 1, length)
    o = put_str(out, o, cap - 1, b" is over the limit of ")
    o = put_num(out, o, cap - 1, max_message)
    o = put_str(out, o, cap - 1, b" bytes")
    out[o] = 0
    return out
