"""The ``cython`` echo server's core: a level-triggered epoll loop in C, run without the GIL.

``serve(listen_fd, announce)`` runs the whole server: Python is touched once to
announce readiness, then the loop runs inside one ``with nogil:`` block until
SIGTERM or SIGINT, and no Python object is created per connection or per
message.  Why the server exists is ``sockbench.servers.cython_echo``'s to say;
the choices that matter for reading this file:

* **State is a C table indexed by the descriptor** (``conn_t``, one ``calloc``
  sized to RLIMIT_NOFILE): no allocation per connection, O(1) lookup.
* **One shared read buffer** (``RECV_BUF``): read, send straight back; only an
  unsent tail is copied into a ``malloc``'d buffer of that connection.
* **Bounded memory**: a connection with a tail is watched for ``EPOLLOUT``
  *only*, so a client that never reads costs at most one ``RECV_BUF``; and end
  of file is only read with nothing pending, so the echo is flushed before a
  half-close.
* **Errors stay local**: an error on a connection closes it; only epoll or the
  listener failing ends the loop.  Helpers save ``errno`` right after their
  syscall; the loop returns ``-errno`` and ``serve`` raises ``OSError``.
* **Stop**: an async-signal-safe handler bumps an eventfd the loop watches; the
  previous handlers are restored before ``serve`` returns.
* **Framed protocols** live beside the echo: ``_run`` picks the reader once per
  event, so raw mode runs only the code above.  The wire code is
  ``ext/wire.h`` (shared with the load generator and the C client); names come
  from the generated ``ext/protocols.h``.  Every complete message in a read is
  answered where it lies (a frame is its own answer; a json answer is a rebuilt
  header plus the content); a partial message waits in ``pstate_t.pend``,
  sized for the next decision and filled by ``recv`` never past the message.
  A connection holds at most one message plus one read of answers.
* **Malformed input** (ext/wire.pyx defines it; end of file inside a message
  too) closes its connection after the answers before it, with one
  ``write(2)`` line worded like ``contract.log_closing``.  The JSON parser
  never recurses.
* **Out of descriptors** (EMFILE, ENFILE, ENOBUFS, ENOMEM): the listener is
  unwatched until a connection closes or ``ACCEPT_PAUSE_MS`` passes, with one
  line (at most one a second), worded like ``contract.AcceptErrors``.
* **Limits** (``--idle-timeout``, ``--max-buffered``): the clock is read once
  per ``epoll_wait``, only when a limit or a pause needs it.  ``conn_t.last``
  is milliseconds modulo 2**32, compared by unsigned difference (exact below 24
  days); the table is swept every ``sweep_ms``.  ``buffered`` sums partial
  messages; going over ``max_buffered`` closes that connection.  The reasons
  are worded by Python (``contract.Limits``).
"""

from libc.stdint cimport uint32_t, uint64_t

from posix cimport (
    EAGAIN, EINTR, ECONNABORTED, EPROTO, EMFILE, ENFILE, ENOBUFS, ENOMEM,
    malloc, calloc, realloc, free, posix_memalign, memcpy, memset,
    close, clock_gettime, timespec, CLOCK_MONOTONIC,
    accept4, recv, send, setsockopt, SOCK_NONBLOCK, SOCK_CLOEXEC, MSG_NOSIGNAL,
    getsockname, sockaddr, sockaddr_storage, socklen_t,
    AF_INET, AF_INET6,
    IPPROTO_TCP, TCP_NODELAY,
    rlimit, getrlimit, setrlimit, RLIMIT_NOFILE, RLIM_INFINITY,
    epoll_event, epoll_wait,
    EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLLIN, EPOLLOUT,
)
cimport posix
from stopsig cimport stopsig_running
from serverlog cimport log_closing, log_accept_pause, frame_too_long
from serveloop cimport set_nonblocking, epoll_watch, open_epoll, close_epoll, raise_errno, serve_until_stopped
from protocols cimport PROTO_RAW, PROTO_FRAME, PROTO_JSON, PROTO_COUNT, PROTO_DEFAULT_MAX_MESSAGE, proto_name
from wire cimport (
    WIRE_JSON_PREFIX, WIRE_JSON_HEADER_MAX, WIRE_MALFORMED, WIRE_NEED_MORE, WIRE_COMPLETE,
    wire_header_t, wire_frame_scan, wire_json_message, wire_json_response_header,
)

__all__ = ["serve", "raise_nofile_limit", "RECV_BUF_SIZE", "MAX_EVENTS", "PROTOCOLS", "MAX_MESSAGE_LIMIT",
           "MAX_IDLE_TIMEOUT_S", "ACCEPT_PAUSE_S"]


cdef enum:
    RECV_BUF = 256 * 1024       # default size of one read; also the most a connection holds unsent
    EVENTS = 512                # epoll_wait batch
    TABLE_CAP = 1 << 22         # at most this many descriptors are tracked
    OUT_SLACK = 256             # json answers: the answer buffer is one read + this
    SCRATCH = 65536 + 256       # json: one answer header built outside the message buffer
    ACCEPT_PAUSE_MS = 100       # the longest accept pause after EMFILE/ENFILE/ENOBUFS/ENOMEM (contract.ACCEPT_PAUSE_S)
    REASON_CAP = 256            # a closing reason handed in from Python (--idle-timeout, --max-buffered)

RECV_BUF_SIZE = RECV_BUF
MAX_EVENTS = EVENTS
#: protocol index -> name, from the generated ext/protocols.h (``serve(protocol=...)`` takes a name)
PROTOCOLS = tuple(proto_name(i).decode() for i in range(PROTO_COUNT))
#: the largest ``max_message`` this server takes: a message, its header and its
#: answer must fit the 32-bit offsets of ``conn_t``
MAX_MESSAGE_LIMIT = 1 << 30
#: the longest ``idle_timeout`` this server takes: connection clocks are 32-bit milliseconds
#: compared by unsigned difference, exact below 2**31 ms (24.8 days)
MAX_IDLE_TIMEOUT_S = 2_000_000
ACCEPT_PAUSE_S = ACCEPT_PAUSE_MS / 1000


ctypedef struct conn_t:
    char* tail            # malloc'd unsent echo, or NULL (then the fd is read)
    uint32_t tail_off     # bytes of ``tail`` already sent
    uint32_t tail_len     # bytes of ``tail`` still to send
    uint32_t open         # 1 while the fd is one of this loop's connections
    uint32_t last         # --idle-timeout: its last complete message, ms since the loop started (mod 2**32)


ctypedef struct pstate_t:
    unsigned char* pend   # the partial message that ended a read, malloc'd only while there is one
    size_t pend_len       # bytes of it received
    size_t pend_need      # bytes the next decision needs (the size of ``pend``)
    int closing           # malformed: close once the answers that came before it are sent


ctypedef struct loop_t:
    int epfd
    int stopfd
    int lfd
    int accept_paused     # listener unwatched after EMFILE/ENFILE/ENOMEM
    int nodelay           # the listener is TCP: TCP_NODELAY on each accepted socket (not on AF_UNIX)
    conn_t* conns
    size_t nconns         # rows in ``conns``
    int max_fd            # highest connection fd seen (bounds the teardown scan)
    size_t live           # open connections
    char* buf             # the shared read buffer
    # --protocol frame|json only (NULL / 0 in raw mode):
    int proto             # PROTO_RAW, PROTO_FRAME or PROTO_JSON
    uint64_t max_message  # the largest message accepted (payload or content bytes)
    pstate_t* ps          # per-descriptor protocol state, indexed like ``conns``
    unsigned char* fbuf   # the framed modes' own read buffer (RECV_BUF bytes)
    unsigned char* out    # json: the answers to one read are built here
    size_t outcap
    unsigned char* scratch  # json: an answer header for a message completed in its own buffer
    size_t bufsize
    # timed duties (all 0 when off): the clock is read only when one of them is on
    uint64_t t0_ms        # the clock when the loop started
    uint64_t now_ms       # the clock at the last epoll_wait return
    uint32_t idle_ms      # --idle-timeout, or 0
    uint32_t sweep_ms     # how often idle connections are looked for
    uint64_t next_sweep_ms
    uint64_t resume_ms    # an accept pause ends then
    uint64_t next_accept_log_ms
    uint64_t accept_unsaid  # accept failures since the last line about them
    uint64_t max_buffered # --max-buffered, or 0
    uint64_t buffered     # bytes received into partial messages, over every connection


# The server name for the log lines (``sockbench serve NAME: ...``).
cdef char g_name[64]
# The closing reasons for --idle-timeout and --max-buffered, worded by contract.Limits.
cdef char g_idle_reason[REASON_CAP]
cdef char g_buffered_reason[REASON_CAP]


cdef uint64_t _clock_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint32_t _now32(loop_t* L) noexcept nogil:
    return <uint32_t>(L.now_ms - L.t0_ms)


cdef int _raise_nofile(rlimit* out) noexcept nogil:
    """Soft RLIMIT_NOFILE := hard limit.  Returns 0 or -errno; ``out`` gets the result."""
    if getrlimit(RLIMIT_NOFILE, out) < 0:
        return -posix.errno
    if out.rlim_cur != out.rlim_max:
        out.rlim_cur = out.rlim_max
        if setrlimit(RLIMIT_NOFILE, out) < 0:
            return -posix.errno
    return 0


cdef void _close_conn(loop_t* L, int fd) noexcept nogil:
    cdef conn_t* c = &L.conns[fd]
    if c.tail != NULL:
        free(c.tail)
    c.tail = NULL
    c.tail_off = 0
    c.tail_len = 0
    c.open = 0
    if L.ps != NULL:
        _drop_pending(L, &L.ps[fd])
        memset(&L.ps[fd], 0, sizeof(pstate_t))
    close(fd)  # also drops it from the epoll set: the fd is never dup'ed
    L.live -= 1
    if L.accept_paused:
        _resume_accepting(L)  # a descriptor is free again


cdef void _drop_pending(loop_t* L, pstate_t* ps) noexcept nogil:
    """Free a partial message, and take its bytes off ``buffered``."""
    if ps.pend != NULL:
        free(ps.pend)
        L.buffered -= ps.pend_len
    ps.pend = NULL
    ps.pend_len = 0
    ps.pend_need = 0


cdef void _resume_accepting(loop_t* L) noexcept nogil:
    if epoll_watch(L.epfd, EPOLL_CTL_MOD, L.lfd, EPOLLIN) == 0:
        L.accept_paused = 0
        L.resume_ms = 0
    else:
        L.resume_ms = L.now_ms + ACCEPT_PAUSE_MS  # try again after another pause, never in a tight loop


cdef ssize_t _send_some(int fd, const char* p, size_t n) noexcept nogil:
    """Bytes the kernel took (0 if none now), or -1 when the connection failed."""
    cdef ssize_t r
    cdef int err
    while True:
        r = send(fd, p, n, MSG_NOSIGNAL)
        if r >= 0:
            return r
        err = posix.errno
        if err == EINTR:
            continue
        if err == EAGAIN:  # == EWOULDBLOCK on Linux
            return 0
        return -1


cdef int _accept_all(loop_t* L) noexcept nogil:
    """Accept until EAGAIN.  Returns 0, or -errno when the listener itself failed."""
    cdef int fd, err
    cdef int one = 1
    cdef conn_t* c
    while True:
        fd = accept4(L.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            err = posix.errno
            if err == EAGAIN:  # == EWOULDBLOCK on Linux
                return 0
            if err == EINTR or err == ECONNABORTED or err == EPROTO:
                continue  # that one connection went away before we took it
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                # level-triggered: an unserviceable listener would spin the loop,
                # so stop watching it until a connection closes or the pause ends
                if epoll_watch(L.epfd, EPOLL_CTL_MOD, L.lfd, 0) < 0:
                    return -posix.errno
                L.accept_paused = 1
                L.now_ms = _clock_ms()
                L.resume_ms = L.now_ms + ACCEPT_PAUSE_MS
                _log_accept_error(L, err)
                return 0
            return -err
        if <size_t>fd >= L.nconns:
            close(fd)  # beyond the table (only if RLIMIT_NOFILE rose after start)
            continue
        if L.nodelay:
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        if epoll_watch(L.epfd, EPOLL_CTL_ADD, fd, EPOLLIN) < 0:
            close(fd)  # ENOMEM/ENOSPC: refuse this connection, keep serving the others
            continue
        c = &L.conns[fd]
        c.tail = NULL
        c.tail_off = 0
        c.tail_len = 0
        c.open = 1
        c.last = _now32(L)
        L.live += 1
        if fd > L.max_fd:
            L.max_fd = fd


cdef void _on_readable(loop_t* L, int fd) noexcept nogil:
    cdef ssize_t n, sent
    cdef int err
    cdef conn_t* c
    while True:
        n = recv(fd, L.buf, L.bufsize, 0)
        if n >= 0:
            break
        err = posix.errno
        if err == EINTR:
            continue
        if err != EAGAIN:
            _close_conn(L, fd)  # ECONNRESET and friends: this connection only
        return
    if n == 0:
        # End of file.  Nothing is pending (a connection with a tail is not
        # read), so the echo is complete: close.
        _close_conn(L, fd)
        return
    if L.idle_ms:
        L.conns[fd].last = _now32(L)  # raw: every read is answered whole
    sent = _send_some(fd, L.buf, <size_t>n)
    if sent == n:
        return
    if sent < 0:
        _close_conn(L, fd)
        return
    # Keep only what the kernel did not take, and stop reading until it is sent.
    c = &L.conns[fd]
    if posix_memalign(<void**>&c.tail, 64, <size_t>(n - sent)) != 0:  # aligned: see _setup
        c.tail = NULL
    if c.tail == NULL:
        _close_conn(L, fd)  # out of memory: drop this connection, not the server
        return
    memcpy(c.tail, L.buf + sent, <size_t>(n - sent))
    c.tail_off = 0
    c.tail_len = <uint32_t>(n - sent)
    if epoll_watch(L.epfd, EPOLL_CTL_MOD, fd, EPOLLOUT) < 0:
        _close_conn(L, fd)


cdef void _on_writable(loop_t* L, int fd) noexcept nogil:
    cdef conn_t* c = &L.conns[fd]
    cdef ssize_t sent = _send_some(fd, c.tail + c.tail_off, c.tail_len)
    if sent < 0:
        _close_conn(L, fd)
        return
    c.tail_off += <uint32_t>sent
    c.tail_len -= <uint32_t>sent
    if c.tail_len:
        return
    free(c.tail)
    c.tail = NULL
    c.tail_off = 0
    if L.ps != NULL and L.ps[fd].closing:
        _close_conn(L, fd)  # the answers before a malformed message are out: close
        return
    if epoll_watch(L.epfd, EPOLL_CTL_MOD, fd, EPOLLIN) < 0:
        _close_conn(L, fd)


# --- --protocol frame|json ---------------------------------------------------------------------


cdef void _log_closing(int fd, const char* what, const char* reason) noexcept nogil:
    """``sockbench serve NAME: closing PEER: WHAT REASON``, worded as ``contract.log_closing``."""
    log_closing(g_name, fd, what, reason)


cdef void _log_malformed(int fd, const char* reason) noexcept nogil:
    _log_closing(fd, b"malformed message: ", reason)


cdef void _log_accept_error(loop_t* L, int err) noexcept nogil:
    """One line now, then at most one a second while it lasts (``serverlog.log_accept_pause``)."""
    log_accept_pause(g_name, err, L.now_ms, &L.next_accept_log_ms, &L.accept_unsaid)


cdef void _malformed(loop_t* L, int fd, const char* reason) noexcept nogil:
    """Log the one line; close now, or once the answers before the bad message are sent."""
    _log_malformed(fd, reason)
    _close_after_answers(L, fd)


cdef void _close_after_answers(loop_t* L, int fd) noexcept nogil:
    if L.conns[fd].tail != NULL:
        L.ps[fd].closing = 1
    else:
        _close_conn(L, fd)


cdef inline int _over_buffered(loop_t* L) noexcept nogil:
    return L.max_buffered != 0 and L.buffered > L.max_buffered


cdef ssize_t _recv_some(loop_t* L, int fd, void* buf, size_t n) noexcept nogil:
    """Bytes read (0 at end of file); -1: nothing now; -2: the connection failed and is closed."""
    cdef ssize_t r
    cdef int err
    while True:
        r = recv(fd, buf, n, 0)
        if r >= 0:
            return r
        err = posix.errno
        if err == EINTR:
            continue
        if err == EAGAIN:
            return -1
        _close_conn(L, fd)  # ECONNRESET and friends: this connection only
        return -2


cdef int _send_answer(loop_t* L, int fd, const unsigned char* p, size_t n, unsigned char* owned) noexcept nogil:
    """Send answers at once, as the echo does, and keep only the unsent tail.

    ``owned``, if not NULL, is the malloc'd buffer that ``p`` points into: it
    becomes the tail as it is (no copy) or is freed.  Returns 0 (all sent),
    1 (a tail is kept: the fd now waits for EPOLLOUT only) or -1 (closed).
    """
    cdef conn_t* c = &L.conns[fd]
    cdef ssize_t sent = 0
    if n:
        sent = _send_some(fd, <const char*>p, n)
    if sent < 0:
        if owned != NULL:
            free(owned)
        _close_conn(L, fd)
        return -1
    if <size_t>sent == n:
        if owned != NULL:
            free(owned)
        return 0
    if owned != NULL:
        c.tail = <char*>owned
        c.tail_off = <uint32_t>(<size_t>(p - owned) + <size_t>sent)
    else:
        c.tail = <char*>malloc(n - <size_t>sent)
        if c.tail == NULL:
            _close_conn(L, fd)  # out of memory: drop this connection, not the server
            return -1
        memcpy(c.tail, p + sent, n - <size_t>sent)
        c.tail_off = 0
    c.tail_len = <uint32_t>(n - <size_t>sent)
    if epoll_watch(L.epfd, EPOLL_CTL_MOD, fd, EPOLLOUT) < 0:
        _close_conn(L, fd)
        return -1
    return 1


cdef void _read_batch(loop_t* L, int fd, pstate_t* ps) noexcept nogil:
    """No partial message: read into the shared buffer, answer every complete message in it."""
    cdef unsigned char* buf = L.fbuf
    cdef const unsigned char* answer = buf
    cdef size_t pos = 0, need = 0, olen = 0, hl
    cdef Py_ssize_t cnt, rlen
    cdef int rc
    cdef wire_header_t h
    cdef const char* bad = NULL
    cdef char reason[128]
    cdef ssize_t n = _recv_some(L, fd, buf, RECV_BUF)
    if n < 0:
        return
    if n == 0:
        _close_conn(L, fd)  # end of file between messages: the exchange is complete
        return
    if L.proto == PROTO_FRAME:
        # a frame is answered by itself: the answers are the complete frames, where they lie
        cnt = wire_frame_scan(buf, <size_t>n, L.max_message, &pos, &need)
        if cnt == WIRE_MALFORMED:
            bad = frame_too_long(reason, sizeof(reason), buf + pos, L.max_message)
        olen = pos
    else:
        answer = L.out
        while True:
            rc = wire_json_message(buf + pos, <size_t>n - pos, L.max_message, &h, &need)
            if rc != WIRE_COMPLETE:
                if rc == WIRE_MALFORMED:
                    bad = h.error
                break
            hl = WIRE_JSON_PREFIX + ((<size_t>buf[pos] << 8) | buf[pos + 1])
            # fits: an answer is never longer than its request, and ``out`` is one read + slack
            rlen = wire_json_response_header(buf + pos + WIRE_JSON_PREFIX, &h, <uint64_t>h.content_length.ival,
                                             L.out + olen, L.outcap - olen)
            if rlen < 0:
                bad = b"the answer header does not fit"  # cannot happen (see above)
                break
            olen += <size_t>rlen
            memcpy(L.out + olen, buf + pos + hl, need - hl)
            olen += need - hl
            pos += need
    cdef int over = 0
    if bad == NULL and pos < <size_t>n:
        # The read ended inside a message: keep it, sized for the next decision
        # (``need`` > what is here); it is completed by reads straight into it.
        ps.pend = <unsigned char*>malloc(need)
        if ps.pend == NULL:
            _close_conn(L, fd)
            return
        memcpy(ps.pend, buf + pos, <size_t>n - pos)
        ps.pend_len = <size_t>n - pos
        ps.pend_need = need
        L.buffered += ps.pend_len
        if _over_buffered(L):
            _drop_pending(L, ps)
            over = 1
    if L.idle_ms and pos:
        L.conns[fd].last = _now32(L)  # at least one complete message
    if _send_answer(L, fd, answer, olen, NULL) < 0:
        return
    if bad != NULL:
        _malformed(L, fd, bad)
    elif over:
        _log_closing(fd, b"", g_buffered_reason)
        _close_after_answers(L, fd)


cdef void _fill_pending(loop_t* L, int fd, pstate_t* ps) noexcept nogil:
    """A partial message: read into its own buffer, no more than its next decision needs."""
    cdef ssize_t n
    cdef size_t want, need = 0, total = 0, hl, start
    cdef Py_ssize_t cnt, rlen
    cdef int rc
    cdef wire_header_t h
    cdef unsigned char* msg
    cdef char reason[128]
    while True:
        want = ps.pend_need - ps.pend_len
        n = _recv_some(L, fd, ps.pend + ps.pend_len, want)
        if n < 0:
            return
        if n == 0:
            _malformed(L, fd, b"connection closed inside a message")
            return
        ps.pend_len += <size_t>n
        L.buffered += <size_t>n
        if _over_buffered(L):
            _drop_pending(L, ps)
            _log_closing(fd, b"", g_buffered_reason)
            _close_conn(L, fd)  # nothing is pending: a connection with a tail is not read
            return
        if <size_t>n < want:
            return  # the rest is not here yet; epoll says when it is
        if L.proto == PROTO_FRAME:
            cnt = wire_frame_scan(ps.pend, ps.pend_len, L.max_message, &total, &need)
            if cnt == WIRE_MALFORMED:
                _malformed(L, fd, frame_too_long(reason, sizeof(reason), ps.pend, L.max_message))
                return
            rc = WIRE_COMPLETE if cnt > 0 else WIRE_NEED_MORE
        else:
            rc = wire_json_message(ps.pend, ps.pend_len, L.max_message, &h, &need)
            if rc == WIRE_MALFORMED:
                _malformed(L, fd, h.error)
                return
            total = need
        if rc == WIRE_NEED_MORE:
            msg = <unsigned char*>realloc(ps.pend, need)
            if msg == NULL:
                _close_conn(L, fd)
                return
            ps.pend = msg
            ps.pend_need = need
            continue
        # Complete: answer from this buffer, which then becomes the tail or is freed.
        msg = ps.pend
        L.buffered -= ps.pend_len
        ps.pend = NULL
        ps.pend_len = 0
        ps.pend_need = 0
        if L.idle_ms:
            L.conns[fd].last = _now32(L)
        if L.proto == PROTO_FRAME:
            _send_answer(L, fd, msg, total, msg)
            return
        # json: the answer header is never longer than the request's, so it is
        # written just before the content, over the end of the request header
        hl = WIRE_JSON_PREFIX + ((<size_t>msg[0] << 8) | msg[1])
        rlen = wire_json_response_header(msg + WIRE_JSON_PREFIX, &h, <uint64_t>h.content_length.ival,
                                         L.scratch, SCRATCH)
        if rlen < 0 or <size_t>rlen > hl:
            free(msg)  # cannot happen (see above)
            _close_conn(L, fd)
            return
        start = hl - <size_t>rlen
        memcpy(msg + start, L.scratch, <size_t>rlen)
        _send_answer(L, fd, msg + start, total - start, msg)
        return


cdef void _on_readable_framed(loop_t* L, int fd) noexcept nogil:
    cdef pstate_t* ps = &L.ps[fd]
    if ps.pend != NULL:
        _fill_pending(L, fd, ps)
    else:
        _read_batch(L, fd, ps)


cdef int _timeout_ms(loop_t* L) noexcept nogil:
    """How long epoll_wait may wait: until the next timed duty, or forever (-1) when there is none."""
    cdef uint64_t due = 0
    if L.idle_ms:
        due = L.next_sweep_ms
    if L.accept_paused and (due == 0 or L.resume_ms < due):
        due = L.resume_ms
    if due == 0:
        return -1
    L.now_ms = _clock_ms()
    return 0 if due <= L.now_ms else <int>(due - L.now_ms)


cdef void _timed_duties(loop_t* L) noexcept nogil:
    """End an accept pause that is due; close the connections idle for ``idle_ms`` when a sweep is due."""
    cdef int fd
    cdef uint32_t now32
    if L.accept_paused and L.now_ms >= L.resume_ms:
        _resume_accepting(L)
    if L.idle_ms and L.now_ms >= L.next_sweep_ms:
        L.next_sweep_ms = L.now_ms + L.sweep_ms
        now32 = _now32(L)
        for fd in range(L.max_fd + 1):
            if L.conns[fd].open and <uint32_t>(now32 - L.conns[fd].last) >= L.idle_ms:
                if L.ps == NULL or not L.ps[fd].closing:  # a closing one said why already
                    _log_closing(fd, b"", g_idle_reason)
                _close_conn(L, fd)


cdef int _run(void* loop) noexcept nogil:
    """The event loop (``serveloop.serve_loop_t``).  Returns 0 on a stop signal, or -errno on a fatal error."""
    cdef loop_t* L = <loop_t*>loop
    cdef epoll_event events[EVENTS]
    cdef int n, i, fd, rc, err
    cdef int timed
    cdef conn_t* c
    while True:
        timed = L.idle_ms != 0 or L.accept_paused
        n = epoll_wait(L.epfd, events, EVENTS, _timeout_ms(L) if timed else -1)
        if n < 0:
            err = posix.errno
            if err == EINTR:
                continue
            return -err
        if timed:
            L.now_ms = _clock_ms()
            _timed_duties(L)
        for i in range(n):
            fd = events[i].data.fd
            if fd == L.stopfd:
                return 0
            if fd == L.lfd:
                rc = _accept_all(L)
                if rc < 0:
                    return rc
                continue
            c = &L.conns[fd]
            if not c.open:
                continue  # closed earlier in this batch
            # Dispatch on the connection's state, not on the event bits: EPOLLERR
            # and EPOLLHUP surface as an error (or EOF) from the next recv/send.
            if c.tail != NULL:
                _on_writable(L, fd)
            elif L.proto == PROTO_RAW:
                _on_readable(L, fd)  # the echo: nothing else per read
            else:
                _on_readable_framed(L, fd)


cdef int _setup(loop_t* L, int lfd, size_t bufsize) noexcept nogil:
    """Fill ``L`` for listener ``lfd``.  Returns 0 or -errno (``_teardown`` cleans up either way)."""
    cdef int rc
    cdef rlimit lim
    cdef sockaddr_storage ss
    cdef socklen_t sl = sizeof(ss)
    memset(L, 0, sizeof(loop_t))
    L.epfd = -1
    L.stopfd = -1
    L.lfd = lfd
    L.max_fd = -1
    L.t0_ms = _clock_ms()
    L.now_ms = L.t0_ms
    if getsockname(lfd, <sockaddr*>&ss, &sl) < 0:
        return -posix.errno
    L.nodelay = ss.ss_family == AF_INET or ss.ss_family == AF_INET6
    rc = set_nonblocking(lfd)
    if rc < 0:
        return rc
    if getrlimit(RLIMIT_NOFILE, &lim) < 0:
        return -posix.errno
    if lim.rlim_cur == RLIM_INFINITY or lim.rlim_cur > TABLE_CAP:
        L.nconns = TABLE_CAP
    else:
        L.nconns = <size_t>lim.rlim_cur
    L.conns = <conn_t*>calloc(L.nconns, sizeof(conn_t))
    L.bufsize = bufsize
    # Page-aligned, not where malloc puts a large block (16 bytes past a page):
    # the kernel's copy into a buffer 16 bytes off a 32-byte boundary costs
    # markedly more system time per recv (bench/calibrate/server_cpu.py shows it).
    if posix_memalign(<void**>&L.buf, 4096, bufsize) != 0:
        L.buf = NULL
    if L.conns == NULL or L.buf == NULL:
        return -ENOMEM
    return open_epoll(lfd, &L.epfd, &L.stopfd)


cdef int _setup_protocol(loop_t* L, int proto, uint64_t max_message) noexcept nogil:
    """The framed protocols' state, after ``_setup``: nothing at all in raw mode.  0 or -ENOMEM."""
    L.proto = proto
    L.max_message = max_message
    if proto == PROTO_RAW:
        return 0
    L.ps = <pstate_t*>calloc(L.nconns, sizeof(pstate_t))
    # page-aligned, as the echo's buffer: a recv into a buffer 16 bytes off a
    # 32-byte boundary (where malloc puts a large block) costs more kernel time
    if L.ps == NULL or posix_memalign(<void**>&L.fbuf, 4096, RECV_BUF) != 0:
        L.fbuf = NULL
        return -ENOMEM
    if proto == PROTO_JSON:
        L.outcap = RECV_BUF + OUT_SLACK
        L.out = <unsigned char*>malloc(L.outcap)
        L.scratch = <unsigned char*>malloc(SCRATCH)
        if L.out == NULL or L.scratch == NULL:
            return -ENOMEM
    return 0


cdef void _teardown(void* loop) noexcept nogil:
    """Close every connection and free everything; the listener is the caller's (``serveloop.serve_teardown_t``)."""
    cdef loop_t* L = <loop_t*>loop
    cdef int fd
    if L.conns != NULL:
        for fd in range(L.max_fd + 1):
            if L.conns[fd].open:
                _close_conn(L, fd)
        free(L.conns)
        L.conns = NULL
    free(L.ps)  # after the connections: closing one frees its partial message
    free(L.fbuf)
    free(L.out)
    free(L.scratch)
    free(L.buf)
    close_epoll(&L.epfd, &L.stopfd)


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return ``(soft, hard)``."""
    cdef rlimit lim
    cdef int rc = _raise_nofile(&lim)
    if rc < 0:
        raise_errno(rc)
    return lim.rlim_cur, lim.rlim_max


cdef void _set_reason(char* dst, reason):
    cdef bytes b = str(reason).encode("utf-8", "replace")[:REASON_CAP - 1]
    memcpy(dst, <const char*>b, len(b))
    dst[len(b)] = 0


def serve(int listen_fd, announce=None, Py_ssize_t recv_size=RECV_BUF, *, protocol="raw",
          uint64_t max_message=PROTO_DEFAULT_MAX_MESSAGE, name="cython",
          double idle_timeout=0, uint64_t max_buffered=0,
          idle_reason="no complete message in time", buffered_reason="too many bytes in partial messages"):
    """Echo every connection accepted on ``listen_fd`` until SIGTERM or SIGINT.

    ``listen_fd`` is a listening TCP or unix socket (made non-blocking here; it stays
    open and owned by the caller).  ``announce()``, if given, is called once
    the loop is ready to accept.  ``recv_size`` is the size of one read (and
    so the most a connection holds unsent).  Returns None on a stop signal; raises
    ``OSError`` if epoll or the listener fails.  One loop per process: the stop
    signal handlers are process-wide.

    Keyword-only: ``protocol`` is ``raw`` (the echo), ``frame`` or ``json``
    (see ``sockbench.servers.protocols``), with messages of at most
    ``max_message`` bytes (1..``MAX_MESSAGE_LIMIT``); ``name`` starts every
    log line.  ``idle_timeout`` (seconds, 0 = off, at most
    ``MAX_IDLE_TIMEOUT_S``) closes a connection with no complete message for
    that long; ``max_buffered`` (bytes, 0 = off; frame and json) caps the
    bytes of partial messages over every connection; ``idle_reason`` and
    ``buffered_reason`` end the line each logs.  A bad value raises ``ValueError``.
    """
    cdef loop_t L
    cdef int rc
    if recv_size < 1 or recv_size > (1 << 30):
        raise ValueError(f"recv_size must be in 1..2**30, got {recv_size}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if max_message < 1 or max_message > MAX_MESSAGE_LIMIT:
        raise ValueError(f"max_message must be in 1..{MAX_MESSAGE_LIMIT}, got {max_message}")
    if not 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S:
        raise ValueError(f"idle_timeout must be in 0..{MAX_IDLE_TIMEOUT_S} s, got {idle_timeout}")
    if max_buffered and protocol == "raw":
        raise ValueError("max_buffered applies to the frame and json protocols; raw holds no partial messages")
    if stopsig_running():
        raise RuntimeError("an epoll_echo loop is already running in this process")
    cdef bytes cname = str(name).encode("utf-8", "replace")[:sizeof(g_name) - 1]
    memcpy(g_name, <const char*>cname, len(cname))
    g_name[len(cname)] = 0
    _set_reason(g_idle_reason, idle_reason)
    _set_reason(g_buffered_reason, buffered_reason)
    raise_nofile_limit()
    rc = _setup(&L, listen_fd, <size_t>recv_size)
    if rc == 0:
        rc = _setup_protocol(&L, PROTOCOLS.index(protocol), max_message)
    if idle_timeout > 0:
        L.idle_ms = <uint32_t>max(1.0, idle_timeout * 1000)
        L.sweep_ms = <uint32_t>max(1.0, min(1000.0, idle_timeout * 250))  # a quarter of it, at most 1 s: as contract.Limits
        L.next_sweep_ms = L.now_ms + L.sweep_ms
    L.max_buffered = max_buffered
    serve_until_stopped(&L, rc, L.stopfd, announce, _run, _teardown)
