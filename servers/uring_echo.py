"""``cython-uring``: the ``cython`` server's loop on io_uring, in C, without the GIL.

Why it is built this way: whether io_uring beats epoll for a socket server is
argued with benchmarks that rarely verify bytes, pin CPUs or measure CPU per
message.  This row is the io_uring answer written as carefully as the
``cython`` row is the epoll one: same contract, protocols, limits and log
lines, the same C codecs (``ext/wire.h``), only the way of asking the kernel
differs.  The core is ``sockbench.ext.uring_echo`` (``ext/uring_echo.pyx``,
over ``ext/uring.h``: raw system calls and the kernel's UAPI header, since
liburing is rarely installed); this module adapts it to the registry contract
and says, before anything starts, whether this machine can run it.

* **One ring, one thread, one system call per batch**: a batch of completions
  is handled in C, every submission it calls for is prepared, and one
  ``io_uring_enter`` submits them and waits for the next batch.  The ring
  runs SINGLE_ISSUER | DEFER_TASKRUN (Linux 6.1) where the kernel has it, so
  the kernel's completion work runs inside that call, on the server's CPU.
* **Multishot accept and multishot receive into a provided buffer ring**:
  armed once per listener and per connection; the kernel picks a buffer
  (2,048 of 16 KiB, page-aligned) for every receive, and the echo is sent
  straight from it, which then goes back to the ring.  One send in flight
  per connection keeps the bytes in order.
* **Bounded memory**: past 8 unsent buffers (128 KiB of unsent answers in
  the framed modes) a connection's receive is cancelled until its echo is
  out, so a peer that never reads holds a few buffers and is pushed back on
  by its socket buffers.  A few, but from the one shared ring (and more
  when a multishot fills buffers before the cancel lands): 256 peers that
  never read hold all 2,048, and a connection that reads then waits until
  they go, where the epoll servers leave each connection's unsent bytes in
  its own socket.  A known limit, kept as a strict xfail test
  (``tests/e2e/test_uring.py``).
* **A dry buffer ring** (ENOBUFS: many connections receiving at once) ends a
  receive without consuming a byte; the connection is armed again, oldest
  first, as buffers come back.
* **A kernel without multishot receive** (before 6.0): each receive is
  armed once and re-armed on completion; the rest is the same.
  ``SOCKBENCH_URING_MULTISHOT=0`` forces that on any kernel (to check it),
  ``SOCKBENCH_URING_BUFFERS=N`` (a power of two) sizes the buffer ring
  (a small one makes the dry ring easy to reach), and
  ``SOCKBENCH_URING_STATS=1`` writes one line on stderr at the end: enters,
  completions, receives, dry-ring events, pauses (what the calibration and
  the tests read).
* **Unavailable io_uring** (``kernel.io_uring_disabled``, a seccomp filter,
  ENOSYS, a kernel before 5.19): ``sockbench.servers.iouring`` asks the
  kernel through a throwaway ring and gives the reason in one line;
  ``sockbench servers`` lists it, ``sockbench serve`` exits 2 with it.
* **Half-close, stop, errors, EMFILE, --idle-timeout, --max-buffered**: as
  ``cython`` (``sockbench.servers.cython_echo`` says how); a connection is
  ``shutdown`` before it is closed, so that the kernel's armed requests end
  and the peer sees the close at once.

Not served: udp (``cython``'s recvmmsg/sendmmsg loop is the datagram answer).
``--workers N`` runs one ring per worker process.
"""

import os
import resource

from sockbench.errors import UsageError
from sockbench.ext import uring_echo
from sockbench.servers.iouring import defer_wanted, kernel_support, multishot_wanted, quiet_sends_wanted
from sockbench.servers.protocols import DEFAULT_MAX_MESSAGE

__all__ = ["serve", "buffers_wanted", "BUFFERS_ENV", "STATS_ENV"]

BUFFERS_ENV = "SOCKBENCH_URING_BUFFERS"
STATS_ENV = "SOCKBENCH_URING_STATS"


def buffers_wanted(default):
    """``SOCKBENCH_URING_BUFFERS`` (a power of two, 1..32768) or ``default``; a bad value is a usage error."""
    raw = os.environ.get(BUFFERS_ENV, "").strip()
    if not raw:
        return default
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if not (1 <= n <= 32768 and n & (n - 1) == 0):
        raise UsageError(f"{BUFFERS_ENV}={raw!r}: give a power of two from 1 to 32768", exit_code=2)
    return n


def _raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(listener, announce, options):
    name = options.get("name", "cython-uring")
    ok, why, probe = kernel_support()
    if not ok:
        raise UsageError(f"server {name!r}: {why}", exit_code=2)
    max_message = options.get("max_message") or DEFAULT_MAX_MESSAGE
    if max_message > uring_echo.MAX_MESSAGE_LIMIT:
        raise UsageError(f"server {name!r}: --max-message is at most {uring_echo.MAX_MESSAGE_LIMIT} bytes here")
    idle_timeout = options.get("idle_timeout") or 0
    if idle_timeout > uring_echo.MAX_IDLE_TIMEOUT_S:
        raise UsageError(f"server {name!r}: --idle-timeout is at most {uring_echo.MAX_IDLE_TIMEOUT_S} s here")
    limits = options.get("limits")
    reasons = {}
    if limits is not None:
        reasons = {"idle_reason": limits.idle_reason if limits.idle_timeout else "",
                   "buffered_reason": limits.buffered_reason if limits.max_buffered else ""}
    buffers = buffers_wanted(uring_echo.BUFFERS)
    _raise_nofile()
    uring_echo.serve(listener.fileno(), announce, protocol=options.get("protocol", "raw"), max_message=max_message,
                     name=name, idle_timeout=idle_timeout, max_buffered=options.get("max_buffered") or 0,
                     multishot=multishot_wanted(probe), quiet_sends=quiet_sends_wanted(probe),
                     defer_taskrun=defer_wanted(), buffers=buffers,
                     stats=os.environ.get(STATS_ENV, "").strip() not in ("", "0"), **reasons)
