"""The load generator's hot loop: one epoll loop, run entirely inside one ``with nogil:``.

A load client in Python would measure itself: its cost per message exceeds a
fast server's.  So Python prepares everything (connected sockets, payload
table, histogram layout), calls ``run_loop`` once and reads the counters
after; in between no Python object is touched.

* Payload: byte ``k`` of connection ``c`` is ``table[(k + c * STRIDE) % PERIOD]``
  (the table's first ``WINDOW`` bytes repeated at its end), so sends are
  ``writev`` slices and every echoed byte is checked by ``memcmp``; loss,
  reordering and cross-talk all read as a mismatch.  No per-connection buffer.
* Coalescing: everything a connection owes at one moment goes out in one write.
* Time: CLOCK_MONOTONIC ns (Python's ``time.monotonic_ns``), so the parent fixes
  one window for all load processes.  Only messages completed inside it count.
* Latency: HDR counts laid out as the ``hdrhistogram`` package's.
* Modes: closed keeps ``depth`` in flight per connection.  open sends global
  message ``g`` at ``start + g / rate`` (computed, never accumulated) and times
  latency from that intended send (no coordinated omission), service time from
  the actual one; it sleeps on a timerfd or, with ``poll``, polls, and then
  reports ``idle_s`` and its client stalls (gaps of ``client_stall_ns`` between
  passes; ``sockbench.thresholds``).  connect: connect, echo one, close, repeat.
* Framed protocols (``sockbench.servers.protocols``): the payload is the raw
  stream's slice; requests are serialised from ``(message, offset)`` into one
  scratch buffer; answers are checked as they stream in (length or JSON header
  via ext/wire.h, ``request-id`` = oldest unanswered).  A bad frame is a
  ``protocol`` error, bad content a ``mismatch``; either closes the connection.
* Bounds: the loop ends at ``end_ns``; a message older than ``timeout_ns`` is a
  timeout and closes its connection.
* With ``server_pid``/``stat_cpus`` the loop itself reads the server's CPU and
  /proc/stat at the window's edges (ext/procfs.h), so no Python process wakes
  on a measured CPU.  A connection that completed nothing while owed an answer
  (``stall_ns``) is ``starved``.
* Shape: ``run_loop`` checks, sets up, releases the GIL once around
  ``main_loop``, builds the result and frees; the shared parts are ``Run``
  (ext/loadrun.pxd).
"""

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

from posix cimport (
    errno, EAGAIN, EINTR, EINPROGRESS, ENOMEM,
    calloc, free, memcmp, memcpy, memset,
    read, write, close,
    iovec, writev,
    sockaddr, sockaddr_in, sockaddr_in6, sockaddr_un, sockaddr_storage, socklen_t, socket, connect,
    setsockopt, getsockopt, htons, inet_pton,
    AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR,
    IPPROTO_TCP, TCP_NODELAY,
    epoll_event, epoll_ctl, epoll_wait,
    EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP,
)
from window cimport (
    now_ns, hist_record, in_window, interval_index, intended_ns, arm_timer, edges_open, edges_close, hdr_init,
    edges_set_cpus, hist_pairs,
)
from loadrun cimport (
    Run, RUN_CLOSED, RUN_OPEN, RUN_N_ERR, run_init, run_alloc, run_open, run_pass, run_result, run_free,
    run_arm, run_disarm, run_over,
)
from protocols cimport PROTO_RAW, PROTO_FRAME, PROTO_JSON, PROTO_COUNT, proto_name
from wire cimport (
    WIRE_STRING, WIRE_INT, wire_value_t, wire_header_t, wire_json_parse_object, wire_json_request_header,
)

import os

__all__ = [
    "run_loop",
    "pattern_table",
    "bucket_counts",
    "MODE_CLOSED",
    "MODE_OPEN",
    "MODE_CONNECT",
    "PROTOCOLS",
    "ERROR_KINDS",
    "PERIOD",
    "STRIDE",
    "WINDOW",
]

# ---- constants shared with Python ------------------------------------------------------------

cdef enum:
    C_PERIOD = 65521          # a prime: no message size is a multiple of it
    C_STRIDE = 7919           # conn c starts c * STRIDE into the table (distinct for c < PERIOD)
    C_WINDOW = 262144         # the longest contiguous slice: one memcmp / one iovec
    C_MAX_IOV = 16
    C_MAX_EVENTS = 512
    C_OPEN_MIN_RING = 256     # open loop: at least this many messages in flight per connection
    C_WBUF = 262144           # framed: the scratch buffer requests are serialised into for one write
    C_REQ_HDR_MAX = 160       # framed: a request's prefix + header (wire_json_request_header needs 142)
    C_HBUF = 512              # framed: the longest response prefix + header accepted

PERIOD = C_PERIOD
STRIDE = C_STRIDE
WINDOW = C_WINDOW
MODE_CLOSED = 0
MODE_OPEN = 1
MODE_CONNECT = 2
#: protocol index -> name (``run_loop(protocol=...)``), from the generated ext/protocols.h
PROTOCOLS = tuple(proto_name(i).decode() for i in range(PROTO_COUNT))
#: index -> kind, in the order of the loop's error counters.  ``mismatch``:
#: content bytes that are not the ones sent; ``protocol`` (frame/json): an
#: answer whose framing or header is wrong (length, content-length,
#: content-type/-encoding, request-id, unparseable header, or an answer to a
#: request not yet sent)
ERROR_KINDS = ("connect", "reset", "timeout", "mismatch", "protocol")

cdef enum:
    M_CLOSED = RUN_CLOSED
    M_OPEN = RUN_OPEN
    M_CONNECT = 2

cdef enum:
    E_CONNECT = 0
    E_RESET = 1
    E_TIMEOUT = 2
    E_MISMATCH = 3
    E_PROTOCOL = 4
    N_ERR = RUN_N_ERR

cdef enum:
    S_DEAD = 0
    S_CONNECTING = 1
    S_OPEN = 2


def pattern_table(seed=0x50CB):
    """The payload table: ``PERIOD + WINDOW`` bytes, where ``table[i] == table[i % PERIOD]``.

    ``PERIOD`` pseudo-random bytes, repeated, so that the stream slice
    starting at any offset below ``PERIOD`` is contiguous for ``WINDOW`` bytes.
    """
    import random

    head = random.Random(seed).randbytes(C_PERIOD)
    return (head * (C_WINDOW // C_PERIOD + 2))[: C_PERIOD + C_WINDOW]


def bucket_counts(values, layout):
    """``(index, count)`` pairs of ``values`` (ns) recorded by the loop's own HDR code.

    Not used by the loop; it exposes the exact recording path (``hist_record``)
    so that tests can check it against the ``hdrhistogram`` package.
    """
    cdef Loop L
    cdef int64_t j
    memset(&L, 0, sizeof(L))
    hdr_init(&L.run.hdr, layout)
    L.run.h1.counts = <int64_t *>calloc(L.run.hdr.counts_len, sizeof(int64_t))
    if not L.run.h1.counts:
        raise MemoryError()
    try:
        for v in values:
            hist_record(&L.run.hdr, &L.run.h1, <int64_t>v)
        return hist_pairs(&L.run.hdr, &L.run.h1)
    finally:
        free(L.run.h1.counts)


# ---- the loop's state ----------------------------------------------------------------------

cdef struct Conn:
    int fd
    int state
    int want_out
    int dirty
    uint32_t gen           # bumped on every new socket in a slot: stale epoll events are ignored
    int64_t pat            # (cid * STRIDE) % PERIOD
    int64_t sent           # stream bytes written
    int64_t owed           # stream bytes that should be written (sent <= owed)
    int64_t recvd          # stream bytes received and verified
    int64_t queued         # messages handed to write
    int64_t done           # messages received whole
    int64_t wdone          # messages completed inside the window
    int64_t due            # open loop: messages due so far
    int64_t t_start        # connect mode: when this cycle's connect began
    int64_t *ring          # send time of message m at ring[m % cap]
    # framed protocols only
    int64_t smsg           # requests written whole
    int64_t soff           # bytes of request smsg written
    int64_t rdone          # responses received whole and verified
    int64_t rleft          # payload bytes of response rdone still to come (0: its header is next)
    int64_t hfill          # bytes of response rdone's prefix + header gathered in hbuf
    unsigned char *hbuf    # C_HBUF bytes: a response header split across reads


cdef struct Loop:
    Run run                # the sockets' epoll set, the window, the counters (ext/loadrun.pxd)
    int proto
    int json_hdr0          # json: a request's prefix + header length for request-id 0
    int size
    int cap
    int nconns
    char *rbuf
    unsigned char *wbuf    # framed: C_WBUF bytes
    unsigned char *hbufs   # framed: nconns x C_HBUF
    Conn *conns
    # connect mode: the target, any family (filled from Python by ``set_target``)
    sockaddr_storage addr
    socklen_t addrlen
    int family
    int64_t next_cid
    int64_t cid_step
    # counters beside ``run``'s
    int64_t cycles          # connect mode: cycles completed inside the window
    int64_t rx_wire_window  # framed: bytes read inside the window


cdef void conn_error(Loop *L, Conn *c, int kind, int64_t now) noexcept nogil:
    L.run.errors[kind] += 1
    if L.run.first_error_ns == 0:
        L.run.first_error_ns = now
        L.run.first_error_kind = kind
    if c.fd >= 0:
        close(c.fd)         # also removes it from the epoll set
        c.fd = -1
    if c.state != S_DEAD:
        c.state = S_DEAD
        L.run.alive -= 1
    c.want_out = 0


cdef inline int set_events(Loop *L, Conn *c, int64_t idx, uint32_t events, int op) noexcept nogil:
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = (<uint64_t>c.gen << 32) | <uint64_t>idx
    return epoll_ctl(L.run.ep, op, c.fd, &ev)


cdef inline void want_writable(Loop *L, Conn *c, int64_t idx, int want) noexcept nogil:
    """Watch EPOLLOUT only while ``c`` has bytes the kernel did not take (one epoll_ctl per change)."""
    if want and not c.want_out:
        c.want_out = 1
        set_events(L, c, idx, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD)
    elif not want and c.want_out:
        c.want_out = 0
        set_events(L, c, idx, EPOLLIN, EPOLL_CTL_MOD)


cdef inline int verify(Loop *L, Conn *c, const char *buf, int64_t n) noexcept nogil:
    """1 when ``buf[:n]`` is exactly the stream of ``c`` at offset ``c.recvd``."""
    return verify_at(L, c, c.recvd, buf, n)


cdef inline int verify_at(Loop *L, Conn *c, int64_t off, const char *buf, int64_t n) noexcept nogil:
    """1 when ``buf[:n]`` is exactly the stream of ``c`` at offset ``off``."""
    cdef int64_t s, chunk
    while n > 0:
        s = (off + c.pat) % C_PERIOD
        chunk = n if n < C_WINDOW else C_WINDOW
        if memcmp(buf, L.run.table + s, <size_t>chunk) != 0:
            return 0
        buf += chunk
        off += chunk
        n -= chunk
    return 1


cdef int flush(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Write what ``c`` owes, in as few writev calls as possible; a short write waits for EPOLLOUT."""
    cdef iovec iov[C_MAX_IOV]
    cdef int niov
    cdef int64_t off, left, total, s, chunk
    cdef ssize_t n
    cdef int err
    if L.proto != PROTO_RAW:
        return flush_framed(L, c, idx, now)
    while c.sent < c.owed:
        niov = 0
        off = c.sent
        left = c.owed - c.sent
        total = 0
        while left > 0 and niov < C_MAX_IOV:
            s = (off + c.pat) % C_PERIOD
            chunk = left if left < C_WINDOW else C_WINDOW
            iov[niov].iov_base = <void *>(L.run.table + s)
            iov[niov].iov_len = <size_t>chunk
            niov += 1
            off += chunk
            left -= chunk
            total += chunk
        if niov == 1:
            n = write(c.fd, iov[0].iov_base, iov[0].iov_len)   # the common case: no iovec to copy in
        else:
            n = writev(c.fd, iov, niov)
        err = errno
        L.run.writes += 1
        if n < 0:
            if err == EINTR:
                continue
            if err == EAGAIN:           # == EWOULDBLOCK on Linux
                break
            conn_error(L, c, E_RESET, now)
            return -1
        c.sent += n
        if n < total:
            break
    want_writable(L, c, idx, c.sent < c.owed)
    return 0


# ---- framed protocols: requests out ----------------------------------------------------------

cdef inline int64_t req_header(Loop *L, int64_t m, unsigned char *out) noexcept nogil:
    """Request ``m``'s prefix + header into ``out`` (C_REQ_HDR_MAX bytes); returns its length."""
    cdef uint32_t n
    if L.proto == PROTO_FRAME:
        n = <uint32_t>L.size
        out[0] = <unsigned char>(n >> 24)
        out[1] = <unsigned char>(n >> 16)
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>n
        return 4
    return wire_json_request_header(<uint64_t>L.size, m, out, C_REQ_HDR_MAX)


cdef inline int64_t req_header_len(Loop *L, int64_t m) noexcept nogil:
    """The length ``req_header`` gives for request ``m``, without building it."""
    cdef int64_t digits = 1
    if L.proto == PROTO_FRAME:
        return 4
    while m >= 10:
        m //= 10
        digits += 1
    return L.json_hdr0 - 1 + digits


cdef int64_t serialize(Loop *L, Conn *c, unsigned char *out, int64_t cap) noexcept nogil:
    """The wire bytes ``c`` owes, from request ``c.smsg`` at offset ``c.soff``, into ``out[:cap]``."""
    cdef unsigned char hdr[C_REQ_HDR_MAX]
    cdef int64_t o = 0, m = c.smsg, off = c.soff, hl, take, poff, s
    while m < c.queued and o < cap:
        hl = req_header(L, m, hdr)
        if off < hl:
            take = hl - off
            if take > cap - o:
                take = cap - o
            memcpy(out + o, hdr + off, <size_t>take)
            o += take
            off += take
            if off < hl:
                break
        poff = off - hl
        while poff < L.size and o < cap:
            s = (m * L.size + poff + c.pat) % C_PERIOD
            take = L.size - poff
            if take > C_WINDOW:
                take = C_WINDOW
            if take > cap - o:
                take = cap - o
            memcpy(out + o, L.run.table + s, <size_t>take)
            o += take
            poff += take
        if poff < L.size:
            break
        m += 1
        off = 0
    return o


cdef inline void advance(Loop *L, Conn *c, int64_t n) noexcept nogil:
    """``n`` more wire bytes of ``c`` were written: move ``(c.smsg, c.soff)`` on."""
    cdef int64_t rem
    while n > 0:
        rem = req_header_len(L, c.smsg) + L.size - c.soff
        if n >= rem:
            n -= rem
            c.smsg += 1
            c.soff = 0
        else:
            c.soff += n
            n = 0


cdef int flush_framed(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """``flush`` for frame/json: what ``c`` owes, serialised, in one write per C_WBUF bytes."""
    cdef int64_t total
    cdef ssize_t n
    cdef int err
    while c.smsg < c.queued:
        total = serialize(L, c, L.wbuf, C_WBUF)
        n = write(c.fd, L.wbuf, <size_t>total)
        err = errno
        L.run.writes += 1
        if n < 0:
            if err == EINTR:
                continue
            if err == EAGAIN:
                break
            conn_error(L, c, E_RESET, now)
            return -1
        advance(L, c, n)
        if n < total:
            break
    want_writable(L, c, idx, c.smsg < c.queued)
    return 0


# ---- framed protocols: responses in ----------------------------------------------------------

cdef inline int64_t resp_header_need(Loop *L, const unsigned char *h, int64_t have) noexcept nogil:
    """Bytes of prefix + header the response at ``h`` (``have`` bytes there) needs; -1: malformed."""
    cdef int64_t hlen
    if L.proto == PROTO_FRAME:
        return 4
    if have < 2:
        return 2
    hlen = (<int64_t>h[0] << 8) | h[1]
    if hlen == 0 or 2 + hlen > C_HBUF:
        return -1
    return 2 + hlen


cdef inline int str_is(const unsigned char *hdr, const wire_value_t *v, const char *s, size_t n) noexcept nogil:
    return v.kind == WIRE_STRING and v.len == n and memcmp(hdr + v.off, s, n) == 0


cdef int check_header(Loop *L, Conn *c, const unsigned char *h, int64_t hl) noexcept nogil:
    """-1 when the prefix + header ``h[:hl]`` announce exactly response ``c.rdone``; else E_PROTOCOL."""
    cdef wire_header_t hd
    cdef const unsigned char *j
    if L.proto == PROTO_FRAME:
        if ((<int64_t>h[0] << 24) | (<int64_t>h[1] << 16) | (<int64_t>h[2] << 8) | <int64_t>h[3]) != L.size:
            return E_PROTOCOL
        return -1
    j = h + 2
    # the strict flat-object parser; a request's checks (byteorder) do not apply to an answer
    if wire_json_parse_object(j, <size_t>(hl - 2), &hd) < 0:
        return E_PROTOCOL
    if hd.content_length.kind != WIRE_INT or hd.content_length.ival != L.size:
        return E_PROTOCOL
    if not str_is(j, &hd.content_type, b"binary/custom-client-binary-type", 32):
        return E_PROTOCOL
    if not str_is(j, &hd.content_encoding, b"binary", 6):
        return E_PROTOCOL
    if hd.request_id.kind != WIRE_INT or hd.request_id.ival != c.rdone:
        return E_PROTOCOL
    return -1


cdef int consume(Loop *L, Conn *c, const unsigned char *p, int64_t n) noexcept nogil:
    """Check ``p[:n]``, the next bytes of ``c``'s responses; -1 if right so far, else the error kind.

    Complete responses advance ``c.rdone``.  The payload is compared as it
    arrives; a header is parsed in place when it is whole in ``p``, else
    gathered in ``c.hbuf`` first.
    """
    cdef int64_t take, need
    cdef int r
    while n > 0:
        if c.rleft > 0:
            take = n if n < c.rleft else c.rleft
            if not verify_at(L, c, c.rdone * L.size + (L.size - c.rleft), <const char *>p, take):
                return E_MISMATCH
            p += take
            n -= take
            c.rleft -= take
            if c.rleft == 0:
                c.rdone += 1
            continue
        if c.rdone >= c.smsg:
            return E_PROTOCOL       # an answer to a request not (wholly) sent
        if c.hfill == 0:
            need = resp_header_need(L, p, n)
            if need < 0:
                return E_PROTOCOL
            if n >= need:
                r = check_header(L, c, p, need)
                if r >= 0:
                    return r
                p += need
                n -= need
                c.rleft = L.size
                continue
        while True:
            need = resp_header_need(L, c.hbuf, c.hfill)
            if need < 0:
                return E_PROTOCOL
            if c.hfill >= need:
                break
            if n == 0:
                return -1
            take = need - c.hfill
            if take > n:
                take = n
            memcpy(c.hbuf + c.hfill, p, <size_t>take)
            c.hfill += take
            p += take
            n -= take
        r = check_header(L, c, c.hbuf, need)
        if r >= 0:
            return r
        c.hfill = 0
        c.rleft = L.size
    return -1


cdef inline void queue_msgs(Loop *L, Conn *c, int64_t k, int64_t now) noexcept nogil:
    """Hand ``k`` more messages of ``c`` to the writer, stamped ``now``."""
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
    """Open loop: queue what is due, as far as the in-flight ring allows."""
    cdef int64_t upto = c.due
    if upto > c.done + L.cap:
        upto = c.done + L.cap
    if upto > c.queued:
        queue_msgs(L, c, upto - c.queued, now)


cdef int start_cycle(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Connect mode: open a new connection in slot ``c`` (non-blocking)."""
    cdef int fd, r, err, one = 1
    fd = socket(L.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
    if fd < 0:
        c.state = S_DEAD
        L.run.errors[E_CONNECT] += 1
        if L.run.first_error_ns == 0:
            L.run.first_error_ns = now
            L.run.first_error_kind = E_CONNECT
        return -1
    if L.family != AF_UNIX:  # Nagle is TCP's
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
    c.fd = fd
    c.gen += 1
    c.pat = (L.next_cid * C_STRIDE) % C_PERIOD
    L.next_cid += L.cid_step
    c.sent = 0
    c.owed = 0
    c.recvd = 0
    c.queued = 0
    c.done = 0
    c.smsg = 0
    c.soff = 0
    c.rdone = 0
    c.rleft = 0
    c.hfill = 0
    c.want_out = 0
    c.t_start = now
    c.state = S_CONNECTING
    L.run.alive += 1
    r = connect(fd, <sockaddr *>&L.addr, L.addrlen)
    err = errno
    if r == 0:
        return established(L, c, idx, now, EPOLL_CTL_ADD)
    if err != EINPROGRESS:
        conn_error(L, c, E_CONNECT, now)
        return -1
    set_events(L, c, idx, EPOLLOUT, EPOLL_CTL_ADD)
    return 0


cdef int established(Loop *L, Conn *c, int64_t idx, int64_t now, int op) noexcept nogil:
    if in_window(&L.run.w, now):
        hist_record(&L.run.hdr, &L.run.h1, now - c.t_start)
    c.state = S_OPEN
    set_events(L, c, idx, EPOLLIN, op)
    queue_msgs(L, c, 1, now)
    return flush(L, c, idx, now)


cdef void on_connecting(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    cdef int soerr = 0
    cdef socklen_t sl = sizeof(soerr)
    cdef int64_t now = now_ns()
    if getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 or soerr != 0:
        conn_error(L, c, E_CONNECT, now)
        return
    established(L, c, idx, now, EPOLL_CTL_MOD)


cdef void on_readable(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    cdef ssize_t n
    cdef int err, kind
    cdef int64_t now, newdone, k, m, ti, t_sent, g
    n = read(c.fd, L.rbuf, C_WINDOW)
    err = errno
    L.run.reads += 1
    if n == 0:
        conn_error(L, c, E_RESET, now_ns())      # closed by the server
        return
    if n < 0:
        if err == EAGAIN or err == EINTR:   # EAGAIN == EWOULDBLOCK on Linux
            return
        conn_error(L, c, E_RESET, now_ns())
        return
    now = now_ns()
    if L.proto == PROTO_RAW:
        if c.recvd + n > c.sent or not verify(L, c, L.rbuf, n):
            conn_error(L, c, E_MISMATCH, now)        # bytes never sent, or not the ones sent
            return
        c.recvd += n
        newdone = c.recvd // L.size
    else:
        kind = consume(L, c, <const unsigned char *>L.rbuf, n)
        if kind >= 0:
            conn_error(L, c, kind, now)
            return
        if in_window(&L.run.w, now):
            L.rx_wire_window += n
        newdone = c.rdone
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
        flush(L, c, idx, now)
    elif L.run.mode == M_OPEN:
        open_queue(L, c, now)
        flush(L, c, idx, now)
    else:
        # one echo per connection: close, and start the next cycle in this slot
        close(c.fd)
        c.fd = -1
        c.state = S_DEAD
        L.run.alive -= 1
        start_cycle(L, c, idx, now)


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


cdef void open_advance(Loop *L, int64_t now) noexcept nogil:
    """Open loop: every message whose intended time has come becomes due; then send."""
    cdef int64_t g, j, i
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
            flush(L, c, j, now)
    L.run.ndirty = 0


# ---- the loop -----------------------------------------------------------------------------

cdef inline void start_conns(Loop *L, int64_t now) noexcept nogil:
    """Every connection gets its first messages, each in one write (connect mode: its first cycle)."""
    cdef int i
    cdef Conn *c
    for i in range(L.nconns):
        c = &L.conns[i]
        if L.run.mode == M_CLOSED:
            if c.state == S_OPEN:
                queue_msgs(L, c, L.cap, now)
                flush(L, c, i, now)
        elif L.run.mode == M_CONNECT:
            start_cycle(L, c, i, now)
    if L.run.mode == M_OPEN:
        open_advance(L, now)


cdef inline void window_opens(Loop *L, int64_t now) noexcept nogil:
    """The measured window opens: the client's rusage, the server's CPU and the CPUs' counters, now."""
    edges_open(&L.run.e, now)


cdef void count_starved(Loop *L, int64_t now) noexcept nogil:
    """Closed and open loop, at the window's close: connections that completed no message in it although
    they were owed an answer all along (see "Connections served")."""
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


cdef inline void window_closes(Loop *L) noexcept nogil:
    """The loop ended: the window's closing edge (an empty window if it never opened)."""
    cdef int64_t now = now_ns()
    if edges_close(&L.run.e, now):
        count_starved(L, now)


cdef inline int wait_ms(Loop *L, int64_t now, int64_t next_tick) noexcept nogil:
    """How long epoll_wait may sleep: until the next tick, the window's opening or its end (0 when polling)."""
    cdef int64_t wait_until = next_tick if next_tick < L.run.w.end else L.run.w.end
    cdef int timeout_ms
    if not L.run.e.ru_started and L.run.w.warm_end < wait_until:
        wait_until = L.run.w.warm_end
    timeout_ms = <int>((wait_until - now + 999999) // 1000000)
    if timeout_ms < 0 or L.run.poll:
        timeout_ms = 0
    return timeout_ms


cdef inline void dispatch(Loop *L, epoll_event *events, int n) noexcept nogil:
    """Handle one epoll_wait batch: the timer, connects, reads, then writes."""
    cdef int i
    cdef int64_t idx
    cdef uint64_t token, tbuf
    cdef uint32_t gen, ev
    cdef Conn *c
    for i in range(n):
        token = events[i].data.u64
        ev = events[i].events
        idx = <int64_t><uint32_t>token
        if idx == L.nconns:
            read(L.run.tfd, &tbuf, 8)
            continue
        c = &L.conns[idx]
        gen = <uint32_t>(token >> 32)
        if c.state == S_DEAD or gen != c.gen:
            continue        # closed (or replaced) earlier in this batch
        if c.state == S_CONNECTING:
            on_connecting(L, c, idx)
            continue
        if ev & (EPOLLIN | EPOLLERR | EPOLLHUP):
            on_readable(L, c, idx)
        if c.state == S_OPEN and gen == c.gen and (ev & EPOLLOUT):
            flush(L, c, idx, now_ns())


cdef void main_loop(Loop *L) noexcept nogil:
    """The whole run, from ``start`` to ``end`` (or until every connection is gone), without the GIL."""
    cdef epoll_event events[C_MAX_EVENTS]
    cdef int n, i
    cdef int64_t now, next_tick
    cdef int64_t g_before = 0
    cdef int was_idle = 0

    now = now_ns()
    next_tick = L.run.w.start + L.run.w.interval
    L.run.t_pass = now
    start_conns(L, now)
    while True:
        now = now_ns()
        if not L.run.e.ru_started and now >= L.run.w.warm_end:
            window_opens(L, now)
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
                # the previous pass's time: idle if it found nothing to do, a client stall if it was too long
                run_pass(&L.run, now, was_idle)
            else:
                arm_timer(&L.run.w, L.run.tfd)
        n = epoll_wait(L.run.ep, events, C_MAX_EVENTS, wait_ms(L, now, next_tick))
        L.run.waits += 1
        was_idle = n == 0 and L.run.g_next == g_before
        if n < 0:
            if errno == EINTR:
                continue
            break
        dispatch(L, events, n)
    window_closes(L)


# ---- setup, result, teardown ---------------------------------------------------------------

cdef void check_args(int mode, fds, int conns, int size, int depth, double rate, long long start_ns,
                     long long end_ns, long long interval_ns, bytes table, int protocol) except *:
    if mode not in (M_CLOSED, M_OPEN, M_CONNECT):
        raise ValueError(f"unknown mode {mode}")
    if conns < 1 or size < 1 or depth < 1:
        raise ValueError("conns, size and depth must be >= 1")
    if mode != M_CONNECT and len(fds) != conns:
        raise ValueError("one fd per connection")
    if len(table) != C_PERIOD + C_WINDOW:
        raise ValueError("pattern table of the wrong length")
    if end_ns <= start_ns or interval_ns <= 0:
        raise ValueError("empty window")
    if mode == M_OPEN and rate <= 0:
        raise ValueError("open mode needs a rate > 0")
    if protocol < 0 or protocol >= PROTO_COUNT:
        raise ValueError(f"unknown protocol {protocol}")


cdef void init_loop(Loop *L, int mode, int protocol, int conns, int size, int depth, double rate, bint poll,
                    long long start_ns, long long warm_end_ns, long long end_ns, long long interval_ns,
                    long long timeout_ns, bytes table, layout, long long first_cid, long long cid_step,
                    int family, address, int server_pid, int nstat, long long stall_ns,
                    long long client_stall_ns) except *:
    """Zero ``L``, then set what differs from zero (nothing is allocated yet)."""
    cdef int cap = depth
    if mode == M_OPEN and cap < C_OPEN_MIN_RING:
        cap = C_OPEN_MIN_RING
    if mode == M_CONNECT:
        cap = 1
    memset(L, 0, sizeof(Loop))
    run_init(&L.run, mode, table, layout, start_ns, warm_end_ns, end_ns, interval_ns, rate, poll, timeout_ns,
             server_pid, nstat, stall_ns, client_stall_ns)
    L.proto = protocol
    L.size = size
    L.cap = cap
    L.nconns = conns
    L.next_cid = first_cid
    L.cid_step = cid_step
    if mode == M_CONNECT:
        set_target(L, family, address)


cdef void set_target(Loop *L, int family, address) except *:
    """Connect mode's target into ``L.addr``: ``address`` as Python's socket module spells it for ``family``.

    AF_INET: ``(host, port)``; AF_INET6: ``(host, port[, flowinfo, scope_id])``;
    the host a numeric address (the caller resolves names).  AF_UNIX: the
    socket's path (str or bytes), at most ``sizeof(sun_path) - 1`` bytes.
    """
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
        memcpy(sun.sun_path, <const char *>raw, len(raw))  # the rest is zero: memset in init_loop
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


cdef int alloc_loop(Loop *L) noexcept nogil:
    """Every buffer the loop needs, zeroed.  0, or -ENOMEM (``free_loop`` frees what was taken)."""
    cdef int64_t i
    cdef unsigned char hdr0[C_REQ_HDR_MAX]
    L.conns = <Conn *>calloc(L.nconns, sizeof(Conn))
    if L.conns:
        for i in range(L.nconns):
            L.conns[i].fd = -1
    L.rbuf = <char *>calloc(C_WINDOW, 1)
    if not (L.conns and L.rbuf):
        return -ENOMEM
    if run_alloc(&L.run, L.nconns) < 0:
        return -ENOMEM
    for i in range(L.nconns):
        L.conns[i].ring = <int64_t *>calloc(L.cap, sizeof(int64_t))
        if not L.conns[i].ring:
            return -ENOMEM
    if L.proto != PROTO_RAW:
        L.wbuf = <unsigned char *>calloc(C_WBUF, 1)
        L.hbufs = <unsigned char *>calloc(L.nconns, C_HBUF)
        if not (L.wbuf and L.hbufs):
            return -ENOMEM
        for i in range(L.nconns):
            L.conns[i].hbuf = L.hbufs + i * C_HBUF
        if L.proto == PROTO_JSON:
            L.json_hdr0 = <int>wire_json_request_header(<uint64_t>L.size, 0, hdr0, C_REQ_HDR_MAX)
    return 0


cdef int open_loop(Loop *L, fds, long long first_cid, long long cid_step) except? -1:
    """The epoll set, the open loop's timer, and the connections ``fds`` (taken over one by one).

    0, or -errno with ``L.run.failed`` naming the call that failed.
    """
    cdef int64_t i
    cdef int rc
    cdef Conn *c
    rc = run_open(&L.run, <uint64_t>L.nconns)
    if rc < 0:
        return rc
    if L.run.mode == M_CONNECT:
        return 0
    for i in range(L.nconns):
        c = &L.conns[i]
        c.fd = fds[i]
        L.run.owned = i + 1
        c.pat = ((first_cid + i * cid_step) * C_STRIDE) % C_PERIOD
        c.state = S_OPEN
        L.run.alive += 1
        if set_events(L, c, i, EPOLLIN, EPOLL_CTL_ADD) < 0:
            L.run.failed = b"epoll_ctl(socket)"
            return -errno
    return 0


cdef dict loop_result(Loop *L):
    """The loop's counters, as the dict ``run_loop`` returns."""
    cdef int64_t j
    connect = L.run.mode == M_CONNECT
    return run_result(&L.run, ERROR_KINDS, L.rx_wire_window if L.proto != PROTO_RAW else L.run.rx_bytes_window,
                      L.cycles, None if connect else [L.conns[j].wdone for j in range(L.nconns)],
                      None if connect else L.run.starved)


cdef void free_loop(Loop *L, fds):
    """Close every descriptor the loop owns (the unowned rest of ``fds`` too) and free every buffer."""
    cdef int64_t i
    cdef Conn *c
    if L.conns:
        for i in range(L.nconns):
            c = &L.conns[i]
            if c.fd >= 0:
                close(c.fd)
                c.fd = -1
            free(c.ring)
    run_free(&L.run, fds if L.run.mode != M_CONNECT else ())  # connect mode takes no sockets
    free(L.conns)
    free(L.rbuf)
    free(L.wbuf)
    free(L.hbufs)


def run_loop(int mode, fds, long long first_cid, long long cid_step, int conns, int size, int depth,
             double rate, long long start_ns, long long warm_end_ns, long long end_ns,
             long long interval_ns, long long timeout_ns, bytes table, layout,
             int family=AF_INET, address=None, int protocol=PROTO_RAW, bint poll=False,
             int server_pid=0, stat_cpus=(), long long stall_ns=1000000000, *, long long client_stall_ns):
    """Run one load loop; return its counters as a dict.

    ``fds``: connected, non-blocking stream sockets (TCP with TCP_NODELAY, or
    AF_UNIX; closed and open modes; this function takes ownership and closes
    them), or empty in connect mode, where ``family`` and ``address`` name the
    target as Python's socket module spells it (``set_target``): IPv4, IPv6
    or a unix socket's path.  ``first_cid``/``cid_step`` number the connections so that
    several load processes never share a pattern.  ``rate`` is this process's
    total rate (open mode).  ``layout`` is ``sockbench.bench.load.hdr.LAYOUT``.
    The window is ``[warm_end_ns, end_ns)`` on CLOCK_MONOTONIC.
    ``protocol`` is an index into ``PROTOCOLS``; ``size`` is the payload size.
    ``poll``: open mode polls instead of sleeping between sends (see Modes).
    ``server_pid``: read this process's CPU counters at the window's edges
    (``server_cpu``: ``[at warm_end, at end]``, each ``None`` if unread).
    ``stat_cpus``: read these CPUs' /proc/stat lines at the same edges
    (``cpu_stat``: ``[at warm_end, at end]``, each ``{"t_ns", "cpus": {cpu:
    [user, nice, system, idle, iowait, irq, softirq, steal]}}`` in clock
    ticks; ``None`` when not asked for or unreadable).  ``conn_msgs``: the
    messages each connection completed in the window, and ``starved`` how
    many completed none while owed an answer since before the window or for
    ``stall_ns`` (both ``None`` in connect mode).  ``client_stall_ns``
    (``sockbench.thresholds.CLIENT_STALL_S``): open mode, polling, a gap this
    long between two passes of the loop is a client stall, its CPU taken
    from it (``stalls``, their total ``stall_s`` and the ``longest_stall_s``
    in the window; ``None`` all three when the loop does not poll).
    A SIGTERM or SIGINT while the loop runs ends the window at once
    (``loadrun.run_over``): the counts cover the window until then and
    ``cpu_window_s`` is its length; the handlers of before are back afterwards.
    """
    cdef Loop L
    cdef int rc, i
    check_args(mode, fds, conns, size, depth, rate, start_ns, end_ns, interval_ns, table, protocol)
    stat_cpus = [int(x) for x in stat_cpus]
    init_loop(&L, mode, protocol, conns, size, depth, rate, poll, start_ns, warm_end_ns, end_ns, interval_ns,
              timeout_ns, table, layout, first_cid, cid_step, family, address, server_pid, len(stat_cpus),
              stall_ns, client_stall_ns)
    try:
        if alloc_loop(&L) < 0:
            raise MemoryError()
        edges_set_cpus(&L.run.e, stat_cpus)
        rc = open_loop(&L, fds, first_cid, cid_step)
        if rc < 0:
            raise OSError(-rc, f"{L.run.failed.decode()} failed")
        run_arm(&L.run)
        try:
            with nogil:
                main_loop(&L)
        finally:
            run_disarm(&L.run)
        return loop_result(&L)
    finally:
        free_loop(&L, fds)
