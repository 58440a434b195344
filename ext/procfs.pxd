# The C declarations of ext/procfs.h: a server's CPU counters from /proc, read
# without the GIL (the C twin of sockbench/procfs.py; the header says why).

from libc.stdint cimport int64_t


cdef extern from "procfs.h" nogil:
    ctypedef struct procfs_sample_t:
        int ok
        int overflow
        int64_t utime
        int64_t stime
        int64_t ntids
        int64_t cap
        int64_t* tids
        int64_t* runtime_ns

    ssize_t procfs_read_small(const char* path, char* buf, size_t cap)
    int procfs_stat_ticks(int pid, int64_t* utime, int64_t* stime)
    void procfs_sample(int pid, procfs_sample_t* s)
    int64_t procfs_sample_runtime_ns(const procfs_sample_t* s)
