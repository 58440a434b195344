"""What io_uring offers on this machine, asked of the kernel itself (a throwaway ring; ext/uring.h).

``probe()`` is what ``sockbench.servers.uring_echo.availability`` and the
load engine's check read before anything starts: a ring that cannot be set up
(``kernel.io_uring_disabled``, a seccomp filter, an old kernel) must be one
line saying why, not an ``OSError`` half-way through a run.  A module of its
own, so that the check costs no more than one small extension's import.
"""

from uring cimport (
    URING_HAVE_RING, URING_HAVE_PBUF_RING, URING_HAVE_MSHOT_RECV, URING_HAVE_DEFER_TASKRUN, URING_HAVE_EXT_ARG,
    URING_HAVE_QUIET_SEND,
    uring_probe,
)

__all__ = ["probe"]


def probe():
    """``{"errno": 0 | E, "ring", "buffer_ring", "multishot_recv", "defer_taskrun", "ext_arg", "quiet_send"}``.

    ``errno`` is what io_uring_setup answered (0: a ring was set up; the rest
    then says what the kernel has: provided buffer rings and multishot accept
    from 5.19, multishot receive from 6.0, DEFER_TASKRUN from 6.1, a wait
    with a timeout from 5.11, and sends that complete while submitted and
    say nothing when whole: ext/uring.h's ``uring_prep_send_quiet``, checked
    on a socket pair).  Never raises.
    """
    cdef int have
    with nogil:
        have = uring_probe()
    if have < 0:
        return {"errno": -have, "ring": False, "buffer_ring": False, "multishot_recv": False,
                "defer_taskrun": False, "ext_arg": False, "quiet_send": False}
    return {
        "errno": 0,
        "ring": bool(have & URING_HAVE_RING),
        "buffer_ring": bool(have & URING_HAVE_PBUF_RING),
        "multishot_recv": bool(have & URING_HAVE_MSHOT_RECV),
        "defer_taskrun": bool(have & URING_HAVE_DEFER_TASKRUN),
        "ext_arg": bool(have & URING_HAVE_EXT_ARG),
        "quiet_send": bool(have & URING_HAVE_QUIET_SEND),
    }
