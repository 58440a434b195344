/*
 * server_cpu_client: the small closed-loop C load client of bench/server_cpu.py.
 *
 * Why it exists: the server CPU per message is only meaningful if the client
 * can keep the server busy, and a Python client cannot (it costs more per
 * message than the fastest servers).  This client is one epoll loop in C,
 * pinned by its parent to its own CPU.  It also measures the window itself:
 * it reads the server's utime/stime from /proc/PID/stat, and its own rusage,
 * at the exact moments the measured window opens and closes, so messages
 * and CPU are counted over the same interval.
 *
 * Workload: CONNS connections, each with one SIZE-byte message in flight
 * (closed loop, depth 1); message m of connection c is the slice of a random
 * pattern at offset 64 * ((7m + 13c) mod 61), so every echoed byte is checked
 * against what was sent, and a wrong, lost or reordered byte is an error.
 * Short writes keep an offset and wait for EPOLLOUT; reads are bounded to the
 * message, so boundaries stay exact.
 *
 * Usage: server_cpu_client HOST PORT CONNS SIZE WARMUP_S DURATION_S SERVER_PID
 * Output: one JSON object on stdout.  Exit 0, or 1 with a one-line reason on
 * stderr (bad arguments, cannot connect).  It always ends at WARMUP+DURATION
 * (plus the connect time): every epoll_wait is bounded by the next deadline.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_MAX (256 * 1024)
#define PAT_EXTRA 4096
#define MAX_EVENTS 512

typedef struct {
    int fd;           /* -1 once failed */
    uint64_t msg;     /* index of the message in flight */
    size_t off;       /* pattern offset of that message */
    size_t sent;      /* bytes of it sent */
    size_t recvd;     /* bytes of its echo received and checked */
    int64_t t_send;   /* ns, when it was started */
    int want_out;     /* registered for EPOLLOUT */
} conn_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double tv_s(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

/* utime and stime of PID in clock ticks, from /proc/PID/stat; 0 on success. */
static int proc_times(int pid, long long *ut, long long *st) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    p += 2; /* field 3, state */
    for (int field = 3; field < 14; field++) {
        p = strchr(p, ' ');
        if (!p) return -1;
        p++;
    }
    if (sscanf(p, "%lld %lld", ut, st) != 2) return -1;
    return 0;
}

/* On-CPU time of PID in ns: the sum of /proc/PID/task/TID/schedstat over its
   live threads (scheduler clock, not ticks; a threaded server has many); -1 if absent. */
static long long proc_runtime_ns(int pid) {
    char path[320], buf[256];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    long long total = 0;
    int seen = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        snprintf(path, sizeof path, "/proc/%d/task/%s/schedstat", pid, e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;  /* the thread just exited */
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0) continue;
        buf[n] = 0;
        long long v;
        if (sscanf(buf, "%lld", &v) == 1) { total += v; seen++; }
    }
    closedir(d);
    return seen ? total : -1;
}

static unsigned char *pat;
static size_t size;
static int ep;
static uint64_t errors_mismatch, errors_eof, errors_io;

static void fail_conn(conn_t *c) {
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    c->fd = -1;
}

static void set_out(conn_t *c, int want) {
    if (c->want_out == want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = want;
}

/* Send what is left of the current message; 0, or -1 if the connection failed. */
static int pump_send(conn_t *c) {
    while (c->sent < size) {
        ssize_t n = send(c->fd, pat + c->off + c->sent, size - c->sent, MSG_NOSIGNAL);
        if (n > 0) { c->sent += (size_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) { set_out(c, 1); return 0; }
        errors_io++;
        fail_conn(c);
        return -1;
    }
    set_out(c, 0);
    return 0;
}

static int start_msg(conn_t *c, size_t idx) {
    /* 64-byte aligned offsets: a copy from or to an address 16 bytes off a
       32-byte boundary costs the kernel markedly more on some machines */
    c->off = (size_t)((c->msg * 7 + idx * 13) % 61) * 64;
    c->sent = 0;
    c->recvd = 0;
    c->t_send = now_ns();
    return pump_send(c);
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE WARMUP_S DURATION_S SERVER_PID\n", argv[0]);
        return 1;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconns = atoi(argv[3]), server_pid = atoi(argv[7]);
    long long lsize = atoll(argv[4]);
    double warmup = atof(argv[5]), duration = atof(argv[6]);
    if (port <= 0 || port > 65535 || nconns <= 0 || lsize <= 0 || warmup < 0 || duration <= 0) {
        fprintf(stderr, "bad arguments\n");
        return 1;
    }
    size = (size_t)lsize;
    unsigned char *scratch = NULL;
    if (posix_memalign((void **)&pat, 4096, size + PAT_EXTRA) != 0) pat = NULL;
    if (posix_memalign((void **)&scratch, 4096, READ_MAX) != 0) scratch = NULL;
    conn_t *conns = calloc((size_t)nconns, sizeof(conn_t));
    if (!pat || !scratch || !conns) { fprintf(stderr, "out of memory\n"); return 1; }
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    for (size_t i = 0; i < size + PAT_EXTRA; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        pat[i] = (unsigned char)(x >> 24);
    }

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "not an IPv4 address: %s\n", host); return 1; }
    ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fprintf(stderr, "connect %s:%d: %s\n", host, port, strerror(errno));
            return 1;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    for (int i = 0; i < nconns; i++) start_msg(&conns[i], (size_t)i);

    int64_t t0 = now_ns();
    int64_t w0 = t0 + (int64_t)(warmup * 1e9), w1 = w0 + (int64_t)(duration * 1e9);
    int in_window = 0;
    uint64_t msgs = 0, bytes = 0;
    double rtt_sum_ns = 0, rtt_min_ns = 1e18, rtt_max_ns = 0;
    long long su0 = 0, ss0 = 0, su1 = 0, ss1 = 0, rt0 = -1, rt1 = -1;
    struct rusage ru0, ru1;
    int64_t tw0 = 0, tw1 = 0;
    struct epoll_event evs[MAX_EVENTS];

    for (;;) {
        int64_t t = now_ns();
        if (!in_window && t >= w0) {
            in_window = 1;
            proc_times(server_pid, &su0, &ss0);
            rt0 = proc_runtime_ns(server_pid);
            getrusage(RUSAGE_SELF, &ru0);
            tw0 = now_ns();
        }
        if (t >= w1) break;
        int64_t next = in_window ? w1 : w0;
        int timeout_ms = (int)((next - t) / 1000000) + 1;
        int n = epoll_wait(ep, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fprintf(stderr, "epoll_wait: %s\n", strerror(errno));
            return 1;
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (c->fd < 0) continue;
            if ((evs[i].events & EPOLLOUT) && c->sent < size && pump_send(c) < 0) continue;
            if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            while (c->fd >= 0 && c->recvd < c->sent) {
                size_t want = c->sent - c->recvd;  /* never more than was sent */
                if (want > READ_MAX) want = READ_MAX;
                ssize_t r = recv(c->fd, scratch, want, 0);
                if (r < 0 && errno == EINTR) continue;
                if (r < 0 && errno == EAGAIN) break;
                if (r <= 0) {
                    if (r == 0) errors_eof++; else errors_io++;
                    fail_conn(c);
                    break;
                }
                if (memcmp(scratch, pat + c->off + c->recvd, (size_t)r) != 0) {
                    errors_mismatch++;
                    fail_conn(c);
                    break;
                }
                c->recvd += (size_t)r;
                if (c->recvd == size) {
                    int64_t done = now_ns();
                    if (in_window && done < w1) {
                        double rtt = (double)(done - c->t_send);
                        msgs++;
                        bytes += size;
                        rtt_sum_ns += rtt;
                        if (rtt < rtt_min_ns) rtt_min_ns = rtt;
                        if (rtt > rtt_max_ns) rtt_max_ns = rtt;
                    }
                    c->msg++;
                    start_msg(c, (size_t)(c - conns));
                    break; /* its echo is not there yet */
                }
            }
        }
    }
    proc_times(server_pid, &su1, &ss1);
    rt1 = proc_runtime_ns(server_pid);
    getrusage(RUSAGE_SELF, &ru1);
    tw1 = now_ns();
    int alive = 0;
    for (int i = 0; i < nconns; i++) {
        if (conns[i].fd >= 0) { alive++; fail_conn(&conns[i]); } /* RST: no TIME_WAIT left behind */
    }
    double tick = (double)sysconf(_SC_CLK_TCK);
    double el = (tw1 - tw0) / 1e9;
    printf("{\"msgs\": %llu, \"bytes\": %llu, \"elapsed_s\": %.6f, "
           "\"rtt_mean_us\": %.3f, \"rtt_min_us\": %.3f, \"rtt_max_us\": %.3f, "
           "\"server_user_s\": %.4f, \"server_sys_s\": %.4f, \"server_runtime_s\": %.6f, "
           "\"client_user_s\": %.4f, \"client_sys_s\": %.4f, "
           "\"errors\": {\"mismatch\": %llu, \"eof\": %llu, \"io\": %llu}, \"conns_alive\": %d}\n",
           (unsigned long long)msgs, (unsigned long long)bytes, el,
           msgs ? rtt_sum_ns / msgs / 1e3 : 0.0, msgs ? rtt_min_ns / 1e3 : 0.0, rtt_max_ns / 1e3,
           (su1 - su0) / tick, (ss1 - ss0) / tick, (rt0 >= 0 && rt1 >= 0) ? (rt1 - rt0) / 1e9 : -1.0,
           tv_s(ru1.ru_utime) - tv_s(ru0.ru_utime), tv_s(ru1.ru_stime) - tv_s(ru0.ru_stime),
           (unsigned long long)errors_mismatch, (unsigned long long)errors_eof,
           (unsigned long long)errors_io, alive);
    return 0;
}
