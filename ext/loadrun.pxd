# One load run's state outside its sockets: what both load loops own, count and report alike.
#
# ext/loadgen.pyx (streams) and ext/udpgen.pyx (datagrams) differ in how they
# send and what they check, but not in what surrounds that: the epoll set and
# the open loop's timer, the sockets handed over by Python (closed with the
# loop), the window and its histograms (ext/window.pxd), the counters, and the
# result dict whose keys the harness reads from either.  This file is the one
# owner of those.  Each generator's Loop embeds ``Run`` as ``run`` and its
# hot loop reads and bumps the fields in place (``L.run.msgs += 1``): a field
# of an embedded struct is the same load and store as a field of Loop itself,
# so nothing is called per message.  The functions here run once per run,
# around the nogil loop: setting up (``run_init``, ``run_alloc``,
# ``run_open``), the result (``run_result``) and the teardown (``run_free``);
# one runs once per pass of the polling open loop (``run_pass``: its idle
# time and the client's stalls), so both loops measure those alike.
# ``run_over`` is the loops' one test for the window's end: its time, or a
# stop signal (SIGTERM/SIGINT, ext/stopsig.h, armed by ``run_arm`` around the
# loop), so that a stopped load reports the window it measured until then.
# They are ``cdef inline`` in a .pxd for the reason window.pxd gives: Cython
# pastes them into each generator's C.

from libc.stdint cimport int64_t, uint8_t, uint64_t

from cpython.bytes cimport PyBytes_AS_STRING

from posix cimport (
    errno, ENOMEM,
    calloc, free, close,
    CLOCK_MONOTONIC,
    epoll_event, epoll_create1, epoll_ctl, EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLLIN,
    timerfd_create, TFD_NONBLOCK, TFD_CLOEXEC,
)
from window cimport (
    Hist, Hdr, Window, Edges, edges_alloc, edges_free, hdr_init, window_init, hist_pairs, cpu_seconds,
    server_cpu, cpu_stat,
)
from stopsig cimport stopsig_t, stopsig_arm, stopsig_disarm, stopsig_requested


cdef enum:
    RUN_CLOSED = 0            # the modes both loops have, numbered alike (``MODE_CLOSED``, ``MODE_OPEN``)
    RUN_OPEN = 1
    RUN_N_ERR = 5             # the error counters, in the order of ``loadgen.ERROR_KINDS``
    RUN_STOP_DRAIN_NS = 20000000  # after a stop signal, how long echoes still in flight are awaited (udp)


cdef struct Run:
    int mode
    int alive              # sockets still serving
    int ep
    int tfd                # the open loop's timer, -1 otherwise
    int64_t owned          # fds[:owned] belong to the loop (closed with it)
    const char *failed     # the call whose -errno ``run_open`` (or the loop's own setup) returned
    int ended_early
    const uint8_t *table   # the payload pattern (``loadgen.pattern_table``)
    int64_t *dirty         # open loop: the sockets that became due in this pass
    int ndirty
    Hdr hdr                # the histograms' layout (ext/window.pxd)
    Hist h1
    Hist h2
    # window
    Window w               # start, warm_end, end, the time series; the open loop's period
    int64_t timeout
    int64_t *ts_msgs
    int64_t *ts_sent
    # open loop schedule
    int64_t g_next
    int poll               # open loop: poll (epoll_wait with no timeout), no timer
    int64_t idle_ns        # open loop, polling: time in passes that found nothing to do, in the window
    int64_t t_pass         # open loop, polling: the top of the previous pass (``run_pass``)
    int64_t cstall_min     # ... a gap between two passes' tops this long or longer is a client stall (ns)
    int64_t cstalls        # ... the client stalls in the window: how many, their total and the longest (ns)
    int64_t cstall_ns
    int64_t cstall_max
    # counters
    int64_t errors[RUN_N_ERR]
    int64_t first_error_ns
    int first_error_kind
    int64_t msgs            # completed inside the window
    int64_t sent_window     # messages sent inside the window (open: achieved rate)
    int64_t writes
    int64_t reads
    int64_t waits           # epoll_wait calls, the whole run: a sleeping loop's wake-ups, a polling loop's passes
    int64_t msgs_queued
    int64_t rx_bytes_window
    Edges e                # the window's edges: the client's rusage, the server's CPU, /proc/stat
    int64_t starved         # sockets that completed no message in the window, owed one all along
    int64_t stall           # ... where "all along" is also an answer awaited this long (ns)
    stopsig_t stop          # the handlers SIGTERM/SIGINT had before ``run_arm``


# ---- setup (with the GIL, before the loop) ----------------------------------------------------

cdef inline void run_init(Run *r, int mode, bytes table, layout, int64_t start_ns, int64_t warm_end_ns,
                          int64_t end_ns, int64_t interval_ns, double rate, bint poll, int64_t timeout_ns,
                          int server_pid, int nstat, int64_t stall_ns, int64_t client_stall_ns) except *:
    """Set what differs from zero in a zeroed ``r`` (nothing is allocated yet); ``rate``/``poll`` are the open loop's."""
    r.mode = mode
    r.ep = -1
    r.tfd = -1
    r.table = <const uint8_t *>PyBytes_AS_STRING(table)
    hdr_init(&r.hdr, layout)
    window_init(&r.w, start_ns, warm_end_ns, end_ns, interval_ns, rate if mode == RUN_OPEN else 0.0)
    r.timeout = timeout_ns
    if mode == RUN_OPEN:
        r.poll = 1 if poll else 0
    if server_pid > 0:
        r.e.spid = server_pid
    r.e.nstat = nstat
    r.stall = stall_ns
    r.cstall_min = client_stall_ns


cdef inline int run_alloc(Run *r, int64_t nsockets) noexcept nogil:
    """The run's buffers, zeroed: 0, or -ENOMEM (``run_free`` frees what was taken)."""
    r.dirty = <int64_t *>calloc(nsockets, sizeof(int64_t))
    r.h1.counts = <int64_t *>calloc(r.hdr.counts_len, sizeof(int64_t))
    r.h2.counts = <int64_t *>calloc(r.hdr.counts_len, sizeof(int64_t))
    r.ts_msgs = <int64_t *>calloc(r.w.nint, sizeof(int64_t))
    r.ts_sent = <int64_t *>calloc(r.w.nint, sizeof(int64_t))
    if not (r.dirty and r.h1.counts and r.h2.counts and r.ts_msgs and r.ts_sent):
        return -ENOMEM
    if edges_alloc(&r.e) < 0:
        return -ENOMEM
    return 0


cdef inline int run_open(Run *r, uint64_t timer_token) noexcept nogil:
    """The epoll set and, in the open loop, its timer (its events carry ``timer_token``).

    0, or -errno with ``r.failed`` naming the call that failed.
    """
    cdef epoll_event ev
    r.ep = epoll_create1(EPOLL_CLOEXEC)
    if r.ep < 0:
        r.failed = b"epoll_create1"
        return -errno
    if r.mode == RUN_OPEN:
        r.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
        if r.tfd < 0:
            r.failed = b"timerfd_create"
            return -errno
        ev.events = EPOLLIN
        ev.data.u64 = timer_token
        if epoll_ctl(r.ep, EPOLL_CTL_ADD, r.tfd, &ev) < 0:
            r.failed = b"epoll_ctl(timerfd)"
            return -errno
    return 0


cdef inline void run_arm(Run *r) noexcept nogil:
    """Before the loop: SIGTERM and SIGINT end the window (``run_over``) instead of the process."""
    stopsig_arm(&r.stop, -1)


cdef inline void run_disarm(Run *r) noexcept nogil:
    """After the loop: the handlers of before ``run_arm`` again."""
    stopsig_disarm(&r.stop)


# ---- the hot loop's shared steps (without the GIL, once per pass) ------------------------------

cdef inline bint run_over(const Run *r, int64_t now) noexcept nogil:
    """The window is over: its end has come, or a stop signal landed (then it ends now, a window cut short)."""
    return now >= r.w.end or stopsig_requested()


cdef inline void run_pass(Run *r, int64_t now, int was_idle) noexcept nogil:
    """Open loop, polling: the top of a pass at ``now``; what the time since the previous pass's top was.

    A polling loop is always on its CPU and each pass does at most one
    epoll batch of work, so the gap between two passes' tops is that work,
    or, when it reaches ``cstall_min``, time the CPU was taken from the loop
    (a kernel thread, an interrupt, another process, the hypervisor): a
    client stall, during which every message due went out late.  Counted in
    the window only (its edges are where the loop's own clock reads them),
    like ``idle_ns``, the time of the passes that found nothing to do.
    ``main_loop`` sets ``t_pass`` before its first pass.
    """
    cdef int64_t gap = now - r.t_pass
    if r.e.ru_started:
        if was_idle:
            r.idle_ns += gap
        if gap >= r.cstall_min:
            r.cstalls += 1
            r.cstall_ns += gap
            if gap > r.cstall_max:
                r.cstall_max = gap
    r.t_pass = now


# ---- the result and the teardown (with the GIL, after the loop) ------------------------------

cdef inline dict run_result(const Run *r, kinds, int64_t rx_wire_bytes, int64_t cycles, conn_msgs, starved):
    """The counters as the dict both ``run_loop``s return; ``kinds`` is ``ERROR_KINDS``, the rest the loop's own.

    Its keys are ``ProcResult``'s field names (``sockbench.bench.schema``): a counter added here and declared
    there reaches the result under this one name."""
    cdef int64_t j
    cdef int k
    return {
        "mode": r.mode,
        "msgs": r.msgs,
        "rx_bytes": r.rx_bytes_window,
        "rx_wire_bytes": rx_wire_bytes,
        "sent_window": r.sent_window,
        "cycles": cycles,
        "msgs_queued": r.msgs_queued,
        "writes": r.writes,
        "reads": r.reads,
        "waits": r.waits,
        "errors": {kinds[k]: r.errors[k] for k in range(RUN_N_ERR)},
        "first_error_ns": r.first_error_ns or None,
        "first_error_kind": kinds[r.first_error_kind] if r.first_error_ns else None,
        "ended_early": bool(r.ended_early),
        "alive_at_end": r.alive,
        "hdr1": hist_pairs(&r.hdr, &r.h1),
        "hdr1_sum_ns": r.h1.sum_ns,
        "hdr2": hist_pairs(&r.hdr, &r.h2),
        "hdr2_sum_ns": r.h2.sum_ns,
        "ts_msgs": [r.ts_msgs[j] for j in range(r.w.nint)],
        "ts_sent": [r.ts_sent[j] for j in range(r.w.nint)] if r.mode == RUN_OPEN else None,
        "user_s": cpu_seconds(&r.e, 0),
        "sys_s": cpu_seconds(&r.e, 1),
        "cpu_window_s": (r.e.t_ru[1] - r.e.t_ru[0]) / 1e9,
        "due": r.g_next if r.mode == RUN_OPEN else None,
        "polling": bool(r.poll),
        "idle_s": r.idle_ns / 1e9 if r.poll else None,
        "stalls": r.cstalls if r.poll else None,
        "stall_s": r.cstall_ns / 1e9 if r.poll else None,
        "longest_stall_s": r.cstall_max / 1e9 if r.poll else None,
        "server_cpu": server_cpu(&r.e),
        "cpu_stat": cpu_stat(&r.e),
        "conn_msgs": conn_msgs,
        "starved": starved,
    }


cdef inline void run_free(Run *r, fds):
    """Close the sockets of ``fds`` the loop never took over, the epoll set and the timer; free the buffers.

    The loop closes the sockets it took over (``fds[:owned]``) itself, first.
    """
    cdef int64_t i
    for i in range(r.owned, len(fds)):
        close(<int>fds[i])
    if r.ep >= 0:
        close(r.ep)
    if r.tfd >= 0:
        close(r.tfd)
    free(r.dirty)
    free(r.h1.counts)
    free(r.h2.counts)
    free(r.ts_msgs)
    free(r.ts_sent)
    edges_free(&r.e)
