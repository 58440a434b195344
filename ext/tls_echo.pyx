"""The ``cython`` server's TLS core: OpenSSL driven from the nogil epoll loop, per-connection state in C.

``serve(listen_fd, announce, cert, key, ...)`` is ``epoll_echo.serve`` over
TLS: Python is touched once to build the SSL_CTX (``tlsconf.make_context``)
and to announce, then one ``with nogil:`` block runs until SIGTERM or SIGINT.
The design notes for users live in ``sockbench.servers.cython_echo``; what
matters for reading this file:

* **OpenSSL on the socket itself** (``SSL_set_fd``), non-blocking: every
  ``SSL_*`` call that cannot go on says which readiness it waits for
  (``SSL_ERROR_WANT_READ``/``WANT_WRITE``), and the connection is watched for
  exactly that.  Memory BIOs would add a copy of every record each way for
  nothing: the socket BIO reads and writes the kernel directly.
* **Read-ahead** (tlsconf.pxd): one ``read(2)`` takes every record the socket
  holds, so a message costs one ``read`` and one ``write`` as in plain
  ``cython``; records OpenSSL read ahead are invisible to epoll, so a read
  goes on while ``SSL_has_pending`` says some are left.
* **Every record of a readiness, then one write**: the plaintext of all the
  records there is gathered in the shared buffer and answered with one
  ``SSL_write_ex`` (one record per 16 KiB), as plain ``cython`` answers a
  read with one ``send``.
* **A short write keeps its tail** (``SSL_MODE_ENABLE_PARTIAL_WRITE``: a
  write reports the records taken) in a ``malloc``'d buffer; the rule of
  OpenSSL that a write which must be retried is retried with the same bytes
  holds, since the tail starts where the unwritten record starts
  (``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER``: from another address).  A
  connection with a tail is not read: memory stays bounded, as in plain
  ``cython`` (one read of 256 KiB, plus OpenSSL's own buffers, ~34 KiB).
* **State is a C table indexed by the descriptor** (``tconn_t``: the SSL*,
  the tail, the state), as in epoll_echo.pyx.
* **Handshakes** run in the loop like any read or write, each with
  ``handshake_ms`` to complete (``--tls-handshake-timeout``): the table is
  swept for late ones only while some are in progress, and the clock is read
  only then.  A failed handshake is one line, worded by Python
  (``servers.tls``): ``closing PEER: TLS handshake failed: REASON``, with
  OpenSSL's reason; a peer that went away (end of file, a reset) is quiet.
* **The end**: close_notify (the peer's TLS half-close) is end of file: the
  answer to what came before it is flushed, then the server sends its own
  close_notify and closes.  A reset or a bad record after the handshake closes
  that connection quietly, without close_notify (OpenSSL forbids a shutdown
  after a fatal error).  At a stop every connection gets close_notify.
* **Out of descriptors**, ``--idle-timeout``: as epoll_echo.pyx.
* ``raw`` only: the framed protocols over TLS are served by every Python
  server; here TLS is measured on the plain echo, where its cost is clearest.
* Errors: -errno from the C core, ``OSError`` in Python (serveloop.pxd).
"""

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from posix cimport (
    EAGAIN, EINTR, ECONNABORTED, EPROTO, EMFILE, ENFILE, ENOBUFS, ENOMEM,
    calloc, free, malloc, memcpy, memset, posix_memalign,
    close, clock_gettime, timespec, CLOCK_MONOTONIC,
    accept4, setsockopt, SOCK_NONBLOCK, SOCK_CLOEXEC,
    getsockname, sockaddr, sockaddr_storage, socklen_t, AF_INET, AF_INET6,
    IPPROTO_TCP, TCP_NODELAY,
    rlimit, getrlimit, RLIMIT_NOFILE, RLIM_INFINITY,
    epoll_event, epoll_wait,
    EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLLIN, EPOLLOUT,
)
cimport posix
from openssl cimport (
    SSL, SSL_CTX, SSL_CTX_free, SSL_new, SSL_free, SSL_set_fd, SSL_set_accept_state, SSL_do_handshake,
    SSL_read_ex, SSL_write_ex, SSL_get_error, SSL_has_pending, SSL_shutdown,
    SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_ZERO_RETURN, SSL_ERROR_SSL,
    SSL_R_UNEXPECTED_EOF_WHILE_READING,
    ERR_peek_error, ERR_clear_error, ERR_GET_REASON,
)
from serveloop cimport set_nonblocking, epoll_watch, open_epoll, close_epoll, raise_errno, serve_until_stopped
from serverlog cimport log_closing, log_accept_pause
from stopsig cimport stopsig_running
from tlsconf cimport make_context, ssl_reason

__all__ = ["serve", "RECV_BUF_SIZE", "MAX_IDLE_TIMEOUT_S"]


cdef enum:
    RECV_BUF = 256 * 1024       # the plaintext of one readiness; also the most a connection holds unsent
    EVENTS = 512
    TABLE_CAP = 1 << 22
    ACCEPT_PAUSE_MS = 100       # as epoll_echo.pyx (contract.ACCEPT_PAUSE_S)
    REASON_CAP = 256
    ST_HANDSHAKE = 1
    ST_OPEN = 2

RECV_BUF_SIZE = RECV_BUF
#: connection clocks are 32-bit milliseconds, as in epoll_echo.pyx
MAX_IDLE_TIMEOUT_S = 2_000_000


ctypedef struct tconn_t:
    SSL* ssl              # NULL: not one of this loop's connections
    char* tail            # plaintext SSL_write has not taken yet, or NULL (then the fd is read)
    uint32_t tail_off
    uint32_t tail_len
    uint32_t last         # ms since the loop started: the handshake's start, then the last read (--idle-timeout)
    uint32_t events       # what the fd is watched for now
    uint8_t state         # ST_HANDSHAKE or ST_OPEN
    uint8_t closing       # the peer's close_notify came: close once the tail is out


ctypedef struct loop_t:
    int epfd
    int stopfd
    int lfd
    int nodelay
    int accept_paused
    SSL_CTX* ctx
    tconn_t* conns
    size_t nconns
    int max_fd
    size_t live
    size_t handshaking    # connections in ST_HANDSHAKE: while any, the clock is read and late ones swept
    char* buf
    uint64_t t0_ms
    uint64_t now_ms
    uint32_t handshake_ms
    uint32_t hs_sweep_ms
    uint64_t next_hs_sweep_ms
    uint32_t idle_ms
    uint32_t sweep_ms
    uint64_t next_sweep_ms
    uint64_t resume_ms
    uint64_t next_accept_log_ms
    uint64_t accept_unsaid


cdef char g_name[64]
cdef char g_idle_reason[REASON_CAP]
cdef char g_timeout_reason[REASON_CAP]


cdef uint64_t _clock_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint32_t _now32(loop_t* L) noexcept nogil:
    return <uint32_t>(L.now_ms - L.t0_ms)


cdef inline void _watch(loop_t* L, int fd, uint32_t events) noexcept nogil:
    """Watch ``fd`` for ``events`` (one epoll_ctl, only when they change)."""
    cdef tconn_t* c = &L.conns[fd]
    if c.events != events and epoll_watch(L.epfd, EPOLL_CTL_MOD, fd, events) == 0:
        c.events = events


cdef void _close_conn(loop_t* L, int fd, int notify) noexcept nogil:
    """Close a connection; ``notify``: send close_notify first (never after a fatal error, OpenSSL's rule)."""
    cdef tconn_t* c = &L.conns[fd]
    if notify and c.state == ST_OPEN:
        SSL_shutdown(c.ssl)  # one call: ours is sent (if the socket takes it); the peer's is not waited for
    ERR_clear_error()
    SSL_free(c.ssl)
    if c.state == ST_HANDSHAKE:
        L.handshaking -= 1
    free(c.tail)
    memset(c, 0, sizeof(tconn_t))
    close(fd)  # also drops it from the epoll set
    L.live -= 1
    if L.accept_paused:
        _resume_accepting(L)


cdef void _resume_accepting(loop_t* L) noexcept nogil:
    if epoll_watch(L.epfd, EPOLL_CTL_MOD, L.lfd, EPOLLIN) == 0:
        L.accept_paused = 0
        L.resume_ms = 0
    else:
        L.resume_ms = L.now_ms + ACCEPT_PAUSE_MS


cdef void _log_accept_error(loop_t* L, int err) noexcept nogil:
    log_accept_pause(g_name, err, L.now_ms, &L.next_accept_log_ms, &L.accept_unsaid)


cdef int _accept_all(loop_t* L) noexcept nogil:
    """Accept until EAGAIN, each connection an SSL in its server handshake.  0, or -errno if the listener failed."""
    cdef int fd, err
    cdef int one = 1
    cdef tconn_t* c
    cdef SSL* ssl
    while True:
        fd = accept4(L.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd < 0:
            err = posix.errno
            if err == EAGAIN:
                return 0
            if err == EINTR or err == ECONNABORTED or err == EPROTO:
                continue
            if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
                if epoll_watch(L.epfd, EPOLL_CTL_MOD, L.lfd, 0) < 0:
                    return -posix.errno
                L.accept_paused = 1
                L.now_ms = _clock_ms()
                L.resume_ms = L.now_ms + ACCEPT_PAUSE_MS
                _log_accept_error(L, err)
                return 0
            return -err
        if <size_t>fd >= L.nconns:
            close(fd)
            continue
        if L.nodelay:
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        ssl = SSL_new(L.ctx)
        if ssl == NULL or SSL_set_fd(ssl, fd) != 1:
            ERR_clear_error()
            SSL_free(ssl)
            close(fd)  # out of memory: refuse this connection, keep serving the others
            continue
        SSL_set_accept_state(ssl)
        if epoll_watch(L.epfd, EPOLL_CTL_ADD, fd, EPOLLIN) < 0:
            SSL_free(ssl)
            close(fd)
            continue
        if L.handshaking == 0:
            L.now_ms = _clock_ms()  # the first handshake in progress: the clock is read from now on
            L.next_hs_sweep_ms = L.now_ms + L.hs_sweep_ms
        c = &L.conns[fd]
        c.ssl = ssl
        c.state = ST_HANDSHAKE
        c.events = EPOLLIN
        c.last = _now32(L)
        L.handshaking += 1
        L.live += 1
        if fd > L.max_fd:
            L.max_fd = fd


cdef void _failed(loop_t* L, int fd, int err, const char* what) noexcept nogil:
    """A connection whose SSL call failed for good: one line when OpenSSL has a reason that is not the peer's end
    of file (``what`` starts it: the handshake's failures only are told), then closed without close_notify."""
    cdef unsigned long e = ERR_peek_error()
    cdef const char* reason
    if what != NULL and err == SSL_ERROR_SSL and e != 0 and ERR_GET_REASON(e) != SSL_R_UNEXPECTED_EOF_WHILE_READING:
        reason = ssl_reason(e)
        if reason == NULL:
            reason = b"an error OpenSSL did not name"
        log_closing(g_name, fd, what, reason)
    _close_conn(L, fd, 0)


cdef void _handshake(loop_t* L, int fd) noexcept nogil:
    cdef tconn_t* c = &L.conns[fd]
    cdef int r = SSL_do_handshake(c.ssl)
    cdef int err
    if r == 1:
        c.state = ST_OPEN
        L.handshaking -= 1
        if L.idle_ms:
            c.last = _now32(L)
        _watch(L, fd, EPOLLIN)
        _on_readable(L, fd)  # what came with the handshake's last flight was read ahead already
        return
    err = SSL_get_error(c.ssl, r)
    if err == SSL_ERROR_WANT_READ:
        _watch(L, fd, EPOLLIN)
    elif err == SSL_ERROR_WANT_WRITE:
        _watch(L, fd, EPOLLOUT)
    else:
        _failed(L, fd, err, b"TLS handshake failed: ")


cdef ssize_t _write_some(loop_t* L, int fd, const char* p, size_t n) noexcept nogil:
    """Plaintext OpenSSL took (all of ``n``, or less when the socket is full: then the fd waits for what OpenSSL
    wants), or -1 when the connection failed (closed here)."""
    cdef tconn_t* c = &L.conns[fd]
    cdef size_t total = 0, w = 0
    cdef int err
    while total < n:
        if SSL_write_ex(c.ssl, p + total, n - total, &w):
            total += w
            continue
        err = SSL_get_error(c.ssl, 0)
        if err == SSL_ERROR_WANT_WRITE:
            _watch(L, fd, EPOLLOUT)
            return <ssize_t>total
        if err == SSL_ERROR_WANT_READ:  # a post-handshake message first: the tail is retried when readable
            _watch(L, fd, EPOLLIN)
            return <ssize_t>total
        _failed(L, fd, err, NULL)
        return -1
    return <ssize_t>total


cdef void _on_readable(loop_t* L, int fd) noexcept nogil:
    """Every record there is, decrypted into the shared buffer, then answered with one write."""
    cdef tconn_t* c = &L.conns[fd]
    cdef size_t n = 0, got = 0
    cdef ssize_t sent
    cdef int err, eof = 0
    while n < RECV_BUF:
        if SSL_read_ex(c.ssl, L.buf + n, RECV_BUF - n, &got):
            n += got
            if SSL_has_pending(c.ssl):
                continue
            break
        err = SSL_get_error(c.ssl, 0)
        if err == SSL_ERROR_WANT_READ:
            if c.events != EPOLLIN:
                _watch(L, fd, EPOLLIN)
            break
        if err == SSL_ERROR_WANT_WRITE:  # a post-handshake message to answer first: read again when writable
            _watch(L, fd, EPOLLOUT)
            break
        if err == SSL_ERROR_ZERO_RETURN:
            eof = 1  # the peer's close_notify: its half-close
            break
        _failed(L, fd, err, NULL)  # a reset, its end of file without close_notify, a bad record
        return
    if n:
        if L.idle_ms:
            c.last = _now32(L)
        sent = _write_some(L, fd, L.buf, n)
        if sent < 0:
            return
        if <size_t>sent < n:
            # keep only what OpenSSL did not take, and stop reading until it has
            if posix_memalign(<void**>&c.tail, 64, n - <size_t>sent) != 0:
                c.tail = NULL
                _close_conn(L, fd, 0)
                return
            memcpy(c.tail, L.buf + sent, n - <size_t>sent)
            c.tail_off = 0
            c.tail_len = <uint32_t>(n - <size_t>sent)
            c.closing = eof
            return
    if eof:
        _close_conn(L, fd, 1)  # the echo is out: our close_notify, then close


cdef void _on_writable(loop_t* L, int fd) noexcept nogil:
    """Retry the tail (the same bytes, as OpenSSL demands); once it is out, read again."""
    cdef tconn_t* c = &L.conns[fd]
    cdef ssize_t sent = _write_some(L, fd, c.tail + c.tail_off, c.tail_len)
    if sent < 0:
        return
    c.tail_off += <uint32_t>sent
    c.tail_len -= <uint32_t>sent
    if c.tail_len:
        return
    free(c.tail)
    c.tail = NULL
    c.tail_off = 0
    if c.closing:
        _close_conn(L, fd, 1)
        return
    _watch(L, fd, EPOLLIN)
    if SSL_has_pending(c.ssl):
        _on_readable(L, fd)  # records read ahead while the tail waited


cdef void _sweep(loop_t* L) noexcept nogil:
    """Close the handshakes past ``handshake_ms`` (and, with --idle-timeout, the connections idle that long)."""
    cdef int fd
    cdef uint32_t now32 = _now32(L)
    cdef tconn_t* c
    for fd in range(L.max_fd + 1):
        c = &L.conns[fd]
        if c.ssl == NULL:
            continue
        if c.state == ST_HANDSHAKE and <uint32_t>(now32 - c.last) >= L.handshake_ms:
            log_closing(g_name, fd, b"", g_timeout_reason)
            _close_conn(L, fd, 0)
        elif c.state == ST_OPEN and L.idle_ms and L.now_ms >= L.next_sweep_ms and \
                <uint32_t>(now32 - c.last) >= L.idle_ms:
            log_closing(g_name, fd, b"", g_idle_reason)
            _close_conn(L, fd, 1)


cdef int _timeout_ms(loop_t* L) noexcept nogil:
    """How long epoll_wait may wait: until the next timed duty, or forever (-1)."""
    cdef uint64_t due = 0
    if L.idle_ms:
        due = L.next_sweep_ms
    if L.handshaking and (due == 0 or L.next_hs_sweep_ms < due):
        due = L.next_hs_sweep_ms
    if L.accept_paused and (due == 0 or L.resume_ms < due):
        due = L.resume_ms
    if due == 0:
        return -1
    L.now_ms = _clock_ms()
    return 0 if due <= L.now_ms else <int>(due - L.now_ms)


cdef void _timed_duties(loop_t* L) noexcept nogil:
    cdef int idle_due = L.idle_ms != 0 and L.now_ms >= L.next_sweep_ms
    cdef int hs_due = L.handshaking != 0 and L.now_ms >= L.next_hs_sweep_ms
    if L.accept_paused and L.now_ms >= L.resume_ms:
        _resume_accepting(L)
    if idle_due or hs_due:
        _sweep(L)
    if idle_due:
        L.next_sweep_ms = L.now_ms + L.sweep_ms
    if hs_due:
        L.next_hs_sweep_ms = L.now_ms + L.hs_sweep_ms


cdef int _run(void* loop) noexcept nogil:
    """The event loop (``serveloop.serve_loop_t``): 0 on a stop signal, -errno on a fatal error."""
    cdef loop_t* L = <loop_t*>loop
    cdef epoll_event events[EVENTS]
    cdef int n, i, fd, rc, err, timed
    cdef tconn_t* c
    while True:
        timed = L.idle_ms != 0 or L.accept_paused or L.handshaking != 0
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
            if c.ssl == NULL:
                continue  # closed earlier in this batch
            # dispatch on the connection's state: what OpenSSL waits for decides the events watched
            if c.state == ST_HANDSHAKE:
                _handshake(L, fd)
            elif c.tail != NULL:
                _on_writable(L, fd)
            else:
                _on_readable(L, fd)


cdef int _setup(loop_t* L, int lfd) noexcept nogil:
    """Fill ``L`` for listener ``lfd`` (its SSL_CTX is set by the caller).  0 or -errno."""
    cdef rlimit lim
    cdef sockaddr_storage ss
    cdef socklen_t sl = sizeof(ss)
    cdef int rc
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
    L.conns = <tconn_t*>calloc(L.nconns, sizeof(tconn_t))
    if posix_memalign(<void**>&L.buf, 4096, RECV_BUF) != 0:  # page-aligned, as epoll_echo.pyx's
        L.buf = NULL
    if L.conns == NULL or L.buf == NULL:
        return -ENOMEM
    return open_epoll(lfd, &L.epfd, &L.stopfd)


cdef void _teardown(void* loop) noexcept nogil:
    """Close every connection (close_notify to the open ones) and free everything; the listener is the caller's."""
    cdef loop_t* L = <loop_t*>loop
    cdef int fd
    if L.conns != NULL:
        for fd in range(L.max_fd + 1):
            if L.conns[fd].ssl != NULL:
                _close_conn(L, fd, 1)
        free(L.conns)
        L.conns = NULL
    free(L.buf)
    L.buf = NULL
    close_epoll(&L.epfd, &L.stopfd)


cdef void _set_text(char* dst, size_t cap, text):
    cdef bytes b = str(text).encode("utf-8", "replace")[:cap - 1]
    memcpy(dst, <const char*>b, len(b))
    dst[len(b)] = 0


def serve(int listen_fd, announce, cert, key, *, version="1.3", cipher=None, double handshake_timeout=10.0,
          name="cython", double idle_timeout=0, idle_reason="no complete message in time",
          timeout_reason="TLS handshake not complete in time"):
    """Echo every connection accepted on ``listen_fd`` over TLS until SIGTERM or SIGINT.

    ``cert``/``key`` are PEM files; ``version`` ("1.2" or "1.3") and
    ``cipher`` as ``sockbench.servers.tls.TlsConfig`` has them.  A handshake
    not complete within ``handshake_timeout`` seconds is closed with one line
    ending in ``timeout_reason``; ``idle_timeout`` (0 = off) and
    ``idle_reason`` as in ``epoll_echo.serve``.  A bad value raises
    ``ValueError``; a failure of epoll or the listener ``OSError``.  One loop
    per process (the stop signal is process-wide).
    """
    cdef loop_t L
    cdef int rc
    if not 0 < handshake_timeout <= MAX_IDLE_TIMEOUT_S:
        raise ValueError(f"handshake_timeout must be in (0, {MAX_IDLE_TIMEOUT_S}] s, got {handshake_timeout}")
    if not 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S:
        raise ValueError(f"idle_timeout must be in 0..{MAX_IDLE_TIMEOUT_S} s, got {idle_timeout}")
    if stopsig_running():
        raise RuntimeError("a C server loop is already running in this process")
    _set_text(g_name, sizeof(g_name), name)
    _set_text(g_idle_reason, REASON_CAP, idle_reason)
    _set_text(g_timeout_reason, REASON_CAP, timeout_reason)
    memset(&L, 0, sizeof(loop_t))
    L.ctx = make_context(True, str(version), cipher, cert, key)
    try:
        L.handshake_ms = <uint32_t>max(1.0, handshake_timeout * 1000)
        L.hs_sweep_ms = <uint32_t>max(1.0, min(1000.0, handshake_timeout * 250))  # a quarter of it, at most 1 s
        if idle_timeout > 0:
            L.idle_ms = <uint32_t>max(1.0, idle_timeout * 1000)
            L.sweep_ms = <uint32_t>max(1.0, min(1000.0, idle_timeout * 250))
        rc = _setup(&L, listen_fd)
        L.next_sweep_ms = L.now_ms + L.sweep_ms if L.idle_ms else 0
        serve_until_stopped(&L, rc, L.stopfd, announce, _run, _teardown)
    finally:
        SSL_CTX_free(L.ctx)
