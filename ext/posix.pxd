# The C declarations that the extensions in ext/ share.
#
# One ``cdef extern from "<header>" nogil:`` block per system header, so that a
# reader can check every name against its man page, and every function can be
# called inside ``with nogil:``.  Only what the extensions use is declared.
# To add a name, add it to the block of the header that defines it (or add a
# block for a new header); keep the blocks in this order: libc, then POSIX,
# then Linux-specific.

from libc.stdint cimport uint32_t, uint64_t


# compiler builtins (gcc, clang): no header
cdef extern from * nogil:
    int __builtin_clzll(unsigned long long x)


cdef extern from "<errno.h>" nogil:
    int errno
    enum:
        EAGAIN
        EWOULDBLOCK
        EINTR
        EINPROGRESS
        ECONNABORTED
        ECONNRESET
        EPIPE
        EPROTO
        EMFILE
        ENFILE
        ENOBUFS
        ENOMEM
        EBADF
        EINVAL
        EFAULT
        ENOTSOCK
        ECONNREFUSED
        ECANCELED
        ETIME
        EBUSY
        ENOENT
        EALREADY
        ENOSYS
        EPERM


cdef extern from "<stdlib.h>" nogil:
    void* malloc(size_t size)
    void* calloc(size_t nmemb, size_t size)
    void* realloc(void* ptr, size_t size)
    void free(void* ptr)
    int posix_memalign(void** memptr, size_t alignment, size_t size)
    long long strtoll(const char* nptr, char** endptr, int base)


cdef extern from "<string.h>" nogil:
    void* memcpy(void* dest, const void* src, size_t n)
    void* memmove(void* dest, const void* src, size_t n)
    void* memset(void* s, int c, size_t n)
    int memcmp(const void* s1, const void* s2, size_t n)
    char* strerror(int errnum)
    char* strrchr(const char* s, int c)


cdef extern from "<stdio.h>" nogil:
    int snprintf(char* s, size_t n, const char* fmt, ...)


cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    ctypedef int clockid_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clockid, timespec* tp)
    enum:
        CLOCK_MONOTONIC


cdef extern from "<signal.h>" nogil:
    ctypedef struct sigset_t:
        pass
    ctypedef void (*sighandler_t)(int) noexcept nogil
    # ``struct sigaction`` and the function ``sigaction`` share a name in C
    ctypedef struct sigaction_t "struct sigaction":
        sighandler_t sa_handler
        sigset_t sa_mask
        int sa_flags
    int sigaction(int signum, const sigaction_t* act, sigaction_t* oldact)
    int sigemptyset(sigset_t* set)
    enum:
        SIGINT
        SIGTERM
        SIGPIPE
        SA_RESTART


cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t count)
    ssize_t write(int fd, const void* buf, size_t count)
    int close(int fd)


cdef extern from "<fcntl.h>" nogil:
    int fcntl(int fd, int cmd, ...)
    int open(const char* pathname, int flags, ...)
    enum:
        F_GETFL
        F_SETFL
        O_NONBLOCK
        O_RDONLY
        O_CLOEXEC


cdef extern from "<dirent.h>" nogil:
    ctypedef struct DIR:
        pass
    struct dirent:
        char d_name[256]
    DIR* opendir(const char* name)
    dirent* readdir(DIR* dirp)
    int closedir(DIR* dirp)


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int iovcnt)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct sockaddr:
        pass
    int socket(int domain, int type, int protocol)
    int connect(int sockfd, const sockaddr* addr, socklen_t addrlen)
    int accept4(int sockfd, sockaddr* addr, socklen_t* addrlen, int flags)
    int getpeername(int sockfd, sockaddr* addr, socklen_t* addrlen)
    int getsockname(int sockfd, sockaddr* addr, socklen_t* addrlen)
    struct sockaddr_storage:
        unsigned short ss_family
    ssize_t recv(int sockfd, void* buf, size_t len, int flags)
    ssize_t send(int sockfd, const void* buf, size_t len, int flags)
    # datagrams, a batch per call (recvmmsg/sendmmsg are Linux's, declared under _GNU_SOURCE, which Python.h sets)
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int sockfd, mmsghdr* msgvec, unsigned int vlen, int flags, timespec* timeout)
    int sendmmsg(int sockfd, mmsghdr* msgvec, unsigned int vlen, int flags)
    int setsockopt(int sockfd, int level, int optname, const void* optval, socklen_t optlen)
    int getsockopt(int sockfd, int level, int optname, void* optval, socklen_t* optlen)
    int shutdown(int sockfd, int how)
    enum:
        SOCK_NONBLOCK
        AF_INET
        AF_INET6
        AF_UNIX
        SOCK_STREAM
        SOCK_DGRAM
        SOCK_CLOEXEC
        MSG_NOSIGNAL
        MSG_DONTWAIT
        MSG_TRUNC
        SOL_SOCKET
        SO_ERROR
        SHUT_WR
        SHUT_RDWR
        MSG_WAITALL


cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        unsigned short sin6_family
        unsigned short sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id
    enum:
        IPPROTO_TCP


cdef extern from "<sys/un.h>" nogil:
    struct sockaddr_un:
        unsigned short sun_family
        char sun_path[108]


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "<arpa/inet.h>" nogil:
    unsigned short ntohs(unsigned short netshort)
    unsigned short htons(unsigned short hostshort)
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)


cdef extern from "<sys/time.h>" nogil:
    struct timeval:
        time_t tv_sec
        long tv_usec


cdef extern from "<sys/resource.h>" nogil:
    ctypedef unsigned long rlim_t
    struct rlimit:
        rlim_t rlim_cur
        rlim_t rlim_max
    int getrlimit(int resource, rlimit* rlim)
    int setrlimit(int resource, const rlimit* rlim)
    struct rusage:
        timeval ru_utime
        timeval ru_stime
    int getrusage(int who, rusage* usage)
    enum:
        RLIMIT_NOFILE
        RUSAGE_SELF
    rlim_t RLIM_INFINITY


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum:
        EPOLL_CLOEXEC
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLLRDHUP


cdef extern from "<sys/eventfd.h>" nogil:
    ctypedef uint64_t eventfd_t
    int eventfd(unsigned int initval, int flags)
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC


cdef extern from "<sys/timerfd.h>" nogil:
    struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec* new_value, itimerspec* old_value)
    enum:
        TFD_NONBLOCK
        TFD_CLOEXEC
        TFD_TIMER_ABSTIME
