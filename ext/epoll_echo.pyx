"""The ``cython`` echo server's core: a level-triggered epoll loop in C, run without the GIL.

``serve(listen_fd, announce)`` runs the whole server: Python is touched once to
announce readiness, then the loop runs inside one ``with nogil:`` block until
SIGTERM or SIGINT, and no Python object is created per connection or per
message.  The design notes for users live in ``sockbench.servers.cython_echo``;
the choices that matter for reading this file are:

* **State is a C table indexed by the descriptor** (``conn_t``, 24 bytes, in
  one ``calloc`` sized to RLIMIT_NOFILE): no allocation per connection, O(1)
  lookup from ``epoll_event.data.fd``, and untouched rows cost no memory.
* **One shared read buffer** (``RECV_BUF``) for every connection: read, then
  send straight back from it.  Only when the kernel takes part of it is the
  unsent tail copied into a ``malloc``'d buffer owned by that connection.
* **Bounded memory**: a connection with a tail is watched for ``EPOLLOUT``
  *only*; it is not read again until the tail is sent, so a client that never
  reads costs at most one ``RECV_BUF`` in user space.  The same rule gives the
  half-close for free: end of file is only read once nothing is pending, so the
  echo is flushed before the close.
* **Errors stay local**: a reset or any other error on a connection closes that
  connection; only a failure of epoll itself (or of the listener) ends the loop.
  Every helper saves ``errno`` right after its syscall; the loop returns
  ``-errno`` and ``serve`` raises ``OSError`` with the GIL held.
* **Stop**: a C signal handler (async-signal-safe: one ``write``) bumps an
  eventfd that the loop watches like any other descriptor.  The previous
  handlers are restored before ``serve`` returns.
"""

from libc.stdint cimport uint32_t, uint64_t

from posix cimport (
    EAGAIN, EINTR, ECONNABORTED, EPROTO, EMFILE, ENFILE, ENOBUFS, ENOMEM,
    malloc, calloc, free, memcpy, memset,
    sigaction_t, sigaction, sigemptyset, SIGINT, SIGTERM, SA_RESTART,
    write, close,
    fcntl, F_GETFL, F_SETFL, O_NONBLOCK,
    accept4, recv, send, setsockopt, SOCK_NONBLOCK, SOCK_CLOEXEC, MSG_NOSIGNAL,
    IPPROTO_TCP, TCP_NODELAY,
    rlimit, getrlimit, setrlimit, RLIMIT_NOFILE, RLIM_INFINITY,
    epoll_event, epoll_create1, epoll_ctl, epoll_wait,
    EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLLIN, EPOLLOUT,
    eventfd, EFD_NONBLOCK, EFD_CLOEXEC,
)
cimport posix

import os

__all__ = ["serve", "raise_nofile_limit", "RECV_BUF_SIZE", "MAX_EVENTS"]


cdef enum:
    RECV_BUF = 256 * 1024       # one read; also the most a connection holds unsent
    EVENTS = 512                # epoll_wait batch
    TABLE_CAP = 1 << 22         # at most this many descriptors are tracked

RECV_BUF_SIZE = RECV_BUF
MAX_EVENTS = EVENTS


ctypedef struct conn_t:
    char* tail            # malloc'd unsent echo, or NULL (then the fd is read)
    uint32_t tail_off     # bytes of ``tail`` already sent
    uint32_t tail_len     # bytes of ``tail`` still to send
    uint32_t open         # 1 while the fd is one of this loop's connections


ctypedef struct loop_t:
    int epfd
    int stopfd
    int lfd
    int accept_paused     # listener unwatched after EMFILE/ENFILE/ENOMEM
    conn_t* conns
    size_t nconns         # rows in ``conns``
    int max_fd            # highest connection fd seen (bounds the teardown scan)
    size_t live           # open connections
    char* buf             # the shared read buffer


# The eventfd that the stop-signal handler writes; -1 when no loop runs.
cdef int g_stop_fd = -1


cdef void _on_stop_signal(int signo) noexcept nogil:
    # Async-signal-safe: one write(2), errno preserved for the interrupted code.
    cdef int saved = posix.errno
    cdef uint64_t one = 1
    if g_stop_fd >= 0:
        write(g_stop_fd, &one, sizeof(one))
    posix.errno = saved


cdef int _raise_nofile(rlimit* out) noexcept nogil:
    """Soft RLIMIT_NOFILE := hard limit.  Returns 0 or -errno; ``out`` gets the result."""
    if getrlimit(RLIMIT_NOFILE, out) < 0:
        return -posix.errno
    if out.rlim_cur != out.rlim_max:
        out.rlim_cur = out.rlim_max
        if setrlimit(RLIMIT_NOFILE, out) < 0:
            return -posix.errno
    return 0


cdef int _watch(loop_t* L, int op, int fd, uint32_t events) noexcept nogil:
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = 0
    ev.data.fd = fd
    if epoll_ctl(L.epfd, op, fd, &ev) < 0:
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
    close(fd)  # also drops it from the epoll set: the fd is never dup'ed
    L.live -= 1
    if L.accept_paused:
        # a descriptor is free again: watch the listener again
        if _watch(L, EPOLL_CTL_MOD, L.lfd, EPOLLIN) == 0:
            L.accept_paused = 0


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
                if L.live == 0:
                    return -err  # no close will ever free a descriptor
                # level-triggered: an unserviceable listener would spin the loop,
                # so stop watching it until a connection closes
                if _watch(L, EPOLL_CTL_MOD, L.lfd, 0) < 0:
                    return -posix.errno
                L.accept_paused = 1
                return 0
            return -err
        if <size_t>fd >= L.nconns:
            close(fd)  # beyond the table (only if RLIMIT_NOFILE rose after start)
            continue
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
        if _watch(L, EPOLL_CTL_ADD, fd, EPOLLIN) < 0:
            close(fd)  # ENOMEM/ENOSPC: refuse this connection, keep serving the others
            continue
        c = &L.conns[fd]
        c.tail = NULL
        c.tail_off = 0
        c.tail_len = 0
        c.open = 1
        L.live += 1
        if fd > L.max_fd:
            L.max_fd = fd


cdef void _on_readable(loop_t* L, int fd) noexcept nogil:
    cdef ssize_t n, sent
    cdef int err
    cdef conn_t* c
    while True:
        n = recv(fd, L.buf, RECV_BUF, 0)
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
    sent = _send_some(fd, L.buf, <size_t>n)
    if sent == n:
        return
    if sent < 0:
        _close_conn(L, fd)
        return
    # Keep only what the kernel did not take, and stop reading until it is sent.
    c = &L.conns[fd]
    c.tail = <char*>malloc(<size_t>(n - sent))
    if c.tail == NULL:
        _close_conn(L, fd)  # out of memory: drop this connection, not the server
        return
    memcpy(c.tail, L.buf + sent, <size_t>(n - sent))
    c.tail_off = 0
    c.tail_len = <uint32_t>(n - sent)
    if _watch(L, EPOLL_CTL_MOD, fd, EPOLLOUT) < 0:
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
    if _watch(L, EPOLL_CTL_MOD, fd, EPOLLIN) < 0:
        _close_conn(L, fd)


cdef int _run(loop_t* L) noexcept nogil:
    """The event loop.  Returns 0 on a stop signal, or -errno on a fatal error."""
    cdef epoll_event events[EVENTS]
    cdef int n, i, fd, rc, err
    cdef conn_t* c
    while True:
        n = epoll_wait(L.epfd, events, EVENTS, -1)
        if n < 0:
            err = posix.errno
            if err == EINTR:
                continue
            return -err
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
            else:
                _on_readable(L, fd)


cdef int _setup(loop_t* L, int lfd) noexcept nogil:
    """Fill ``L`` for listener ``lfd``.  Returns 0 or -errno (``_teardown`` cleans up either way)."""
    cdef int flags
    cdef rlimit lim
    memset(L, 0, sizeof(loop_t))
    L.epfd = -1
    L.stopfd = -1
    L.lfd = lfd
    L.max_fd = -1
    flags = fcntl(lfd, F_GETFL)
    if flags < 0:
        return -posix.errno
    if not (flags & O_NONBLOCK) and fcntl(lfd, F_SETFL, flags | O_NONBLOCK) < 0:
        return -posix.errno
    if getrlimit(RLIMIT_NOFILE, &lim) < 0:
        return -posix.errno
    if lim.rlim_cur == RLIM_INFINITY or lim.rlim_cur > TABLE_CAP:
        L.nconns = TABLE_CAP
    else:
        L.nconns = <size_t>lim.rlim_cur
    L.conns = <conn_t*>calloc(L.nconns, sizeof(conn_t))
    L.buf = <char*>malloc(RECV_BUF)
    if L.conns == NULL or L.buf == NULL:
        return -ENOMEM
    L.epfd = epoll_create1(EPOLL_CLOEXEC)
    if L.epfd < 0:
        return -posix.errno
    L.stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if L.stopfd < 0:
        return -posix.errno
    if _watch(L, EPOLL_CTL_ADD, L.stopfd, EPOLLIN) < 0:
        return -posix.errno
    if _watch(L, EPOLL_CTL_ADD, lfd, EPOLLIN) < 0:
        return -posix.errno
    return 0


cdef void _teardown(loop_t* L) noexcept nogil:
    """Close every connection and free everything; the listener is the caller's."""
    cdef int fd
    if L.conns != NULL:
        for fd in range(L.max_fd + 1):
            if L.conns[fd].open:
                _close_conn(L, fd)
        free(L.conns)
        L.conns = NULL
    if L.buf != NULL:
        free(L.buf)
        L.buf = NULL
    if L.epfd >= 0:
        close(L.epfd)
        L.epfd = -1
    if L.stopfd >= 0:
        close(L.stopfd)
        L.stopfd = -1


cdef _raise_errno(int rc):
    raise OSError(-rc, os.strerror(-rc))


def raise_nofile_limit():
    """Raise the soft RLIMIT_NOFILE to the hard limit; return ``(soft, hard)``."""
    cdef rlimit lim
    cdef int rc = _raise_nofile(&lim)
    if rc < 0:
        _raise_errno(rc)
    return lim.rlim_cur, lim.rlim_max


def serve(int listen_fd, announce=None):
    """Echo every connection accepted on ``listen_fd`` until SIGTERM or SIGINT.

    ``listen_fd`` is a listening TCP socket (made non-blocking here; it stays
    open and owned by the caller).  ``announce()``, if given, is called once
    the loop is ready to accept.  Returns None on a stop signal; raises
    ``OSError`` if epoll or the listener fails.  One loop per process: the stop
    signal handlers are process-wide.
    """
    global g_stop_fd
    cdef loop_t L
    cdef int rc
    cdef sigaction_t act, old_term, old_int
    if g_stop_fd != -1:
        raise RuntimeError("an epoll_echo loop is already running in this process")
    raise_nofile_limit()
    rc = _setup(&L, listen_fd)
    if rc < 0:
        _teardown(&L)
        _raise_errno(rc)
    g_stop_fd = L.stopfd
    memset(&act, 0, sizeof(act))
    act.sa_handler = _on_stop_signal
    sigemptyset(&act.sa_mask)
    act.sa_flags = SA_RESTART
    sigaction(SIGTERM, &act, &old_term)
    sigaction(SIGINT, &act, &old_int)
    try:
        if announce is not None:
            announce()
        with nogil:
            rc = _run(&L)
    finally:
        sigaction(SIGTERM, &old_term, NULL)
        sigaction(SIGINT, &old_int, NULL)
        g_stop_fd = -1
        _teardown(&L)
    if rc < 0:
        _raise_errno(rc)
