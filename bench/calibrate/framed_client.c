/* framed_client.c: the load client of bench/framed_cpu.py, for --protocol frame|json.
 *
 * C, so that the client is not the bottleneck it measures: one epoll loop,
 * CONNS connections, each keeping DEPTH requests in flight (closed loop with
 * pipelining: every answer received is replaced by a new request, written in
 * one send per read).  Requests are built from a per-connection template in
 * which only the sequence number changes; every answer is checked byte for
 * byte against the answer the protocol prescribes (frame: the request itself;
 * json: the canonical answer header with the request's content-length and
 * request-id, then the same content).  The request-id always has 9 digits, so
 * every message of a run has the same size and the answer can be compared
 * with memcmp.
 *
 * Usage: framed_client HOST PORT frame|json CONNS DEPTH SIZE WARMUP_S DURATION_S
 * Prints "window\n" when the measured window opens, then, when it closes, one
 * JSON line: msgs (answers verified in the window), seconds, errors, and the
 * client's own user/sys CPU in the window (getrusage).  Exits 0, or 1 if any
 * answer was wrong, a connection failed, or no answer at all came for 1 s (a
 * stall, or one connection got nothing for 1 s); the JSON line says which,
 * and then it keeps its connections open until its stdin is closed (at most
 * 10 s), so that the caller can see where the unanswered bytes wait.
 * Bounded: it stops by itself after WARMUP_S + DURATION_S.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ID_DIGITS 9
#define ID_BASE 100000000ULL /* request-ids run from here, always 9 digits */
#define MAX_CONNS 10000
#define STALL_S 1.0 /* no answer at all for this long: the run is invalid (a stall, not a measurement) */

typedef struct {
    int fd;
    uint64_t sent;     /* requests sent */
    uint64_t answered; /* answers verified */
    unsigned char *in; /* partial answer */
    size_t in_len;
    unsigned char *out; /* unsent requests */
    size_t out_len, out_cap;
    double last; /* when it last got an answer (or started) */
} conn_t;

static int g_json;
static size_t g_size, g_req_len, g_ans_len, g_req_id_at, g_ans_id_at;
static unsigned char *g_req_tpl, *g_ans_tpl; /* per-run templates; payload is patched per conn */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double cpu_s(const struct timeval *tv) { return tv->tv_sec + tv->tv_usec / 1e6; }

static void put_digits(unsigned char *p, uint64_t v, int n) {
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (unsigned char)('0' + v % 10);
        v /= 10;
    }
}

/* The request (and the expected answer) number ``seq`` of connection ``ci``. */
static void build_request(unsigned char *dst, int ci, uint64_t seq) {
    memcpy(dst, g_req_tpl, g_req_len);
    unsigned char *payload = dst + g_req_len - g_size;
    if (g_size >= 12) {
        memcpy(payload, &seq, 8);
        memcpy(payload + 8, &ci, 4);
    }
    if (g_json) put_digits(dst + g_req_id_at, ID_BASE + seq, ID_DIGITS);
}

static int check_answer(const unsigned char *ans, int ci, uint64_t seq, unsigned char *scratch) {
    if (!g_json) {
        build_request(scratch, ci, seq);
        return memcmp(ans, scratch, g_req_len) == 0;
    }
    memcpy(scratch, g_ans_tpl, g_ans_len - g_size);
    put_digits(scratch + g_ans_id_at, ID_BASE + seq, ID_DIGITS);
    build_request(scratch + g_ans_len, ci, seq); /* its payload is the expected content */
    memcpy(scratch + g_ans_len - g_size, scratch + g_ans_len + g_req_len - g_size, g_size);
    return memcmp(ans, scratch, g_ans_len) == 0;
}

static void setup_templates(void) {
    char hdr[512], ans[512];
    int hl, al;
    if (g_json) {
        hl = snprintf(hdr, sizeof hdr,
                      "{\"byteorder\":\"little\",\"content-type\":\"binary/custom-client-binary-type\","
                      "\"content-encoding\":\"binary\",\"content-length\":%zu,\"request-id\":%0*d}",
                      g_size, ID_DIGITS, 0);
        al = snprintf(ans, sizeof ans,
                      "{\"content-type\":\"binary/custom-client-binary-type\",\"content-encoding\":\"binary\","
                      "\"content-length\":%zu,\"request-id\":%0*d}",
                      g_size, ID_DIGITS, 0);
        g_req_len = 2 + (size_t)hl + g_size;
        g_ans_len = 2 + (size_t)al + g_size;
        g_req_id_at = 2 + (size_t)hl - 1 - ID_DIGITS;
        g_ans_id_at = 2 + (size_t)al - 1 - ID_DIGITS;
        g_req_tpl = calloc(1, g_req_len);
        g_ans_tpl = calloc(1, g_ans_len);
        g_req_tpl[0] = (unsigned char)(hl >> 8);
        g_req_tpl[1] = (unsigned char)hl;
        memcpy(g_req_tpl + 2, hdr, (size_t)hl);
        g_ans_tpl[0] = (unsigned char)(al >> 8);
        g_ans_tpl[1] = (unsigned char)al;
        memcpy(g_ans_tpl + 2, ans, (size_t)al);
    } else {
        g_req_len = g_ans_len = 4 + g_size;
        g_req_tpl = calloc(1, g_req_len);
        g_req_tpl[0] = (unsigned char)(g_size >> 24);
        g_req_tpl[1] = (unsigned char)(g_size >> 16);
        g_req_tpl[2] = (unsigned char)(g_size >> 8);
        g_req_tpl[3] = (unsigned char)g_size;
    }
    unsigned char *payload = g_req_tpl + g_req_len - g_size;
    for (size_t i = 0; i < g_size; i++) payload[i] = (unsigned char)(i * 131 + 7);
}

static int flush_out(conn_t *c) {
    while (c->out_len) {
        ssize_t w = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            return -1;
        }
        memmove(c->out, c->out + w, c->out_len - (size_t)w);
        c->out_len -= (size_t)w;
    }
    return 0;
}

static int queue_requests(conn_t *c, int ci, int k) {
    size_t need = c->out_len + (size_t)k * g_req_len;
    if (need > c->out_cap) {
        c->out = realloc(c->out, need);
        if (!c->out) return -1;
        c->out_cap = need;
    }
    for (int i = 0; i < k; i++) {
        build_request(c->out + c->out_len, ci, c->sent++);
        c->out_len += g_req_len;
    }
    return flush_out(c);
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT frame|json CONNS DEPTH SIZE WARMUP_S DURATION_S\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    g_json = strcmp(argv[3], "json") == 0;
    int conns = atoi(argv[4]), depth = atoi(argv[5]);
    g_size = (size_t)atol(argv[6]);
    double warmup = atof(argv[7]), duration = atof(argv[8]);
    if ((!g_json && strcmp(argv[3], "frame") != 0) || conns < 1 || conns > MAX_CONNS || depth < 1 || g_size > 65536) {
        fprintf(stderr, "framed_client: bad arguments\n");
        return 2;
    }
    setup_templates();
    size_t inbuf_cap = (size_t)depth * g_ans_len + 65536;
    unsigned char *scratch = malloc(g_ans_len + g_req_len + 16);
    conn_t *cs = calloc((size_t)conns, sizeof(conn_t));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            printf("{\"error\": \"connect: %s\"}\n", strerror(errno));
            return 1;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
            printf("{\"error\": \"fcntl: %s\"}\n", strerror(errno));
            return 1;
        }
        cs[i].fd = fd;
        cs[i].in = malloc(inbuf_cap);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    for (int i = 0; i < conns; i++) {
        if (queue_requests(&cs[i], i, depth) < 0) {
            printf("{\"error\": \"send: %s\"}\n", strerror(errno));
            return 1;
        }
        if (cs[i].out_len) {
            struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)i};
            epoll_ctl(ep, EPOLL_CTL_MOD, cs[i].fd, &ev);
        }
    }
    struct epoll_event evs[512];
    double t0 = now_s(), t_start = t0 + warmup, t_end = t_start + duration, t_win0 = 0;
    for (int i = 0; i < conns; i++) cs[i].last = t0;
    int in_window = 0;
    uint64_t total = 0, at_start = 0, errors = 0, total_seen = 0;
    double last_progress = t0;
    static char why_buf[160];
    const char *why = "";
    struct rusage ru0, ru1;
    for (;;) {
        double t = now_s();
        if (!in_window && t >= t_start) {
            in_window = 1;
            t_win0 = t;
            at_start = total;
            getrusage(RUSAGE_SELF, &ru0);
            fputs("window\n", stdout);
            fflush(stdout);
        }
        if (t >= t_end) break;
        if (total != total_seen) {
            total_seen = total;
            last_progress = t;
        } else if (t - last_progress > STALL_S) {
            int waiting = 0;
            for (int i = 0; i < conns; i++) waiting += cs[i].sent != cs[i].answered;
            snprintf(why_buf, sizeof why_buf, "stalled: no answer for %.1f s, %d connections waiting", STALL_S, waiting);
            why = why_buf;
            errors++;
            break;
        }
        int n = epoll_wait(ep, evs, 512, 50);
        if (n < 0) {
            if (errno == EINTR) continue;
            why = "epoll_wait failed";
            errors++;
            break;
        }
        for (int e = 0; e < n; e++) {
            int ci = (int)evs[e].data.u32;
            conn_t *c = &cs[ci];
            if (evs[e].events & EPOLLOUT) {
                if (flush_out(c) < 0) { why = "send failed"; errors++; goto done; }
                if (c->out_len == 0) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)ci};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            ssize_t r = recv(c->fd, c->in + c->in_len, inbuf_cap - c->in_len, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EINTR) continue;
                why = "recv failed";
                errors++;
                goto done;
            }
            if (r == 0) { why = "the server closed a connection"; errors++; goto done; }
            c->in_len += (size_t)r;
            size_t pos = 0;
            int k = 0;
            while (c->in_len - pos >= g_ans_len) {
                if (!check_answer(c->in + pos, ci, c->answered, scratch)) {
                    why = "a wrong answer";
                    errors++;
                    goto done;
                }
                c->answered++;
                pos += g_ans_len;
                k++;
            }
            if (pos) {
                memmove(c->in, c->in + pos, c->in_len - pos);
                c->in_len -= pos;
            }
            total += (uint64_t)k;
            if (k) {
                c->last = t;
                if (queue_requests(c, ci, k) < 0) { why = "send failed"; errors++; goto done; }
                if (c->out_len) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)ci};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
        }
    }
done:;
    double t_win1 = now_s();
    int stuck = 0;
    for (int i = 0; i < conns; i++) stuck += cs[i].sent != cs[i].answered && t_win1 - cs[i].last > STALL_S;
    if (stuck && !errors) {
        snprintf(why_buf, sizeof why_buf, "%d connections got no answer for %.1f s", stuck, STALL_S);
        why = why_buf;
        errors++;
    }
    getrusage(RUSAGE_SELF, &ru1);
    if (!in_window) {
        t_win0 = t_win1;
        at_start = total;
        ru0 = ru1;
    }
    printf("{\"msgs\": %llu, \"seconds\": %.6f, \"errors\": %llu, \"error\": \"%s\", "
           "\"user_s\": %.6f, \"sys_s\": %.6f, \"total_msgs\": %llu, \"stuck\": %d}\n",
           (unsigned long long)(total - at_start), t_win1 - t_win0, (unsigned long long)errors, why,
           cpu_s(&ru1.ru_utime) - cpu_s(&ru0.ru_utime), cpu_s(&ru1.ru_stime) - cpu_s(&ru0.ru_stime),
           (unsigned long long)total, stuck);
    fflush(stdout);
    if (errors) {
        /* keep the connections as they are until the parent has looked at their
           queues (it closes our stdin), at most 10 s */
        struct pollfd pfd = {.fd = 0, .events = POLLIN};
        char sink[64];
        double until = now_s() + 10;
        while (now_s() < until && poll(&pfd, 1, 1000) >= 0) {
            if ((pfd.revents & (POLLIN | POLLHUP)) && read(0, sink, sizeof sink) <= 0) break;
        }
        return 1;
    }
    return 0;
}
