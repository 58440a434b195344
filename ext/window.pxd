# The measured window of a load loop: its clock, the latency histograms and the samples at its edges.
#
# Both load generators (ext/loadgen.pyx over streams, ext/udpgen.pyx over
# datagrams) time, record and sample the same way, so that their results mean
# the same thing; this file is the one owner of that code.  Each generator's
# Loop embeds the three structs below (``hdr``, ``w``, ``e``) and passes
# them to these functions.  They are ``cdef inline`` in a .pxd, so that Cython
# pastes them into each generator's C: the hot loop calls them directly (no
# call through a pointer, no module boundary), exactly as when each file had
# its own copy.  The Python-side helpers (setting up from the ``layout`` and
# building the result's parts) sit here too, next to the fields they read.

from libc.stdint cimport int64_t

from posix cimport (
    calloc, free,
    timespec, clock_gettime, CLOCK_MONOTONIC,
    rusage, getrusage, RUSAGE_SELF,
    itimerspec, timerfd_settime, TFD_TIMER_ABSTIME,
    __builtin_clzll,
)
from procfs cimport procfs_sample_t, procfs_sample, procfs_cpustat_t, procfs_cpustat_read


cdef enum:
    W_MIN_TICK_NS = 5000      # open loop: the timer wakes the loop at most every 5 us
    W_MAX_TIDS = 4096         # server threads sampled for their exact runtime; beyond: the ticks only
    W_STAT_BUF = 65536        # /proc/stat is read into this (its CPU lines come first)


cdef struct Hist:
    int64_t *counts
    int64_t total
    int64_t sum_ns


cdef struct Hdr:
    # the counts array's layout, exactly the ``hdrhistogram`` package's (``sockbench.bench.load.hdr.LAYOUT``)
    int unit_mag
    int sub_half_mag
    int64_t sub_mask
    int64_t highest
    int64_t counts_len


cdef struct Window:
    # CLOCK_MONOTONIC ns, fixed by the parent in advance: [warm_end, end) is measured
    int64_t start
    int64_t warm_end
    int64_t end
    int64_t interval       # the time series' step
    int64_t nint           # its length
    # the open loop's schedule: global message g is intended at start + g * period
    double period
    int64_t g_limit
    int64_t armed          # the timer's period once armed, -1 before


cdef struct Edges:
    # the window's edges (index 0: warm_end, 1: the loop's end): the client's rusage ...
    int ru_started
    rusage ru[2]
    int64_t t_ru[2]
    # ... the server's CPU (with ``server_pid``) ...
    int spid
    procfs_sample_t ssample[2]
    # ... and /proc/stat of ``stat_cpus``, with the CLOCK_MONOTONIC time of each read
    int nstat
    char *statbuf
    procfs_cpustat_t *cpustat[2]
    int64_t t_stat[2]


# ---- the clock and the histograms (the hot loop) --------------------------------------------

cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void hist_record(const Hdr *l, Hist *h, int64_t v) noexcept nogil:
    # HdrHistogram's counts index (see hdrh.histogram._counts_index_for; tests check it against the package)
    cdef int64_t bucket, sub, idx
    cdef int pow2ceiling
    if v < 0:
        v = 0
    if v > l.highest:
        v = l.highest
    pow2ceiling = 64 - __builtin_clzll(<unsigned long long>(v | l.sub_mask))
    bucket = pow2ceiling - l.unit_mag - (l.sub_half_mag + 1)
    sub = v >> (bucket + l.unit_mag)
    idx = ((bucket + 1) << l.sub_half_mag) + (sub - (1 << l.sub_half_mag))
    if idx < 0 or idx >= l.counts_len:
        return
    h.counts[idx] += 1
    h.total += 1
    h.sum_ns += v


cdef inline int in_window(const Window *w, int64_t t) noexcept nogil:
    return t >= w.warm_end and t < w.end


cdef inline int64_t interval_index(const Window *w, int64_t t) noexcept nogil:
    cdef int64_t i
    if t < w.start:
        return -1
    i = (t - w.start) // w.interval
    return i if i < w.nint else -1


cdef inline int64_t intended_ns(const Window *w, int64_t g) noexcept nogil:
    return w.start + <int64_t>(<double>g * w.period)


cdef inline void arm_timer(Window *w, int tfd) noexcept nogil:
    """Open loop: one periodic timerfd at the schedule's period (at least W_MIN_TICK_NS).

    The timer only wakes the loop; what is due is always computed from the
    clock and the message index, so a late or coalesced expiry cannot shift
    the schedule.  Armed once: no syscall per message to re-arm it.
    """
    cdef itimerspec its
    cdef int64_t period = <int64_t>w.period
    if w.armed >= 0:
        return
    if period < W_MIN_TICK_NS:
        period = W_MIN_TICK_NS
    w.armed = period
    its.it_interval.tv_sec = period // 1000000000
    its.it_interval.tv_nsec = period % 1000000000
    its.it_value.tv_sec = w.start // 1000000000
    its.it_value.tv_nsec = w.start % 1000000000
    timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL)


# ---- the window's edges ----------------------------------------------------------------------

cdef inline void read_cpustat(Edges *e, int edge) noexcept nogil:
    """``stat_cpus``' /proc/stat lines, timed at the middle of the read."""
    cdef int64_t t0
    if e.nstat > 0:
        t0 = now_ns()
        if procfs_cpustat_read(e.statbuf, W_STAT_BUF, e.cpustat[edge], e.nstat) < 0:
            e.nstat = -1        # unreadable: no interference figures
        e.t_stat[edge] = (t0 + now_ns()) // 2


cdef inline void edges_open(Edges *e, int64_t now) noexcept nogil:
    """The measured window opens: the client's rusage, the server's CPU and the CPUs' counters, now."""
    getrusage(RUSAGE_SELF, &e.ru[0])
    e.t_ru[0] = now
    e.ru_started = 1
    if e.spid > 0:
        procfs_sample(e.spid, &e.ssample[0])
    read_cpustat(e, 0)


cdef inline int edges_close(Edges *e, int64_t now) noexcept nogil:
    """The loop ended at ``now``: the closing edge; 1, or 0 (an empty window) if the window never opened."""
    getrusage(RUSAGE_SELF, &e.ru[1])
    e.t_ru[1] = now
    if e.ru_started:
        if e.spid > 0:
            procfs_sample(e.spid, &e.ssample[1])
        read_cpustat(e, 1)
        return 1
    e.ru[0] = e.ru[1]
    e.t_ru[0] = now
    e.nstat = -1            # no window: no interference figures
    return 0


cdef inline int edges_alloc(Edges *e) noexcept nogil:
    """The edges' buffers, zeroed: 0, or -1 when out of memory (``edges_free`` frees what was taken)."""
    cdef int i
    if e.nstat > 0:
        e.statbuf = <char *>calloc(W_STAT_BUF, 1)
        e.cpustat[0] = <procfs_cpustat_t *>calloc(e.nstat, sizeof(procfs_cpustat_t))
        e.cpustat[1] = <procfs_cpustat_t *>calloc(e.nstat, sizeof(procfs_cpustat_t))
        if not (e.statbuf and e.cpustat[0] and e.cpustat[1]):
            return -1
    if e.spid:
        for i in range(2):
            e.ssample[i].cap = W_MAX_TIDS
            e.ssample[i].tids = <int64_t *>calloc(W_MAX_TIDS, sizeof(int64_t))
            e.ssample[i].runtime_ns = <int64_t *>calloc(W_MAX_TIDS, sizeof(int64_t))
            if not (e.ssample[i].tids and e.ssample[i].runtime_ns):
                return -1
    return 0


cdef inline void edges_free(Edges *e) noexcept nogil:
    cdef int i
    for i in range(2):
        free(e.ssample[i].tids)
        free(e.ssample[i].runtime_ns)
        free(e.cpustat[i])
    free(e.statbuf)


# ---- setup and results (with the GIL) --------------------------------------------------------

cdef inline void hdr_init(Hdr *l, layout) except *:
    l.unit_mag = layout.unit_magnitude
    l.sub_half_mag = layout.sub_bucket_half_count_magnitude
    l.sub_mask = layout.sub_bucket_mask
    l.highest = layout.highest
    l.counts_len = layout.counts_len


cdef inline void window_init(Window *w, int64_t start_ns, int64_t warm_end_ns, int64_t end_ns,
                             int64_t interval_ns, double rate) noexcept:
    """The window and its time series; with ``rate`` > 0 (open loop), the schedule too."""
    w.start = start_ns
    w.warm_end = warm_end_ns
    w.end = end_ns
    w.interval = interval_ns
    w.nint = (end_ns - start_ns + interval_ns - 1) // interval_ns
    w.armed = -1
    if rate > 0:
        w.period = 1e9 / rate
        w.g_limit = <int64_t>((end_ns - start_ns) / w.period) + 1


cdef inline void edges_set_cpus(Edges *e, stat_cpus) except *:
    """Which CPUs' /proc/stat lines to read (after ``edges_alloc``)."""
    cdef int i
    for i in range(e.nstat):
        e.cpustat[0][i].cpu = stat_cpus[i]
        e.cpustat[1][i].cpu = stat_cpus[i]


cdef inline list hist_pairs(const Hdr *l, const Hist *h):
    """``(index, count)`` of the nonzero counts."""
    cdef int64_t j
    return [(j, h.counts[j]) for j in range(l.counts_len) if h.counts[j]]


cdef inline double cpu_seconds(const Edges *e, int which):
    """The client's user (``which`` 0) or system (1) CPU seconds in the window."""
    cdef const rusage *a = &e.ru[0]
    cdef const rusage *b = &e.ru[1]
    if which == 0:
        return ((b.ru_utime.tv_sec + b.ru_utime.tv_usec / 1e6)
                - (a.ru_utime.tv_sec + a.ru_utime.tv_usec / 1e6))
    return (b.ru_stime.tv_sec + b.ru_stime.tv_usec / 1e6) - (a.ru_stime.tv_sec + a.ru_stime.tv_usec / 1e6)


cdef inline object sample_dict(const procfs_sample_t *s):
    if not s.ok:
        return None
    return {"utime_ticks": s.utime, "stime_ticks": s.stime, "overflow": bool(s.overflow),
            "threads": {s.tids[i]: s.runtime_ns[i] for i in range(s.ntids)}}


cdef inline object cpustat_list(const Edges *e, int edge):
    """One edge's /proc/stat counters: ``{cpu: [user, nice, system, idle, iowait, irq, softirq, steal]}``
    (clock ticks) of the CPUs that were found, and the time of the read."""
    cdef int i
    cdef const procfs_cpustat_t *s
    counters = {}
    for i in range(e.nstat):
        s = &e.cpustat[edge][i]
        if s.found:
            counters[s.cpu] = [s.user, s.nice, s.system, s.idle, s.iowait, s.irq, s.softirq, s.steal]
    return {"t_ns": e.t_stat[edge], "cpus": counters}


cdef inline object server_cpu(const Edges *e):
    """The result's ``server_cpu``: ``[at warm_end, at end]``, or None without ``server_pid``."""
    return [sample_dict(&e.ssample[0]), sample_dict(&e.ssample[1])] if e.spid else None


cdef inline object cpu_stat(const Edges *e):
    """The result's ``cpu_stat``: ``[at warm_end, at end]``, or None when not asked for or unreadable."""
    return [cpustat_list(e, 0), cpustat_list(e, 1)] if e.nstat > 0 else None
