# The C declarations of ext/procfs.h: a server's and the CPUs' counters from /proc, read
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

    ctypedef struct procfs_cpustat_t:
        int64_t cpu
        int found
        int64_t user
        int64_t nice
        int64_t system
        int64_t idle
        int64_t iowait
        int64_t irq
        int64_t softirq
        int64_t steal

    ssize_t procfs_read_small(const char* path, char* buf, size_t cap)
    int procfs_stat_ticks(int pid, int64_t* utime, int64_t* stime)
    void procfs_sample(int pid, procfs_sample_t* s)
    int64_t procfs_sample_runtime_ns(const procfs_sample_t* s)
    int procfs_cpustat_read(char* buf, size_t cap, procfs_cpustat_t* out, int n)
