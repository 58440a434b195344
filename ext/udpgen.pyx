"""The UDP load generator's hot loop: one epoll loop over connected datagram sockets, inside one ``with nogil:``.

Built as ``ext/loadgen.pyx`` is (Python prepares, C runs the whole window
without the GIL, HDR layout, window fixed on CLOCK_MONOTONIC, CPU counters
read from C), for datagrams, which are lost, duplicated, reordered or damaged
whole without telling the sender.  So each datagram says who it is, and each
flow keeps the state of every datagram in flight, as sockperf does.

* Datagram: ``size`` bytes (``HEADER`` to 65,507), a host-order header
  (``MAGIC`` u32, flow u32, seq u64, send time i64 ns) then the pattern table
  slice at ``(flow * STRIDE + seq * size) % PERIOD``; two iovecs, no copy;
  every echoed byte checked.
* Flow: one connected UDP socket with a ring of ``cap`` slots (send time,
  state); nothing is sent past ``base + cap``.
* Accounting (``datagrams``): every datagram ``sent`` in the window ends
  ``received`` or ``lost`` (no correct echo within ``timeout_ns`` or the
  drain), so ``received + lost == sent``; also ``duplicates``,
  ``out_of_order``, ``late`` and ``corrupt`` (a corrupt echo answers nothing).
* Modes: closed keeps ``depth`` in flight per flow (a loss is counted, not an
  error); open as in loadgen (intended send time in h1, actual in h2; timerfd
  or ``poll``, with idle time and client stalls from ``run_pass``).
* Batches: ``sendmmsg``/``recvmmsg`` of up to ``BATCH``; ``writes``/``reads``
  count the calls.
* Window and drain: echoes inside ``[warm_end, end)`` count; at ``end`` the
  edges are read, sending stops and echoes drain for ``drain_ns`` (at most the
  timeout) so that a datagram in flight is not called lost.
* Errors: ``connect`` (ECONNREFUSED; the flow goes on), ``reset`` (any other;
  the flow ends); setup failures are ``-errno`` and ``run_loop`` raises ``OSError``.
* ``encode`` and ``Ledger`` run the loop's own header and accounting code
  without sockets, so the counters can be tested exactly.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from posix cimport (
    errno, EAGAIN, EINTR, ENOMEM, ENOBUFS, ECONNREFUSED,
    calloc, free, memcmp, memcpy, memset,
    read, close,
    iovec, msghdr, mmsghdr, recvmmsg, sendmmsg, MSG_DONTWAIT, MSG_TRUNC,
    epoll_event, epoll_ctl, epoll_wait,
    EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLLIN, EPOLLOUT,
)
from window cimport (
    now_ns, hist_record, in_window, interval_index, intended_ns, arm_timer, edges_open, edges_close, edges_set_cpus,
)
from loadrun cimport (
    Run, RUN_CLOSED, RUN_OPEN, RUN_N_ERR, RUN_STOP_DRAIN_NS, run_init, run_alloc, run_open, run_pass, run_result,
    run_free, run_arm, run_disarm, run_over,
)

from sockbench.ext import loadgen

__all__ = ["run_loop", "encode", "Ledger", "HEADER", "MAGIC", "MAX_DATAGRAM", "BATCH", "MODE_CLOSED", "MODE_OPEN",
           "ERROR_KINDS", "DATAGRAM_KEYS", "ring_size"]

cdef enum:
    C_HEADER = 24             # magic u32, flow u32, seq u64, send time i64
    C_MAX_DATAGRAM = 65507    # the largest UDP payload over IPv4 (servers.contract.MAX_DATAGRAM)
    C_BATCH = 64              # datagrams per sendmmsg / recvmmsg
    C_ROUNDS = 8              # recvmmsg batches per readiness before the loop looks at the others
    C_MAX_EVENTS = 512
    C_MIN_RING = 256          # slots per flow, at least
    C_MAX_RING = 1 << 20      # slots per flow, at most

cdef uint32_t C_MAGIC = 0x44554253   # "SBUD" in memory on a little-endian machine

HEADER = C_HEADER
MAGIC = C_MAGIC
MAX_DATAGRAM = C_MAX_DATAGRAM
BATCH = C_BATCH
MODE_CLOSED = 0
MODE_OPEN = 1
#: the same kinds, in the same order, as the stream loop's (the result's ``errors``)
ERROR_KINDS = loadgen.ERROR_KINDS
#: the keys of the ``datagrams`` dict of a result
DATAGRAM_KEYS = ("sent", "received", "lost", "duplicates", "out_of_order", "late", "corrupt")

cdef int64_t PERIOD = loadgen.PERIOD
cdef int64_t STRIDE = loadgen.STRIDE
cdef int64_t TABLE_LEN = loadgen.PERIOD + loadgen.WINDOW

cdef enum:
    M_CLOSED = RUN_CLOSED
    M_OPEN = RUN_OPEN

cdef enum:
    E_CONNECT = 0
    E_RESET = 1
    N_ERR = RUN_N_ERR

cdef enum:
    ST_FLIGHT = 0
    ST_ANSWERED = 1
    ST_LOST = 2

cdef enum:
    J_RECEIVED = 0
    J_DUPLICATE = 1
    J_LATE = 2
    J_CORRUPT = 3


def ring_size(int mode, int depth, double rate_per_flow, double timeout_s, double interval_s):
    """Slots per flow: enough for every datagram that can be unresolved at once (``C_MIN_RING``..``C_MAX_RING``).

    Closed loop: ``depth`` in flight, plus room to go on while an older one
    waits for its timeout.  Open loop: the schedule's datagrams over a timeout
    and a sweep interval, with a quarter more.
    """
    cdef double need
    if mode == M_OPEN:
        need = rate_per_flow * (timeout_s + 2 * interval_s) * 1.25
    else:
        need = depth * 64.0
    if need < depth:
        need = depth
    if need < C_MIN_RING:
        need = C_MIN_RING
    if need > C_MAX_RING:
        need = C_MAX_RING
    return <int>need


# ---- the loop's state ----------------------------------------------------------------------

cdef struct Flow:
    int fd
    int alive
    int want_out
    int dirty
    uint32_t id
    int64_t pat            # (id * STRIDE) % PERIOD
    int64_t sent           # datagrams sent: the next sequence number
    int64_t base           # the oldest datagram not yet resolved (answered or lost)
    int64_t due            # datagrams that should be sent by now (closed: depth + resolved)
    int64_t outstanding    # in flight: sent, neither answered nor lost
    int64_t top            # 1 + the highest sequence number answered
    int64_t wdone          # echoes that arrived inside the window
    int64_t *t_sent        # ring: send time of seq at [seq % cap]
    uint8_t *st            # ring: ST_FLIGHT, ST_ANSWERED or ST_LOST


cdef struct Loop:
    Run run                # the sockets' epoll set, the window, the counters (ext/loadrun.pxd)
    int size
    int depth
    int64_t cap
    int nflows
    int draining
    Flow *flows
    # send batch: a header per datagram, two iovecs each
    mmsghdr smsg[C_BATCH]
    iovec siov[2 * C_BATCH]
    unsigned char shdr[C_BATCH * C_HEADER]
    # receive batch: a slot of size + 1 bytes per datagram (one more than sent: a longer echo is seen)
    mmsghdr rmsg[C_BATCH]
    iovec riov[C_BATCH]
    unsigned char *rbuf
    int64_t rslot
    int64_t drain
    # the datagrams, beside ``run``'s counters
    int64_t d_sent
    int64_t d_received
    int64_t d_lost
    int64_t d_dup
    int64_t d_ooo
    int64_t d_late
    int64_t d_corrupt


# ---- the datagram ----------------------------------------------------------------------------

cdef inline void put_header(unsigned char *out, uint32_t flow, uint64_t seq, int64_t t) noexcept nogil:
    memcpy(out, &C_MAGIC, 4)
    memcpy(out + 4, &flow, 4)
    memcpy(out + 8, &seq, 8)
    memcpy(out + 16, &t, 8)


cdef inline const uint8_t *payload_at(Loop *L, Flow *c, uint64_t seq) noexcept nogil:
    return L.run.table + <int64_t>((<uint64_t>c.pat + seq * <uint64_t>L.size) % <uint64_t>PERIOD)


# ---- the accounting (shared by the loop and Ledger) ---------------------------------------------

cdef inline void on_sent(Loop *L, Flow *c, int64_t k, int64_t now) noexcept nogil:
    """``k`` more datagrams of ``c`` left at ``now``: their ring slots, the counters."""
    cdef int64_t i, slot, ti
    for i in range(k):
        slot = (c.sent + i) % L.cap
        c.t_sent[slot] = now
        c.st[slot] = ST_FLIGHT
    c.sent += k
    c.outstanding += k
    L.run.msgs_queued += k
    if in_window(&L.run.w, now):
        L.d_sent += k
        L.run.sent_window += k
    if L.run.mode == M_OPEN:
        ti = interval_index(&L.run.w, now)
        if ti >= 0:
            L.run.ts_sent[ti] += k


cdef inline void advance_base(Loop *L, Flow *c) noexcept nogil:
    while c.base < c.sent and c.st[c.base % L.cap] != ST_FLIGHT:
        c.base += 1


cdef inline void resolved(Loop *L, Flow *c) noexcept nogil:
    """A datagram of ``c`` was answered or lost: closed loop sends the next (not while draining)."""
    c.outstanding -= 1
    if L.run.mode == M_CLOSED and not L.draining:
        c.due += 1


cdef int judge(Loop *L, Flow *c, int64_t idx, const unsigned char *buf, int64_t n, int truncated,
               int64_t now) noexcept nogil:
    """One echo that arrived on flow ``c`` at ``now``: check every byte, then count it (a J_ kind)."""
    cdef uint32_t magic, flow
    cdef uint64_t useq
    cdef int64_t seq, t, slot, g, ti
    cdef int counted = now >= L.run.w.warm_end
    if truncated or n != L.size:
        if counted:
            L.d_corrupt += 1
        return J_CORRUPT
    memcpy(&magic, buf, 4)
    memcpy(&flow, buf + 4, 4)
    memcpy(&useq, buf + 8, 8)
    memcpy(&t, buf + 16, 8)
    if magic != C_MAGIC or flow != c.id or useq >= <uint64_t>c.sent or (
            L.size > C_HEADER and memcmp(buf + C_HEADER, payload_at(L, c, useq), <size_t>(L.size - C_HEADER)) != 0):
        if counted:
            L.d_corrupt += 1
        return J_CORRUPT
    seq = <int64_t>useq
    if seq < c.sent - L.cap:
        if counted:
            L.d_late += 1       # its slot was reused: it was resolved long ago
        return J_LATE
    slot = seq % L.cap
    if c.t_sent[slot] != t:
        if counted:
            L.d_corrupt += 1    # a send time that is not this datagram's
        return J_CORRUPT
    if c.st[slot] == ST_ANSWERED:
        if counted:
            L.d_dup += 1
        return J_DUPLICATE
    if c.st[slot] == ST_LOST:
        if counted:
            L.d_late += 1
        return J_LATE
    c.st[slot] = ST_ANSWERED
    if in_window(&L.run.w, t):
        L.d_received += 1
    if seq < c.top:
        if counted:
            L.d_ooo += 1
    else:
        c.top = seq + 1
    resolved(L, c)
    advance_base(L, c)
    if in_window(&L.run.w, now):
        L.run.msgs += 1
        c.wdone += 1
        L.run.rx_bytes_window += L.size
        if L.run.mode == M_OPEN:
            g = seq * L.nflows + idx
            hist_record(&L.run.hdr, &L.run.h1, now - intended_ns(&L.run.w, g))
            hist_record(&L.run.hdr, &L.run.h2, now - t)
        else:
            hist_record(&L.run.hdr, &L.run.h1, now - t)
    ti = interval_index(&L.run.w, now)
    if ti >= 0:
        L.run.ts_msgs[ti] += 1
    return J_RECEIVED


cdef inline void declare_lost(Loop *L, Flow *c, int64_t slot) noexcept nogil:
    c.st[slot] = ST_LOST
    if in_window(&L.run.w, c.t_sent[slot]):
        L.d_lost += 1
    resolved(L, c)


cdef void sweep(Loop *L, Flow *c, int64_t now, int all_of_them) noexcept nogil:
    """Declare lost every datagram of ``c`` in flight for longer than the timeout (``all_of_them``: every one)."""
    cdef int64_t s, slot
    s = c.base
    while s < c.sent:
        slot = s % L.cap
        if c.st[slot] == ST_FLIGHT:
            if not all_of_them and now - c.t_sent[slot] <= L.run.timeout:
                break           # send times grow with the sequence number: the rest are younger
            declare_lost(L, c, slot)
        s += 1
    advance_base(L, c)


# ---- the loop -----------------------------------------------------------------------------------

cdef void flow_error(Loop *L, Flow *c, int kind, int64_t now) noexcept nogil:
    L.run.errors[kind] += 1
    if L.run.first_error_ns == 0:
        L.run.first_error_ns = now
        L.run.first_error_kind = kind
    if kind == E_RESET and c.alive:
        close(c.fd)         # also removes it from the epoll set
        c.fd = -1
        c.alive = 0
        L.run.alive -= 1


cdef inline void want_writable(Loop *L, Flow *c, int64_t idx, int want) noexcept nogil:
    cdef epoll_event ev
    if want == c.want_out or not c.alive:
        return
    c.want_out = want
    ev.events = EPOLLIN | EPOLLOUT if want else EPOLLIN
    ev.data.u64 = <uint64_t>idx
    epoll_ctl(L.run.ep, EPOLL_CTL_MOD, c.fd, &ev)


cdef void flush(Loop *L, Flow *c, int64_t idx) noexcept nogil:
    """Send what ``c`` owes (up to ``base + cap``), a batch per sendmmsg; a full send buffer waits for EPOLLOUT."""
    cdef int64_t k, i, seq, limit, now
    cdef int r, err
    cdef unsigned char *h
    if L.draining or not c.alive:
        return
    while True:
        limit = c.due if c.due < c.base + L.cap else c.base + L.cap
        k = limit - c.sent
        if k <= 0:
            break
        if k > C_BATCH:
            k = C_BATCH
        now = now_ns()
        for i in range(k):
            seq = c.sent + i
            h = L.shdr + i * C_HEADER
            put_header(h, c.id, <uint64_t>seq, now)
            L.siov[2 * i].iov_base = h
            L.siov[2 * i].iov_len = C_HEADER
            L.siov[2 * i + 1].iov_base = <void *>payload_at(L, c, <uint64_t>seq)
            L.siov[2 * i + 1].iov_len = <size_t>(L.size - C_HEADER)
            L.smsg[i].msg_hdr.msg_name = NULL
            L.smsg[i].msg_hdr.msg_namelen = 0
            L.smsg[i].msg_hdr.msg_iov = &L.siov[2 * i]
            L.smsg[i].msg_hdr.msg_iovlen = 2 if L.size > C_HEADER else 1
            L.smsg[i].msg_hdr.msg_control = NULL
            L.smsg[i].msg_hdr.msg_controllen = 0
            L.smsg[i].msg_hdr.msg_flags = 0
        r = sendmmsg(c.fd, L.smsg, <unsigned int>k, MSG_DONTWAIT)
        err = errno
        L.run.writes += 1
        if r < 0:
            if err == EINTR:
                continue
            if err == EAGAIN:
                want_writable(L, c, idx, 1)
                return
            if err == ENOBUFS:
                break           # the kernel is short of buffers: try again at the next event or tick
            if err == ECONNREFUSED:
                flow_error(L, c, E_CONNECT, now)
                continue        # the report is consumed: the flow goes on
            flow_error(L, c, E_RESET, now)
            return
        on_sent(L, c, r, now)
        if r < k:
            want_writable(L, c, idx, 1)
            return
    want_writable(L, c, idx, 0)


cdef void on_readable(Loop *L, Flow *c, int64_t idx) noexcept nogil:
    """Drain ``c``'s echoes, a recvmmsg batch at a time (at most C_ROUNDS), then send what became due."""
    cdef int n, i, err, rounds
    cdef int64_t now
    for rounds in range(C_ROUNDS):
        for i in range(C_BATCH):
            L.riov[i].iov_base = L.rbuf + i * L.rslot
            L.riov[i].iov_len = <size_t>L.rslot
            L.rmsg[i].msg_hdr.msg_name = NULL
            L.rmsg[i].msg_hdr.msg_namelen = 0
            L.rmsg[i].msg_hdr.msg_iov = &L.riov[i]
            L.rmsg[i].msg_hdr.msg_iovlen = 1
            L.rmsg[i].msg_hdr.msg_control = NULL
            L.rmsg[i].msg_hdr.msg_controllen = 0
            L.rmsg[i].msg_hdr.msg_flags = 0
        n = recvmmsg(c.fd, L.rmsg, C_BATCH, MSG_DONTWAIT, NULL)
        err = errno
        L.run.reads += 1
        if n < 0:
            if err == EINTR:
                continue
            if err == EAGAIN:
                break
            if err == ECONNREFUSED:
                flow_error(L, c, E_CONNECT, now_ns())
                continue
            flow_error(L, c, E_RESET, now_ns())
            return
        now = now_ns()
        for i in range(n):
            judge(L, c, idx, L.rbuf + i * L.rslot, L.rmsg[i].msg_len,
                  (L.rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) != 0, now)
        if n < C_BATCH:
            break
    flush(L, c, idx)


cdef void open_advance(Loop *L, int64_t now) noexcept nogil:
    """Open loop: every datagram whose intended time has come becomes due; then send."""
    cdef int64_t j, i
    cdef Flow *c
    while L.run.g_next < L.run.w.g_limit and intended_ns(&L.run.w, L.run.g_next) <= now:
        j = L.run.g_next % L.nflows
        c = &L.flows[j]
        c.due += 1
        if not c.dirty:
            c.dirty = 1
            L.run.dirty[L.run.ndirty] = j
            L.run.ndirty += 1
        L.run.g_next += 1
    for i in range(L.run.ndirty):
        j = L.run.dirty[i]
        L.flows[j].dirty = 0
        flush(L, &L.flows[j], j)
    L.run.ndirty = 0


cdef void sweep_all(Loop *L, int64_t now, int all_of_them) noexcept nogil:
    cdef int i
    for i in range(L.nflows):
        sweep(L, &L.flows[i], now, all_of_them)
        if L.run.mode == M_CLOSED:
            flush(L, &L.flows[i], i)


cdef inline void window_opens(Loop *L, int64_t now) noexcept nogil:
    edges_open(&L.run.e, now)


cdef void count_starved(Loop *L, int64_t now) noexcept nogil:
    """Flows that had no echo in the window although one was owed all along (as loadgen's connections)."""
    cdef int64_t i, oldest
    cdef Flow *c
    for i in range(L.nflows):
        c = &L.flows[i]
        if c.wdone > 0:
            continue
        if not c.alive:
            L.run.starved += 1
        elif c.outstanding > 0:
            oldest = c.t_sent[c.base % L.cap]
            if oldest <= L.run.e.t_ru[0] or now - oldest >= L.run.stall:
                L.run.starved += 1


cdef inline void window_closes(Loop *L) noexcept nogil:
    cdef int64_t now = now_ns()
    if edges_close(&L.run.e, now):
        count_starved(L, now)


cdef inline void dispatch(Loop *L, epoll_event *events, int n) noexcept nogil:
    cdef int i
    cdef int64_t idx
    cdef uint64_t tbuf
    cdef Flow *c
    for i in range(n):
        idx = <int64_t>events[i].data.u64
        if idx == L.nflows:
            read(L.run.tfd, &tbuf, 8)
            continue
        c = &L.flows[idx]
        if not c.alive:
            continue
        if events[i].events & EPOLLIN:
            on_readable(L, c, idx)
        elif c.alive and (events[i].events & EPOLLOUT):
            flush(L, c, idx)


cdef inline int wait_ms(Loop *L, int64_t now, int64_t until) noexcept nogil:
    cdef int64_t t = until
    cdef int timeout_ms
    if not L.run.e.ru_started and L.run.w.warm_end < t:
        t = L.run.w.warm_end
    timeout_ms = <int>((t - now + 999999) // 1000000)
    if timeout_ms < 0 or (L.run.poll and not L.draining):
        timeout_ms = 0
    return timeout_ms


cdef int64_t outstanding_total(Loop *L) noexcept nogil:
    cdef int64_t i, total = 0
    for i in range(L.nflows):
        if L.flows[i].alive:
            total += L.flows[i].outstanding
    return total


cdef void main_loop(Loop *L) noexcept nogil:
    """The run from ``start`` to ``end``, then the drain, without the GIL."""
    cdef epoll_event events[C_MAX_EVENTS]
    cdef int n, i
    cdef int64_t now, next_tick, drain_end, g_before = 0
    cdef int was_idle = 0
    now = now_ns()
    next_tick = L.run.w.start + L.run.w.interval
    L.run.t_pass = now
    if L.run.mode == M_CLOSED:
        for i in range(L.nflows):
            L.flows[i].due = L.depth
            flush(L, &L.flows[i], i)
    else:
        open_advance(L, now)
    while True:
        now = now_ns()
        if not L.run.e.ru_started and now >= L.run.w.warm_end:
            window_opens(L, now)
        if run_over(&L.run, now):
            break
        if now >= next_tick:
            sweep_all(L, now, 0)
            while next_tick <= now:
                next_tick += L.run.w.interval
        if L.run.alive <= 0:
            L.run.ended_early = 1
            break
        if L.run.mode == M_OPEN:
            g_before = L.run.g_next
            open_advance(L, now)
            if L.run.poll:
                run_pass(&L.run, now, was_idle)     # idle time, client stalls (ext/loadrun.pxd)
            else:
                arm_timer(&L.run.w, L.run.tfd)
        n = epoll_wait(L.run.ep, events, C_MAX_EVENTS, wait_ms(L, now, next_tick if next_tick < L.run.w.end else L.run.w.end))
        L.run.waits += 1
        was_idle = n == 0 and L.run.g_next == g_before
        if n < 0:
            if errno == EINTR:
                continue
            break
        dispatch(L, events, n)
    window_closes(L)
    # the drain: no more sends; echoes of what is in flight still count, for at most ``drain``
    L.draining = 1
    if L.run.tfd >= 0:
        close(L.run.tfd)            # no more ticks (also leaves the epoll set)
        L.run.tfd = -1
    now = now_ns()
    drain_end = now + L.drain
    if now < L.run.w.end:       # cut short by a stop signal: the process is asked to go, so only briefly
        drain_end = min(drain_end, now + RUN_STOP_DRAIN_NS)
    while outstanding_total(L) > 0:
        now = now_ns()
        if now >= drain_end:
            break
        sweep_all(L, now, 0)
        n = epoll_wait(L.run.ep, events, C_MAX_EVENTS, wait_ms(L, now, drain_end))
        L.run.waits += 1
        if n < 0:
            if errno == EINTR:
                continue
            break
        dispatch(L, events, n)
    sweep_all(L, now_ns(), 1)


# ---- setup, result, teardown ------------------------------------------------------------------

cdef void init_loop(Loop *L, int mode, int nflows, int size, int depth, int64_t cap, double rate, bint poll,
                    int64_t start_ns, int64_t warm_end_ns, int64_t end_ns, int64_t interval_ns,
                    int64_t timeout_ns, int64_t drain_ns, bytes table, layout, int server_pid, int nstat,
                    int64_t stall_ns, int64_t client_stall_ns) except *:
    """Zero ``L``, then set what differs from zero (nothing is allocated yet)."""
    memset(L, 0, sizeof(Loop))
    run_init(&L.run, mode, table, layout, start_ns, warm_end_ns, end_ns, interval_ns, rate, poll, timeout_ns,
             server_pid, nstat, stall_ns, client_stall_ns)
    L.size = size
    L.depth = depth
    L.cap = cap
    L.nflows = nflows
    L.rslot = size + 1
    L.drain = drain_ns if drain_ns < timeout_ns else timeout_ns


cdef int alloc_loop(Loop *L, int64_t first_cid, int64_t cid_step) noexcept nogil:
    """Every buffer, zeroed; the flows numbered.  0 or -ENOMEM (``free_loop`` frees what was taken)."""
    cdef int64_t i
    L.flows = <Flow *>calloc(L.nflows, sizeof(Flow))
    L.rbuf = <unsigned char *>calloc(C_BATCH, <size_t>L.rslot)
    if not (L.flows and L.rbuf):
        return -ENOMEM
    if run_alloc(&L.run, L.nflows) < 0:
        return -ENOMEM
    for i in range(L.nflows):
        L.flows[i].fd = -1
        L.flows[i].id = <uint32_t>(first_cid + i * cid_step)
        L.flows[i].pat = ((first_cid + i * cid_step) * STRIDE) % PERIOD
        L.flows[i].t_sent = <int64_t *>calloc(L.cap, sizeof(int64_t))
        L.flows[i].st = <uint8_t *>calloc(L.cap, 1)
        if not (L.flows[i].t_sent and L.flows[i].st):
            return -ENOMEM
    return 0


cdef int open_loop(Loop *L, fds) except? -1:
    """The epoll set, the open loop's timer, and the flows' sockets (taken over one by one); 0 or -errno."""
    cdef int64_t i
    cdef int rc
    cdef epoll_event ev
    rc = run_open(&L.run, <uint64_t>L.nflows)
    if rc < 0:
        return rc
    for i in range(L.nflows):
        L.flows[i].fd = fds[i]
        L.run.owned = i + 1
        L.flows[i].alive = 1
        L.run.alive += 1
        ev.events = EPOLLIN
        ev.data.u64 = <uint64_t>i
        if epoll_ctl(L.run.ep, EPOLL_CTL_ADD, L.flows[i].fd, &ev) < 0:
            L.run.failed = b"epoll_ctl(socket)"
            return -errno
    return 0


cdef dict datagram_counts(Loop *L):
    return {"sent": L.d_sent, "received": L.d_received, "lost": L.d_lost, "duplicates": L.d_dup,
            "out_of_order": L.d_ooo, "late": L.d_late, "corrupt": L.d_corrupt}


cdef dict loop_result(Loop *L):
    """The loop's counters, in the shape of ``loadgen.run_loop``'s dict, plus ``datagrams``."""
    cdef int64_t j
    result = run_result(&L.run, ERROR_KINDS, L.run.rx_bytes_window, 0, [L.flows[j].wdone for j in range(L.nflows)],
                        L.run.starved)
    result["datagrams"] = datagram_counts(L)
    return result


cdef void free_loop(Loop *L, fds):
    """Close every descriptor the loop owns (the unowned rest of ``fds`` too) and free every buffer."""
    cdef int64_t i
    if L.flows:
        for i in range(L.nflows):
            if L.flows[i].fd >= 0:
                close(L.flows[i].fd)
                L.flows[i].fd = -1
            free(L.flows[i].t_sent)
            free(L.flows[i].st)
    run_free(&L.run, fds)
    free(L.flows)
    free(L.rbuf)


cdef void check_args(int mode, fds, int flows, int size, int depth, double rate, int64_t start_ns, int64_t end_ns,
                     int64_t interval_ns, int64_t timeout_ns, bytes table) except *:
    if mode not in (M_CLOSED, M_OPEN):
        raise ValueError(f"unknown mode {mode}; udp has closed (0) and open (1)")
    if flows < 1 or depth < 1:
        raise ValueError("flows and depth must be >= 1")
    if not C_HEADER <= size <= C_MAX_DATAGRAM:
        raise ValueError(f"size must be in {C_HEADER}..{C_MAX_DATAGRAM}, got {size}")
    if len(fds) != flows:
        raise ValueError("one fd per flow")
    if len(table) != TABLE_LEN:
        raise ValueError("pattern table of the wrong length")
    if end_ns <= start_ns or interval_ns <= 0 or timeout_ns <= 0:
        raise ValueError("empty window, interval or timeout")
    if mode == M_OPEN and rate <= 0:
        raise ValueError("open mode needs a rate > 0")


def run_loop(int mode, fds, long long first_cid, long long cid_step, int flows, int size, int depth,
             double rate, long long start_ns, long long warm_end_ns, long long end_ns,
             long long interval_ns, long long timeout_ns, bytes table, layout, bint poll=False,
             int server_pid=0, stat_cpus=(), long long stall_ns=1000000000, long long drain_ns=200000000, *,
             long long client_stall_ns):
    """Run one UDP load loop; return its counters as a dict (``loadgen.run_loop``'s keys, plus ``datagrams``).

    ``fds``: non-blocking UDP sockets, each connected to the server (one per
    flow; this function takes ownership and closes them).  ``first_cid`` /
    ``cid_step`` number the flows (the flow id in every datagram, and its
    payload pattern), so that several load processes never share one.
    ``size`` is the whole datagram (``HEADER``..``MAX_DATAGRAM`` bytes).
    ``rate`` is this process's total rate (open mode).  ``timeout_ns``: a
    datagram unanswered this long is lost.  ``drain_ns``: after the window,
    how long echoes of what is in flight are awaited (capped at the
    timeout; 20 ms after a stop signal cut the window short, as ``loadgen.run_loop`` says).  The other
    arguments are ``loadgen.run_loop``'s.
    """
    cdef Loop *L
    cdef int i, rc
    cdef double rate_flow
    check_args(mode, fds, flows, size, depth, rate, start_ns, end_ns, interval_ns, timeout_ns, table)
    stat_cpus = [int(x) for x in stat_cpus]
    rate_flow = rate / flows if mode == M_OPEN else 0.0
    L = <Loop *>calloc(1, sizeof(Loop))     # a few KiB of batch tables: not on the stack
    if L == NULL:
        raise MemoryError()
    try:
        init_loop(L, mode, flows, size, depth, ring_size(mode, depth, rate_flow, timeout_ns / 1e9, interval_ns / 1e9),
                  rate, poll, start_ns, warm_end_ns, end_ns, interval_ns, timeout_ns, drain_ns, table, layout,
                  server_pid, len(stat_cpus), stall_ns, client_stall_ns)
        if alloc_loop(L, first_cid, cid_step) < 0:
            raise MemoryError()
        edges_set_cpus(&L.run.e, stat_cpus)
        rc = open_loop(L, fds)
        if rc < 0:
            raise OSError(-rc, f"{L.run.failed.decode()} failed")
        run_arm(&L.run)
        try:
            with nogil:
                main_loop(L)
        finally:
            run_disarm(&L.run)
        return loop_result(L)
    finally:
        free_loop(L, fds)
        free(L)


# ---- the Python face of the header and the accounting, for tests --------------------------------

def encode(int flow, long long seq, long long t_ns, int size, bytes table):
    """Datagram ``seq`` of flow ``flow`` sent at ``t_ns``, ``size`` bytes, built as the loop builds it."""
    cdef Loop L
    cdef Flow c
    if not C_HEADER <= size <= C_MAX_DATAGRAM:
        raise ValueError(f"size must be in {C_HEADER}..{C_MAX_DATAGRAM}, got {size}")
    if len(table) != TABLE_LEN:
        raise ValueError("pattern table of the wrong length")
    memset(&L, 0, sizeof(Loop))
    memset(&c, 0, sizeof(Flow))
    L.size = size
    L.run.table = <const uint8_t *>PyBytes_AS_STRING(table)
    c.id = <uint32_t>flow
    c.pat = (<int64_t>flow * STRIDE) % PERIOD
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(out)
    put_header(p, c.id, <uint64_t>seq, t_ns)
    memcpy(p + C_HEADER, payload_at(&L, &c, <uint64_t>seq), <size_t>(size - C_HEADER))
    return out


cdef class Ledger:
    """One closed- or open-loop flow's accounting, driven by hand: the loop's ``on_sent``, ``judge`` and ``sweep``.

    The window is ``[warm_end_ns, end_ns)``; times are whatever the caller
    says.  ``send(k, t)`` records ``k`` datagrams sent at ``t``; ``echo(data,
    t)`` judges one echo (returns "received", "duplicate", "late" or
    "corrupt"); ``sweep(t)`` declares lost what passed the timeout;
    ``finish(t)`` declares lost everything still in flight (the end of the
    drain).  ``counts()`` is the ``datagrams`` dict; ``due`` what a closed
    loop would have sent by now.
    """

    cdef Loop *L
    cdef bytes table

    def __cinit__(self, int size, long long timeout_ns, bytes table, int depth=1, int cap=256, int flow=0,
                  long long warm_end_ns=0, long long end_ns=1 << 62):
        if not C_HEADER <= size <= C_MAX_DATAGRAM or len(table) != TABLE_LEN or cap < 1:
            raise ValueError("bad size, table or cap")
        self.table = table
        self.L = <Loop *>calloc(1, sizeof(Loop))
        if self.L == NULL:
            raise MemoryError()
        self.L.run.mode = M_CLOSED
        self.L.size = size
        self.L.depth = depth
        self.L.cap = cap
        self.L.nflows = 1
        self.L.run.timeout = timeout_ns
        self.L.run.w.start = 0
        self.L.run.w.warm_end = warm_end_ns
        self.L.run.w.end = end_ns
        self.L.run.w.interval = 1 << 62
        self.L.run.table = <const uint8_t *>PyBytes_AS_STRING(table)
        self.L.flows = <Flow *>calloc(1, sizeof(Flow))
        if self.L.flows == NULL:
            raise MemoryError()
        self.L.flows[0].id = <uint32_t>flow
        self.L.flows[0].pat = (<int64_t>flow * STRIDE) % PERIOD
        self.L.flows[0].alive = 1
        self.L.flows[0].due = depth
        self.L.flows[0].t_sent = <int64_t *>calloc(cap, sizeof(int64_t))
        self.L.flows[0].st = <uint8_t *>calloc(cap, 1)
        self.L.run.hdr.counts_len = 0    # no histogram: hist_record ignores every value
        self.L.run.hdr.highest = 1 << 62
        if self.L.flows[0].t_sent == NULL or self.L.flows[0].st == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.L != NULL:
            if self.L.flows != NULL:
                free(self.L.flows[0].t_sent)
                free(self.L.flows[0].st)
                free(self.L.flows)
            free(self.L)

    def send(self, long long k, long long t_ns):
        cdef Flow *c = &self.L.flows[0]
        if k < 0 or c.sent + k > c.base + self.L.cap:
            raise ValueError("more datagrams in flight than the ring holds")
        on_sent(self.L, c, k, t_ns)

    def echo(self, bytes data, long long t_ns):
        cdef int r = judge(self.L, &self.L.flows[0], 0, <const unsigned char *>PyBytes_AS_STRING(data),
                           len(data), 0, t_ns)
        return ("received", "duplicate", "late", "corrupt")[r]

    def sweep(self, long long t_ns):
        sweep(self.L, &self.L.flows[0], t_ns, 0)

    def finish(self, long long t_ns):
        self.L.draining = 1
        sweep(self.L, &self.L.flows[0], t_ns, 1)

    def counts(self):
        return datagram_counts(self.L)

    @property
    def due(self):
        return self.L.flows[0].due

    @property
    def in_flight(self):
        return self.L.flows[0].outstanding

    @property
    def base(self):
        return self.L.flows[0].base
