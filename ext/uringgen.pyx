"""The load generator's hot loop on io_uring (``sockbench load --engine uring``), run inside one ``with nogil:``.

Why it exists: on a 2-core machine the fastest servers are client-bound, and
every system call the client saves is CPU the client can spend on load.
This loop does what ``sockbench.ext.loadgen`` does (raw protocol; closed,
open and connect modes; every echoed byte verified; the window, histograms,
counters, CPU samples and client stalls of ext/window.pxd and ext/loadrun.pxd,
so its result means exactly what loadgen's means), but asks the kernel
through one io_uring (ext/uring.h) instead of epoll plus a read and a write
per event:

* **One io_uring_enter per pass**: the sends and re-armed receives a batch of
  completions calls for are prepared in the submission queue, and one
  ``io_uring_enter`` submits them and waits (or, polling, only reaps).  The
  ring runs DEFER_TASKRUN where the kernel has it, so the kernel's receive
  work runs inside that call, and is counted in this process's CPU.
* **Receives**: each connection has one multishot receive into a provided
  buffer ring (closed and open modes); each completion is verified against
  the payload pattern and its buffer given back at once.  A dry ring
  (ENOBUFS) re-arms the connection, oldest first, as buffers come back.
  Connect mode arms one single-shot receive at a time, so that nothing is
  armed when a cycle's socket is closed.
* **Sends**: one send in flight per connection (two sends on one socket
  could complete out of order), straight from the payload table: everything a
  connection owes, up to ``WINDOW`` contiguous bytes, in one send, as
  loadgen's one write.  A completion that took less sends the rest.
* **Bytes verified**: an echo is checked against the stream offset it should
  be at, and may never run ahead of what was handed to the kernel; the
  payload pattern, ``PERIOD``, ``STRIDE`` and ``WINDOW`` are loadgen's, so a
  run of either engine checks the same bytes.
* **Open loop**: the wait's timeout is the next message's intended time (no
  timer descriptor), or, polling, the loop reaps without waiting and counts
  its idle passes and client stalls exactly as loadgen (``run_pass``).
* **Connect mode**: ``IORING_OP_CONNECT`` on a fresh socket, then the echo of
  one message, then ``close``.

Only the raw protocol: frame and json stay with loadgen (``--engine epoll``).
"""

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

from posix cimport (
    errno, EINTR, EAGAIN, ENOMEM, ENOBUFS, ECANCELED, ETIME, EBUSY,
    calloc, free, memcmp, memcpy, memset,
    close, fcntl, F_GETFL, F_SETFL, O_NONBLOCK,
    sockaddr, sockaddr_in, sockaddr_in6, sockaddr_un, sockaddr_storage, socklen_t, socket,
    setsockopt, shutdown, htons, inet_pton,
    AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM, SOCK_CLOEXEC, SHUT_RDWR, MSG_NOSIGNAL, MSG_WAITALL,
    IPPROTO_TCP, TCP_NODELAY, EPOLLOUT, memmove,
)
from window cimport (
    now_ns, hist_record, in_window, interval_index, intended_ns, edges_open, edges_close, edges_set_cpus,
)
from loadrun cimport (
    Run, RUN_CLOSED, RUN_OPEN, RUN_N_ERR, run_init, run_alloc, run_pass, run_result, run_free,
    run_arm, run_disarm, run_over,
)
from uring cimport (
    uring_t, uring_pbuf_t, io_uring_sqe, io_uring_cqe,
    IORING_CQE_F_BUFFER, IORING_CQE_F_MORE, IORING_CQE_BUFFER_SHIFT,
    uring_init, uring_exit, uring_sqe, uring_sqe_pos, uring_submitted, uring_cq_overflowing, uring_enter,
    uring_cq_ready, uring_cqe_at, uring_cq_advance,
    uring_pbuf_init, uring_pbuf_exit, uring_pbuf_put, uring_pbuf_publish, uring_pbuf_addr,
    uring_prep_recv_select, uring_prep_send, uring_prep_send_quiet, uring_prep_connect, uring_prep_poll,
    IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_DEFER_TASKRUN,
)

from sockbench.ext import loadgen

import os

__all__ = ["run_loop", "MODE_CLOSED", "MODE_OPEN", "MODE_CONNECT", "ERROR_KINDS", "BUFFERS", "BUFFER_SIZE"]

cdef enum:
    C_SQ = 4096               # submission queue entries (the completion queue has 4x)
    C_NBUF = 4096             # provided buffers ...
    C_BUFSZ = 16384           # ... of this size, given back as soon as they are verified
    C_WINDOW_MAX = 262144     # the longest contiguous slice of the table: loadgen.WINDOW (checked at import)
    BGID = 0

# the payload pattern is loadgen's: the same table, period and stride, so both engines check the same bytes
cdef int64_t PERIOD = loadgen.PERIOD
cdef int64_t STRIDE = loadgen.STRIDE
cdef int64_t WINDOW = loadgen.WINDOW
cdef int64_t TABLE_LEN = loadgen.PERIOD + loadgen.WINDOW
if loadgen.WINDOW != C_WINDOW_MAX:
    raise ImportError("uringgen: loadgen.WINDOW changed; update C_WINDOW_MAX")

MODE_CLOSED = 0
MODE_OPEN = 1
MODE_CONNECT = 2
#: the same kinds, in the same order, as loadgen's (the result's ``errors``)
ERROR_KINDS = loadgen.ERROR_KINDS
BUFFERS = C_NBUF
BUFFER_SIZE = C_BUFSZ

cdef enum:
    M_CLOSED = RUN_CLOSED
    M_OPEN = RUN_OPEN
    M_CONNECT = 2

cdef enum:
    E_CONNECT = 0
    E_RESET = 1
    E_TIMEOUT = 2
    E_MISMATCH = 3
    N_ERR = RUN_N_ERR

cdef enum:
    S_DEAD = 0
    S_CONNECTING = 1
    S_OPEN = 2

# user_data: kind (4 bits) | gen (28) | connection index (32)
cdef enum:
    K_RECV = 1
    K_SEND = 2
    K_CONNECT = 3
    K_WRITABLE = 4         # a quiet send found no room: POLLOUT, then the rest


cdef struct Conn:
    int fd
    int state
    uint32_t gen           # bumped on every new socket in a slot: stale completions are known
    int armed              # a receive is armed
    int starved            # on the starved queue (ENOBUFS)
    int dirty
    int64_t sending        # bytes of the send in flight (0: none)
    int waitout            # a send found no room: POLLOUT is awaited
    int listed             # quiet sends: on ``listq``, its send not yet known complete
    unsigned spos          # quiet sends: the submission queue position of the send in flight
    unsigned lastpos       # the position of the last entry prepared for this socket
    int64_t pat            # (cid * STRIDE) % PERIOD
    int64_t sent           # stream bytes the kernel took
    int64_t owed           # stream bytes that should be written
    int64_t recvd          # stream bytes received and verified
    int64_t queued
    int64_t done
    int64_t wdone
    int64_t due
    int64_t t_start
    int64_t *ring          # send time of message m at ring[m % cap]


cdef struct Loop:
    Run run
    uring_t ring
    uring_pbuf_t pb
    int multishot          # multishot receives (closed and open modes)
    int size
    int cap
    int nconns
    Conn *conns
    unsigned held          # buffers the kernel filled that are not given back yet
    int *starvq            # connections waiting for a buffer, oldest first (a ring over nconns)
    int sq_head
    int sq_len
    sockaddr_storage addr
    socklen_t addrlen
    int family
    int64_t next_cid
    int64_t cid_step
    int64_t cycles
    int fatal
    int quiet              # quiet sends (ext/uring.h's uring_prep_send_quiet)
    int defer              # DEFER_TASKRUN where the kernel has it
    int *listq             # the connections whose send is not yet known complete
    int nlist
    int *closeq            # sockets whose entries are not all submitted: closed after the next submission
    int nclose
    int closecap


cdef inline uint64_t ud(uint64_t kind, uint32_t gen, int64_t idx) noexcept nogil:
    return (kind << 60) | (<uint64_t>(gen & 0xFFFFFFF) << 32) | <uint64_t><uint32_t>idx


cdef io_uring_sqe *get_sqe(Loop *L) noexcept nogil:
    cdef io_uring_sqe *s = uring_sqe(&L.ring)
    cdef int rc
    if s != NULL:
        return s
    rc = uring_enter(&L.ring, 0, -1)   # full: submit what is there (rare: the queue holds 4096)
    flush_closes(L)
    if rc < 0 and rc != -EINTR and rc != -EBUSY and rc != -EAGAIN:
        L.fatal = rc
    s = uring_sqe(&L.ring)
    if s == NULL and L.fatal == 0:
        L.fatal = -EBUSY
    return s


cdef void conn_error(Loop *L, Conn *c, int kind, int64_t now) noexcept nogil:
    L.run.errors[kind] += 1
    if L.run.first_error_ns == 0:
        L.run.first_error_ns = now
        L.run.first_error_kind = kind
    drop(L, c)


cdef void drop(Loop *L, Conn *c) noexcept nogil:
    """End the connection in slot ``c``: its armed requests end with it (shutdown), its completions go stale.

    A socket with an entry not yet submitted is closed after the next submission (``flush_closes``), so
    that the entry cannot reach the next socket to take its number (connect mode makes one per cycle).
    """
    if c.fd >= 0:
        if c.armed or c.sending or c.waitout:
            shutdown(c.fd, SHUT_RDWR)
        if not uring_submitted(&L.ring, c.lastpos) and L.nclose == L.closecap:
            uring_enter(&L.ring, 0, -1)   # (rare) submit them now, and make room
            flush_closes(L)
        if uring_submitted(&L.ring, c.lastpos):
            close(c.fd)
        else:
            L.closeq[L.nclose] = c.fd
            L.nclose += 1
        c.fd = -1
    c.gen += 1
    c.armed = 0
    c.sending = 0
    c.waitout = 0
    if c.state != S_DEAD:
        c.state = S_DEAD
        L.run.alive -= 1


cdef void flush_closes(Loop *L) noexcept nogil:
    cdef int i
    for i in range(L.nclose):
        close(L.closeq[i])
    L.nclose = 0


cdef inline int verify_at(Loop *L, Conn *c, int64_t off, const char *buf, int64_t n) noexcept nogil:
    """1 when ``buf[:n]`` is exactly the stream of ``c`` at offset ``off``."""
    cdef int64_t s, chunk
    while n > 0:
        s = (off + c.pat) % PERIOD
        chunk = n if n < WINDOW else WINDOW
        if memcmp(buf, L.run.table + s, <size_t>chunk) != 0:
            return 0
        buf += chunk
        off += chunk
        n -= chunk
    return 1


# ---- sends and receives ----------------------------------------------------------------------

cdef void flush(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    """Send what ``c`` owes (up to WINDOW contiguous bytes), unless a send is in flight."""
    cdef int64_t len_
    cdef io_uring_sqe *s
    if c.sending or c.waitout or c.sent >= c.owed or c.state != S_OPEN:
        return
    s = get_sqe(L)
    if s == NULL:
        return
    len_ = c.owed - c.sent
    if len_ > WINDOW:
        len_ = WINDOW
    if L.quiet:
        uring_prep_send_quiet(s, c.fd, L.run.table + (c.sent + c.pat) % PERIOD, <unsigned>len_, ud(K_SEND, c.gen, idx))
        c.spos = uring_sqe_pos(&L.ring)
        if not c.listed:
            c.listed = 1
            L.listq[L.nlist] = <int>idx
            L.nlist += 1
    else:
        uring_prep_send(s, c.fd, L.run.table + (c.sent + c.pat) % PERIOD, <unsigned>len_, MSG_NOSIGNAL | MSG_WAITALL,
                        ud(K_SEND, c.gen, idx))
    c.lastpos = uring_sqe_pos(&L.ring)
    c.sending = len_
    L.run.writes += 1


cdef void arm_recv(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    cdef io_uring_sqe *s
    if c.armed or c.state != S_OPEN or c.starved:
        return
    if L.held >= L.pb.nbufs:
        starve(L, c, idx)
        return
    s = get_sqe(L)
    if s == NULL:
        return
    uring_prep_recv_select(s, c.fd, BGID, L.multishot, ud(K_RECV, c.gen, idx))
    c.lastpos = uring_sqe_pos(&L.ring)
    c.armed = 1


cdef void starve(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    if c.starved:
        return
    c.starved = 1
    L.starvq[(L.sq_head + L.sq_len) % L.nconns] = <int>idx
    L.sq_len += 1


cdef void feed_starved(Loop *L) noexcept nogil:
    """Arm the connections that met a dry buffer ring, oldest first, one per buffer in the ring."""
    cdef unsigned budget
    cdef int idx
    cdef Conn *c
    if L.held >= L.pb.nbufs:
        return
    budget = L.pb.nbufs - L.held
    while L.sq_len > 0 and budget > 0:
        idx = L.starvq[L.sq_head]
        L.sq_head = (L.sq_head + 1) % L.nconns
        L.sq_len -= 1
        c = &L.conns[idx]
        c.starved = 0
        arm_recv(L, c, idx)
        budget -= 1


cdef inline void give_back(Loop *L, unsigned bid) noexcept nogil:
    uring_pbuf_put(&L.pb, bid)
    L.held -= 1


cdef inline void queue_msgs(Loop *L, Conn *c, int64_t k, int64_t now) noexcept nogil:
    """Hand ``k`` more messages of ``c`` to the sender, stamped ``now`` (loadgen's, alike)."""
    cdef int64_t i, ti
    for i in range(k):
        c.ring[(c.queued + i) % L.cap] = now
    c.queued += k
    c.owed += k * L.size
    L.run.msgs_queued += k
    if L.run.mode == M_OPEN:
        if in_window(&L.run.w, now):
            L.run.sent_window += k
        ti = interval_index(&L.run.w, now)
        if ti >= 0:
            L.run.ts_sent[ti] += k


cdef inline void open_queue(Loop *L, Conn *c, int64_t now) noexcept nogil:
    cdef int64_t upto = c.due
    if upto > c.done + L.cap:
        upto = c.done + L.cap
    if upto > c.queued:
        queue_msgs(L, c, upto - c.queued, now)


cdef void on_data(Loop *L, Conn *c, int64_t idx, const char *buf, int64_t n) noexcept nogil:
    """``n`` echoed bytes of ``c``: verified, counted, timed; the replacements queued (loadgen's on_readable)."""
    cdef int64_t now = now_ns()
    cdef int64_t newdone, k, m, ti, t_sent, g
    L.run.reads += 1
    if c.recvd + n > c.sent + c.sending or not verify_at(L, c, c.recvd, buf, n):
        conn_error(L, c, E_MISMATCH, now)   # bytes never sent, or not the ones sent
        return
    c.recvd += n
    newdone = c.recvd // L.size
    k = newdone - c.done
    if k <= 0:
        return
    if in_window(&L.run.w, now):
        L.run.msgs += k
        c.wdone += k
        L.run.rx_bytes_window += k * L.size
        for m in range(c.done, newdone):
            t_sent = c.ring[m % L.cap]
            if L.run.mode == M_OPEN:
                g = m * L.nconns + idx
                hist_record(&L.run.hdr, &L.run.h1, now - intended_ns(&L.run.w, g))
                hist_record(&L.run.hdr, &L.run.h2, now - t_sent)
            elif L.run.mode == M_CLOSED:
                hist_record(&L.run.hdr, &L.run.h1, now - t_sent)
            else:
                hist_record(&L.run.hdr, &L.run.h2, now - c.t_start)
                L.cycles += 1
    ti = interval_index(&L.run.w, now)
    if ti >= 0:
        L.run.ts_msgs[ti] += k
    c.done = newdone
    if L.run.mode == M_CLOSED:
        queue_msgs(L, c, k, now)
        flush(L, c, idx)
    elif L.run.mode == M_OPEN:
        open_queue(L, c, now)
        flush(L, c, idx)
    else:
        drop(L, c)             # one echo per connection: close (nothing is armed), and start over
        start_cycle(L, c, idx, now)


cdef void on_recv(Loop *L, int64_t idx, uint32_t gen, int res, uint32_t flags) noexcept nogil:
    cdef Conn *c = &L.conns[idx]
    cdef unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT
    cdef int has_buf = (flags & IORING_CQE_F_BUFFER) != 0
    if has_buf:
        L.held += 1
    if gen != (c.gen & 0xFFFFFFF) or c.state != S_OPEN:
        if has_buf:
            give_back(L, bid)   # a socket closed since: only its buffer goes back
        return
    if not (flags & IORING_CQE_F_MORE):
        c.armed = 0
    if res > 0 and has_buf:
        on_data(L, c, idx, uring_pbuf_addr(&L.pb, bid), res)
        give_back(L, bid)
        if c.state == S_OPEN and not c.armed and (L.run.mode != M_CONNECT or c.recvd < c.owed):
            arm_recv(L, c, idx)
        return
    if has_buf:
        give_back(L, bid)
    if res == -ENOBUFS:
        if not c.armed:
            starve(L, c, idx)   # nothing was taken: armed again when buffers come back
    elif res == -EINTR or res == -EAGAIN or res == -ECANCELED:
        arm_recv(L, c, idx)
    else:
        conn_error(L, c, E_RESET, now_ns())   # closed by the server (0), or reset


cdef void on_send(Loop *L, int64_t idx, uint32_t gen, int res) noexcept nogil:
    """A send's completion (every send's without quiet sends; with them, one that sent less than all)."""
    cdef Conn *c = &L.conns[idx]
    cdef io_uring_sqe *s
    if gen != (c.gen & 0xFFFFFFF) or c.state != S_OPEN or not c.sending:
        return
    if res < 0 and not (res == -EAGAIN and L.quiet) or res == 0:
        conn_error(L, c, E_RESET, now_ns())
        return
    if res > 0:
        c.sent += res
    if L.quiet and c.sent < c.owed and res < c.sending:
        # no room for the rest: poll for it (the bytes owed stay in order: nothing else is sent meanwhile)
        c.sending = 0
        s = get_sqe(L)
        if s == NULL:
            return
        uring_prep_poll(s, c.fd, EPOLLOUT, ud(K_WRITABLE, c.gen, idx))
        c.lastpos = uring_sqe_pos(&L.ring)
        c.waitout = 1
        return
    c.sending = 0
    flush(L, c, idx)


cdef void on_writable(Loop *L, int64_t idx, uint32_t gen) noexcept nogil:
    cdef Conn *c = &L.conns[idx]
    if gen != (c.gen & 0xFFFFFFF) or c.state != S_OPEN or not c.waitout:
        return
    c.waitout = 0
    flush(L, c, idx)


cdef int confirmation_awaited(Loop *L) noexcept nogil:
    """1 when a quiet send's completion would let the loop send more (or a starved socket waits for buffers):
    the next io_uring_enter must not wait then, since a send that sent everything posts nothing."""
    cdef int i
    cdef Conn *c
    if L.sq_len or L.nclose:
        return 1
    for i in range(L.nlist):
        c = &L.conns[L.listq[i]]
        if c.state == S_OPEN and c.sending and c.owed > c.sent + c.sending:
            return 1
    return 0


cdef void confirm_sends(Loop *L) noexcept nogil:
    """Quiet sends: each the kernel submitted without a completion sent everything (see the server's)."""
    cdef int i, n = L.nlist, w = 0, added, idx
    cdef Conn *c
    if n == 0 or uring_cq_overflowing(&L.ring):
        return
    for i in range(n):
        idx = L.listq[i]
        c = &L.conns[idx]
        if c.state == S_OPEN and c.sending and not uring_submitted(&L.ring, c.spos):
            L.listq[w] = idx
            w += 1
            continue
        c.listed = 0
        if c.state == S_OPEN and c.sending:
            c.sent += c.sending
            c.sending = 0
            flush(L, c, idx)
    added = L.nlist - n
    if added:
        memmove(&L.listq[w], &L.listq[n], added * sizeof(int))
    L.nlist = w + added


# ---- connect mode ------------------------------------------------------------------------------

cdef int start_cycle(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Connect mode: a new socket in slot ``c``, connecting."""
    cdef int fd, one = 1
    cdef io_uring_sqe *s
    fd = socket(L.family, SOCK_STREAM | SOCK_CLOEXEC, 0)
    if fd < 0:
        c.state = S_DEAD
        L.run.errors[E_CONNECT] += 1
        if L.run.first_error_ns == 0:
            L.run.first_error_ns = now
            L.run.first_error_kind = E_CONNECT
        return -1
    if L.family != AF_UNIX:
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    c.fd = fd
    c.gen += 1
    c.pat = (L.next_cid * STRIDE) % PERIOD
    L.next_cid += L.cid_step
    c.sent = 0
    c.owed = 0
    c.recvd = 0
    c.queued = 0
    c.done = 0
    c.sending = 0
    c.armed = 0
    c.t_start = now
    c.state = S_CONNECTING
    L.run.alive += 1
    s = get_sqe(L)
    if s == NULL:
        conn_error(L, c, E_CONNECT, now)
        return -1
    uring_prep_connect(s, fd, <sockaddr *>&L.addr, L.addrlen, ud(K_CONNECT, c.gen, idx))
    c.lastpos = uring_sqe_pos(&L.ring)
    return 0


cdef void on_connect(Loop *L, int64_t idx, uint32_t gen, int res) noexcept nogil:
    cdef Conn *c = &L.conns[idx]
    cdef int64_t now = now_ns()
    if gen != (c.gen & 0xFFFFFFF) or c.state != S_CONNECTING:
        return
    if res < 0:
        conn_error(L, c, E_CONNECT, now)
        return
    if in_window(&L.run.w, now):
        hist_record(&L.run.hdr, &L.run.h1, now - c.t_start)
    c.state = S_OPEN
    queue_msgs(L, c, 1, now)
    flush(L, c, idx)
    arm_recv(L, c, idx)


# ---- the loop ------------------------------------------------------------------------------------

cdef void start_conns(Loop *L, int64_t now) noexcept nogil:
    cdef int i
    cdef Conn *c
    for i in range(L.nconns):
        c = &L.conns[i]
        if L.run.mode == M_CONNECT:
            start_cycle(L, c, i, now)
        elif c.state == S_OPEN:
            arm_recv(L, c, i)
            if L.run.mode == M_CLOSED:
                queue_msgs(L, c, L.cap, now)
                flush(L, c, i)
    if L.run.mode == M_OPEN:
        open_advance(L, now)


cdef void open_advance(Loop *L, int64_t now) noexcept nogil:
    """Open loop: every message whose intended time has come becomes due; then send (loadgen's, alike)."""
    cdef int64_t j, i
    cdef Conn *c
    while L.run.g_next < L.run.w.g_limit and intended_ns(&L.run.w, L.run.g_next) <= now:
        j = L.run.g_next % L.nconns
        c = &L.conns[j]
        c.due += 1
        if not c.dirty:
            c.dirty = 1
            L.run.dirty[L.run.ndirty] = j
            L.run.ndirty += 1
        L.run.g_next += 1
    for i in range(L.run.ndirty):
        j = L.run.dirty[i]
        c = &L.conns[j]
        c.dirty = 0
        if c.state == S_OPEN:
            open_queue(L, c, now)
            flush(L, c, j)
    L.run.ndirty = 0


cdef void check_timeouts(Loop *L, int64_t now) noexcept nogil:
    cdef int64_t i
    cdef Conn *c
    for i in range(L.nconns):
        c = &L.conns[i]
        if c.state == S_DEAD:
            continue
        if L.run.mode == M_CONNECT:
            if now - c.t_start > L.run.timeout:
                conn_error(L, c, E_TIMEOUT, now)
        elif c.queued > c.done and now - c.ring[c.done % L.cap] > L.run.timeout:
            conn_error(L, c, E_TIMEOUT, now)


cdef void count_starved(Loop *L, int64_t now) noexcept nogil:
    """At the window's close: connections that completed nothing in it although owed an answer all along."""
    cdef int64_t i, oldest
    cdef Conn *c
    if L.run.mode == M_CONNECT:
        return
    for i in range(L.nconns):
        c = &L.conns[i]
        if c.wdone > 0:
            continue
        if c.state == S_DEAD:
            L.run.starved += 1
        elif c.queued > c.done:
            oldest = c.ring[c.done % L.cap]
            if oldest <= L.run.e.t_ru[0] or now - oldest >= L.run.stall:
                L.run.starved += 1


cdef int64_t wait_ns(Loop *L, int64_t now, int64_t next_tick) noexcept nogil:
    """How long the wait may last: until the next tick, the window's edges or (open loop) the next message."""
    cdef int64_t until = next_tick if next_tick < L.run.w.end else L.run.w.end
    cdef int64_t t
    if not L.run.e.ru_started and L.run.w.warm_end < until:
        until = L.run.w.warm_end
    if L.run.mode == M_OPEN and L.run.g_next < L.run.w.g_limit:
        t = intended_ns(&L.run.w, L.run.g_next)
        if t < until:
            until = t
    return until - now if until > now else 0


cdef int reap(Loop *L) noexcept nogil:
    """Handle every completion there now; returns how many."""
    cdef unsigned head, n, i
    cdef io_uring_cqe *cqe
    cdef uint64_t u
    cdef uint32_t kind, gen
    cdef int64_t idx
    n = uring_cq_ready(&L.ring, &head)
    for i in range(n):
        cqe = uring_cqe_at(&L.ring, head + i)
        u = cqe.user_data
        kind = <uint32_t>(u >> 60)
        gen = <uint32_t>((u >> 32) & 0xFFFFFFF)
        idx = <int64_t><uint32_t>u
        if kind == K_RECV:
            on_recv(L, idx, gen, cqe.res, cqe.flags)
        elif kind == K_SEND:
            on_send(L, idx, gen, cqe.res)
        elif kind == K_CONNECT:
            on_connect(L, idx, gen, cqe.res)
        elif kind == K_WRITABLE:
            on_writable(L, idx, gen)
    uring_cq_advance(&L.ring, n)
    if L.quiet:
        confirm_sends(L)
    return <int>n


cdef void main_loop(Loop *L) noexcept nogil:
    cdef int64_t now, next_tick
    cdef int64_t g_before = 0
    cdef int i, rc, n, was_idle = 0
    now = now_ns()
    next_tick = L.run.w.start + L.run.w.interval
    L.run.t_pass = now
    start_conns(L, now)
    while True:
        now = now_ns()
        if not L.run.e.ru_started and now >= L.run.w.warm_end:
            edges_open(&L.run.e, now)
        if run_over(&L.run, now):
            break
        if now >= next_tick:
            check_timeouts(L, now)
            while next_tick <= now:
                next_tick += L.run.w.interval
        if L.run.mode == M_CONNECT:
            for i in range(L.nconns):
                if L.conns[i].state == S_DEAD:
                    start_cycle(L, &L.conns[i], i, now)
        elif L.run.alive <= 0:
            L.run.ended_early = 1
            break
        if L.run.mode == M_OPEN:
            g_before = L.run.g_next
            open_advance(L, now)
            if L.run.poll:
                run_pass(&L.run, now, was_idle)
        if L.sq_len:
            feed_starved(L)
        uring_pbuf_publish(&L.pb)
        if L.fatal:
            break
        if L.run.poll or (L.quiet and L.nlist and confirmation_awaited(L)) or L.nclose:
            rc = uring_enter(&L.ring, 0, -1)     # submit and reap, never sleep
        else:
            rc = uring_enter(&L.ring, 1, wait_ns(L, now, next_tick))
        L.run.waits += 1
        if rc < 0 and rc != -EINTR and rc != -ETIME and rc != -EBUSY and rc != -EAGAIN:
            L.fatal = rc
            break
        flush_closes(L)
        n = reap(L)
        was_idle = n == 0 and L.run.g_next == g_before
    now = now_ns()
    if edges_close(&L.run.e, now):
        count_starved(L, now)


# ---- setup, result, teardown ---------------------------------------------------------------------

cdef void set_target(Loop *L, int family, address) except *:
    """Connect mode's target, as loadgen's ``set_target`` reads it (numeric IPv4/IPv6, or a unix path)."""
    cdef sockaddr_in *sin = <sockaddr_in *>&L.addr
    cdef sockaddr_in6 *sin6 = <sockaddr_in6 *>&L.addr
    cdef sockaddr_un *sun = <sockaddr_un *>&L.addr
    cdef bytes raw
    L.family = family
    if family == AF_UNIX:
        raw = os.fsencode(address)
        if not 0 < len(raw) < sizeof(sun.sun_path):
            raise ValueError(f"a unix socket path is 1..{sizeof(sun.sun_path) - 1} bytes, not {len(raw)}")
        sun.sun_family = AF_UNIX
        memcpy(sun.sun_path, <const char *>raw, len(raw))
        L.addrlen = sizeof(sockaddr_un)
        return
    if family != AF_INET and family != AF_INET6:
        raise ValueError(f"unsupported address family {family}")
    host, port = address[0], int(address[1])
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port}")
    raw = str(host).split("%", 1)[0].encode("ascii")
    if family == AF_INET:
        sin.sin_family = AF_INET
        sin.sin_port = htons(<uint16_t>port)
        if inet_pton(AF_INET, raw, &sin.sin_addr) != 1:
            raise ValueError(f"{host!r} is not a numeric IPv4 address")
        L.addrlen = sizeof(sockaddr_in)
    else:
        sin6.sin6_family = AF_INET6
        sin6.sin6_port = htons(<uint16_t>port)
        if inet_pton(AF_INET6, raw, &sin6.sin6_addr) != 1:
            raise ValueError(f"{host!r} is not a numeric IPv6 address")
        if len(address) >= 4:
            sin6.sin6_flowinfo = address[2]
            sin6.sin6_scope_id = address[3]
        L.addrlen = sizeof(sockaddr_in6)


cdef int open_ring(Loop *L, fds, long long first_cid, long long cid_step) except? -1:
    """The ring, the buffer ring, and the connections ``fds`` (taken over, made blocking: the ring polls).

    0, or -errno with ``L.run.failed`` naming what failed.
    """
    cdef int rc, flags, fd
    cdef int64_t i
    cdef Conn *c
    rc = uring_init(&L.ring, C_SQ, 0xFFFFFFFF if L.defer else ~(IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN))
    if rc < 0:
        L.run.failed = b"io_uring_setup"
        return rc
    rc = uring_pbuf_init(&L.ring, &L.pb, C_NBUF, C_BUFSZ, BGID)
    if rc < 0:
        L.run.failed = b"io_uring_register(buffer ring)"
        return rc
    if L.run.mode == M_CONNECT:
        return 0
    for i in range(L.nconns):
        c = &L.conns[i]
        fd = fds[i]
        c.fd = fd
        L.run.owned = i + 1
        flags = fcntl(fd, F_GETFL)
        if flags >= 0 and flags & O_NONBLOCK:
            fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        c.pat = ((first_cid + i * cid_step) * STRIDE) % PERIOD
        c.state = S_OPEN
        L.run.alive += 1
    return 0


cdef void free_loop(Loop *L, fds):
    cdef int64_t i
    cdef Conn *c
    if L.conns:
        for i in range(L.nconns):
            c = &L.conns[i]
            if c.fd >= 0:
                shutdown(c.fd, SHUT_RDWR)
    uring_exit(&L.ring)   # every request ends here: nothing reads or writes the buffers after this
    if L.closeq:
        flush_closes(L)
    if L.conns:
        for i in range(L.nconns):
            c = &L.conns[i]
            if c.fd >= 0:
                close(c.fd)
                c.fd = -1
            free(c.ring)
    uring_pbuf_exit(&L.pb)
    run_free(&L.run, fds if L.run.mode != M_CONNECT else ())
    free(L.conns)
    free(L.starvq)
    free(L.listq)
    free(L.closeq)


def run_loop(int mode, fds, long long first_cid, long long cid_step, int conns, int size, int depth,
             double rate, long long start_ns, long long warm_end_ns, long long end_ns,
             long long interval_ns, long long timeout_ns, bytes table, layout,
             int family=AF_INET, address=None, bint poll=False,
             int server_pid=0, stat_cpus=(), long long stall_ns=1000000000, *, long long client_stall_ns,
             bint multishot=True, bint quiet_sends=True, bint defer_taskrun=True):
    """Run one load loop on io_uring; return its counters as loadgen's ``run_loop`` does (same dict, same keys).

    The arguments are loadgen's (raw protocol only, so no ``protocol``), and
    ``multishot`` (False: each receive armed once, as on a kernel before 6.0),
    ``quiet_sends`` (False: a completion for every send) and
    ``defer_taskrun`` (False: a ring set up as before Linux 6.1).  ``waits``
    counts the ``io_uring_enter`` calls of the loop's passes.  A SIGTERM or
    SIGINT ends the window at once, as in loadgen (``loadrun.run_over``).
    Raises ``OSError`` when the ring cannot be set up.
    """
    cdef Loop L
    cdef int rc, cap
    cdef int64_t i
    if mode not in (M_CLOSED, M_OPEN, M_CONNECT):
        raise ValueError(f"unknown mode {mode}")
    if conns < 1 or size < 1 or depth < 1:
        raise ValueError("conns, size and depth must be >= 1")
    if mode != M_CONNECT and len(fds) != conns:
        raise ValueError("one fd per connection")
    if len(table) != TABLE_LEN:
        raise ValueError("pattern table of the wrong length")
    if end_ns <= start_ns or interval_ns <= 0:
        raise ValueError("empty window")
    if mode == M_OPEN and rate <= 0:
        raise ValueError("open mode needs a rate > 0")
    cap = depth
    if mode == M_OPEN and cap < 256:
        cap = 256              # loadgen's C_OPEN_MIN_RING
    if mode == M_CONNECT:
        cap = 1
    stat_cpus = [int(x) for x in stat_cpus]
    memset(&L, 0, sizeof(Loop))
    L.ring.fd = -1
    run_init(&L.run, mode, table, layout, start_ns, warm_end_ns, end_ns, interval_ns, rate, poll, timeout_ns,
             server_pid, len(stat_cpus), stall_ns, client_stall_ns)
    L.size = size
    L.cap = cap
    L.nconns = conns
    L.next_cid = first_cid
    L.cid_step = cid_step
    L.multishot = 1 if (multishot and mode != M_CONNECT) else 0
    L.quiet = 1 if quiet_sends else 0
    L.defer = 1 if defer_taskrun else 0
    try:
        if mode == M_CONNECT:
            set_target(&L, family, address)
        L.conns = <Conn *>calloc(conns, sizeof(Conn))
        L.starvq = <int *>calloc(conns, sizeof(int))
        # twice: while confirm_sends walks the list, a send it completes may list its socket again at the end
        L.listq = <int *>calloc(2 * conns, sizeof(int))
        L.closecap = 2 * conns + 2
        L.closeq = <int *>calloc(L.closecap, sizeof(int))
        if not (L.conns and L.starvq and L.listq and L.closeq):
            raise MemoryError()
        for i in range(conns):
            L.conns[i].fd = -1
            L.conns[i].ring = <int64_t *>calloc(cap, sizeof(int64_t))
            if not L.conns[i].ring:
                raise MemoryError()
        if run_alloc(&L.run, conns) < 0:
            raise MemoryError()
        edges_set_cpus(&L.run.e, stat_cpus)
        rc = open_ring(&L, fds, first_cid, cid_step)
        if rc < 0:
            raise OSError(-rc, f"{L.run.failed.decode()} failed: {os.strerror(-rc)}")
        run_arm(&L.run)
        try:
            with nogil:
                main_loop(&L)
        finally:
            run_disarm(&L.run)
        if L.fatal:
            raise OSError(-L.fatal, f"io_uring_enter failed: {os.strerror(-L.fatal)}")
        connect = mode == M_CONNECT
        return run_result(&L.run, ERROR_KINDS, L.run.rx_bytes_window, L.cycles,
                          None if connect else [L.conns[i].wdone for i in range(conns)],
                          None if connect else L.run.starved)
    finally:
        free_loop(&L, fds)
