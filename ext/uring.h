/*
 * uring.h: the part of io_uring that sockbench's io_uring loops use, over the raw system calls.
 *
 * Why not liburing: a fresh machine rarely has its development package (and
 * distributions ship versions years apart), while every kernel that has
 * io_uring ships its UAPI header, <linux/io_uring.h>.  What the loops need
 * is small: one ring (mmap'd submission and completion queues), a provided
 * buffer ring, and io_uring_enter.  So it is written here, header-only and
 * static inline like wire.h, on the same memory-ordering rules as liburing
 * (the tails and heads the kernel shares are read with acquire and written
 * with release).  Each including module compiles its own copy.
 *
 * The ring is set up with the cheapest completion mode the kernel takes:
 * SINGLE_ISSUER | DEFER_TASKRUN (6.1: completions run only inside
 * io_uring_enter, in the one thread that submits, so a batch's work is done
 * in one system call), else COOP_TASKRUN (5.19), else plain; SUBMIT_ALL and
 * a completion queue four times the submission queue in each.  A kernel
 * refusing a flag answers EINVAL, and the next set is tried.
 *
 * API (the loops' side; uring__* are helpers):
 *   uring_init / uring_exit        set up a ring (0 or -errno) / tear it down
 *   uring_sqe                      the next free submission entry, zeroed, or NULL when the queue is full
 *   uring_pending                  entries prepared but not yet taken by the kernel
 *   uring_enter                    publish the prepared entries; submit them and wait for wait_nr
 *                                  completions or the timeout (ns; < 0: none) in ONE system call
 *   uring_cqe / uring_cq_advance   the oldest unread completion (NULL: none) / mark n read
 *   uring_pbuf_init / _exit        a provided buffer ring of nbufs buffers of bufsize bytes (group bgid)
 *   uring_pbuf_put / _publish      give buffer bid back (local) / make the given-back buffers visible
 *   uring_probe                    what this kernel offers, from a throwaway ring (see URING_HAVE_*)
 *   uring_prep_*                   fill an entry for one operation
 */
#ifndef SOCKBENCH_URING_H
#define SOCKBENCH_URING_H

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <linux/io_uring.h>

/* Constants newer than some UAPI headers: the values are the kernel ABI's. */
#ifndef IORING_SETUP_SUBMIT_ALL
#define IORING_SETUP_SUBMIT_ALL (1U << 7)
#endif
#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_RECV_MULTISHOT
#define IORING_RECV_MULTISHOT (1U << 1)
#endif
#ifndef IORING_ACCEPT_MULTISHOT
#define IORING_ACCEPT_MULTISHOT (1U << 0)
#endif
#ifndef IORING_REGISTER_PBUF_RING
#define IORING_REGISTER_PBUF_RING 22
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

/* uring_probe's answer: what the kernel offers (a bit set), or -errno when there is no ring at all */
enum {
    URING_HAVE_RING = 1 << 0,          /* io_uring_setup works */
    URING_HAVE_PBUF_RING = 1 << 1,     /* provided buffer rings (5.19), and with them multishot accept */
    URING_HAVE_MSHOT_RECV = 1 << 2,    /* multishot receive (6.0) */
    URING_HAVE_DEFER_TASKRUN = 1 << 3, /* SINGLE_ISSUER | DEFER_TASKRUN (6.1) */
    URING_HAVE_EXT_ARG = 1 << 4,       /* io_uring_enter takes a timeout (5.11) */
    URING_HAVE_QUIET_SEND = 1 << 5     /* uring_prep_send_quiet behaves as it says (checked, not assumed) */
};

typedef struct {
    int fd;
    int enter_fd;              /* what io_uring_enter is given: the registered ring's index, else fd */
    unsigned enter_flags;      /* IORING_ENTER_REGISTERED_RING when the ring fd is registered */
    unsigned setup_flags;      /* the flags the kernel took */
    unsigned features;         /* io_uring_params.features */
    /* submission queue */
    unsigned *sq_khead;
    unsigned *sq_ktail;
    unsigned *sq_kflags;
    unsigned *sq_array;
    unsigned sq_mask;
    unsigned sq_entries;
    unsigned sq_tail;          /* local: entries handed out so far */
    struct io_uring_sqe *sqes;
    /* completion queue */
    unsigned *cq_khead;
    unsigned *cq_ktail;
    unsigned cq_mask;
    unsigned cq_entries;
    struct io_uring_cqe *cqes;
    /* the mappings, for uring_exit */
    void *sq_ring;
    size_t sq_ring_sz;
    void *cq_ring;
    size_t cq_ring_sz;
    size_t sqes_sz;
} uring_t;

typedef struct {
    struct io_uring_buf_ring *br;
    size_t br_sz;
    char *base;                /* nbufs * bufsize bytes; buffer bid at base + bid * bufsize */
    unsigned nbufs;            /* a power of two, at most 32768 */
    unsigned bufsize;
    unsigned mask;
    unsigned short tail;       /* local: buffers given so far (published by uring_pbuf_publish) */
    unsigned short bgid;
} uring_pbuf_t;

static inline int uring__setup(unsigned entries, struct io_uring_params *p) {
    long r = syscall(__NR_io_uring_setup, entries, p);
    return r < 0 ? -errno : (int)r;
}

static inline int uring__register(int fd, unsigned op, void *arg, unsigned nr) {
    long r = syscall(__NR_io_uring_register, fd, op, arg, nr);
    return r < 0 ? -errno : (int)r;
}

static inline void uring_exit(uring_t *u) {
    if (u->sqes != NULL && u->sqes != MAP_FAILED)
        munmap(u->sqes, u->sqes_sz);
    if (u->cq_ring != NULL && u->cq_ring != MAP_FAILED && u->cq_ring != u->sq_ring)
        munmap(u->cq_ring, u->cq_ring_sz);
    if (u->sq_ring != NULL && u->sq_ring != MAP_FAILED)
        munmap(u->sq_ring, u->sq_ring_sz);
    if (u->fd >= 0)
        close(u->fd);
    memset(u, 0, sizeof(*u));
    u->fd = -1;
}

/* Set up a ring of `entries` submission entries (a power of two) and 4x as many completions.
 * `flags_allowed` limits the setup flags tried (~0u: all).  0 or -errno; on error `u` holds nothing. */
static inline int uring_init(uring_t *u, unsigned entries, unsigned flags_allowed) {
    static const unsigned tries[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL,
        IORING_SETUP_SUBMIT_ALL,
        0,
    };
    struct io_uring_params p;
    int fd = -EINVAL, err;
    unsigned i;
    memset(u, 0, sizeof(*u));
    u->fd = -1;
    for (i = 0; i < sizeof(tries) / sizeof(tries[0]); i++) {
        if ((tries[i] & flags_allowed) != tries[i])
            continue;
        memset(&p, 0, sizeof(p));
        p.flags = tries[i] | IORING_SETUP_CQSIZE;
        p.cq_entries = entries * 4;
        fd = uring__setup(entries, &p);
        if (fd != -EINVAL)
            break;
    }
    if (fd < 0)
        return fd;
    u->fd = fd;
    u->setup_flags = p.flags;
    u->features = p.features;
    u->sq_ring_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    u->cq_ring_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (u->cq_ring_sz > u->sq_ring_sz)
            u->sq_ring_sz = u->cq_ring_sz;
        u->cq_ring_sz = u->sq_ring_sz;
    }
    u->sq_ring = mmap(NULL, u->sq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (u->sq_ring == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        u->cq_ring = u->sq_ring;
    } else {
        u->cq_ring = mmap(NULL, u->cq_ring_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
                          IORING_OFF_CQ_RING);
        if (u->cq_ring == MAP_FAILED)
            goto fail;
    }
    u->sqes_sz = p.sq_entries * sizeof(struct io_uring_sqe);
    u->sqes = (struct io_uring_sqe *)mmap(NULL, u->sqes_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                          fd, IORING_OFF_SQES);
    if (u->sqes == MAP_FAILED)
        goto fail;
    u->sq_khead = (unsigned *)((char *)u->sq_ring + p.sq_off.head);
    u->sq_ktail = (unsigned *)((char *)u->sq_ring + p.sq_off.tail);
    u->sq_kflags = (unsigned *)((char *)u->sq_ring + p.sq_off.flags);
    u->sq_array = (unsigned *)((char *)u->sq_ring + p.sq_off.array);
    u->sq_mask = *(unsigned *)((char *)u->sq_ring + p.sq_off.ring_mask);
    u->sq_entries = p.sq_entries;
    u->cq_khead = (unsigned *)((char *)u->cq_ring + p.cq_off.head);
    u->cq_ktail = (unsigned *)((char *)u->cq_ring + p.cq_off.tail);
    u->cq_mask = *(unsigned *)((char *)u->cq_ring + p.cq_off.ring_mask);
    u->cq_entries = p.cq_entries;
    u->cqes = (struct io_uring_cqe *)((char *)u->cq_ring + p.cq_off.cqes);
    /* entries are handed out in ring order, so the indirection array is the identity, once */
    for (i = 0; i < p.sq_entries; i++)
        u->sq_array[i] = i;
    u->sq_tail = *u->sq_khead;
    /* a registered ring fd (5.18) spares io_uring_enter looking the descriptor up on every call */
    u->enter_fd = fd;
    {
        struct io_uring_rsrc_update up;
        memset(&up, 0, sizeof(up));
        up.offset = (unsigned)-1;
        up.data = (uint64_t)fd;
        if (uring__register(fd, IORING_REGISTER_RING_FDS, &up, 1) == 1) {
            u->enter_fd = (int)up.offset;
            u->enter_flags = IORING_ENTER_REGISTERED_RING;
        }
    }
    return 0;
fail:
    err = -errno;
    uring_exit(u);
    return err;
}

static inline unsigned uring_pending(const uring_t *u) {
    return u->sq_tail - __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
}

/* Where the kernel's submission head is: every entry at a position before it has been submitted, and an
 * entry submitted with MSG_DONTWAIT has also completed (see uring_prep_send_quiet). */
static inline unsigned uring_sq_head(const uring_t *u) {
    return __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE);
}

/* 1 while the kernel holds completions it could not fit in the completion queue (they come at the next
 * io_uring_enter): a send's failure may be among them, so no send is taken as complete meanwhile. */
static inline int uring_cq_overflowing(const uring_t *u) {
    return (__atomic_load_n(u->sq_kflags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW) != 0;
}

/* 1 when the entry handed out at position `pos` (uring_sqe_pos) has been submitted. */
static inline int uring_submitted(const uring_t *u, unsigned pos) {
    return (int)(pos - uring_sq_head(u)) < 0;
}

/* The position of the entry uring_sqe handed out last. */
static inline unsigned uring_sqe_pos(const uring_t *u) {
    return u->sq_tail - 1;
}

static inline struct io_uring_sqe *uring_sqe(uring_t *u) {
    struct io_uring_sqe *sqe;
    if (u->sq_tail - __atomic_load_n(u->sq_khead, __ATOMIC_ACQUIRE) >= u->sq_entries)
        return NULL;
    sqe = &u->sqes[u->sq_tail & u->sq_mask];
    u->sq_tail++;
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

/* Publish the prepared entries, then one io_uring_enter: submit them, and wait until `wait_nr`
 * completions are there or `timeout_ns` (>= 0; needs URING_HAVE_EXT_ARG) has passed.
 * Returns what io_uring_enter returned (>= 0) or -errno (-ETIME: the timeout, -EINTR: a signal). */
static inline int uring_enter(uring_t *u, unsigned wait_nr, long long timeout_ns) {
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    unsigned flags = 0;
    void *argp = NULL;
    size_t argsz = 0;
    long r;
    __atomic_store_n(u->sq_ktail, u->sq_tail, __ATOMIC_RELEASE);
    unsigned to_submit = uring_pending(u);
    if (wait_nr > 0 || (u->setup_flags & IORING_SETUP_DEFER_TASKRUN))
        flags |= IORING_ENTER_GETEVENTS;  /* with DEFER_TASKRUN completions are reaped only by GETEVENTS */
    if (timeout_ns >= 0 && wait_nr > 0) {
        memset(&arg, 0, sizeof(arg));
        ts.tv_sec = timeout_ns / 1000000000LL;
        ts.tv_nsec = timeout_ns % 1000000000LL;
        arg.ts = (uint64_t)(uintptr_t)&ts;
        flags |= IORING_ENTER_EXT_ARG;
        argp = &arg;
        argsz = sizeof(arg);
    }
    r = syscall(__NR_io_uring_enter, u->enter_fd, to_submit, wait_nr, flags | u->enter_flags, argp, argsz);
    return r < 0 ? -errno : (int)r;
}

static inline struct io_uring_cqe *uring_cqe(uring_t *u, unsigned *head) {
    unsigned h = *u->cq_khead;
    if (h == __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE))
        return NULL;
    *head = h;
    return &u->cqes[h & u->cq_mask];
}

static inline void uring_cq_advance(uring_t *u, unsigned n) {
    __atomic_store_n(u->cq_khead, *u->cq_khead + n, __ATOMIC_RELEASE);
}

/* The completions there now: the loop reads them from `head` to `head + n` (masked), then advances by n. */
static inline unsigned uring_cq_ready(uring_t *u, unsigned *head) {
    *head = *u->cq_khead;
    return __atomic_load_n(u->cq_ktail, __ATOMIC_ACQUIRE) - *head;
}

static inline struct io_uring_cqe *uring_cqe_at(uring_t *u, unsigned i) {
    return &u->cqes[i & u->cq_mask];
}


/* --- provided buffer ring ------------------------------------------------------------------- */

static inline void uring_pbuf_put(uring_pbuf_t *b, unsigned bid) {
    struct io_uring_buf *e = &b->br->bufs[b->tail & b->mask];
    e->addr = (uint64_t)(uintptr_t)(b->base + (size_t)bid * b->bufsize);
    e->len = b->bufsize;
    e->bid = (unsigned short)bid;
    b->tail++;
}

static inline void uring_pbuf_publish(uring_pbuf_t *b) {
    __atomic_store_n(&b->br->tail, b->tail, __ATOMIC_RELEASE);
}

static inline char *uring_pbuf_addr(const uring_pbuf_t *b, unsigned bid) {
    return b->base + (size_t)bid * b->bufsize;
}

static inline void uring_pbuf_exit(uring_pbuf_t *b) {
    if (b->br != NULL && (void *)b->br != MAP_FAILED)
        munmap(b->br, b->br_sz);
    if (b->base != NULL && (void *)b->base != MAP_FAILED)
        munmap(b->base, (size_t)b->nbufs * b->bufsize);
    memset(b, 0, sizeof(*b));
}

/* Register a ring of `nbufs` (a power of two, <= 32768) buffers of `bufsize` bytes as group `bgid`,
 * every buffer given to the kernel.  0 or -errno (-EINVAL: the kernel has no buffer rings). */
static inline int uring_pbuf_init(uring_t *u, uring_pbuf_t *b, unsigned nbufs, unsigned bufsize, unsigned short bgid) {
    struct io_uring_buf_reg reg;
    long page = sysconf(_SC_PAGESIZE);
    int rc;
    unsigned i;
    memset(b, 0, sizeof(*b));
    if (nbufs == 0 || nbufs > 32768 || (nbufs & (nbufs - 1)) != 0)
        return -EINVAL;
    b->nbufs = nbufs;
    b->bufsize = bufsize;
    b->mask = nbufs - 1;
    b->bgid = bgid;
    b->br_sz = ((size_t)nbufs * sizeof(struct io_uring_buf) + (size_t)page - 1) & ~((size_t)page - 1);
    b->br = (struct io_uring_buf_ring *)mmap(NULL, b->br_sz, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    /* page-aligned buffers: the kernel's copy into a misaligned buffer costs more (see epoll_echo._setup) */
    b->base = (char *)mmap(NULL, (size_t)nbufs * bufsize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if ((void *)b->br == MAP_FAILED || (void *)b->base == MAP_FAILED) {
        rc = -errno;
        uring_pbuf_exit(b);
        return rc;
    }
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)b->br;
    reg.ring_entries = nbufs;
    reg.bgid = bgid;
    rc = uring__register(u->fd, IORING_REGISTER_PBUF_RING, &reg, 1);
    if (rc < 0) {
        uring_pbuf_exit(b);
        return rc;
    }
    b->br->tail = 0;
    for (i = 0; i < nbufs; i++)
        uring_pbuf_put(b, i);
    uring_pbuf_publish(b);
    return 0;
}


/* --- preparing entries ----------------------------------------------------------------------- */

static inline void uring_prep_accept_multishot(struct io_uring_sqe *s, int fd, uint64_t ud) {
    s->opcode = IORING_OP_ACCEPT;
    s->fd = fd;
    s->ioprio = IORING_ACCEPT_MULTISHOT;
    s->accept_flags = SOCK_CLOEXEC;
    s->user_data = ud;
}

/* A receive into a buffer of group `bgid`; `multishot`: armed until it ends (no IORING_CQE_F_MORE). */
static inline void uring_prep_recv_select(struct io_uring_sqe *s, int fd, unsigned short bgid, int multishot,
                                          uint64_t ud) {
    s->opcode = IORING_OP_RECV;
    s->fd = fd;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = bgid;
    s->ioprio = multishot ? IORING_RECV_MULTISHOT : 0;
    s->user_data = ud;
}

static inline void uring_prep_send(struct io_uring_sqe *s, int fd, const void *p, unsigned len, int msg_flags,
                                   uint64_t ud) {
    s->opcode = IORING_OP_SEND;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)p;
    s->len = len;
    s->msg_flags = (unsigned)msg_flags;
    s->user_data = ud;
}

/* A send that completes while it is submitted and says nothing when it sent everything.
 *
 * MSG_DONTWAIT makes the kernel fail it with -EAGAIN instead of waiting for room (REQ_F_NOWAIT), so it
 * is done, one way or the other, when io_uring_enter returns from submitting it; MSG_WAITALL makes a
 * short send a failure whose completion carries the bytes that went (io_sendrecv_fail), and
 * IOSQE_CQE_SKIP_SUCCESS drops the completion of one that sent everything.  So the loop learns of a
 * send only when it needs to act (short, -EAGAIN, an error), and a wait for completions is never
 * woken by sends: an echo costs one completion (its receive), not two.  The loop counts a send whose
 * position the kernel's submission head passed without a completion as complete (uring_submitted).
 * uring_probe checks the kernel behaves so (URING_HAVE_QUIET_SEND). */
static inline void uring_prep_send_quiet(struct io_uring_sqe *s, int fd, const void *p, unsigned len, uint64_t ud) {
    uring_prep_send(s, fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_WAITALL, ud);
    s->flags |= IOSQE_CQE_SKIP_SUCCESS;
}

static inline void uring_prep_poll(struct io_uring_sqe *s, int fd, unsigned events, uint64_t ud) {
    s->opcode = IORING_OP_POLL_ADD;
    s->fd = fd;
    s->poll32_events = events;
    s->user_data = ud;
}

static inline void uring_prep_cancel(struct io_uring_sqe *s, uint64_t target, uint64_t ud) {
    s->opcode = IORING_OP_ASYNC_CANCEL;
    s->fd = -1;
    s->addr = target;
    s->user_data = ud;
}

static inline void uring_prep_connect(struct io_uring_sqe *s, int fd, const struct sockaddr *addr, socklen_t len,
                                      uint64_t ud) {
    s->opcode = IORING_OP_CONNECT;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)addr;
    s->off = len;
    s->user_data = ud;
}


/* --- what this kernel offers ----------------------------------------------------------------- */

/* On a socket pair with a small send buffer: a send that fits says nothing, one that does not fit
 * completes short with the bytes that went, and one with no room at all completes with -EAGAIN. */
static inline int uring__quiet_send_works(uring_t *u) {
    static char big[1 << 18];
    int sv[2], sz = 4096, ok = 0, seen = 0, rc;
    unsigned head, n, i;
    struct io_uring_sqe *s;
    struct io_uring_cqe *c;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return 0;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    if ((s = uring_sqe(u)) == NULL)
        goto out;
    uring_prep_send_quiet(s, sv[0], "x", 1, 11);
    if ((s = uring_sqe(u)) == NULL)
        goto out;
    uring_prep_send_quiet(s, sv[0], big, sizeof(big), 12);
    if ((s = uring_sqe(u)) == NULL)
        goto out;
    uring_prep_send_quiet(s, sv[0], big, 64, 13);
    rc = uring_enter(u, 0, -1);
    if (rc != 3 || uring_pending(u) != 0)
        goto out;
    n = uring_cq_ready(u, &head);
    for (i = 0; i < n; i++) {
        c = uring_cqe_at(u, head + i);
        if (c->user_data == 11)
            seen |= 1;  /* must not be there */
        else if (c->user_data == 12 && c->res > 1 && c->res < (int)sizeof(big))
            seen |= 2;
        else if (c->user_data == 13 && c->res == -EAGAIN)
            seen |= 4;
    }
    uring_cq_advance(u, n);
    ok = seen == 6;
out:
    close(sv[0]);
    close(sv[1]);
    return ok;
}

/* A throwaway ring answers: URING_HAVE_* bits, or -errno when io_uring_setup itself is refused
 * (-ENOSYS: no io_uring; -EPERM: kernel.io_uring_disabled, a seccomp filter, a security module).
 * Multishot receive has no probe bit: one is armed on a socket pair with a byte waiting, and a
 * kernel without it answers -EINVAL. */
static inline int uring_probe(void) {
    uring_t u;
    uring_pbuf_t b;
    struct io_uring_sqe *s;
    struct io_uring_cqe *c;
    unsigned head;
    int sv[2];
    int have, rc;
    memset(&b, 0, sizeof(b));
    rc = uring_init(&u, 8, ~0u);
    if (rc < 0)
        return rc;
    have = URING_HAVE_RING;
    if (u.setup_flags & IORING_SETUP_DEFER_TASKRUN)
        have |= URING_HAVE_DEFER_TASKRUN;
    if (u.features & IORING_FEAT_EXT_ARG)
        have |= URING_HAVE_EXT_ARG;
    if (uring_pbuf_init(&u, &b, 2, 64, 0) == 0) {
        have |= URING_HAVE_PBUF_RING;
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0) {
            if (write(sv[1], "x", 1) == 1 && (s = uring_sqe(&u)) != NULL) {
                uring_prep_recv_select(s, sv[0], 0, 1, 1);
                if (uring_enter(&u, 1, 1000000000LL) >= 0 && (c = uring_cqe(&u, &head)) != NULL) {
                    if (c->res == 1 && (c->flags & IORING_CQE_F_MORE))
                        have |= URING_HAVE_MSHOT_RECV;
                    uring_cq_advance(&u, 1);
                }
            }
            close(sv[0]);
            close(sv[1]);
        }
        if (uring__quiet_send_works(&u))
            have |= URING_HAVE_QUIET_SEND;
    }
    uring_exit(&u);        /* first: closing the ring unregisters the buffer ring ... */
    uring_pbuf_exit(&b);   /* ... whose memory goes next (all zero if it was never set up) */
    return have;
}

#endif /* SOCKBENCH_URING_H */
