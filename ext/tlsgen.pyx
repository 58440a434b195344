"""The load generator over TLS: ext/loadgen.pyx's hot loop with OpenSSL driven from C, run inside one ``with nogil:``.

What ``loadgen`` says about a Python load client holds twice over TLS (each
message adds an encryption and a decryption on the client), so this loop and
OpenSSL's side of it stay plain C.  It is apart from loadgen.pyx because it
links OpenSSL (built only where its headers are, setup.py) while loadgen
builds everywhere.  It shares the window, histograms and edge samples
(ext/window.pxd), the epoll set, counters and result dict (ext/loadrun.pxd)
and the SSL_CTX settings of the cython server (ext/tlsconf.pxd).  ``raw`` only.

* Payload and check: loadgen's (``pattern_table`` slices through
  ``SSL_write_ex``, ``memcmp`` against what ``SSL_read_ex`` gives).
* OpenSSL on the socket itself, non-blocking, no memory BIO: read-ahead (one
  ``read(2)`` takes every record; ``SSL_has_pending`` because epoll cannot see
  records read ahead), partial writes retried from the same stream offset
  (the same bytes, as OpenSSL demands), and the replacements of everything
  one read completed go out in one ``SSL_write_ex`` call per 16 KiB record:
  loadgen's coalescing.
* Handshakes: closed and open loop shake hands before the window
  (``TlsClient.handshake_all``), so none falls inside it.  Connect mode
  measures them: connect to handshake done (first histogram), then one echo,
  close_notify, close (the cycle, second histogram); ``resumed`` counts
  ``SSL_session_reused``, and with ``resumption`` a slot offers its previous
  connection's session, as a browser does.
* No certificate is verified (``sockbench.servers.tls`` says why).
* Modes, window, schedule, polling, starvation, client stalls, timeouts: as loadgen.pyx.
"""

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

from posix cimport (
    errno, EAGAIN, EINTR, EINPROGRESS, ENOMEM,
    calloc, free, memcmp, memcpy, memset,
    read, close,
    sockaddr, sockaddr_in, sockaddr_in6, sockaddr_un, sockaddr_storage, socklen_t, socket, connect,
    setsockopt, getsockopt, htons, inet_pton,
    AF_INET, AF_INET6, AF_UNIX, SOCK_STREAM, SOCK_NONBLOCK, SOCK_CLOEXEC, SOL_SOCKET, SO_ERROR,
    IPPROTO_TCP, TCP_NODELAY,
    epoll_event, epoll_ctl, epoll_wait, epoll_create1, EPOLL_CLOEXEC,
    EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL, EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP,
)
from openssl cimport (
    SSL, SSL_CTX, SSL_SESSION, SSL_CTX_free, SSL_new, SSL_free, SSL_set_fd, SSL_set_connect_state,
    SSL_do_handshake, SSL_read_ex, SSL_write_ex, SSL_get_error, SSL_has_pending, SSL_shutdown,
    SSL_set_session, SSL_get1_session, SSL_SESSION_free, SSL_SESSION_is_resumable, SSL_session_reused,
    SSL_get_version, SSL_get_current_cipher, SSL_CIPHER_get_name, SSL_get_negotiated_group, SSL_group_to_name,
    SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE, SSL_ERROR_ZERO_RETURN, SSL_ERROR_SSL, SSL_ERROR_SYSCALL,
    ERR_peek_error, ERR_clear_error,
)
from window cimport (
    now_ns, hist_record, in_window, interval_index, intended_ns, arm_timer, edges_open, edges_close, hdr_init,
    edges_set_cpus,
)
from loadrun cimport (
    Run, RUN_CLOSED, RUN_OPEN, RUN_N_ERR, run_init, run_alloc, run_open, run_pass, run_result, run_free,
)
from tlsconf cimport make_context, ssl_reason

import os

__all__ = ["TlsClient", "run_loop", "ERROR_KINDS", "MODE_CLOSED", "MODE_OPEN", "MODE_CONNECT"]

cdef enum:
    C_PERIOD = 65521          # loadgen's pattern: the same table, the same streams
    C_STRIDE = 7919
    C_WINDOW = 262144
    C_MAX_EVENTS = 512
    C_OPEN_MIN_RING = 256

MODE_CLOSED = 0
MODE_OPEN = 1
MODE_CONNECT = 2
#: the error counters, as loadgen's (a failed TLS handshake is a ``connect`` error: the connection never came up)
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

cdef enum:
    S_DEAD = 0
    S_CONNECTING = 1
    S_HANDSHAKE = 2
    S_OPEN = 3


cdef struct Conn:
    int fd
    int state
    uint32_t events        # what the fd is watched for now
    uint32_t gen           # bumped on every new socket in a slot: stale epoll events are ignored
    int dirty
    SSL *ssl
    SSL_SESSION *session   # connect mode, resumption: the session the next connection of this slot offers
    int64_t pat
    int64_t sent           # stream bytes OpenSSL took
    int64_t owed
    int64_t recvd          # stream bytes received and verified
    int64_t queued
    int64_t done
    int64_t wdone
    int64_t due
    int64_t t_start        # connect mode: when this cycle's connect began
    int64_t *ring


cdef struct Loop:
    Run run
    SSL_CTX *ctx           # borrowed from the TlsClient
    int size
    int cap
    int nconns
    int resumption
    char *rbuf
    Conn *conns
    sockaddr_storage addr
    socklen_t addrlen
    int family
    int64_t next_cid
    int64_t cid_step
    int64_t cycles
    int64_t hs_full        # connect mode: handshakes completed in the window, full and resumed
    int64_t hs_resumed
    int64_t hs_failed      # handshakes that failed (any time), and OpenSSL's reason for the first
    const char *hs_reason
    const char *version    # what the first handshake of the loop negotiated (OpenSSL's static strings)
    const char *cipher
    const char *group


# ---- what the loop and the handshakes share --------------------------------------------------

cdef inline int watch(int ep, Conn *c, int64_t idx, uint32_t events, int op) noexcept nogil:
    cdef epoll_event ev
    ev.events = events
    ev.data.u64 = (<uint64_t>c.gen << 32) | <uint64_t>idx
    c.events = events
    return epoll_ctl(ep, op, c.fd, &ev)


cdef inline void want(Loop *L, Conn *c, int64_t idx, uint32_t events) noexcept nogil:
    """Watch ``c`` for ``events`` (one epoll_ctl per change)."""
    if c.events != events:
        watch(L.run.ep, c, idx, events, EPOLL_CTL_MOD)


cdef inline const char *error_reason(int err) noexcept nogil:
    """OpenSSL's reason for a failed call (``wrong version number``), or what the socket said."""
    cdef const char *r = ssl_reason(ERR_peek_error())
    if r != NULL:
        return r
    if err == SSL_ERROR_SYSCALL:
        return b"the connection was closed or reset"
    return b"an error OpenSSL did not name"


cdef void note_negotiated(Loop *L, SSL *ssl) noexcept nogil:
    if L.version == NULL:
        L.version = SSL_get_version(ssl)
        L.cipher = SSL_CIPHER_get_name(SSL_get_current_cipher(ssl))
        L.group = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl))


cdef void drop_tls(Conn *c, int notify) noexcept nogil:
    """Free ``c``'s SSL; ``notify``: send close_notify first (one call, not waiting for the peer's)."""
    if c.ssl != NULL:
        if notify:
            SSL_shutdown(c.ssl)
        ERR_clear_error()
        SSL_free(c.ssl)
        c.ssl = NULL


cdef void conn_error(Loop *L, Conn *c, int kind, int64_t now) noexcept nogil:
    L.run.errors[kind] += 1
    if L.run.first_error_ns == 0:
        L.run.first_error_ns = now
        L.run.first_error_kind = kind
    drop_tls(c, 0)
    if c.fd >= 0:
        close(c.fd)
        c.fd = -1
    if c.state != S_DEAD:
        c.state = S_DEAD
        L.run.alive -= 1


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


# ---- the client: its SSL_CTX, and the handshakes of closed and open mode ---------------------

cdef class TlsClient:
    """One load process's TLS client: the SSL_CTX of a setting, and the established connections handed to the loop.

    ``TlsClient(version, cipher, resumption)``; ``handshake_all(fds, timeout_s)``
    shakes hands on connected sockets (closed and open mode) before the
    window is fixed; ``run_loop`` takes those connections over.  ``negotiated``
    is what the first handshake agreed on: ``{"version", "cipher", "group"}``.
    """

    cdef SSL_CTX *ctx
    cdef SSL **ssls
    cdef int nssl
    cdef readonly bint resumption
    cdef readonly dict negotiated

    def __cinit__(self, version="1.3", cipher=None, resumption=False):
        self.ctx = make_context(False, str(version), cipher)
        self.resumption = bool(resumption)
        self.negotiated = None

    def __dealloc__(self):
        self._free_ssls()
        SSL_CTX_free(self.ctx)

    cdef void _free_ssls(self) noexcept:
        cdef int i
        if self.ssls != NULL:
            for i in range(self.nssl):
                if self.ssls[i] != NULL:
                    SSL_free(self.ssls[i])
            free(self.ssls)
            self.ssls = NULL
            self.nssl = 0

    def handshake_all(self, fds, double timeout_s):
        """The client handshake on every connected, non-blocking socket of ``fds``, all at once, within ``timeout_s``.

        Returns None; on the first failure ``ConnectionError`` whose message is
        OpenSSL's reason (``wrong version number``), or ``TimeoutError``.  The
        sockets stay the caller's; their SSLs are this object's until
        ``run_loop`` takes them.
        """
        cdef int n = len(fds), i, j, left, k, r, err, ep = -1
        cdef int64_t deadline = now_ns() + <int64_t>(timeout_s * 1e9)
        cdef int64_t now
        cdef epoll_event ev
        cdef epoll_event events[C_MAX_EVENTS]
        cdef int *fdv = <int *>calloc(n if n > 0 else 1, sizeof(int))
        cdef const char *failed = NULL
        cdef int timed_out = 0
        self._free_ssls()
        self.ssls = <SSL **>calloc(n if n > 0 else 1, sizeof(SSL *))
        if fdv == NULL or self.ssls == NULL:
            free(fdv)
            raise MemoryError()
        self.nssl = n
        try:
            for i in range(n):
                fdv[i] = fds[i]
                self.ssls[i] = SSL_new(self.ctx)
                if self.ssls[i] == NULL or SSL_set_fd(self.ssls[i], fdv[i]) != 1:
                    raise MemoryError("SSL_new")
                SSL_set_connect_state(self.ssls[i])
            ep = epoll_create1(EPOLL_CLOEXEC)
            if ep < 0:
                raise OSError(errno, "epoll_create1 failed")
            with nogil:
                left = n
                for i in range(n):
                    ev.events = EPOLLOUT
                    ev.data.u64 = <uint64_t>i
                    epoll_ctl(ep, EPOLL_CTL_ADD, fdv[i], &ev)
                while left > 0 and failed == NULL:
                    now = now_ns()
                    if now >= deadline:
                        timed_out = 1
                        break
                    k = epoll_wait(ep, events, C_MAX_EVENTS, <int>((deadline - now) // 1000000) + 1)
                    if k < 0:
                        if errno == EINTR:
                            continue
                        failed = b"epoll_wait failed"
                        break
                    for j in range(k):
                        i = <int>events[j].data.u64
                        r = SSL_do_handshake(self.ssls[i])
                        if r == 1:
                            left -= 1
                            epoll_ctl(ep, EPOLL_CTL_DEL, fdv[i], NULL)
                            continue
                        err = SSL_get_error(self.ssls[i], r)
                        if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
                            ev.events = EPOLLIN if err == SSL_ERROR_WANT_READ else EPOLLOUT
                            ev.data.u64 = <uint64_t>i
                            epoll_ctl(ep, EPOLL_CTL_MOD, fdv[i], &ev)
                            continue
                        failed = error_reason(err)
                        break
            if failed != NULL:
                raise ConnectionError(failed.decode("utf-8", "replace"))
            if timed_out:
                raise TimeoutError(f"{left} of {n} TLS handshakes not complete within {timeout_s:g} s")
            if n:
                self.negotiated = {
                    "version": SSL_get_version(self.ssls[0]).decode(),
                    "cipher": SSL_CIPHER_get_name(SSL_get_current_cipher(self.ssls[0])).decode(),
                    "group": _group(self.ssls[0]),
                }
        except BaseException:
            self._free_ssls()
            raise
        finally:
            ERR_clear_error()
            free(fdv)
            if ep >= 0:
                close(ep)


cdef object _group(SSL *ssl):
    cdef const char *g = SSL_group_to_name(ssl, SSL_get_negotiated_group(ssl))
    return g.decode() if g != NULL else None


# ---- the hot loop ------------------------------------------------------------------------------

cdef int flush(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Hand OpenSSL what ``c`` owes, a record at a time; a full socket waits for EPOLLOUT.  0, or -1 if ``c`` failed."""
    cdef int64_t s, chunk
    cdef size_t w = 0
    cdef int err
    cdef uint32_t ev = EPOLLIN
    while c.sent < c.owed:
        s = (c.sent + c.pat) % C_PERIOD
        chunk = c.owed - c.sent
        if chunk > C_WINDOW:
            chunk = C_WINDOW
        L.run.writes += 1
        if SSL_write_ex(c.ssl, L.run.table + s, <size_t>chunk, &w):
            c.sent += <int64_t>w
            continue
        err = SSL_get_error(c.ssl, 0)
        if err == SSL_ERROR_WANT_WRITE:
            ev = EPOLLIN | EPOLLOUT
            break
        if err == SSL_ERROR_WANT_READ:
            break           # a post-handshake message first; retried on the next readiness
        conn_error(L, c, E_RESET, now)
        return -1
    want(L, c, idx, ev)
    return 0


cdef inline void queue_msgs(Loop *L, Conn *c, int64_t k, int64_t now) noexcept nogil:
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


cdef void reset_slot(Loop *L, Conn *c) noexcept nogil:
    c.gen += 1
    c.pat = (L.next_cid * C_STRIDE) % C_PERIOD
    L.next_cid += L.cid_step
    c.sent = 0
    c.owed = 0
    c.recvd = 0
    c.queued = 0
    c.done = 0
    c.events = 0


cdef int start_cycle(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Connect mode: a new connection in slot ``c`` (non-blocking connect, then the handshake)."""
    cdef int fd, r, err, one = 1
    fd = socket(L.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)
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
    reset_slot(L, c)
    c.t_start = now
    c.state = S_CONNECTING
    L.run.alive += 1
    r = connect(fd, <sockaddr *>&L.addr, L.addrlen)
    err = errno
    if r == 0:
        watch(L.run.ep, c, idx, EPOLLOUT, EPOLL_CTL_ADD)
        return tls_start(L, c, idx, now)
    if err != EINPROGRESS:
        conn_error(L, c, E_CONNECT, now)
        return -1
    watch(L.run.ep, c, idx, EPOLLOUT, EPOLL_CTL_ADD)
    return 0


cdef int tls_start(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Connect mode: the TCP connection is up; begin the client handshake (offering the slot's session)."""
    c.ssl = SSL_new(L.ctx)
    if c.ssl == NULL or SSL_set_fd(c.ssl, c.fd) != 1:
        conn_error(L, c, E_CONNECT, now)
        return -1
    SSL_set_connect_state(c.ssl)
    if L.resumption and c.session != NULL:
        SSL_set_session(c.ssl, c.session)
    c.state = S_HANDSHAKE
    return handshake_step(L, c, idx, now)


cdef int handshake_step(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    cdef int r = SSL_do_handshake(c.ssl)
    cdef int err
    if r != 1:
        err = SSL_get_error(c.ssl, r)
        if err == SSL_ERROR_WANT_READ:
            want(L, c, idx, EPOLLIN)
            return 0
        if err == SSL_ERROR_WANT_WRITE:
            want(L, c, idx, EPOLLOUT)
            return 0
        L.hs_failed += 1
        if L.hs_reason == NULL:
            L.hs_reason = error_reason(err)
        conn_error(L, c, E_CONNECT, now)
        return -1
    note_negotiated(L, c.ssl)
    if in_window(&L.run.w, now):
        hist_record(&L.run.hdr, &L.run.h1, now - c.t_start)
        if SSL_session_reused(c.ssl):
            L.hs_resumed += 1
        else:
            L.hs_full += 1
    c.state = S_OPEN
    want(L, c, idx, EPOLLIN)
    queue_msgs(L, c, 1, now)
    return flush(L, c, idx, now)


cdef void end_cycle(Loop *L, Conn *c, int64_t idx, int64_t now) noexcept nogil:
    """Connect mode: the echo is back; keep the session (resumption), close_notify, close, start the next cycle."""
    cdef SSL_SESSION *s
    if L.resumption:
        s = SSL_get1_session(c.ssl)
        if s != NULL and SSL_SESSION_is_resumable(s):
            if c.session != NULL:
                SSL_SESSION_free(c.session)
            c.session = s
        elif s != NULL:
            SSL_SESSION_free(s)
    drop_tls(c, 1)
    close(c.fd)
    c.fd = -1
    c.state = S_DEAD
    L.run.alive -= 1
    start_cycle(L, c, idx, now)


cdef void on_connecting(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    cdef int soerr = 0
    cdef socklen_t sl = sizeof(soerr)
    cdef int64_t now = now_ns()
    if getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 or soerr != 0:
        conn_error(L, c, E_CONNECT, now)
        return
    tls_start(L, c, idx, now)


cdef void on_readable(Loop *L, Conn *c, int64_t idx) noexcept nogil:
    """Every record OpenSSL can give, each verified; then the completed messages are timed and replaced."""
    cdef size_t n = 0
    cdef int err, got = 0
    cdef int64_t now, newdone, k, m, ti, t_sent, g
    while True:
        if not SSL_read_ex(c.ssl, L.rbuf, C_WINDOW, &n):
            err = SSL_get_error(c.ssl, 0)
            if err == SSL_ERROR_WANT_READ or err == SSL_ERROR_WANT_WRITE:
                break
            conn_error(L, c, E_RESET, now_ns())  # the server closed (close_notify or not) or reset it
            return
        L.run.reads += 1
        got = 1
        if c.recvd + <int64_t>n > c.sent or not verify_at(L, c, c.recvd, L.rbuf, <int64_t>n):
            conn_error(L, c, E_MISMATCH, now_ns())  # bytes never sent, or not the ones sent
            return
        c.recvd += <int64_t>n
        if not SSL_has_pending(c.ssl):
            break
    if not got:
        return
    now = now_ns()
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
        flush(L, c, idx, now)
    elif L.run.mode == M_OPEN:
        open_queue(L, c, now)
        flush(L, c, idx, now)
    else:
        end_cycle(L, c, idx, now)


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
            flush(L, c, j, now)
    L.run.ndirty = 0


cdef inline void start_conns(Loop *L, int64_t now) noexcept nogil:
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


cdef void count_starved(Loop *L, int64_t now) noexcept nogil:
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


cdef inline int wait_ms(Loop *L, int64_t now, int64_t next_tick) noexcept nogil:
    cdef int64_t wait_until = next_tick if next_tick < L.run.w.end else L.run.w.end
    cdef int timeout_ms
    if not L.run.e.ru_started and L.run.w.warm_end < wait_until:
        wait_until = L.run.w.warm_end
    timeout_ms = <int>((wait_until - now + 999999) // 1000000)
    if timeout_ms < 0 or L.run.poll:
        timeout_ms = 0
    return timeout_ms


cdef inline void dispatch(Loop *L, epoll_event *events, int n) noexcept nogil:
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
            continue
        if c.state == S_CONNECTING:
            on_connecting(L, c, idx)
            continue
        if c.state == S_HANDSHAKE:
            handshake_step(L, c, idx, now_ns())
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
            edges_open(&L.run.e, now)
        if now >= L.run.w.end:
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
    now = now_ns()
    if edges_close(&L.run.e, now):
        count_starved(L, now)


# ---- setup, result, teardown ---------------------------------------------------------------

cdef void set_target(Loop *L, int family, address) except *:
    """Connect mode's target, as loadgen's ``set_target`` reads it (numeric IPv4/IPv6, or a unix socket's path)."""
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


cdef int alloc_loop(Loop *L) noexcept nogil:
    cdef int64_t i
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
    return 0


cdef int open_loop(Loop *L, fds, TlsClient client, long long first_cid, long long cid_step) except? -1:
    """The epoll set, the timer, and (closed/open) the established connections of ``client``, taken over."""
    cdef int64_t i
    cdef int rc
    cdef Conn *c
    rc = run_open(&L.run, <uint64_t>L.nconns)
    if rc < 0:
        return rc
    if L.run.mode == M_CONNECT:
        return 0
    if client.ssls == NULL or client.nssl != L.nconns:
        raise ValueError("closed and open mode take connections whose handshakes are done (TlsClient.handshake_all)")
    for i in range(L.nconns):
        c = &L.conns[i]
        c.fd = fds[i]
        c.ssl = client.ssls[i]
        client.ssls[i] = NULL
        L.run.owned = i + 1
        c.pat = ((first_cid + i * cid_step) * C_STRIDE) % C_PERIOD
        c.state = S_OPEN
        L.run.alive += 1
        if watch(L.run.ep, c, i, EPOLLIN, EPOLL_CTL_ADD) < 0:
            L.run.failed = b"epoll_ctl(socket)"
            return -errno
    return 0


cdef object _text(const char *s):
    return s.decode("utf-8", "replace") if s != NULL else None


cdef dict loop_result(Loop *L, TlsClient client):
    cdef int64_t j
    connect = L.run.mode == M_CONNECT
    r = run_result(&L.run, ERROR_KINDS, L.run.rx_bytes_window, L.cycles,
                   None if connect else [L.conns[j].wdone for j in range(L.nconns)],
                   None if connect else L.run.starved)
    neg = client.negotiated or {}
    r["tls"] = {
        "version": _text(L.version) if connect else neg.get("version"),
        "cipher": _text(L.cipher) if connect else neg.get("cipher"),
        "group": _text(L.group) if connect else neg.get("group"),
        "handshakes": L.hs_full + L.hs_resumed if connect else None,
        "resumed": L.hs_resumed if connect else None,
        "handshake_errors": L.hs_failed if connect else 0,
        "handshake_error": _text(L.hs_reason),
    }
    return r


cdef void free_loop(Loop *L, fds):
    cdef int64_t i
    cdef Conn *c
    if L.conns:
        for i in range(L.nconns):
            c = &L.conns[i]
            drop_tls(c, c.state == S_OPEN)
            if c.session != NULL:
                SSL_SESSION_free(c.session)
            if c.fd >= 0:
                close(c.fd)
                c.fd = -1
            free(c.ring)
    run_free(&L.run, fds if L.run.mode != M_CONNECT else ())
    free(L.conns)
    free(L.rbuf)


def run_loop(int mode, fds, TlsClient client not None, long long first_cid, long long cid_step, int conns, int size,
             int depth, double rate, long long start_ns, long long warm_end_ns, long long end_ns,
             long long interval_ns, long long timeout_ns, bytes table, layout, int family=AF_INET, address=None,
             bint poll=False, int server_pid=0, stat_cpus=(), long long stall_ns=1000000000, *,
             long long client_stall_ns):
    """Run one load loop over TLS; return its counters as a dict (loadgen.run_loop's, plus ``tls``).

    As ``loadgen.run_loop`` (raw only), with ``client`` a ``TlsClient``: in
    closed and open mode ``fds`` are its connected sockets, whose handshakes
    ``client.handshake_all(fds)`` did (their SSLs are taken over here, the
    sockets closed with the loop); connect mode makes its own connections, each
    with a handshake, from ``client``'s SSL_CTX, resuming sessions when the
    client was made with ``resumption``.  ``tls`` in the result: the
    ``version``, ``cipher`` and key exchange ``group`` negotiated; in connect
    mode the ``handshakes`` completed in the window and how many ``resumed``;
    ``handshake_errors`` and the first one's reason (``handshake_error``).
    """
    cdef Loop L
    cdef int rc, cap = depth
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
    if mode == M_OPEN and cap < C_OPEN_MIN_RING:
        cap = C_OPEN_MIN_RING
    if mode == M_CONNECT:
        cap = 1
    stat_cpus = [int(x) for x in stat_cpus]
    memset(&L, 0, sizeof(Loop))
    run_init(&L.run, mode, table, layout, start_ns, warm_end_ns, end_ns, interval_ns, rate, poll, timeout_ns,
             server_pid, len(stat_cpus), stall_ns, client_stall_ns)
    L.ctx = client.ctx
    L.resumption = client.resumption
    L.size = size
    L.cap = cap
    L.nconns = conns
    L.next_cid = first_cid
    L.cid_step = cid_step
    try:
        if mode == M_CONNECT:
            set_target(&L, family, address)
        if alloc_loop(&L) < 0:
            raise MemoryError()
        edges_set_cpus(&L.run.e, stat_cpus)
        rc = open_loop(&L, fds, client, first_cid, cid_step)
        if rc < 0:
            raise OSError(-rc, f"{L.run.failed.decode()} failed")
        with nogil:
            main_loop(&L)
        return loop_result(&L, client)
    finally:
        free_loop(&L, fds)
        ERR_clear_error()
