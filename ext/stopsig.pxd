# The C declarations of ext/stopsig.h: the stop signal (SIGTERM/SIGINT -> an eventfd, and a flag) of the C
# loops: the servers' (ext/epoll_echo.pyx, ext/udp_echo.pyx) and the load generators' (through
# ext/loadrun.pxd); the header says why it is built this way.


cdef extern from "stopsig.h" nogil:
    ctypedef struct stopsig_t:
        pass

    int stopsig_running()
    int stopsig_open(int epfd)
    void stopsig_arm(stopsig_t* s, int fd)
    void stopsig_disarm(stopsig_t* s)
    int stopsig_requested()
