"""The ``cython-uring`` echo server's core: an io_uring loop in C, run without the GIL.

``serve(listen_fd, announce)`` is ``epoll_echo.serve`` on io_uring: the same
contract, protocols, limits and log lines, another way of asking the kernel.
The design notes for users live in ``sockbench.servers.uring_echo``; the
choices that matter for reading this file are:

* **One io_uring_enter per batch**: the loop prepares every submission that
  a batch of completions calls for (sends, re-armed receives, cancels), then
  one ``io_uring_enter`` submits them all and waits for the next batch.  The
  ring runs SINGLE_ISSUER | DEFER_TASKRUN where the kernel has it (ext/uring.h),
  so the kernel's completion work runs inside that one call too.
* **Multishot accept, multishot receive into a provided buffer ring**: the
  listener and each connection are armed once and stay armed; every
  completion of a receive names the buffer (of ``buffers`` x ``buffer_size``,
  page-aligned, registered once) the kernel filled.  Raw mode sends the echo
  straight from that buffer (no copy), and the buffer goes back to the ring
  when the send completes.
* **Completions are matched by user_data**: ``kind | gen | aux | fd``.  ``gen``
  is bumped on every accept into a table row, so a completion of a connection
  that was closed (and whose descriptor may already serve another) is known
  and only gives its buffer back.  A receive's ``aux`` counts its armings
  (a cancel names exactly one), a send's is its buffer.
* **Per-connection state is a C table indexed by the descriptor** (``conn_t``,
  32 bytes), as in epoll_echo; raw mode's unsent echo is a FIFO of buffer ids
  linked through one array (``bnext``), so no allocation per message.
* **Order and bounded memory**: one send in flight per connection (two
  sends on one socket could complete out of order).  What arrives meanwhile
  waits in the FIFO; at ``PAUSE_BUFS`` buffers (or ``PAUSE_BYTES`` of answers in
  the framed modes) the receive is cancelled, and it is armed again once
  everything is sent.  So a peer that never reads holds a few buffers, and
  the kernel's socket buffers push back on it.
* **A dry buffer ring** (ENOBUFS, many connections with data at once) ends
  that connection's multishot receive without consuming a byte (the data
  waits in its socket).  The connection goes on a FIFO queue and is armed
  again, oldest first, as buffers come back; while the queue is not empty,
  a connection whose multishot gives data ends it (``_yield_turn``) and
  queues behind the others, so the armed ones cannot take every buffer that
  comes back: no byte is lost, and no connection waits while others are
  served round after round.
* **No multishot receive** (before Linux 6.0, or ``multishot=False``): each
  receive is armed once and re-armed after its completion; everything else
  is the same code.
* **Close**: a connection whose receive is armed (or whose send is in flight)
  is ``shutdown`` first, so its peer sees the close at once and the kernel's
  requests end (a request holds the socket open).  One with a send in flight
  closes when that send completes, since the kernel may still read its buffer.
* **Stop**: the stop eventfd of ext/stopsig.h, watched by a poll request.
  Errors stay local as in epoll_echo: only the ring or the listener failing
  ends the loop, with ``-errno`` raised as ``OSError``.
* **Framed protocols**: each received buffer is parsed by ext/wire.h's code
  (as epoll_echo does), answers appended to the connection's answer buffer,
  a partial message kept in a buffer of its own; the received buffer goes
  back to the ring at once.  Answers are double-buffered: one buffer is in
  flight (the kernel reads it) while the next fills.
* **Out of descriptors** (EMFILE & co. end the multishot accept): accepting
  pauses until a connection closes or ``ACCEPT_PAUSE_MS`` passed, with
  epoll_echo's log lines (ext/serverlog.pxd).  ``--idle-timeout`` and
  ``--max-buffered`` as in epoll_echo: the wait's timeout is the next duty.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from posix cimport (
    EAGAIN, EINTR, ECONNABORTED, EPROTO, EMFILE, ENFILE, ENOBUFS, ENOMEM, ECANCELED, ETIME, EBUSY, EINVAL,
    malloc, calloc, realloc, free, memcpy, memset,
    close, clock_gettime, timespec, CLOCK_MONOTONIC,
    setsockopt, shutdown, SHUT_RDWR, MSG_NOSIGNAL, MSG_WAITALL,
    getsockname, sockaddr, sockaddr_storage, socklen_t, AF_INET, AF_INET6,
    IPPROTO_TCP, TCP_NODELAY,
    rlimit, getrlimit, RLIMIT_NOFILE, RLIM_INFINITY,
    eventfd, EFD_NONBLOCK, EFD_CLOEXEC, EPOLLIN, EPOLLOUT, memmove,
)
cimport posix
from stopsig cimport stopsig_running
from serverlog cimport log_closing, log_accept_pause, frame_too_long, put_str, put_num, log_line
from serveloop cimport raise_errno, serve_until_stopped
from protocols cimport PROTO_RAW, PROTO_FRAME, PROTO_JSON, PROTO_COUNT, PROTO_DEFAULT_MAX_MESSAGE, proto_name
from wire cimport (
    WIRE_JSON_PREFIX, WIRE_MALFORMED, WIRE_NEED_MORE, WIRE_COMPLETE,
    wire_header_t, wire_frame_scan, wire_json_message, wire_json_response_header,
)
from uring cimport (
    uring_t, uring_pbuf_t, io_uring_sqe, io_uring_cqe,
    IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, IORING_CQE_BUFFER_SHIFT, IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SINGLE_ISSUER,
    uring_init, uring_exit, uring_sqe, uring_sqe_pos, uring_submitted, uring_cq_overflowing, uring_enter,
    uring_cq_ready, uring_cqe_at, uring_cq_advance,
    uring_pbuf_init, uring_pbuf_exit, uring_pbuf_put, uring_pbuf_publish, uring_pbuf_addr,
    uring_prep_accept_multishot, uring_prep_recv_select, uring_prep_send, uring_prep_send_quiet, uring_prep_poll,
    uring_prep_cancel,
)

__all__ = ["serve", "PROTOCOLS", "MAX_MESSAGE_LIMIT", "MAX_IDLE_TIMEOUT_S", "ACCEPT_PAUSE_S", "BUFFERS",
           "BUFFER_SIZE", "PAUSE_BUFFERS", "SQ_ENTRIES"]


cdef enum:
    SQ_DEPTH = 4096             # submission queue entries (the completion queue has 4x)
    NBUF_DEFAULT = 2048         # provided buffers ...
    BUF_DEFAULT = 16384         # ... of this size: 32 MiB, touched only as they are used
    PAUSE_BUFS = 8              # raw: a connection's receive stops with this many buffers unsent
    PAUSE_BYTES = PAUSE_BUFS * BUF_DEFAULT  # framed: ... or this many bytes of unsent answers
    TABLE_CAP = 1 << 22         # at most this many descriptors are tracked
    SCRATCH = 65536 + 256       # json: one answer header
    ACCEPT_PAUSE_MS = 100       # the longest accept pause after EMFILE/ENFILE/ENOBUFS/ENOMEM (contract.ACCEPT_PAUSE_S)
    REASON_CAP = 256            # a closing reason handed in from Python (--idle-timeout, --max-buffered)
    BGID = 0                    # the buffer group

# user_data: kind (4 bits) | gen (16) | aux (16) | fd (28)
cdef enum:
    UD_ACCEPT = 1
    UD_RECV = 2
    UD_SEND = 3
    UD_STOP = 4
    UD_CANCEL = 5
    UD_WRITABLE = 6     # a send found no room: a poll for POLLOUT, then the rest

#: protocol index -> name, from the generated ext/protocols.h
PROTOCOLS = tuple(proto_name(i).decode() for i in range(PROTO_COUNT))
MAX_MESSAGE_LIMIT = 1 << 30
MAX_IDLE_TIMEOUT_S = 2_000_000
ACCEPT_PAUSE_S = ACCEPT_PAUSE_MS / 1000
BUFFERS = NBUF_DEFAULT
BUFFER_SIZE = BUF_DEFAULT
PAUSE_BUFFERS = PAUSE_BUFS
SQ_ENTRIES = SQ_DEPTH


ctypedef struct conn_t:
    uint16_t gen          # bumped at every accept into this row
    uint16_t arm          # the receive's armings (the aux of its user_data)
    uint8_t open          # 1 while the descriptor is one of this loop's connections
    uint8_t armed         # a receive is armed (until its completion without F_MORE)
    uint8_t sending       # a send is in flight
    uint8_t paused        # too much unsent: the receive is (being) cancelled until it is sent
    uint8_t eof           # the peer's end of file was read: close once everything is sent
    uint8_t starved       # on the starved queue (its receive ended with ENOBUFS)
    uint8_t yielding      # its multishot receive is being cancelled so that a starved connection gets a turn
    uint8_t closing       # framed: malformed or over --max-buffered: close once the answers are sent
    uint8_t dying         # closed while a send was in flight: the close completes with that send
    uint8_t waitout       # a send found no room: POLLOUT is awaited (``sending`` stays set)
    uint8_t listed        # quiet sends: on ``listq``, its send not yet known complete
    uint32_t spos         # quiet sends: the submission queue position of the send in flight
    int32_t qhead         # raw: the FIFO of received, unsent buffers (-1: empty) ...
    int32_t qtail
    uint32_t nq           # ... and its length
    uint32_t off          # bytes of the head buffer already sent
    uint32_t last         # --idle-timeout: its last complete message, ms since the loop started (mod 2**32)


ctypedef struct pstate_t:
    unsigned char* pend   # the partial message, malloc'd only while there is one
    size_t pend_len
    size_t pend_need      # the bytes its next decision needs (the size of ``pend``)
    unsigned char* out    # answers not yet handed to the kernel (never in flight: may be realloc'd)
    size_t out_len
    size_t out_cap
    unsigned char* sbuf   # answers in flight: the kernel reads them until the send completes
    size_t s_off
    size_t s_len
    size_t s_cap


ctypedef struct loop_t:
    uring_t ring
    uring_pbuf_t pb
    int stopfd
    int lfd
    int nodelay           # the listener is TCP: TCP_NODELAY on each accepted socket
    int multishot         # multishot receives (else each is armed once)
    int accept_armed
    int accept_paused
    conn_t* conns
    size_t nconns
    int max_fd
    size_t live
    # the provided buffers
    unsigned nbufs
    int32_t* bnext        # raw FIFOs: the buffer after this one
    uint32_t* blen        # bytes received into this buffer
    unsigned held         # buffers out of the ring (received, not given back)
    # connections whose receive ended for want of a buffer, oldest first (a ring over ``nconns``)
    int32_t* starvq
    size_t sq_head
    size_t sq_len
    # --protocol frame|json
    int proto
    uint64_t max_message
    pstate_t* ps
    unsigned char* scratch
    # timed duties, as in epoll_echo
    uint64_t t0_ms
    uint64_t now_ms
    uint32_t idle_ms
    uint32_t sweep_ms
    uint64_t next_sweep_ms
    uint64_t resume_ms
    uint64_t next_accept_log_ms
    uint64_t accept_unsaid
    uint64_t max_buffered
    uint64_t buffered
    int fatal             # -errno when the ring itself failed inside a handler
    # quiet sends (uring.h's uring_prep_send_quiet): no completion unless a send needs something done
    int quiet
    int32_t* listq        # the connections whose send is not yet known complete
    size_t nlist
    # without DEFER_TASKRUN, an accept may complete inside any system call: descriptors closed since the
    # last io_uring_enter are closed once the entries prepared for them are submitted, so that no
    # entry can reach a new connection that took the same number
    int32_t* closeq
    size_t nclose
    # counted for ``stats`` (SOCKBENCH_URING_STATS): one line on stderr when the loop ends
    int stats
    uint64_t n_enter      # io_uring_enter calls (the batch's, and the rare one for a full submission queue)
    uint64_t n_cqe        # completions handled
    uint64_t n_recv       # receive completions with data
    uint64_t n_enobufs    # receives ended by a dry buffer ring
    uint64_t n_yield      # multishot receives ended so that a starved connection gets a turn
    uint64_t n_fed        # ... and armed again when buffers came back
    uint64_t n_pause      # receives cancelled because too much was unsent
    uint64_t n_short      # sends the kernel completed short


cdef char g_name[64]
cdef char g_idle_reason[REASON_CAP]
cdef char g_buffered_reason[REASON_CAP]


cdef inline uint64_t _ud(uint64_t kind, uint32_t gen, uint32_t aux, int fd) noexcept nogil:
    return (kind << 60) | (<uint64_t>(gen & 0xFFFF) << 44) | (<uint64_t>(aux & 0xFFFF) << 28) | <uint64_t>fd


cdef uint64_t _clock_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000 + <uint64_t>(ts.tv_nsec // 1000000)


cdef inline uint32_t _now32(loop_t* L) noexcept nogil:
    return <uint32_t>(L.now_ms - L.t0_ms)


cdef io_uring_sqe* _sqe(loop_t* L) noexcept nogil:
    """A submission entry; when the queue is full, what is in it is submitted first (a second enter, rare)."""
    cdef io_uring_sqe* s = uring_sqe(&L.ring)
    cdef int rc
    if s != NULL:
        return s
    rc = uring_enter(&L.ring, 0, -1)
    L.n_enter += 1
    _flush_closes(L)
    if rc < 0 and rc != -EINTR and rc != -EBUSY and rc != -EAGAIN:
        L.fatal = rc
    s = uring_sqe(&L.ring)
    if s == NULL and L.fatal == 0:
        L.fatal = -EBUSY
    return s


# --- buffers and receives ------------------------------------------------------------------------


cdef inline void _give_back(loop_t* L, unsigned bid) noexcept nogil:
    uring_pbuf_put(&L.pb, bid)
    L.held -= 1


cdef void _arm_recv(loop_t* L, int fd, conn_t* c) noexcept nogil:
    cdef io_uring_sqe* s = _sqe(L)
    if s == NULL:
        return
    c.arm += 1
    uring_prep_recv_select(s, fd, BGID, L.multishot, _ud(UD_RECV, c.gen, c.arm, fd))
    c.armed = 1


cdef inline int _may_read(conn_t* c) noexcept nogil:
    return c.open and not (c.armed or c.paused or c.eof or c.closing or c.dying or c.starved)


cdef void _want_recv(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """Arm the receive of ``fd`` if it should read and is not armed; with no buffer free, or connections already
    waiting for one, queue it behind them instead."""
    if not _may_read(c):
        return
    if L.held >= L.nbufs or L.sq_len > 0:
        _starve(L, fd, c)
        return
    _arm_recv(L, fd, c)


cdef void _starve(loop_t* L, int fd, conn_t* c) noexcept nogil:
    if c.starved:
        return
    c.starved = 1
    L.starvq[(L.sq_head + L.sq_len) % L.nconns] = fd
    L.sq_len += 1


cdef void _feed_starved(loop_t* L) noexcept nogil:
    """Arm the starved connections, oldest first, as many as there are buffers in the ring."""
    cdef int fd
    cdef conn_t* c
    cdef unsigned budget
    if L.held >= L.nbufs:
        return
    budget = L.nbufs - L.held  # each armed receive takes at least one buffer
    while L.sq_len > 0 and budget > 0:
        fd = L.starvq[L.sq_head]
        L.sq_head = (L.sq_head + 1) % L.nconns
        L.sq_len -= 1
        c = &L.conns[fd]
        c.starved = 0
        if _may_read(c):
            _arm_recv(L, fd, c)  # its turn: not queued again behind the ones after it
        L.n_fed += 1
        budget -= 1


cdef void _yield_turn(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """End ``fd``'s multishot receive after the data it just gave, so that the starved queue is served in turn:
    under a dry ring the armed multishots would otherwise take every buffer that comes back, and a queued
    connection could wait a whole window.  Its receive ends with ECANCELED and queues it at the back."""
    cdef io_uring_sqe* s
    if c.yielding or c.paused or not c.armed:
        return
    s = _sqe(L)
    if s != NULL:
        c.yielding = 1
        L.n_yield += 1
        uring_prep_cancel(s, _ud(UD_RECV, c.gen, c.arm, fd), _ud(UD_CANCEL, c.gen, 0, fd))


cdef void _pause(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """Stop reading ``fd`` until what it holds is sent: cancel exactly its armed receive."""
    cdef io_uring_sqe* s
    if c.paused:
        return
    c.paused = 1
    L.n_pause += 1
    if c.armed:
        s = _sqe(L)
        if s != NULL:
            uring_prep_cancel(s, _ud(UD_RECV, c.gen, c.arm, fd), _ud(UD_CANCEL, c.gen, 0, fd))


cdef void _resume(loop_t* L, int fd, conn_t* c) noexcept nogil:
    if c.paused:
        c.paused = 0
        _want_recv(L, fd, c)


# --- connections -----------------------------------------------------------------------------------


cdef void _free_state(loop_t* L, int fd, conn_t* c, int keep_head) noexcept nogil:
    """Give back every queued buffer (but the one in flight when ``keep_head``) and free the framed state."""
    cdef int32_t b, nxt
    cdef pstate_t* ps
    b = c.qhead
    if keep_head and b >= 0:
        b = L.bnext[b]
        L.bnext[c.qhead] = -1
        c.qtail = c.qhead
        c.nq = 1
    else:
        c.qhead = -1
        c.qtail = -1
        c.nq = 0
    while b >= 0:
        nxt = L.bnext[b]
        _give_back(L, <unsigned>b)
        b = nxt
    if L.ps != NULL:
        ps = &L.ps[fd]
        _drop_pending(L, ps)
        free(ps.out)
        ps.out = NULL
        ps.out_len = 0
        ps.out_cap = 0
        if not keep_head:
            free(ps.sbuf)
            memset(ps, 0, sizeof(pstate_t))


cdef void _close_conn(loop_t* L, int fd) noexcept nogil:
    cdef conn_t* c = &L.conns[fd]
    if not c.open or c.dying:
        return
    if c.sending and not c.waitout:
        # the kernel may still read the buffer in flight: end the connection now (the send fails
        # at once), free everything else, and close when that send completes
        shutdown(fd, SHUT_RDWR)
        c.dying = 1
        _free_state(L, fd, c, 1)
        return
    if c.armed or c.waitout:
        shutdown(fd, SHUT_RDWR)  # the armed requests end, and with them the kernel's hold on the socket
    _free_state(L, fd, c, 0)
    _final_close(L, fd, c)


cdef void _final_close(loop_t* L, int fd, conn_t* c) noexcept nogil:
    c.open = 0
    c.dying = 0
    c.sending = 0
    c.waitout = 0
    c.armed = 0
    c.paused = 0
    c.yielding = 0
    c.eof = 0
    c.closing = 0
    c.off = 0
    L.live -= 1
    if L.ring.setup_flags & IORING_SETUP_DEFER_TASKRUN:
        # no accept can take the number before the entries prepared for it are submitted: the
        # kernel's completion work (accept's too) runs inside io_uring_enter, after submission
        close(fd)
        if L.accept_paused:
            _resume_accepting(L)  # a descriptor is free again
        return
    L.closeq[L.nclose] = fd  # closed after the next submission (``_flush_closes``)
    L.nclose += 1


cdef void _flush_closes(loop_t* L) noexcept nogil:
    """Close the descriptors of the connections closed before the last io_uring_enter (its entries are in)."""
    cdef size_t i
    if L.nclose == 0:
        return
    for i in range(L.nclose):
        close(L.closeq[i])
    L.nclose = 0
    if L.accept_paused:
        _resume_accepting(L)  # descriptors are free again


cdef void _drop_pending(loop_t* L, pstate_t* ps) noexcept nogil:
    if ps.pend != NULL:
        free(ps.pend)
        L.buffered -= ps.pend_len
    ps.pend = NULL
    ps.pend_len = 0
    ps.pend_need = 0


cdef int _pending_out(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """1 while ``fd`` has anything unsent (raw: queued buffers; framed: answers in either buffer)."""
    cdef pstate_t* ps
    if c.sending or c.nq:
        return 1
    if L.ps != NULL:
        ps = &L.ps[fd]
        return ps.out_len != 0
    return 0


cdef void _settle(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """After a send completed: close a connection that was only waiting for its answers, resume a paused one."""
    if _pending_out(L, fd, c):
        return
    if c.closing or c.eof:
        _close_conn(L, fd)
    elif c.paused:
        _resume(L, fd, c)


# --- accept ------------------------------------------------------------------------------------------


cdef void _arm_accept(loop_t* L) noexcept nogil:
    cdef io_uring_sqe* s
    if L.accept_armed or L.accept_paused:
        return
    s = _sqe(L)
    if s == NULL:
        return
    uring_prep_accept_multishot(s, L.lfd, _ud(UD_ACCEPT, 0, 0, 0))
    L.accept_armed = 1


cdef void _resume_accepting(loop_t* L) noexcept nogil:
    L.accept_paused = 0
    L.resume_ms = 0
    _arm_accept(L)


cdef int _on_accept(loop_t* L, int res, uint32_t flags) noexcept nogil:
    """A multishot accept's completion.  0, or -errno when the listener itself failed."""
    cdef int fd, err
    cdef int one = 1
    cdef conn_t* c
    cdef io_uring_sqe* s
    if not (flags & IORING_CQE_F_MORE):
        L.accept_armed = 0
    if res >= 0:
        fd = res
        if <size_t>fd >= L.nconns:
            close(fd)  # beyond the table (only if RLIMIT_NOFILE rose after start)
        else:
            if L.nodelay:
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            c = &L.conns[fd]
            c.gen += 1
            c.open = 1
            c.armed = 0
            c.sending = 0
            c.paused = 0
            c.yielding = 0
            c.eof = 0
            c.closing = 0
            c.dying = 0
            c.waitout = 0
            c.qhead = -1
            c.qtail = -1
            c.nq = 0
            c.off = 0
            c.last = _now32(L)
            L.live += 1
            if fd > L.max_fd:
                L.max_fd = fd
            _want_recv(L, fd, c)
        _arm_accept(L)
        return 0
    err = -res
    if err == EMFILE or err == ENFILE or err == ENOBUFS or err == ENOMEM:
        if L.accept_armed:
            # still armed: stop it, or it would fail again on every connection waiting in the queue
            s = _sqe(L)
            if s != NULL:
                uring_prep_cancel(s, _ud(UD_ACCEPT, 0, 0, 0), _ud(UD_CANCEL, 0, 0, 0))
        L.accept_paused = 1
        L.now_ms = _clock_ms()
        L.resume_ms = L.now_ms + ACCEPT_PAUSE_MS
        log_accept_pause(g_name, err, L.now_ms, &L.next_accept_log_ms, &L.accept_unsaid)
        return 0
    if err == EINTR or err == EAGAIN or err == ECONNABORTED or err == EPROTO or err == ECANCELED:
        _arm_accept(L)  # that one connection went away before we took it (or our own cancel)
        return 0
    return -err


# --- raw: the echo ------------------------------------------------------------------------------------


cdef void _submit_send(loop_t* L, int fd, conn_t* c, const void* p, unsigned n, uint32_t aux) noexcept nogil:
    """One send of ``p[:n]``: quiet where the kernel has it (complete unless a completion says otherwise,
    ``_confirm_sends``), else one that completes with a completion."""
    cdef io_uring_sqe* s = _sqe(L)
    if s == NULL:
        return
    if L.quiet:
        uring_prep_send_quiet(s, fd, p, n, _ud(UD_SEND, c.gen, aux, fd))
        c.spos = uring_sqe_pos(&L.ring)
        if not c.listed:
            c.listed = 1
            L.listq[L.nlist] = fd
            L.nlist += 1
    else:
        uring_prep_send(s, fd, p, n, MSG_NOSIGNAL | MSG_WAITALL, _ud(UD_SEND, c.gen, aux, fd))
    c.sending = 1


cdef void _wait_writable(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """A quiet send found no room for (the rest of) its bytes: poll for POLLOUT, then send the rest."""
    cdef io_uring_sqe* s = _sqe(L)
    if s == NULL:
        return
    uring_prep_poll(s, fd, EPOLLOUT, _ud(UD_WRITABLE, c.gen, 0, fd))
    c.waitout = 1
    c.sending = 1


cdef void _send_head(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """Send (the rest of) the oldest queued buffer: one send in flight per connection keeps the order."""
    cdef int32_t bid = c.qhead
    _submit_send(L, fd, c, uring_pbuf_addr(&L.pb, <unsigned>bid) + c.off, L.blen[bid] - c.off, <uint32_t>bid)


cdef void _on_raw_data(loop_t* L, int fd, conn_t* c, unsigned bid, int res) noexcept nogil:
    L.blen[bid] = <uint32_t>res
    L.bnext[bid] = -1
    if c.qtail >= 0:
        L.bnext[c.qtail] = <int32_t>bid
    else:
        c.qhead = <int32_t>bid
    c.qtail = <int32_t>bid
    c.nq += 1
    if not c.sending:
        _send_head(L, fd, c)
    if c.nq >= PAUSE_BUFS:
        _pause(L, fd, c)


cdef void _on_raw_sent(loop_t* L, int fd, conn_t* c, unsigned bid, int res) noexcept nogil:
    cdef int32_t nxt
    c.sending = 0
    if res < 0 and not (res == -EAGAIN and L.quiet) or res == 0:
        _close_conn(L, fd)  # EPIPE, ECONNRESET: this connection only
        return
    if res > 0:
        c.off += <uint32_t>res
    if c.off < L.blen[bid]:
        L.n_short += 1
        if L.quiet:
            _wait_writable(L, fd, c)  # no room for the rest: when there is, in order
        else:
            _send_head(L, fd, c)  # a short send (MSG_WAITALL makes it rare): the rest, in order
        return
    nxt = L.bnext[bid]
    _give_back(L, bid)
    c.off = 0
    c.qhead = nxt
    c.nq -= 1
    if nxt < 0:
        c.qtail = -1
        _settle(L, fd, c)
    else:
        _send_head(L, fd, c)


# --- --protocol frame|json ------------------------------------------------------------------------------


cdef int _append(pstate_t* ps, const unsigned char* p, size_t n) noexcept nogil:
    """Append to the answers not yet handed to the kernel.  0, or -1 when out of memory."""
    cdef size_t cap
    cdef unsigned char* grown
    if ps.out_len + n > ps.out_cap:
        cap = ps.out_cap * 2 if ps.out_cap else 4096
        while cap < ps.out_len + n:
            cap *= 2
        grown = <unsigned char*>realloc(ps.out, cap)
        if grown == NULL:
            return -1
        ps.out = grown
        ps.out_cap = cap
    memcpy(ps.out + ps.out_len, p, n)
    ps.out_len += n
    return 0


cdef int _answer(loop_t* L, pstate_t* ps, const unsigned char* msg, size_t total, wire_header_t* h) noexcept nogil:
    """The answer to the complete message ``msg[:total]``: a frame is its own; json a rebuilt header + the content."""
    cdef size_t hl
    cdef Py_ssize_t rlen
    if L.proto == PROTO_FRAME:
        return _append(ps, msg, total)
    hl = WIRE_JSON_PREFIX + ((<size_t>msg[0] << 8) | msg[1])
    rlen = wire_json_response_header(msg + WIRE_JSON_PREFIX, h, <uint64_t>h.content_length.ival, L.scratch, SCRATCH)
    if rlen < 0:
        return -1  # cannot happen: an answer header is never longer than the request's
    if _append(ps, L.scratch, <size_t>rlen) < 0:
        return -1
    return _append(ps, msg + hl, total - hl)


cdef inline int _over_buffered(loop_t* L) noexcept nogil:
    return L.max_buffered != 0 and L.buffered > L.max_buffered


cdef void _close_after_answers(loop_t* L, int fd, conn_t* c) noexcept nogil:
    if _pending_out(L, fd, c):
        c.closing = 1
        _pause(L, fd, c)  # nothing more is read from it
    else:
        _close_conn(L, fd)


cdef void _malformed(loop_t* L, int fd, conn_t* c, const char* reason) noexcept nogil:
    log_closing(g_name, fd, b"malformed message: ", reason)
    _close_after_answers(L, fd, c)


cdef void _over_limit(loop_t* L, int fd, conn_t* c, pstate_t* ps) noexcept nogil:
    _drop_pending(L, ps)
    log_closing(g_name, fd, b"", g_buffered_reason)
    _close_after_answers(L, fd, c)


cdef int _decide_pending(loop_t* L, int fd, conn_t* c, pstate_t* ps) noexcept nogil:
    """``ps.pend`` holds what its next decision needs: grow it, or answer the message.  0, or -1 when closing."""
    cdef size_t need = 0, total = 0
    cdef Py_ssize_t cnt
    cdef int rc
    cdef wire_header_t h
    cdef unsigned char* msg
    cdef char reason[128]
    if L.proto == PROTO_FRAME:
        cnt = wire_frame_scan(ps.pend, ps.pend_len, L.max_message, &total, &need)
        if cnt == WIRE_MALFORMED:
            _malformed(L, fd, c, frame_too_long(reason, sizeof(reason), ps.pend, L.max_message))
            return -1
        rc = WIRE_COMPLETE if cnt > 0 else WIRE_NEED_MORE
    else:
        rc = wire_json_message(ps.pend, ps.pend_len, L.max_message, &h, &need)
        if rc == WIRE_MALFORMED:
            _malformed(L, fd, c, h.error)
            return -1
        total = need
    if rc == WIRE_NEED_MORE:
        msg = <unsigned char*>realloc(ps.pend, need)
        if msg == NULL:
            _close_conn(L, fd)
            return -1
        ps.pend = msg
        ps.pend_need = need
        return 0
    if _answer(L, ps, ps.pend, total, &h) < 0:
        _close_conn(L, fd)
        return -1
    _drop_pending(L, ps)
    if L.idle_ms:
        c.last = _now32(L)
    return 0


cdef void _feed(loop_t* L, int fd, conn_t* c, const unsigned char* p, size_t n) noexcept nogil:
    """The received bytes ``p[:n]`` of a framed connection: answers appended, a partial message kept."""
    cdef pstate_t* ps = &L.ps[fd]
    cdef size_t take, pos, need = 0
    cdef Py_ssize_t cnt
    cdef int rc
    cdef wire_header_t h
    cdef char reason[128]
    while n > 0:
        if ps.pend != NULL:
            take = ps.pend_need - ps.pend_len
            if take > n:
                take = n
            memcpy(ps.pend + ps.pend_len, p, take)
            ps.pend_len += take
            L.buffered += take
            p += take
            n -= take
            if _over_buffered(L):
                _over_limit(L, fd, c, ps)
                return
            if ps.pend_len < ps.pend_need:
                return
            if _decide_pending(L, fd, c, ps) < 0:
                return
            continue
        # no partial message: every complete one in p[:n] is answered from where it lies
        pos = 0
        if L.proto == PROTO_FRAME:
            cnt = wire_frame_scan(p, n, L.max_message, &pos, &need)
            if pos and _append(ps, p, pos) < 0:
                _close_conn(L, fd)
                return
            if cnt == WIRE_MALFORMED:
                _malformed(L, fd, c, frame_too_long(reason, sizeof(reason), p + pos, L.max_message))
                return
        else:
            while True:
                rc = wire_json_message(p + pos, n - pos, L.max_message, &h, &need)
                if rc == WIRE_MALFORMED:
                    _malformed(L, fd, c, h.error)
                    return
                if rc != WIRE_COMPLETE:
                    break
                if _answer(L, ps, p + pos, need, &h) < 0:
                    _close_conn(L, fd)
                    return
                pos += need
        if pos and L.idle_ms:
            c.last = _now32(L)
        if pos < n:
            # the buffer ended inside a message: keep it, sized for its next decision (``need`` > what is here)
            ps.pend = <unsigned char*>malloc(need)
            if ps.pend == NULL:
                _close_conn(L, fd)
                return
            memcpy(ps.pend, p + pos, n - pos)
            ps.pend_len = n - pos
            ps.pend_need = need
            L.buffered += ps.pend_len
            if _over_buffered(L):
                _over_limit(L, fd, c, ps)
        return


cdef void _send_answers(loop_t* L, int fd, conn_t* c) noexcept nogil:
    """Hand the answers to the kernel: the filled buffer goes in flight, the emptied one fills next."""
    cdef pstate_t* ps = &L.ps[fd]
    cdef unsigned char* b
    cdef size_t cap
    if c.sending or ps.out_len == 0:
        return
    b, cap = ps.sbuf, ps.s_cap
    ps.sbuf, ps.s_cap, ps.s_len, ps.s_off = ps.out, ps.out_cap, ps.out_len, 0
    ps.out, ps.out_cap, ps.out_len = b, cap, 0
    _submit_send(L, fd, c, ps.sbuf, <unsigned>ps.s_len, 0)


cdef void _on_framed_sent(loop_t* L, int fd, conn_t* c, int res) noexcept nogil:
    cdef pstate_t* ps = &L.ps[fd]
    c.sending = 0
    if res < 0 and not (res == -EAGAIN and L.quiet) or res == 0:
        _close_conn(L, fd)
        return
    if res > 0:
        ps.s_off += <size_t>res
    if ps.s_off < ps.s_len:
        L.n_short += 1
        if L.quiet:
            _wait_writable(L, fd, c)
        else:
            _submit_send(L, fd, c, ps.sbuf + ps.s_off, <unsigned>(ps.s_len - ps.s_off), 0)
        return
    ps.s_len = 0
    ps.s_off = 0
    _send_answers(L, fd, c)
    _settle(L, fd, c)


cdef void _on_framed_data(loop_t* L, int fd, conn_t* c, const unsigned char* p, size_t n) noexcept nogil:
    cdef pstate_t* ps = &L.ps[fd]
    _feed(L, fd, c, p, n)
    if not c.open or c.dying:
        return
    _send_answers(L, fd, c)
    if ps.out_len + (ps.s_len - ps.s_off) >= PAUSE_BYTES:
        _pause(L, fd, c)


# --- the completions -------------------------------------------------------------------------------------


cdef void _on_recv(loop_t* L, int fd, uint32_t gen, uint32_t arm, int res, uint32_t flags) noexcept nogil:
    cdef conn_t* c = &L.conns[fd]
    cdef unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT
    cdef int has_buf = (flags & IORING_CQE_F_BUFFER) != 0
    if has_buf:
        L.held += 1
    if not c.open or c.gen != <uint16_t>gen:
        if has_buf:
            _give_back(L, bid)  # a connection closed since: its buffer only goes back
        return
    if not (flags & IORING_CQE_F_MORE) and <uint16_t>arm == c.arm:
        c.armed = 0  # this arming ended
        c.yielding = 0
    if c.dying or c.closing:
        if has_buf:
            _give_back(L, bid)
        return
    if res > 0 and has_buf:
        L.n_recv += 1
        if L.idle_ms and L.proto == PROTO_RAW:
            c.last = _now32(L)  # raw: every read is answered whole
        if L.proto == PROTO_RAW:
            _on_raw_data(L, fd, c, bid, res)
        else:
            _on_framed_data(L, fd, c, <const unsigned char*>uring_pbuf_addr(&L.pb, bid), <size_t>res)
            _give_back(L, bid)  # copied into the answers or the partial message
        if c.open and not c.dying:
            if c.armed:
                if L.sq_len > 0:
                    _yield_turn(L, fd, c)  # others wait for a buffer: this one steps back after this read
            else:
                _want_recv(L, fd, c)  # single-shot, or a multishot the kernel ended: armed again (or queued)
        return
    if has_buf:
        _give_back(L, bid)
    if res == 0:
        if L.ps != NULL and L.ps[fd].pend != NULL:
            _malformed(L, fd, c, b"connection closed inside a message")
            return
        c.eof = 1  # end of file: close once everything before it is sent
        if not _pending_out(L, fd, c):
            _close_conn(L, fd)
        return
    if res == -ENOBUFS:
        L.n_enobufs += 1
        if not c.armed:
            _starve(L, fd, c)  # no byte was taken: armed again when buffers come back
        return
    if res == -ECANCELED or res == -EINTR or res == -EAGAIN:
        _want_recv(L, fd, c)  # our own pause (re-armed only once unpaused)
        return
    _close_conn(L, fd)  # ECONNRESET and friends: this connection only


cdef void _on_send(loop_t* L, int fd, uint32_t gen, int res) noexcept nogil:
    """A send's completion (every send's without quiet sends; with them, one that needs something done)."""
    cdef conn_t* c = &L.conns[fd]
    if not c.open or c.gen != <uint16_t>gen or not c.sending or c.waitout:
        return  # (cannot happen: a connection is closed only once its send is known complete)
    _send_done(L, fd, c, res)


cdef void _send_done(loop_t* L, int fd, conn_t* c, int res) noexcept nogil:
    """The send in flight of ``fd`` is complete: ``res`` bytes went (or -errno)."""
    if c.dying:
        c.sending = 0
        if L.proto == PROTO_RAW:
            if c.qhead >= 0:
                _give_back(L, <unsigned>c.qhead)
            c.qhead = -1
            c.qtail = -1
            c.nq = 0
        else:
            free(L.ps[fd].sbuf)
            memset(&L.ps[fd], 0, sizeof(pstate_t))
        _final_close(L, fd, c)
        return
    if L.proto == PROTO_RAW:
        _on_raw_sent(L, fd, c, <unsigned>c.qhead, res)
    else:
        _on_framed_sent(L, fd, c, res)


cdef void _on_writable(loop_t* L, int fd, uint32_t gen) noexcept nogil:
    """The poll of a send that found no room: send the rest now."""
    cdef conn_t* c = &L.conns[fd]
    cdef pstate_t* ps
    if not c.open or c.gen != <uint16_t>gen or not c.waitout:
        return
    c.waitout = 0
    c.sending = 0
    if L.proto == PROTO_RAW:
        _send_head(L, fd, c)
    else:
        ps = &L.ps[fd]
        _submit_send(L, fd, c, ps.sbuf + ps.s_off, <unsigned>(ps.s_len - ps.s_off), 0)


cdef int _confirmation_awaited(loop_t* L) noexcept nogil:
    """1 when a quiet send's completion would let the loop do more (send the next buffer, close after the
    answers, resume reading, feed a starved connection): the next io_uring_enter must not wait then,
    since a send that sent everything posts nothing that would end the wait."""
    cdef size_t i
    cdef int fd
    cdef conn_t* c
    if L.sq_len:
        return 1
    for i in range(L.nlist):
        fd = L.listq[i]
        c = &L.conns[fd]
        if c.nq > 1 or c.eof or c.closing or c.paused or c.dying:
            return 1
        if L.ps != NULL and L.ps[fd].out_len:
            return 1
    return 0


cdef void _confirm_sends(loop_t* L) noexcept nogil:
    """Quiet sends: each one the kernel submitted without a completion sent everything.

    Runs after a batch's completions (a failed send's came with them).  Not
    while the kernel holds overflowed completions: one may be a send's.
    """
    cdef size_t i, n = L.nlist, w = 0, added
    cdef int fd
    cdef conn_t* c
    cdef pstate_t* ps
    if n == 0 or uring_cq_overflowing(&L.ring):
        return
    for i in range(n):
        fd = L.listq[i]
        c = &L.conns[fd]
        if c.open and c.sending and not c.waitout and not uring_submitted(&L.ring, c.spos):
            L.listq[w] = fd  # not submitted yet
            w += 1
            continue
        c.listed = 0
        if c.open and c.sending and not c.waitout:
            if L.proto == PROTO_RAW:
                _send_done(L, fd, c, <int>(L.blen[c.qhead] - c.off) if c.qhead >= 0 else 0)
            else:
                ps = &L.ps[fd]
                _send_done(L, fd, c, <int>(ps.s_len - ps.s_off))
    added = L.nlist - n  # listed by the completions just made
    if added:
        memmove(&L.listq[w], &L.listq[n], added * sizeof(int32_t))
    L.nlist = w + added


cdef int _wait_ms(loop_t* L) noexcept nogil:
    """How long the wait may last, in ms: until the next timed duty, or -1 (none)."""
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
    cdef int fd
    cdef uint32_t now32
    cdef conn_t* c
    if L.accept_paused and L.now_ms >= L.resume_ms:
        _resume_accepting(L)
    if L.idle_ms and L.now_ms >= L.next_sweep_ms:
        L.next_sweep_ms = L.now_ms + L.sweep_ms
        now32 = _now32(L)
        for fd in range(L.max_fd + 1):
            c = &L.conns[fd]
            if c.open and not c.dying and <uint32_t>(now32 - c.last) >= L.idle_ms:
                if not c.closing:  # a closing one said why already
                    log_closing(g_name, fd, b"", g_idle_reason)
                _close_conn(L, fd)


cdef int _run(void* loop) noexcept nogil:
    """The loop (``serveloop.serve_loop_t``): 0 on a stop signal, or -errno on a fatal error."""
    cdef loop_t* L = <loop_t*>loop
    cdef io_uring_cqe* cqe
    cdef unsigned head, n, i
    cdef uint64_t ud
    cdef uint32_t kind, gen, aux
    cdef int fd, rc, timed, wait_ms, stop = 0
    cdef unsigned wait_nr
    cdef io_uring_sqe* s = _sqe(L)
    if s == NULL:
        return L.fatal
    uring_prep_poll(s, L.stopfd, EPOLLIN, _ud(UD_STOP, 0, 0, 0))
    _arm_accept(L)
    while True:
        if L.sq_len:
            _feed_starved(L)
        uring_pbuf_publish(&L.pb)
        if L.fatal:
            return L.fatal
        timed = L.idle_ms != 0 or L.accept_paused
        wait_ms = _wait_ms(L) if timed else -1
        wait_nr = 0 if L.nclose or (L.nlist and _confirmation_awaited(L)) else 1
        rc = uring_enter(&L.ring, wait_nr, <long long>wait_ms * 1000000 if wait_ms >= 0 else -1)
        L.n_enter += 1
        if rc < 0 and rc != -EINTR and rc != -ETIME and rc != -EBUSY and rc != -EAGAIN:
            return rc
        _flush_closes(L)
        if timed:
            L.now_ms = _clock_ms()
            _timed_duties(L)
        n = uring_cq_ready(&L.ring, &head)
        L.n_cqe += n
        for i in range(n):
            cqe = uring_cqe_at(&L.ring, head + i)
            ud = cqe.user_data
            kind = <uint32_t>(ud >> 60)
            gen = <uint32_t>((ud >> 44) & 0xFFFF)
            aux = <uint32_t>((ud >> 28) & 0xFFFF)
            fd = <int>(ud & 0xFFFFFFF)
            if kind == UD_RECV:
                _on_recv(L, fd, gen, aux, cqe.res, cqe.flags)
            elif kind == UD_SEND:
                _on_send(L, fd, gen, cqe.res)
            elif kind == UD_WRITABLE:
                _on_writable(L, fd, gen)
            elif kind == UD_ACCEPT:
                rc = _on_accept(L, cqe.res, cqe.flags)
                if rc < 0:
                    uring_cq_advance(&L.ring, i + 1)
                    return rc
            elif kind == UD_STOP:
                stop = 1
        uring_cq_advance(&L.ring, n)
        if stop:
            return 0
        if L.quiet:
            _confirm_sends(L)


# --- setup, teardown, serve() --------------------------------------------------------------------------------


cdef int _setup(loop_t* L, int lfd, unsigned nbufs, unsigned bufsize, int multishot, int quiet, int defer,
                int proto, uint64_t max_message) noexcept nogil:
    """Fill ``L`` for listener ``lfd``.  0 or -errno (``_teardown`` cleans up either way)."""
    cdef int rc
    cdef rlimit lim
    cdef sockaddr_storage ss
    cdef socklen_t sl = sizeof(ss)
    memset(L, 0, sizeof(loop_t))
    L.ring.fd = -1
    L.stopfd = -1
    L.lfd = lfd
    L.max_fd = -1
    L.multishot = multishot
    L.quiet = quiet
    L.nbufs = nbufs
    L.proto = proto
    L.max_message = max_message
    L.t0_ms = _clock_ms()
    L.now_ms = L.t0_ms
    if getsockname(lfd, <sockaddr*>&ss, &sl) < 0:
        return -posix.errno
    L.nodelay = ss.ss_family == AF_INET or ss.ss_family == AF_INET6
    if getrlimit(RLIMIT_NOFILE, &lim) < 0:
        return -posix.errno
    if lim.rlim_cur == RLIM_INFINITY or lim.rlim_cur > TABLE_CAP:
        L.nconns = TABLE_CAP
    else:
        L.nconns = <size_t>lim.rlim_cur
    L.conns = <conn_t*>calloc(L.nconns, sizeof(conn_t))
    L.starvq = <int32_t*>calloc(L.nconns, sizeof(int32_t))
    L.bnext = <int32_t*>calloc(nbufs, sizeof(int32_t))
    L.blen = <uint32_t*>calloc(nbufs, sizeof(uint32_t))
    # twice: while _confirm_sends walks the list, a send it completes may list its connection again at the end
    L.listq = <int32_t*>calloc(2 * L.nconns, sizeof(int32_t))
    L.closeq = <int32_t*>calloc(L.nconns, sizeof(int32_t))
    if (L.conns == NULL or L.starvq == NULL or L.bnext == NULL or L.blen == NULL or L.listq == NULL
            or L.closeq == NULL):
        return -ENOMEM
    if proto != PROTO_RAW:
        L.ps = <pstate_t*>calloc(L.nconns, sizeof(pstate_t))
        L.scratch = <unsigned char*>malloc(SCRATCH)
        if L.ps == NULL or L.scratch == NULL:
            return -ENOMEM
    L.stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
    if L.stopfd < 0:
        return -posix.errno
    rc = uring_init(&L.ring, SQ_DEPTH,
                    0xFFFFFFFF if defer else ~(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN))
    if rc < 0:
        return rc
    return uring_pbuf_init(&L.ring, &L.pb, nbufs, bufsize, BGID)


cdef void _log_stats(loop_t* L) noexcept nogil:
    """``SOCKBENCH_URING_STATS``: what the loop did, in one line on stderr (for calibration, never by default)."""
    cdef char line[512]
    cdef size_t cap = sizeof(line) - 1
    cdef size_t o = put_str(line, 0, cap, b"sockbench serve ")
    o = put_str(line, o, cap, g_name)
    o = put_str(line, o, cap, b": io_uring stats: enters ")
    o = put_num(line, o, cap, L.n_enter)
    o = put_str(line, o, cap, b", completions ")
    o = put_num(line, o, cap, L.n_cqe)
    o = put_str(line, o, cap, b", receives ")
    o = put_num(line, o, cap, L.n_recv)
    o = put_str(line, o, cap, b", dry ring (ENOBUFS) ")
    o = put_num(line, o, cap, L.n_enobufs)
    o = put_str(line, o, cap, b", re-armed after it ")
    o = put_num(line, o, cap, L.n_fed)
    o = put_str(line, o, cap, b", turns yielded to it ")
    o = put_num(line, o, cap, L.n_yield)
    o = put_str(line, o, cap, b", receive pauses ")
    o = put_num(line, o, cap, L.n_pause)
    o = put_str(line, o, cap, b", short sends ")
    o = put_num(line, o, cap, L.n_short)
    o = put_str(line, o, cap, b", multishot ")
    o = put_num(line, o, cap, <uint64_t>L.multishot)
    o = put_str(line, o, cap, b", quiet sends ")
    o = put_num(line, o, cap, <uint64_t>L.quiet)
    o = put_str(line, o, cap, b", defer_taskrun ")
    o = put_num(line, o, cap, 1 if L.ring.setup_flags & IORING_SETUP_DEFER_TASKRUN else 0)
    log_line(line, o)


cdef void _teardown(void* loop) noexcept nogil:
    """Close every connection, the ring and the stop eventfd; free everything.  The listener is the caller's."""
    cdef loop_t* L = <loop_t*>loop
    cdef int fd
    if L.stats and L.ring.fd >= 0:
        _log_stats(L)
    if L.conns != NULL:
        for fd in range(L.max_fd + 1):
            if L.conns[fd].open:
                shutdown(fd, SHUT_RDWR)  # every peer sees the close now, whatever the ring still holds
    uring_exit(&L.ring)  # cancels every request: nothing reads or writes our buffers after this
    if L.closeq != NULL:
        L.accept_paused = 0
        _flush_closes(L)
    if L.conns != NULL:
        for fd in range(L.max_fd + 1):
            if L.conns[fd].open:
                if L.ps != NULL:
                    _drop_pending(L, &L.ps[fd])
                    free(L.ps[fd].out)
                    free(L.ps[fd].sbuf)
                close(fd)
        free(L.conns)
        L.conns = NULL
    uring_pbuf_exit(&L.pb)
    free(L.ps)
    free(L.scratch)
    free(L.starvq)
    free(L.bnext)
    free(L.blen)
    free(L.listq)
    free(L.closeq)
    L.listq = NULL
    L.closeq = NULL
    L.ps = NULL
    L.scratch = NULL
    L.starvq = NULL
    L.bnext = NULL
    L.blen = NULL
    if L.stopfd >= 0:
        close(L.stopfd)
        L.stopfd = -1


cdef void _set_reason(char* dst, reason):
    cdef bytes b = str(reason).encode("utf-8", "replace")[:REASON_CAP - 1]
    memcpy(dst, <const char*>b, len(b))
    dst[len(b)] = 0


def serve(int listen_fd, announce=None, *, protocol="raw", uint64_t max_message=PROTO_DEFAULT_MAX_MESSAGE,
          name="cython-uring", double idle_timeout=0, uint64_t max_buffered=0,
          idle_reason="no complete message in time", buffered_reason="too many bytes in partial messages",
          bint multishot=True, bint quiet_sends=True, bint defer_taskrun=True, unsigned buffers=NBUF_DEFAULT,
          unsigned buffer_size=BUF_DEFAULT, bint stats=False):
    """Echo every connection accepted on ``listen_fd`` until SIGTERM or SIGINT, on io_uring.

    As ``epoll_echo.serve`` (the listener stays the caller's; ``announce()`` is
    called once the loop is ready; the keyword arguments mean the same), and:
    ``multishot`` False arms each receive once (what a kernel without
    multishot receive gets); ``quiet_sends`` False gives every send a
    completion (a kernel where ext/uring.h's ``uring_prep_send_quiet`` does
    not behave as it says); ``defer_taskrun`` False sets the ring up as a
    kernel before 6.1 would (COOP_TASKRUN); ``buffers`` (a power of two, 1..32768) of
    ``buffer_size`` bytes (at least 64) form the provided buffer ring.
    ``stats``: one line on stderr when the loop ends, counting its enters,
    completions, receives, dry-ring events, pauses and short sends.  Raises
    ``OSError`` when io_uring cannot be set up or fails, ``ValueError`` for a
    bad value.
    """
    cdef loop_t L
    cdef int rc
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if max_message < 1 or max_message > MAX_MESSAGE_LIMIT:
        raise ValueError(f"max_message must be in 1..{MAX_MESSAGE_LIMIT}, got {max_message}")
    if not 0 <= idle_timeout <= MAX_IDLE_TIMEOUT_S:
        raise ValueError(f"idle_timeout must be in 0..{MAX_IDLE_TIMEOUT_S} s, got {idle_timeout}")
    if max_buffered and protocol == "raw":
        raise ValueError("max_buffered applies to the frame and json protocols; raw holds no partial messages")
    if buffers < 1 or buffers > 32768 or buffers & (buffers - 1):
        raise ValueError(f"buffers must be a power of two in 1..32768, got {buffers}")
    if buffer_size < 64 or buffer_size > (1 << 30):
        raise ValueError(f"buffer_size must be in 64..2**30, got {buffer_size}")
    if stopsig_running():
        raise RuntimeError("a uring_echo loop is already running in this process")
    cdef bytes cname = str(name).encode("utf-8", "replace")[:sizeof(g_name) - 1]
    memcpy(g_name, <const char*>cname, len(cname))
    g_name[len(cname)] = 0
    _set_reason(g_idle_reason, idle_reason)
    _set_reason(g_buffered_reason, buffered_reason)
    rc = _setup(&L, listen_fd, buffers, buffer_size, 1 if multishot else 0, 1 if quiet_sends else 0,
                1 if defer_taskrun else 0, PROTOCOLS.index(protocol), max_message)
    if idle_timeout > 0:
        L.idle_ms = <uint32_t>max(1.0, idle_timeout * 1000)
        L.sweep_ms = <uint32_t>max(1.0, min(1000.0, idle_timeout * 250))  # a quarter of it, at most 1 s: as contract.Limits
        L.next_sweep_ms = L.now_ms + L.sweep_ms
    L.max_buffered = max_buffered
    L.stats = 1 if stats else 0
    serve_until_stopped(&L, rc, L.stopfd, announce, _run, _teardown)
