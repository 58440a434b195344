/*
 * stopsig.h: the stop signal of a C loop: the servers' (ext/epoll_echo.pyx, ext/udp_echo.pyx) and the
 * load generators' (ext/loadgen.pyx, ext/udpgen.pyx, through ext/loadrun.pxd).
 *
 * A loop runs without the GIL, so a Python signal handler would never run
 * while it does.  Instead a C handler (async-signal-safe: one write(2), errno
 * preserved) bumps an eventfd that the loop watches in its epoll set like any
 * other descriptor; the loop returns when it becomes readable.  The previous
 * handlers are saved when the loop starts and restored when it ends.  The
 * eventfd the handler writes is a static of the including module, so each
 * server module allows one loop per process, as the handlers are
 * process-wide.  A load loop arms the handlers without an eventfd (fd -1):
 * it reads the flag the handler also sets once per pass (epoll_wait returns
 * EINTR when the signal lands), and takes it as "the window ends now".
 *
 * API:
 *   stopsig_running   1 while a loop of this module has the handlers armed with an eventfd
 *   stopsig_open      the eventfd, in an epoll set (EPOLLIN, data.fd = it): fd or -errno
 *   stopsig_arm       install the SIGTERM/SIGINT handlers that write to it, or only set the flag with fd -1
 *                     (saving the old handlers; the flag starts cleared)
 *   stopsig_disarm    restore the old handlers
 *   stopsig_requested 1 once a stop signal landed since stopsig_arm
 */
#ifndef SOCKBENCH_STOPSIG_H
#define SOCKBENCH_STOPSIG_H

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct {
    struct sigaction old_term;
    struct sigaction old_int;
} stopsig_t;

/* The eventfd that the handler writes; -1 when no loop runs (or the loop reads the flag only). */
static int stopsig_fd = -1;
/* Set by the handler, cleared by stopsig_arm. */
static volatile sig_atomic_t stopsig_seen = 0;

static void stopsig_on_signal(int signo) {
    int saved = errno;
    uint64_t one = 1;
    ssize_t r;
    (void)signo;
    stopsig_seen = 1;
    if (stopsig_fd >= 0) {
        r = write(stopsig_fd, &one, sizeof(one));
        (void)r;
    }
    errno = saved;
}

static inline int stopsig_running(void) {
    return stopsig_fd != -1;
}

static inline int stopsig_requested(void) {
    return stopsig_seen != 0;
}

static inline int stopsig_open(int epfd) {
    struct epoll_event ev;
    int err;
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    ev.events = EPOLLIN;
    ev.data.u64 = 0;
    ev.data.fd = fd;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

static inline void stopsig_arm(stopsig_t *s, int fd) {
    struct sigaction act;
    stopsig_seen = 0;
    stopsig_fd = fd;
    memset(&act, 0, sizeof(act));
    act.sa_handler = stopsig_on_signal;
    sigemptyset(&act.sa_mask);
    act.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &act, &s->old_term);
    sigaction(SIGINT, &act, &s->old_int);
}

static inline void stopsig_disarm(stopsig_t *s) {
    sigaction(SIGTERM, &s->old_term, NULL);
    sigaction(SIGINT, &s->old_int, NULL);
    stopsig_fd = -1;
}

#endif
