# The C declarations of ext/uring.h: io_uring over the raw system calls (the header says why not liburing).
#
# The io_uring loops (ext/uring_echo.pyx, ext/uringgen.pyx) and the probe
# (ext/uringprobe.pyx) cimport these; the kernel's own structs and constants
# come from <linux/io_uring.h> through the header.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t

from posix cimport sockaddr, socklen_t


cdef extern from "uring.h" nogil:
    struct io_uring_sqe:
        uint8_t opcode
        uint8_t flags
        uint64_t user_data

    struct io_uring_cqe:
        uint64_t user_data
        int32_t res
        uint32_t flags

    ctypedef struct uring_t:
        int fd
        unsigned enter_flags
        unsigned setup_flags
        unsigned features
        unsigned sq_entries
        unsigned cq_entries

    ctypedef struct uring_pbuf_t:
        char* base
        unsigned nbufs
        unsigned bufsize
        unsigned short bgid

    enum:
        URING_HAVE_RING
        URING_HAVE_PBUF_RING
        URING_HAVE_MSHOT_RECV
        URING_HAVE_DEFER_TASKRUN
        URING_HAVE_EXT_ARG
        URING_HAVE_QUIET_SEND

        IORING_CQE_F_BUFFER
        IORING_CQE_F_MORE
        IORING_CQE_BUFFER_SHIFT
        IOSQE_CQE_SKIP_SUCCESS
        IORING_SETUP_DEFER_TASKRUN
        IORING_SETUP_COOP_TASKRUN
        IORING_SETUP_SINGLE_ISSUER

    int uring_init(uring_t* u, unsigned entries, unsigned flags_allowed)
    void uring_exit(uring_t* u)
    unsigned uring_pending(const uring_t* u)
    io_uring_sqe* uring_sqe(uring_t* u)
    unsigned uring_sqe_pos(const uring_t* u)
    unsigned uring_sq_head(const uring_t* u)
    int uring_submitted(const uring_t* u, unsigned pos)
    int uring_cq_overflowing(const uring_t* u)
    int uring_enter(uring_t* u, unsigned wait_nr, long long timeout_ns)
    unsigned uring_cq_ready(uring_t* u, unsigned* head)
    io_uring_cqe* uring_cqe_at(uring_t* u, unsigned i)
    void uring_cq_advance(uring_t* u, unsigned n)

    int uring_pbuf_init(uring_t* u, uring_pbuf_t* b, unsigned nbufs, unsigned bufsize, unsigned short bgid)
    void uring_pbuf_exit(uring_pbuf_t* b)
    void uring_pbuf_put(uring_pbuf_t* b, unsigned bid)
    void uring_pbuf_publish(uring_pbuf_t* b)
    char* uring_pbuf_addr(const uring_pbuf_t* b, unsigned bid)

    int uring_probe()

    void uring_prep_accept_multishot(io_uring_sqe* s, int fd, uint64_t ud)
    void uring_prep_recv_select(io_uring_sqe* s, int fd, unsigned short bgid, int multishot, uint64_t ud)
    void uring_prep_send(io_uring_sqe* s, int fd, const void* p, unsigned len, int msg_flags, uint64_t ud)
    void uring_prep_send_quiet(io_uring_sqe* s, int fd, const void* p, unsigned len, uint64_t ud)
    void uring_prep_poll(io_uring_sqe* s, int fd, unsigned events, uint64_t ud)
    void uring_prep_cancel(io_uring_sqe* s, uint64_t target, uint64_t ud)
    void uring_prep_connect(io_uring_sqe* s, int fd, const sockaddr* addr, socklen_t len, uint64_t ud)
