/*
 * ref_client.c: the reference C load client of the calibration tools (bench/calibrate/).
 *
 * Why it exists: the calibration tools check the harness and the servers
 * against something outside them.  A Python client costs more per message
 * than the fastest servers, and the harness is what is being checked, so the
 * reference is this: the least a closed-loop echo client can do, in one epoll
 * loop of plain C, while still checking every byte.  One client, with the
 * wire protocol as a switch, serves every tool:
 *
 *   vs_reference.py  the harness's msgs/s and CPU per message against this client's
 *   server_cpu.py    each server's CPU per message, with the server's /proc
 *                    counters read here at the exact edges of the window (--server-pid)
 *   framed.py        frame/json msgs/s and server CPU (--client c), with the
 *                    window's opening announced on stdout (--marks)
 *
 * Workload: CONNS connections, each keeping DEPTH messages of SIZE payload
 * bytes in flight (closed loop: every message answered is replaced at once,
 * all the replacements of one read in one send).  The payload is a stream per
 * connection: payload byte k of connection c is pattern[(k + c * STRIDE) %
 * PERIOD], so message m carries the stream's bytes [m * SIZE, (m + 1) * SIZE)
 * and any loss, reordering, duplication or cross-talk is a mismatch.  PERIOD
 * and STRIDE are multiples of 64 and the pattern is page-aligned: a copy from
 * or to an address 16 bytes off a 32-byte boundary costs the kernel markedly
 * more on some machines, so a 64-byte multiple SIZE always sends from an
 * aligned address.  Requests are built with ext/wire.h, the C code the
 * servers and the load generator use: raw is the payload alone; frame is a
 * 4-byte length + payload; json is the tutorial client's header + payload,
 * with a request-id of always ID_DIGITS digits, so that every answer of a run
 * has the same length.  Every answer is checked byte for byte as it streams in
 * against the one the protocol prescribes (raw and frame: the request itself;
 * json: the canonical answer header, built by wire.h from the request's, with
 * the same content).  Short writes keep only a position and wait for EPOLLOUT;
 * a read asks for no more than the answers still owed.
 *
 * The window: messages completed inside [WARMUP, WARMUP + DURATION) after the
 * connections are up, with their round-trip times, and this process's user and
 * system CPU over the same interval (getrusage).  With --server-pid the
 * server's utime/stime (ticks) and its threads' exact runtime are read from
 * /proc at the same two instants (ext/procfs.h, the C twin of
 * sockbench/procfs.py), so messages and CPU cover the same interval.
 *
 * Errors: a wrong byte, a server that closes, or a failed send/recv closes
 * that connection (with a reset) and is counted by kind; the others go on.
 * With --stall S, no answer at all for S seconds stops the run, and a
 * connection that waited S seconds for an answer at the end is an error.
 * With --hold, after an error the connections stay open until stdin is closed
 * (at most 10 s), so that the caller can see where the unanswered bytes wait.
 *
 * TLS (built with -DREF_TLS, linked with OpenSSL: common.py builds that binary apart, where OpenSSL's
 * headers are found): --tls makes every connection a TLS client, its handshake done (blocking) before
 * the loop, then non-blocking SSL_write_ex/SSL_read_ex on the socket with the settings of the
 * harness's own TLS (ext/tlsconf.pxd: the version pinned, --tls-cipher, no certificate verification,
 * read-ahead, partial writes); records OpenSSL read ahead are read before the loop waits again.  raw only.
 * It is the C client the harness's TLS load is checked against (bench/calibrate/tls_reference.py).
 *
 * Usage: ref_client [--protocol raw|frame|json] [--conns N] [--size BYTES] [--depth D]
 *                   [--warmup S] [--duration S] [--server-pid PID] [--marks] [--stall S] [--hold]
 *                   [--tls [--tls-version 1.2|1.3] [--tls-cipher NAME]] HOST PORT
 * Output: with --marks, "window" when the window opens; then one JSON line.
 * Exit 0 once that line is printed (its "errors" say whether the run is
 * valid), 1 if the run could not start (one line on stderr), 2 for bad arguments.
 * Bounded: it ends at WARMUP + DURATION after connecting, plus the hold.
 *
 * Build (bench/calibrate/common.py does, into a cache): gcc -O2 -Wall -I ext -o ref_client ref_client.c
 * (with TLS: gcc -O2 -Wall -DREF_TLS -I ext -o ref_client_tls ref_client.c -lssl -lcrypto)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "procfs.h"
#include "protocols.h"
#include "wire.h"

#ifdef REF_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#endif

#define PERIOD (64 * 1021)          /* the pattern's period: 64-byte aligned, 1021 prime */
#define STRIDE (64 * 61)            /* connection c starts c * STRIDE into the pattern */
#define READ_MAX (256 * 1024)       /* the most one recv asks for */
#define WBUF (256 * 1024)           /* frame/json: requests are serialised here for one send */
#define HDR_MAX 512                 /* the longest request or answer header */
#define MAX_EVENTS 512
#define MAX_CONNS 100000
#define MAX_TIDS 4096               /* server threads sampled for their exact runtime */
#define ID_BASE 1000000000LL        /* json: request-id = ID_BASE + message index */
#define ID_DIGITS 10
#define HOLD_S 10

enum { E_MISMATCH, E_PROTOCOL, E_EOF, E_IO, E_STALL, N_ERR };
static const char *const ERROR_KINDS[N_ERR] = {"mismatch", "protocol", "eof", "io", "stall"};

typedef struct {
    int proto, conns, depth, marks, hold, server_pid;
    int64_t size;
    double warmup, duration, stall;
    const char *host;
    int port;
    int tls;                    /* --tls (a binary built with REF_TLS only) */
    const char *tls_version, *tls_cipher;
} config_t;

typedef struct {
    int fd;             /* -1 once failed */
    int want_out;       /* registered for EPOLLOUT */
    int64_t pat;        /* (c * STRIDE) % PERIOD */
    int64_t queued;     /* messages handed to the writer */
    int64_t done;       /* messages answered whole and verified */
    int64_t sent;       /* request bytes written */
    int64_t recvd;      /* answer bytes received and verified */
    int64_t *ring;      /* when message m was queued, at ring[m % depth] */
    int64_t last;       /* when it last completed a message (or started) */
#ifdef REF_TLS
    SSL *ssl;           /* --tls: the connection's TLS, its handshake done */
#endif
} conn_t;

typedef struct {
    config_t cfg;
    int ep, alive;
    int64_t hlen, alen;         /* request and answer header lengths (0 for raw) */
    int64_t req_len, ans_len;   /* a whole request and answer, header + payload */
    int64_t window;             /* the longest contiguous pattern slice */
    unsigned char *pat, *rbuf, *wbuf;
    unsigned char req_tpl[HDR_MAX], ans_tpl[HDR_MAX];
    int64_t req_id_at, ans_id_at; /* json: where the request-id digits start in each header */
    conn_t *conns;
    /* the window */
    int64_t t0, w0, w1, t_open, t_close, last_progress;
    int in_window;
    struct rusage ru[2];
    procfs_sample_t srv[2];
    /* counters */
    int64_t msgs, bytes, wire_bytes, total_msgs;
    double rtt_sum_ns, rtt_min_ns, rtt_max_ns;
    int64_t errors[N_ERR];
    char error[200];            /* the first error, in words */
    int stopped, stuck;
#ifdef REF_TLS
    SSL_CTX *ctx;
#endif
} client_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double tv_s(struct timeval tv) { return tv.tv_sec + tv.tv_usec / 1e6; }

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }


/* --- arguments ------------------------------------------------------------------------------ */

static void usage(const char *why) {
    fprintf(stderr,
            "ref_client: %s\nusage: ref_client [--protocol raw|frame|json] [--conns N] [--size BYTES] [--depth D] "
            "[--warmup S] [--duration S] [--server-pid PID] [--marks] [--stall S] [--hold] HOST PORT\n",
            why);
    exit(2);
}

static double number(const char *s, const char *what, double lo, double hi) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || v < lo || v > hi) {
        char why[160];
        snprintf(why, sizeof why, "bad %s %s (%g..%g)", what, s, lo, hi);
        usage(why);
    }
    return v;
}

static config_t parse_args(int argc, char **argv) {
    static const struct option opts[] = {
        {"protocol", required_argument, 0, 'p'}, {"conns", required_argument, 0, 'c'},
        {"size", required_argument, 0, 's'},     {"depth", required_argument, 0, 'd'},
        {"warmup", required_argument, 0, 'w'},   {"duration", required_argument, 0, 't'},
        {"server-pid", required_argument, 0, 'P'}, {"marks", no_argument, 0, 'm'},
        {"stall", required_argument, 0, 'S'},    {"hold", no_argument, 0, 'H'},
        {"tls", no_argument, 0, 'T'},            {"tls-version", required_argument, 0, 'V'},
        {"tls-cipher", required_argument, 0, 'C'},
        {0, 0, 0, 0},
    };
    config_t c = {.proto = PROTO_RAW, .conns = 1, .depth = 1, .size = 64, .warmup = 1.0, .duration = 5.0};
    int o;
    opterr = 0;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case 'p':
            c.proto = proto_index(optarg);
            if (c.proto < 0) usage("--protocol takes raw, frame or json");
            break;
        case 'c': c.conns = (int)number(optarg, "--conns", 1, MAX_CONNS); break;
        case 's': c.size = (int64_t)number(optarg, "--size", 1, 1 << 30); break;
        case 'd': c.depth = (int)number(optarg, "--depth", 1, 1 << 20); break;
        case 'w': c.warmup = number(optarg, "--warmup", 0, 3600); break;
        case 't': c.duration = number(optarg, "--duration", 0.001, 3600); break;
        case 'P': c.server_pid = (int)number(optarg, "--server-pid", 1, 1 << 30); break;
        case 'm': c.marks = 1; break;
        case 'S': c.stall = number(optarg, "--stall", 0, 3600); break;
        case 'H': c.hold = 1; break;
        case 'T': c.tls = 1; break;
        case 'V': c.tls_version = optarg; break;
        case 'C': c.tls_cipher = optarg; break;
        default: usage("unknown option");
        }
    }
#ifndef REF_TLS
    if (c.tls) usage("--tls: this binary was built without OpenSSL (common.py builds the TLS one with -DREF_TLS)");
#endif
    if (c.tls && c.proto != PROTO_RAW) usage("--tls speaks raw only");
    if (c.tls_version && strcmp(c.tls_version, "1.2") != 0 && strcmp(c.tls_version, "1.3") != 0)
        usage("--tls-version takes 1.2 or 1.3");
    if (argc - optind != 2) usage("give HOST and PORT");
    c.host = argv[optind];
    c.port = (int)number(argv[optind + 1], "PORT", 1, 65535);
    if (c.proto != PROTO_RAW && c.size > (int64_t)PROTO_DEFAULT_MAX_MESSAGE)
        usage("frame and json payloads are limited to the servers' default --max-message");
    return c;
}

static void fatal(const char *what) {
    fprintf(stderr, "ref_client: %s: %s\n", what, strerror(errno));
    exit(1);
}


/* --- messages: the pattern, and the headers wire.h builds --------------------------------------- */

/* PERIOD pseudo-random bytes, repeated so that any slice of up to `window` bytes is contiguous. */
static unsigned char *make_pattern(int64_t window) {
    unsigned char *p;
    uint64_t x = 0x9E3779B97F4A7C15ULL;
    if (posix_memalign((void **)&p, 4096, (size_t)(PERIOD + window)) != 0) return NULL;
    for (int64_t i = 0; i < PERIOD; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
    for (int64_t i = PERIOD; i < PERIOD + window; i++) p[i] = p[i - PERIOD];
    return p;
}

static void put_digits(unsigned char *p, int64_t v) {
    for (int i = ID_DIGITS - 1; i >= 0; i--) {
        p[i] = (unsigned char)('0' + v % 10);
        v /= 10;
    }
}

/* The request and answer header templates; the json ones get message m's id patched in. */
static void make_headers(client_t *C) {
    int64_t size = C->cfg.size;
    wire_header_t h;
    if (C->cfg.proto == PROTO_RAW) {
        C->hlen = C->alen = 0;
    } else if (C->cfg.proto == PROTO_FRAME) {
        for (int i = 0; i < 4; i++) C->req_tpl[i] = (unsigned char)(size >> (24 - 8 * i));
        memcpy(C->ans_tpl, C->req_tpl, 4);
        C->hlen = C->alen = 4;
    } else {
        C->hlen = wire_json_request_header((uint64_t)size, ID_BASE, C->req_tpl, HDR_MAX);
        if (C->hlen < 0 || wire_json_parse_header(C->req_tpl + WIRE_JSON_PREFIX, (size_t)C->hlen - WIRE_JSON_PREFIX,
                                                  PROTO_DEFAULT_MAX_MESSAGE, &h) < 0) {
            fprintf(stderr, "ref_client: wire.h rejects its own request header\n");
            exit(1);
        }
        C->alen = wire_json_response_header(C->req_tpl + WIRE_JSON_PREFIX, &h, (uint64_t)size, C->ans_tpl, HDR_MAX);
        /* both end with "request-id":<ID_DIGITS digits>} */
        C->req_id_at = C->hlen - 1 - ID_DIGITS;
        C->ans_id_at = C->alen - 1 - ID_DIGITS;
    }
    C->req_len = C->hlen + size;
    C->ans_len = C->alen + size;
}

static const unsigned char *request_header(client_t *C, int64_t m, unsigned char *tmp) {
    if (C->cfg.proto != PROTO_JSON) return C->req_tpl;
    memcpy(tmp, C->req_tpl, (size_t)C->hlen);
    put_digits(tmp + C->req_id_at, ID_BASE + m);
    return tmp;
}

static const unsigned char *answer_header(client_t *C, int64_t m, unsigned char *tmp) {
    if (C->cfg.proto != PROTO_JSON) return C->ans_tpl;
    memcpy(tmp, C->ans_tpl, (size_t)C->alen);
    put_digits(tmp + C->ans_id_at, ID_BASE + m);
    return tmp;
}

/* Where payload byte k of connection c lies in the pattern (contiguous for `window` bytes). */
static const unsigned char *payload_at(client_t *C, conn_t *c, int64_t k) {
    return C->pat + (k + c->pat) % PERIOD;
}


/* --- connections: errors, writes -------------------------------------------------------------- */

/* Count an error of this kind; the first one's reason (printf-style) is kept for the report. */
static void record_error(client_t *C, int kind, const char *fmt, ...) {
    va_list ap;
    C->errors[kind]++;
    if (C->error[0]) return;
    va_start(ap, fmt);
    vsnprintf(C->error, sizeof C->error, fmt, ap);
    va_end(ap);
}

/* Close c with a reset (no TIME_WAIT left behind). */
static void drop(client_t *C, conn_t *c) {
    struct linger lg = {1, 0};
    if (c->fd < 0) return;
#ifdef REF_TLS
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
#endif
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(c->fd);
    c->fd = -1;
    C->alive--;
}

/* Connection c failed: count it, and close it; the others go on. */
static void fail(client_t *C, conn_t *c, int kind, const char *why, const char *detail) {
    record_error(C, kind, "connection %d: %s%s", (int)(c - C->conns), why, detail);
    drop(C, c);
}

static void want_out(client_t *C, conn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.u32 = (uint32_t)(c - C->conns)};
    epoll_ctl(C->ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

/* frame/json: the request bytes c owes from its position c->sent, serialised into out[:cap]. */
static int64_t serialize(client_t *C, conn_t *c, unsigned char *out, int64_t cap) {
    unsigned char tmp[HDR_MAX];
    int64_t o = 0, q = c->sent, owed = c->queued * C->req_len;
    while (q < owed && o < cap) {
        int64_t m = q / C->req_len, off = q % C->req_len, take;
        if (off < C->hlen) {
            take = min64(min64(C->hlen - off, cap - o), owed - q);
            memcpy(out + o, request_header(C, m, tmp) + off, (size_t)take);
        } else {
            int64_t poff = off - C->hlen;
            take = min64(min64(C->cfg.size - poff, cap - o), C->window);
            memcpy(out + o, payload_at(C, c, m * C->cfg.size + poff), (size_t)take);
        }
        o += take;
        q += take;
    }
    return o;
}

/* Write what c owes; a short write keeps the position and waits for EPOLLOUT.  0, or -1 if c failed. */
static int flush(client_t *C, conn_t *c) {
    int64_t owed = c->queued * C->req_len;
    while (c->sent < owed) {
        const unsigned char *p;
        int64_t n;
        if (C->hlen == 0) { /* raw: straight from the pattern, no copy */
            p = payload_at(C, c, c->sent);
            n = min64(owed - c->sent, C->window);
        } else {
            p = C->wbuf;
            n = serialize(C, c, C->wbuf, WBUF);
        }
        ssize_t w;
#ifdef REF_TLS
        if (c->ssl) {
            size_t took = 0;
            if (!SSL_write_ex(c->ssl, p, (size_t)n, &took)) {
                int err = SSL_get_error(c->ssl, 0);
                if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) break;
                ERR_clear_error();
                fail(C, c, E_IO, "SSL_write_ex failed", "");
                return -1;
            }
            c->sent += (int64_t)took;
            continue; /* partial writes: one record at a time, until OpenSSL wants the socket */
        }
#endif
        w = send(c->fd, p, (size_t)n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) break;
            fail(C, c, E_IO, "send: ", strerror(errno));
            return -1;
        }
        c->sent += w;
        if (w < n) break;
    }
    want_out(C, c, c->sent < owed);
    return 0;
}

static void queue(client_t *C, conn_t *c, int64_t k, int64_t now) {
    for (int64_t i = 0; i < k; i++) c->ring[(c->queued + i) % C->cfg.depth] = now;
    c->queued += k;
}


/* --- connections: answers in ------------------------------------------------------------------ */

/* Check p[:n], the next answer bytes of c, against the prescribed ones: -1 if right, else the error kind. */
static int verify(client_t *C, conn_t *c, const unsigned char *p, int64_t n) {
    unsigned char tmp[HDR_MAX];
    int64_t a = c->recvd;
    if (C->alen == 0) { /* raw: the answers are the payload stream itself */
        for (int64_t take; n > 0; p += take, n -= take, a += take) {
            take = min64(n, C->window);
            if (memcmp(p, payload_at(C, c, a), (size_t)take) != 0) return E_MISMATCH;
        }
        return -1;
    }
    for (int64_t take; n > 0; p += take, n -= take, a += take) {
        int64_t m = a / C->ans_len, off = a % C->ans_len;
        if (off < C->alen) {
            take = min64(C->alen - off, n);
            if (memcmp(p, answer_header(C, m, tmp) + off, (size_t)take) != 0) return E_PROTOCOL;
        } else {
            int64_t poff = off - C->alen;
            take = min64(min64(C->cfg.size - poff, n), C->window);
            if (memcmp(p, payload_at(C, c, m * C->cfg.size + poff), (size_t)take) != 0) return E_MISMATCH;
        }
    }
    return -1;
}

/* Answer bytes c may receive now: raw echoes bytes as they come, frame/json answer whole requests. */
static int64_t owed_answers(client_t *C, conn_t *c) {
    if (C->alen == 0) return c->sent - c->recvd;
    return (c->sent / C->req_len) * C->ans_len - c->recvd;
}

/* Count the messages c completed, time them, and replace them (one send for all). */
static void completed(client_t *C, conn_t *c, int64_t now) {
    int64_t k = c->recvd / C->ans_len - c->done;
    if (k <= 0) return;
    int counted = C->in_window && now < C->w1;
    for (int64_t m = c->done; m < c->done + k && counted; m++) {
        double rtt = (double)(now - c->ring[m % C->cfg.depth]);
        C->rtt_sum_ns += rtt;
        if (rtt < C->rtt_min_ns) C->rtt_min_ns = rtt;
        if (rtt > C->rtt_max_ns) C->rtt_max_ns = rtt;
    }
    if (counted) {
        C->msgs += k;
        C->bytes += k * C->cfg.size;
        C->wire_bytes += k * C->ans_len;
    }
    C->total_msgs += k;
    c->done += k;
    c->last = C->last_progress = now;
    queue(C, c, k, now);
    flush(C, c);
}

/* Read until nothing is there or a message completed (its replacement's answer is not there yet). */
static void on_readable(client_t *C, conn_t *c) {
    while (c->fd >= 0) {
        int64_t want = owed_answers(C, c);
        if (want <= 0) want = READ_MAX; /* nothing owed: whatever comes is an error, or EOF */
        ssize_t r;
#ifdef REF_TLS
        if (c->ssl) {
            size_t got = 0;
            if (!SSL_read_ex(c->ssl, C->rbuf, (size_t)min64(want, READ_MAX), &got)) {
                int err = SSL_get_error(c->ssl, 0);
                if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return;
                ERR_clear_error();
                if (err == SSL_ERROR_ZERO_RETURN) fail(C, c, E_EOF, "the server closed it", "");
                else fail(C, c, E_IO, "SSL_read_ex failed", "");
                return;
            }
            r = (ssize_t)got;
        } else
#endif
        r = recv(c->fd, C->rbuf, (size_t)min64(want, READ_MAX), 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN) fail(C, c, E_IO, "recv: ", strerror(errno));
            return;
        }
        if (r == 0) {
            fail(C, c, E_EOF, "the server closed it", "");
            return;
        }
        if (r > owed_answers(C, c)) {
            fail(C, c, C->alen ? E_PROTOCOL : E_MISMATCH, "bytes that answer nothing sent", "");
            return;
        }
        int kind = verify(C, c, C->rbuf, r);
        if (kind >= 0) {
            fail(C, c, kind, "a wrong answer, in its ", kind == E_PROTOCOL ? "header" : "content");
            return;
        }
        c->recvd += r;
        int64_t before = c->done;
        completed(C, c, now_ns());
#ifdef REF_TLS
        /* records OpenSSL read ahead are invisible to epoll: read them now */
        if (c->fd >= 0 && c->ssl && SSL_has_pending(c->ssl)) continue;
#endif
        if (c->done != before) return;
    }
}


/* --- the window ------------------------------------------------------------------------------- */

static void sample_server(client_t *C, int edge) {
    if (C->cfg.server_pid) procfs_sample(C->cfg.server_pid, &C->srv[edge]);
}

static void window_opens(client_t *C) {
    C->in_window = 1;
    if (C->cfg.marks) {
        fputs("window\n", stdout);
        fflush(stdout);
    }
    sample_server(C, 0);
    getrusage(RUSAGE_SELF, &C->ru[0]);
    C->t_open = now_ns();
}

static void window_closes(client_t *C) {
    if (C->in_window) sample_server(C, 1);
    getrusage(RUSAGE_SELF, &C->ru[1]);
    C->t_close = now_ns();
    if (!C->in_window) { /* it never opened: an empty window */
        C->ru[0] = C->ru[1];
        C->t_open = C->t_close;
    }
}

/* --stall: no answer anywhere for that long stops the run.  1 if it does. */
static int stalled(client_t *C, int64_t now) {
    int64_t limit = (int64_t)(C->cfg.stall * 1e9);
    if (limit <= 0 || now - C->last_progress <= limit) return 0;
    int waiting = 0;
    for (int i = 0; i < C->cfg.conns; i++) waiting += C->conns[i].fd >= 0 && C->conns[i].queued > C->conns[i].done;
    if (!waiting) return 0;
    record_error(C, E_STALL, "stalled: no answer for %.1f s, %d connections waiting", C->cfg.stall, waiting);
    return 1;
}

/* --stall, at the end: connections that waited that long for an answer. */
static void count_stuck(client_t *C, int64_t now) {
    int64_t limit = (int64_t)(C->cfg.stall * 1e9);
    if (limit <= 0) return;
    for (int i = 0; i < C->cfg.conns; i++) {
        conn_t *c = &C->conns[i];
        C->stuck += c->fd >= 0 && c->queued > c->done && now - c->last > limit;
    }
    if (C->stuck && !C->error[0])
        record_error(C, E_STALL, "%d connections got no answer for %.1f s", C->stuck, C->cfg.stall);
}


/* --- setup, the loop, the report ----------------------------------------------------------------- */

#ifdef REF_TLS
/* The client SSL_CTX, as ext/tlsconf.pxd makes the harness's: version pinned, cipher, no verification, read-ahead,
 * partial writes from a buffer that may move. */
static SSL_CTX *tls_context(const config_t *cfg) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    int v = cfg->tls_version && strcmp(cfg->tls_version, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    if (!ctx || !SSL_CTX_set_min_proto_version(ctx, v) || !SSL_CTX_set_max_proto_version(ctx, v)) {
        fprintf(stderr, "ref_client: cannot make a TLS context\n");
        exit(1);
    }
    if (cfg->tls_cipher && !(v == TLS1_3_VERSION ? SSL_CTX_set_ciphersuites(ctx, cfg->tls_cipher)
                                                 : SSL_CTX_set_cipher_list(ctx, cfg->tls_cipher)))
        usage("OpenSSL refuses --tls-cipher");
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    return ctx;
}

/* A blocking client handshake on connection c, before it is made non-blocking. */
static void tls_handshake(client_t *C, conn_t *c) {
    c->ssl = SSL_new(C->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_connect(c->ssl) != 1) {
        char buf[256];
        ERR_error_string_n(ERR_get_error(), buf, sizeof buf);
        fprintf(stderr, "ref_client: TLS handshake with %s:%d failed: %s\n", C->cfg.host, C->cfg.port, buf);
        exit(1);
    }
}
#endif

static void setup(client_t *C) {
    config_t *cfg = &C->cfg;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    if (inet_pton(AF_INET, cfg->host, &sa.sin_addr) != 1) usage("HOST must be an IPv4 address");
    signal(SIGPIPE, SIG_IGN);
    make_headers(C);
    C->window = cfg->size > READ_MAX ? cfg->size : READ_MAX;
    C->pat = make_pattern(C->window);
    if (posix_memalign((void **)&C->rbuf, 4096, READ_MAX) != 0) C->rbuf = NULL;
    C->wbuf = malloc(WBUF);
    C->conns = calloc((size_t)cfg->conns, sizeof(conn_t));
    for (int e = 0; e < 2 && cfg->server_pid; e++) {
        C->srv[e].cap = MAX_TIDS;
        C->srv[e].tids = calloc(MAX_TIDS, sizeof(int64_t));
        C->srv[e].runtime_ns = calloc(MAX_TIDS, sizeof(int64_t));
        if (!C->srv[e].tids || !C->srv[e].runtime_ns) fatal("calloc");
    }
    if (!C->pat || !C->rbuf || !C->wbuf || !C->conns) fatal("malloc");
    C->ep = epoll_create1(EPOLL_CLOEXEC);
    if (C->ep < 0) fatal("epoll_create1");
#ifdef REF_TLS
    if (cfg->tls) C->ctx = tls_context(cfg);
#endif
    for (int i = 0; i < cfg->conns; i++) {
        conn_t *c = &C->conns[i];
        int one = 1;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) fatal("socket");
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            fprintf(stderr, "ref_client: connect %s:%d: %s\n", cfg->host, cfg->port, strerror(errno));
            exit(1);
        }
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#ifdef REF_TLS
        if (cfg->tls) tls_handshake(C, c);
#endif
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        c->pat = ((int64_t)i * STRIDE) % PERIOD;
        c->ring = calloc((size_t)cfg->depth, sizeof(int64_t));
        if (!c->ring) fatal("calloc");
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(C->ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) fatal("epoll_ctl");
        C->alive++;
    }
    C->rtt_min_ns = 1e18;
}

static void run(client_t *C) {
    struct epoll_event evs[MAX_EVENTS];
    C->t0 = C->last_progress = now_ns();
    C->w0 = C->t0 + (int64_t)(C->cfg.warmup * 1e9);
    C->w1 = C->w0 + (int64_t)(C->cfg.duration * 1e9);
    for (int i = 0; i < C->cfg.conns; i++) {
        C->conns[i].last = C->t0;
        queue(C, &C->conns[i], C->cfg.depth, C->t0);
        flush(C, &C->conns[i]);
    }
    for (;;) {
        int64_t now = now_ns();
        if (!C->in_window && now >= C->w0) window_opens(C);
        if (now >= C->w1 || C->alive == 0 || stalled(C, now)) break;
        int64_t until = C->in_window ? C->w1 : C->w0;
        int timeout_ms = (int)((until - now + 999999) / 1000000);
        if (C->cfg.stall > 0 && timeout_ms > 50) timeout_ms = 50; /* look for a stall now and then */
        int n = epoll_wait(C->ep, evs, MAX_EVENTS, timeout_ms);
        if (n < 0) {
            if (errno == EINTR) continue;
            fatal("epoll_wait");
        }
        for (int e = 0; e < n; e++) {
            conn_t *c = &C->conns[evs[e].data.u32];
            if (c->fd >= 0 && (evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(C, c);
            if (c->fd >= 0 && (evs[e].events & EPOLLOUT)) flush(C, c);
        }
    }
    window_closes(C);
    count_stuck(C, C->t_close);
}

static void print_server(client_t *C) {
    procfs_sample_t *a = &C->srv[0], *b = &C->srv[1];
    if (!C->cfg.server_pid) {
        fputs("null", stdout);
        return;
    }
    if (!a->ok || !b->ok) {
        fputs("{\"user_s\": null, \"sys_s\": null, \"runtime_s\": null}", stdout);
        return;
    }
    double tick = (double)sysconf(_SC_CLK_TCK);
    int64_t r0 = procfs_sample_runtime_ns(a), r1 = procfs_sample_runtime_ns(b);
    printf("{\"user_s\": %.4f, \"sys_s\": %.4f, \"runtime_s\": ", (b->utime - a->utime) / tick,
           (b->stime - a->stime) / tick);
    if (r0 >= 0 && r1 >= 0) printf("%.6f}", (r1 - r0) / 1e9);
    else fputs("null}", stdout);
}

static void report(client_t *C) {
    printf("{\"protocol\": \"%s\", \"conns\": %d, \"size\": %lld, \"depth\": %d, "
           "\"msgs\": %lld, \"bytes\": %lld, \"wire_bytes\": %lld, \"total_msgs\": %lld, \"window_s\": %.6f, "
           "\"rtt_mean_us\": %.3f, \"rtt_min_us\": %.3f, \"rtt_max_us\": %.3f, "
           "\"user_s\": %.6f, \"sys_s\": %.6f, \"server\": ",
           proto_name(C->cfg.proto), C->cfg.conns, (long long)C->cfg.size, C->cfg.depth,
           (long long)C->msgs, (long long)C->bytes, (long long)C->wire_bytes, (long long)C->total_msgs,
           (C->t_close - C->t_open) / 1e9,
           C->msgs ? C->rtt_sum_ns / C->msgs / 1e3 : 0.0, C->msgs ? C->rtt_min_ns / 1e3 : 0.0, C->rtt_max_ns / 1e3,
           tv_s(C->ru[1].ru_utime) - tv_s(C->ru[0].ru_utime), tv_s(C->ru[1].ru_stime) - tv_s(C->ru[0].ru_stime));
    print_server(C);
    fputs(", \"errors\": {", stdout);
    for (int k = 0; k < N_ERR; k++) printf("%s\"%s\": %lld", k ? ", " : "", ERROR_KINDS[k], (long long)C->errors[k]);
    printf("}, \"error\": \"%s\", \"conns_alive\": %d, \"stuck\": %d, \"tls\": ", C->error, C->alive, C->stuck);
#ifdef REF_TLS
    if (C->cfg.tls && C->conns[0].ssl)
        printf("{\"version\": \"%s\", \"cipher\": \"%s\"}}\n", SSL_get_version(C->conns[0].ssl),
               SSL_CIPHER_get_name(SSL_get_current_cipher(C->conns[0].ssl)));
    else
#endif
        fputs("null}\n", stdout);
    fflush(stdout);
}

/* --hold: after an error, keep the connections as they are until stdin closes (at most HOLD_S). */
static void hold(client_t *C) {
    int64_t any = 0;
    for (int k = 0; k < N_ERR; k++) any += C->errors[k];
    if (!C->cfg.hold || !any) return;
    struct pollfd pfd = {.fd = 0, .events = POLLIN};
    char sink[64];
    int64_t until = now_ns() + HOLD_S * 1000000000LL;
    while (now_ns() < until && poll(&pfd, 1, 1000) >= 0) {
        if ((pfd.revents & (POLLIN | POLLHUP)) && read(0, sink, sizeof sink) <= 0) break;
    }
}

int main(int argc, char **argv) {
    static client_t C;
    C.cfg = parse_args(argc, argv);
    setup(&C);
    run(&C);
    report(&C);
    hold(&C);
    for (int i = 0; i < C.cfg.conns; i++) drop(&C, &C.conns[i]);
    return 0;
}
