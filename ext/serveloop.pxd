# What both C server loops do around their loop: the socket and the epoll set, and serve()'s Python side.
#
# ext/epoll_echo.pyx (streams) and ext/udp_echo.pyx (datagrams) serve one
# socket each from an epoll loop that runs without the GIL, and wrap it the
# same way: the socket made non-blocking, an epoll set holding the stop
# eventfd (ext/stopsig.h) and the socket, then the stop signal armed, the
# server announced, the loop run with the GIL released once, the signal
# disarmed, everything torn down, and a ``-errno`` from the C core raised as
# ``OSError``.  This file is the one owner of that sequence.  The loop
# itself stays in each module: ``serve_until_stopped`` receives it (and the
# teardown) as a function pointer and calls it once per serve, so the hot
# loop inside is the module's own, unchanged.  ``cdef inline`` in a .pxd, as
# in window.pxd: Cython pastes these into each module, and ``stopsig_*``
# there are that module's (the header's eventfd is a static of each module).

from libc.stdint cimport uint32_t

from posix cimport (
    close, fcntl, F_GETFL, F_SETFL, O_NONBLOCK,
    epoll_event, epoll_create1, epoll_ctl, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLLIN,
)
cimport posix
from stopsig cimport stopsig_t, stopsig_open, stopsig_arm, stopsig_disarm


#: the module's loop, run once without the GIL: 0 on a stop signal, -errno on a fatal error
ctypedef int (*serve_loop_t)(void* loop) noexcept nogil
#: frees and closes what the module's setup took (the socket is the caller's); safe after a failed setup
ctypedef void (*serve_teardown_t)(void* loop) noexcept nogil


cdef inline int set_nonblocking(int fd) noexcept nogil:
    """Make ``fd`` non-blocking (no call when it already is).  0 or -errno."""
    cdef int flags = fcntl(fd, F_GETFL)
    if flags < 0:
        return -posix.errno
    if not (flags & O_NONBLOCK) and fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0:
        return -posix.errno
    return 0


cdef inline int epoll_watch(int epfd, int op, int fd, uint32_t events) noexcept nogil:
    """``epoll_ctl(epfd, op, fd)`` for ``events``, the event carrying ``fd`` (``data.fd``).  0 or -errno."""
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = 0
    ev.data.fd = fd
    if epoll_ctl(epfd, op, fd, &ev) < 0:
        return -posix.errno
    return 0


cdef inline int open_epoll(int fd, int* epfd, int* stopfd) noexcept nogil:
    """The loop's epoll set into ``*epfd``, with the stop eventfd (``*stopfd``) and ``fd`` watched for input.

    Events carry the descriptor (``data.fd``).  0 or -errno; what was opened
    is in ``*epfd`` / ``*stopfd`` either way, for ``close_epoll``.
    """
    cdef int rc
    epfd[0] = epoll_create1(EPOLL_CLOEXEC)
    if epfd[0] < 0:
        return -posix.errno
    rc = stopsig_open(epfd[0])
    if rc < 0:
        return rc
    stopfd[0] = rc
    return epoll_watch(epfd[0], EPOLL_CTL_ADD, fd, EPOLLIN)


cdef inline void close_epoll(int* epfd, int* stopfd) noexcept nogil:
    """Close what ``open_epoll`` opened (-1: nothing), and mark it closed."""
    if epfd[0] >= 0:
        close(epfd[0])
        epfd[0] = -1
    if stopfd[0] >= 0:
        close(stopfd[0])
        stopfd[0] = -1


cdef inline int raise_errno(int rc) except -1:
    """``rc`` (a -errno from the C core) as ``OSError``."""
    import os  # a .pxd has no module namespace of its own to import into

    raise OSError(-rc, os.strerror(-rc))


cdef inline int serve_until_stopped(void* loop, int rc, int stopfd, announce, serve_loop_t run,
                                    serve_teardown_t teardown) except -1:
    """Serve ``loop`` after its setup returned ``rc``: 0 on a stop signal; raises ``OSError`` on a -errno.

    A failed setup (``rc`` < 0) is torn down and raised.  Otherwise SIGTERM
    and SIGINT write to ``stopfd`` while ``announce()`` (if given) and
    ``run(loop)`` run; the old handlers come back and the loop is torn down
    whatever happens.
    """
    cdef stopsig_t stop
    if rc < 0:
        teardown(loop)
        raise_errno(rc)
    stopsig_arm(&stop, stopfd)
    try:
        if announce is not None:
            announce()
        with nogil:
            rc = run(loop)
    finally:
        stopsig_disarm(&stop)
        teardown(loop)
    if rc < 0:
        raise_errno(rc)
    return 0
