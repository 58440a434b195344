# The C declarations of ext/stopsig.h: the stop signal (SIGTERM/SIGINT -> an eventfd) of the C server
# loops, ext/epoll_echo.pyx and ext/udp_echo.pyx (the header says why it is built this way).


cdef extern from "stopsig.h" nogil:
    ctypedef struct stopsig_t:
        pass

    int stopsig_running()
    int stopsig_open(int epfd)
    void stopsig_arm(stopsig_t* s, int fd)
    void stopsig_disarm(stopsig_t* s)
