/* c_echo.c: a small echo server in C that sockbench did not write, for the --command tests.
 *
 * Build: cc -O2 -o c_echo c_echo.c
 * Run:   c_echo PORT   (0: a free port) -- prints the serve contract's ready line,
 *        {"event": "ready", "port": P, "pid": N}, then echoes on 127.0.0.1:P.
 *
 * One epoll loop, non-blocking sockets, TCP_NODELAY.  Memory is bounded: a
 * connection holds one 64 KiB buffer, and is not read while its echo is
 * unsent.  A half-close flushes what is pending, then closes.  SIGTERM and
 * SIGINT end the loop and the process exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 65536
#define MAXEV 256

struct conn {
    int fd;
    size_t len, off; /* bytes held, bytes of them sent */
    int eof;         /* the peer half-closed */
    char buf[BUF];
};

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static void arm(int ep, struct conn *c) {
    struct epoll_event ev = {.events = (c->len > c->off ? EPOLLOUT : (c->eof ? 0 : EPOLLIN)), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void drop(struct conn *c) {
    close(c->fd);
    free(c);
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("c_echo: bind/listen");
        return 1;
    }
    socklen_t al = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &al);
    int ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    printf("{\"event\": \"ready\", \"port\": %d, \"pid\": %d}\n", ntohs(a.sin_port), (int)getpid());
    fflush(stdout);
    struct epoll_event evs[MAXEV];
    while (!stop) {
        int n = epoll_wait(ep, evs, MAXEV, 1000);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (c == NULL) { /* the listener */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) { close(fd); continue; }
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (c->len > c->off) { /* writable: send what is pending */
                ssize_t w = send(c->fd, c->buf + c->off, c->len - c->off, 0);
                if (w < 0 && errno != EAGAIN) { drop(c); continue; }
                if (w > 0) c->off += (size_t)w;
                if (c->off == c->len) {
                    c->off = c->len = 0;
                    if (c->eof) { drop(c); continue; }
                }
                arm(ep, c);
                continue;
            }
            ssize_t r = recv(c->fd, c->buf, BUF, 0);
            if (r == 0) { drop(c); continue; } /* half-close with nothing pending: done */
            if (r < 0) {
                if (errno != EAGAIN) drop(c);
                continue;
            }
            c->len = (size_t)r;
            ssize_t w = send(c->fd, c->buf, c->len, 0); /* try to send now before waiting */
            if (w < 0 && errno != EAGAIN) { drop(c); continue; }
            if (w > 0) c->off = (size_t)w;
            if (c->off == c->len) c->off = c->len = 0;
            arm(ep, c);
        }
    }
    return 0;
}
