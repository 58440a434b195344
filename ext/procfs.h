/*
 * procfs.h: CPU counters from /proc, read in C: the C twin of sockbench/procfs.py.
 *
 * sockbench/procfs.py is the owner of these readers in Python
 * (read_proc_stat: utime and stime in clock ticks; read_task_cpu_s: the
 * scheduler's exact runtime summed over the live threads; read_cpu_times:
 * the per-CPU lines of /proc/stat).  This header reads the same files the
 * same way, for the two places that must sample without waking an
 * interpreter: the load generator's nogil loop (ext/loadgen.pyx, declared in
 * ext/procfs.pxd) and the reference C client (bench/calibrate/ref_client.c),
 * both at the exact edges of their measured window.  Static inline, no
 * allocation: the caller owns the thread arrays and the /proc/stat buffer.
 *
 * /proc/stat's per-CPU lines ("cpuN user nice system idle iowait irq softirq
 * steal guest guest_nice", in USER_HZ clock ticks) are read whole into the
 * caller's buffer in one pass (about 4 us on a 2-CPU machine: the kernel
 * builds the file at the first read) and only the wanted CPUs are kept.
 *
 * API:
 *   procfs_read_small    a small /proc file into a buffer
 *   procfs_stat_ticks    utime and stime (clock ticks) from /proc/PID/stat
 *   procfs_sample        utime, stime and every live thread's exact runtime, at one instant
 *   procfs_sample_runtime_ns  the sum of a sample's thread runtimes
 *   procfs_cpustat_read  the /proc/stat counters of some CPUs, at one instant
 */
#ifndef SOCKBENCH_PROCFS_H
#define SOCKBENCH_PROCFS_H

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    int ok;              /* 1: /proc/PID/stat and /proc/PID/task were read */
    int overflow;        /* more threads than the arrays hold: the runtimes are incomplete */
    int64_t utime;       /* /proc/PID/stat, clock ticks */
    int64_t stime;
    int64_t ntids;
    int64_t cap;         /* the size of tids and runtime_ns (the caller's) */
    int64_t *tids;
    int64_t *runtime_ns; /* /proc/PID/task/TID/schedstat, first field */
} procfs_sample_t;

/* One CPU's line of /proc/stat, in USER_HZ clock ticks (guest time is already inside user and nice). */
typedef struct {
    int64_t cpu;         /* the CPU asked for (set by the caller) */
    int found;           /* 1: its line was read */
    int64_t user, nice, system, idle, iowait, irq, softirq, steal;
} procfs_cpustat_t;

/* Read a small /proc file into buf (NUL-terminated); its length, or -1. */
static inline ssize_t procfs_read_small(const char *path, char *buf, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, cap - 1);
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return n;
}

/* utime and stime of pid in clock ticks, from /proc/PID/stat; 0, or -1 if unreadable. */
static inline int procfs_stat_ticks(int pid, int64_t *utime, int64_t *stime) {
    char path[64], buf[1024];
    char *end;
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    if (procfs_read_small(path, buf, sizeof(buf)) < 0) return -1;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and parentheses */
    if (p == NULL) return -1;
    p += 2; /* now at field 3 (state); utime and stime are fields 14 and 15 */
    for (int field = 3; field < 14 && *p != 0; p++)
        if (*p == ' ') field++;
    *utime = strtoll(p, &end, 10);
    *stime = strtoll(end, NULL, 10);
    return 0;
}

/* Every live thread's runtime (ns) from /proc/PID/task/TID/schedstat into s; 0, or -1 if unreadable. */
static inline int procfs_thread_runtimes(int pid, procfs_sample_t *s) {
    char path[96], buf[256];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d == NULL) return -1;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue; /* "." and ".." */
        if (s->ntids == s->cap) {
            s->overflow = 1;
            break;
        }
        long long tid = strtoll(e->d_name, NULL, 10);
        snprintf(path, sizeof(path), "/proc/%d/task/%lld/schedstat", pid, tid);
        if (procfs_read_small(path, buf, sizeof(buf)) < 0) continue; /* the thread ended meanwhile */
        s->tids[s->ntids] = tid;
        s->runtime_ns[s->ntids] = strtoll(buf, NULL, 10);
        s->ntids++;
    }
    closedir(d);
    return 0;
}

/* The server's utime/stime ticks and every thread's exact runtime, right now.
 * s->tids and s->runtime_ns hold s->cap entries each (the caller's arrays). */
static inline void procfs_sample(int pid, procfs_sample_t *s) {
    s->ok = 0;
    s->overflow = 0;
    s->ntids = 0;
    if (procfs_stat_ticks(pid, &s->utime, &s->stime) < 0) return;
    if (procfs_thread_runtimes(pid, s) < 0) return;
    s->ok = 1;
}

/* The sum of the sampled threads' runtimes in ns, or -1 if none was read. */
static inline int64_t procfs_sample_runtime_ns(const procfs_sample_t *s) {
    int64_t total = 0;
    if (!s->ok || s->ntids == 0) return -1;
    for (int64_t i = 0; i < s->ntids; i++) total += s->runtime_ns[i];
    return total;
}

/* The counters of the CPUs out[0..n).cpu from /proc/stat, read whole into buf[0..cap) (at least 4 KiB; a
 * file longer than cap keeps its first cap - 1 bytes, where the CPU lines are).  Returns how many of the n
 * were found (a CPU that is offline has no line), or -1 when /proc/stat is unreadable. */
static inline int procfs_cpustat_read(char *buf, size_t cap, procfs_cpustat_t *out, int n) {
    int fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t len = 0;
    while (len < cap - 1) {
        ssize_t r = read(fd, buf + len, cap - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    for (int i = 0; i < n; i++) out[i].found = 0;
    int found = 0;
    char *p = buf;
    while (*p != 0) {
        char *eol = strchr(p, '\n');
        if (eol == NULL) eol = p + strlen(p);
        if (strncmp(p, "cpu", 3) != 0) break; /* the CPU lines come first; the total "cpu " is skipped below */
        if (p[3] >= '0' && p[3] <= '9') {
            char *q;
            long long cpu = strtoll(p + 3, &q, 10);
            int64_t v[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int k = 0; k < 8 && q < eol; k++) v[k] = strtoll(q, &q, 10);
            for (int i = 0; i < n; i++) {
                if (out[i].cpu != cpu || out[i].found) continue;
                out[i].user = v[0];
                out[i].nice = v[1];
                out[i].system = v[2];
                out[i].idle = v[3];
                out[i].iowait = v[4];
                out[i].irq = v[5];
                out[i].softirq = v[6];
                out[i].steal = v[7];
                out[i].found = 1;
                found++;
            }
        }
        if (*eol == 0) break;
        p = eol + 1;
    }
    return found;
}

#endif /* SOCKBENCH_PROCFS_H */
