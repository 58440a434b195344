"""The ``cython`` server's datagram form: a UDP echo loop in C, batching with recvmmsg/sendmmsg, run without the GIL.

``serve(fd, announce)`` echoes every datagram that reaches the bound
``SOCK_DGRAM`` socket ``fd`` back to its sender until SIGTERM or SIGINT.  Python
is touched once to announce readiness; the loop runs inside one ``with nogil:``
and creates no Python object per datagram.  The choices that matter for
reading this file:

* **Batches**: one ``recvmmsg`` takes up to ``BATCH`` datagrams, each into a
  slot of its own (``SLOT`` bytes, large enough for any UDP payload: 65,507
  over IPv4, 65,527 over IPv6), with its sender's address; one ``sendmmsg``
  answers the whole batch from the same slots, to the same addresses.  The
  per-datagram cost is then the kernel's, not a system call's: at 64 B the
  syscall entry dominated a ``recvfrom``/``sendto`` pair.  The ``msghdr``
  table is rebuilt before each ``recvmmsg`` (the kernel overwrites
  ``msg_namelen`` and ``msg_flags``), which costs a few stores per slot.
* **Level-triggered epoll** on the socket and on the stop eventfd, as the
  stream server does.  The socket is drained a batch at a time, at most
  ``ROUNDS`` batches per wake-up, so a flood cannot delay the stop signal.
* **Bounded memory**: when ``sendmmsg`` meets a full send buffer (EAGAIN),
  the unsent rest of the batch is kept where it lies, the socket is watched
  for ``EPOLLOUT`` *instead of* ``EPOLLIN``, and nothing is read until it is
  out: the server holds at most one batch, and the kernel's receive buffer
  drops what arrives meanwhile (UDP's own back-pressure).
* **A datagram's trouble is that datagram's**: a datagram too long for a slot
  (``MSG_TRUNC``; cannot happen below 65,536 B) is dropped, not echoed in
  part; a ``sendmmsg`` error on one datagram (an unreachable sender, ENOBUFS)
  drops that one and the batch goes on.  Only a broken socket (EBADF,
  ENOTSOCK, EFAULT, or EINVAL from ``recvmmsg``) or a failing epoll ends the
  loop; the core returns ``-errno`` and ``serve`` raises ``OSError``.
* **Stop**: a C signal handler (one ``write`` to an eventfd, async-signal-safe)
  wakes the loop; the previous handlers come back before ``serve`` returns.
* **Counters**: ``serve`` returns ``{"received", "echoed", "dropped"}`` for the
  tests and the curious; nothing reads a clock.
"""

from libc.stdint cimport uint64_t

from posix cimport (
    EAGAIN, EINTR, EBADF, EFAULT, EINVAL, ENOTSOCK, ENOMEM,
    calloc, free, posix_memalign, memcpy, memset,
    write,
    iovec, msghdr, mmsghdr, recvmmsg, sendmmsg, sockaddr_storage, socklen_t, MSG_DONTWAIT, MSG_TRUNC,
    epoll_event, epoll_wait, EPOLL_CTL_MOD,
    EPOLLIN, EPOLLOUT,
)
cimport posix
from stopsig cimport stopsig_running
from serveloop cimport set_nonblocking, epoll_watch, open_epoll, close_epoll, serve_until_stopped

__all__ = ["serve", "BATCH_SIZE", "SLOT_SIZE"]


cdef enum:
    BATCH = 64          # datagrams per recvmmsg / sendmmsg
    SLOT = 65536        # bytes per datagram slot: every UDP payload fits
    ROUNDS = 16         # batches per wake-up before the stop eventfd is looked at again

BATCH_SIZE = BATCH
SLOT_SIZE = SLOT


ctypedef struct uloop_t:
    int epfd
    int stopfd
    int fd
    int watching_out      # 1 while the socket waits for EPOLLOUT (a batch is half sent)
    mmsghdr* msgs         # BATCH headers: one per slot
    iovec* iovs           # BATCH iovecs: one per slot
    sockaddr_storage* addrs
    char* slots           # BATCH x SLOT bytes, page-aligned
    unsigned int pend_off # the batch's datagrams [pend_off, pend_n) are still to send
    unsigned int pend_n
    uint64_t received
    uint64_t echoed
    uint64_t dropped


cdef inline int _fatal(int err) noexcept nogil:
    """Errors that say the socket itself is broken: every later call would fail the same way."""
    return err == EBADF or err == ENOTSOCK or err == EFAULT


cdef int _send_pending(uloop_t* L) noexcept nogil:
    """Send the batch's unsent datagrams.  1: all out; 0: the send buffer is full (wait for EPOLLOUT); -errno."""
    cdef int r, err
    while L.pend_off < L.pend_n:
        r = sendmmsg(L.fd, L.msgs + L.pend_off, L.pend_n - L.pend_off, MSG_DONTWAIT)
        if r < 0:
            err = posix.errno
            if err == EINTR:
                continue
            if err == EAGAIN:   # == EWOULDBLOCK on Linux
                if not L.watching_out:
                    if epoll_watch(L.epfd, EPOLL_CTL_MOD, L.fd, EPOLLOUT) < 0:
                        return -posix.errno
                    L.watching_out = 1
                return 0
            if _fatal(err):
                return -err
            L.pend_off += 1     # this datagram could not go (unreachable sender, ENOBUFS...): it alone is lost
            L.dropped += 1
            continue
        L.pend_off += <unsigned int>r
        L.echoed += <unsigned int>r
    L.pend_off = 0
    L.pend_n = 0
    if L.watching_out:
        if epoll_watch(L.epfd, EPOLL_CTL_MOD, L.fd, EPOLLIN) < 0:
            return -posix.errno
        L.watching_out = 0
    return 1


cdef int _recv_batch(uloop_t* L) noexcept nogil:
    """One recvmmsg into fresh slots, then its datagrams queued to go back.  The count read, or -errno."""
    cdef int i, n, err
    cdef unsigned int kept = 0
    for i in range(BATCH):
        L.iovs[i].iov_base = L.slots + <size_t>i * SLOT
        L.iovs[i].iov_len = SLOT
        L.msgs[i].msg_hdr.msg_name = &L.addrs[i]
        L.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        L.msgs[i].msg_hdr.msg_iov = &L.iovs[i]
        L.msgs[i].msg_hdr.msg_iovlen = 1
        L.msgs[i].msg_hdr.msg_control = NULL
        L.msgs[i].msg_hdr.msg_controllen = 0
        L.msgs[i].msg_hdr.msg_flags = 0
        L.msgs[i].msg_len = 0
    while True:
        n = recvmmsg(L.fd, L.msgs, BATCH, MSG_DONTWAIT, NULL)
        if n >= 0:
            break
        err = posix.errno
        if err == EINTR:
            continue
        if err == EAGAIN:
            return 0
        if _fatal(err) or err == EINVAL:
            return -err
        return 0                # a pending ICMP error reported here (ECONNREFUSED...): consumed, go on
    L.received += <unsigned int>n
    for i in range(n):
        if L.msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
            L.dropped += 1      # longer than a slot: never echo part of a datagram
            continue
        L.iovs[i].iov_len = L.msgs[i].msg_len   # the answer is exactly what came
        if kept != <unsigned int>i:
            L.msgs[kept] = L.msgs[i]            # its pointers still name slot i's buffer and address
        kept += 1
    L.pend_off = 0
    L.pend_n = kept
    return n


cdef int _on_readable(uloop_t* L) noexcept nogil:
    """Echo up to ROUNDS batches.  0, or -errno."""
    cdef int rounds, n, rc
    for rounds in range(ROUNDS):
        n = _recv_batch(L)
        if n < 0:
            return n
        if n == 0:
            return 0
        rc = _send_pending(L)
        if rc < 0:
            return rc
        if rc == 0 or n < BATCH:
            return 0            # waiting for EPOLLOUT, or the socket is drained
    return 0


cdef int _run(void* loop) noexcept nogil:
    """The loop (``serveloop.serve_loop_t``).  0 on a stop signal, -errno on a fatal error."""
    cdef uloop_t* L = <uloop_t*>loop
    cdef epoll_event events[2]
    cdef int n, i, rc, err
    while True:
        n = epoll_wait(L.epfd, events, 2, -1)
        if n < 0:
            err = posix.errno
            if err == EINTR:
                continue
            return -err
        for i in range(n):
            if events[i].data.fd == L.stopfd:
                return 0
        if L.pend_n:
            rc = _send_pending(L)
        else:
            rc = _on_readable(L)
        if rc < 0:
            return rc


cdef int _setup(uloop_t* L, int fd) noexcept nogil:
    """Fill ``L`` for the socket ``fd``.  0 or -errno (``_teardown`` cleans up either way)."""
    cdef int rc
    memset(L, 0, sizeof(uloop_t))
    L.epfd = -1
    L.stopfd = -1
    L.fd = fd
    rc = set_nonblocking(fd)
    if rc < 0:
        return rc
    L.msgs = <mmsghdr*>calloc(BATCH, sizeof(mmsghdr))
    L.iovs = <iovec*>calloc(BATCH, sizeof(iovec))
    L.addrs = <sockaddr_storage*>calloc(BATCH, sizeof(sockaddr_storage))
    # page-aligned, as the stream server's buffer: the kernel copies into it faster
    if posix_memalign(<void**>&L.slots, 4096, <size_t>BATCH * SLOT) != 0:
        L.slots = NULL
    if L.msgs == NULL or L.iovs == NULL or L.addrs == NULL or L.slots == NULL:
        return -ENOMEM
    return open_epoll(fd, &L.epfd, &L.stopfd)


cdef void _teardown(void* loop) noexcept nogil:
    """Free everything; the socket is the caller's (``serveloop.serve_teardown_t``)."""
    cdef uloop_t* L = <uloop_t*>loop
    free(L.msgs)
    free(L.iovs)
    free(L.addrs)
    free(L.slots)
    L.msgs = NULL
    L.iovs = NULL
    L.addrs = NULL
    L.slots = NULL
    close_epoll(&L.epfd, &L.stopfd)


def serve(int fd, announce=None):
    """Echo every datagram that reaches the bound datagram socket ``fd`` until SIGTERM or SIGINT.

    ``fd`` is made non-blocking here and stays the caller's.  ``announce()``,
    if given, is called once the loop is ready.  Returns the counters
    ``{"received", "echoed", "dropped"}`` on a stop signal; raises ``OSError``
    if epoll or the socket fails.  One loop per process: the stop-signal
    handlers are process-wide.
    """
    cdef uloop_t L
    cdef int rc
    if stopsig_running():
        raise RuntimeError("a udp_echo loop is already running in this process")
    rc = _setup(&L, fd)
    serve_until_stopped(&L, rc, L.stopfd, announce, _run, _teardown)
    return {"received": L.received, "echoed": L.echoed, "dropped": L.dropped}
