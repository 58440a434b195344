/*
 * ref_client.c: the minimal C epoll echo load client that sockbench's harness is measured against.
 *
 * Why it exists: the harness claims to be "as lean as native code".  This is
 * the native code: the least a closed-loop echo client can do.  C connections,
 * each with D messages of S bytes in flight; whenever whole messages come
 * back, the same number go out again in one write.  It does NOT verify bytes,
 * time messages or keep a histogram (the harness does all three), so any
 * difference in CPU per message is the price of those checks plus Cython.
 *
 * It measures a window after a warmup, like the harness: messages completed
 * inside [warmup, warmup + duration), and its own user and system CPU over
 * the same window (getrusage).  Output: one JSON line on stdout.
 *
 * Build: gcc -O2 -o ref_client bench/ref_client.c
 * Usage: ref_client HOST PORT CONNS SIZE DEPTH WARMUP_S DURATION_S
 *
 * It stays out of sockbench's normal runs; bench/vs_reference.py builds and
 * runs it next to the harness.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RBUF (256 * 1024)
#define MAX_EVENTS 512

struct conn {
    int fd;
    int want_out;
    int64_t owed;  /* bytes still to write */
    int64_t rx;    /* bytes received, modulo the message size */
};

static char *wbuf;
static size_t wbuf_len;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static void die(const char *what) {
    fprintf(stderr, "ref_client: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void set_out(int ep, struct conn *c, int idx, int on) {
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u64 = (uint64_t)idx};
    if (c->want_out != on) {
        c->want_out = on;
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

/* write what c owes, one write() per wbuf_len bytes; a short write waits for EPOLLOUT */
static int flush(int ep, struct conn *c, int idx) {
    while (c->owed > 0) {
        size_t n = c->owed < (int64_t)wbuf_len ? (size_t)c->owed : wbuf_len;
        ssize_t w = write(c->fd, wbuf, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            return -1;
        }
        c->owed -= w;
        if ((size_t)w < n) break;
    }
    set_out(ep, c, idx, c->owed > 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 8) {
        fprintf(stderr, "usage: %s HOST PORT CONNS SIZE DEPTH WARMUP_S DURATION_S\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), nconns = atoi(argv[3]);
    int64_t size = atoll(argv[4]), depth = atoll(argv[5]);
    double warmup = atof(argv[6]), duration = atof(argv[7]);
    if (port <= 0 || nconns <= 0 || size <= 0 || depth <= 0 || warmup < 0 || duration <= 0) {
        fprintf(stderr, "ref_client: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    wbuf_len = (size_t)(size * depth < RBUF ? size * depth : RBUF);
    wbuf = malloc(wbuf_len);
    char *rbuf = malloc(RBUF);
    struct conn *conns = calloc(nconns, sizeof(*conns));
    if (!wbuf || !rbuf || !conns) die("malloc");
    memset(wbuf, 'x', wbuf_len);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "ref_client: bad IPv4 address %s\n", host);
        return 2;
    }
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < nconns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("connect");
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    }

    int64_t start = now_ns();
    int64_t warm_end = start + (int64_t)(warmup * 1e9), end = warm_end + (int64_t)(duration * 1e9);
    int64_t msgs = 0, t0 = 0, t1;
    int started = 0;
    struct rusage ru0, ru1;
    struct epoll_event events[MAX_EVENTS];

    for (int i = 0; i < nconns; i++) {
        conns[i].owed = size * depth;
        if (flush(ep, &conns[i], i) < 0) die("write");
    }
    for (;;) {
        int64_t now = now_ns();
        if (!started && now >= warm_end) {
            getrusage(RUSAGE_SELF, &ru0);
            t0 = now;
            started = 1;
        }
        if (now >= end) break;
        int64_t until = started ? end : warm_end;
        int timeout = (int)((until - now + 999999) / 1000000);
        int n = epoll_wait(ep, events, MAX_EVENTS, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            int idx = (int)events[e].data.u64;
            struct conn *c = &conns[idx];
            if (events[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                ssize_t r = read(c->fd, rbuf, RBUF);
                if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
                    fprintf(stderr, "ref_client: connection %d closed\n", idx);
                    return 1;
                }
                if (r > 0) {
                    c->rx += r;
                    int64_t k = c->rx / size;
                    c->rx -= k * size;
                    if (k) {
                        if (started) msgs += k;
                        c->owed += k * size;
                        if (flush(ep, c, idx) < 0) die("write");
                    }
                }
            }
            if ((events[e].events & EPOLLOUT) && flush(ep, c, idx) < 0) die("write");
        }
    }
    getrusage(RUSAGE_SELF, &ru1);
    t1 = now_ns();
    if (!started) {
        ru0 = ru1;
        t0 = t1;
    }
    double user = tv(ru1.ru_utime) - tv(ru0.ru_utime), sys = tv(ru1.ru_stime) - tv(ru0.ru_stime);
    printf("{\"msgs\": %lld, \"msgs_per_s\": %.1f, \"user_s\": %.6f, \"sys_s\": %.6f, \"window_s\": %.6f}\n",
           (long long)msgs, msgs / duration, user, sys, (t1 - t0) / 1e9);
    return 0;
}
