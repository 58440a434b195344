"""The ``cython-protocol`` echo server's protocol: an ``asyncio.BufferedProtocol`` compiled by Cython.

This row keeps the event loop (uvloop) and compiles only the protocol, to
show what that buys: the callbacks become C functions on a C struct, and the
receive path lends uvloop a C buffer instead of allocating a bytes object per
read.  The design notes for users live in
``sockbench.servers.cython_protocol_echo``; the choices that matter for
reading this file are:

* **One read buffer per server** (``ReadBuffer``: a page-aligned block that
  exports the buffer protocol), lent to uvloop by every connection's
  ``get_buffer``.  It can be shared because ``buffer_updated`` copies the
  bytes out before it returns, and uvloop runs one callback at a time.
* **Why copy at all**: uvloop's ``transport.write`` keeps a *reference* to
  whatever it is given when the kernel does not take all of it (a
  ``memoryview`` of the unsent tail, handed to ``uv_write`` later).  Handing it
  a view of a buffer that the next read overwrites would corrupt the echo.  A
  ``bytes`` copy is immutable, is the one type uvloop writes without wrapping
  it in a ``memoryview``, and costs one allocation per read: less than the
  view, its slice and uvloop's ``memoryview(data).cast('b')``.
* **Flow control as in** ``asyncio-protocol``: when the transport's buffer
  passes ``HIGH_WATER`` the loop calls ``pause_writing`` and the protocol
  pauses *reading*; ``resume_writing`` resumes it.  Memory per connection is
  bounded by about ``HIGH_WATER`` plus one read.
* **Half-close**: ``eof_received`` returns False, so the transport closes
  itself once the echo is flushed.
* **Limits**: with ``--idle-timeout`` the server passes a
  ``contract.Limits``: every read restarts the connection's clock, and the
  idle sweep (``servers/aio.py``) closes a connection through its
  ``transport``.  Without it (the default, and every benchmark) the only cost is one C test
  of ``limits is None`` per read.  ``--max-buffered`` does not apply: this
  row speaks ``raw`` only, which holds no partial messages.
* ``EchoCore`` is the ``cdef class``; ``EchoBufferedProtocol`` adds
  ``asyncio.BufferedProtocol`` as a base (a ``cdef class`` cannot inherit from
  a Python class) so that ``isinstance`` checks hold.  uvloop itself
  recognises a buffered protocol by its ``get_buffer`` method.
"""

import asyncio

from cpython.buffer cimport PyBuffer_FillInfo
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdlib cimport free

from posix cimport posix_memalign

__all__ = ["ReadBuffer", "EchoCore", "EchoBufferedProtocol", "EchoServer", "HIGH_WATER", "READ_SIZE"]

#: transport buffer size above which a connection stops being read
HIGH_WATER = 64 * 1024
#: bytes lent to uvloop for one read
READ_SIZE = 256 * 1024


cdef class ReadBuffer:
    """A fixed ``malloc``'d block that exports the buffer protocol (writable, 1-D bytes)."""

    cdef char* data
    cdef Py_ssize_t size

    def __cinit__(self, Py_ssize_t size=READ_SIZE):
        if size <= 0:
            raise ValueError(f"buffer size must be positive, got {size}")
        # page-aligned: a buffer 16 bytes off a 32-byte boundary (where malloc puts
        # a large block) makes every recv into it ~40% dearer in the kernel here
        if posix_memalign(<void**>&self.data, 4096, size) != 0:
            self.data = NULL
            raise MemoryError()
        self.size = size

    def __dealloc__(self):
        free(self.data)

    def __len__(self):
        return self.size

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, self.data, self.size, 0, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass


cdef class EchoCore:
    """The echo protocol's state and callbacks, all typed C attributes."""

    cdef ReadBuffer buf
    cdef set conns
    cdef readonly object transport
    cdef object write          # transport.write, bound once per connection
    cdef object limits         # a contract.Limits, or None (the default)

    def __cinit__(self, ReadBuffer buf not None, set conns not None, limits=None):
        self.buf = buf
        self.conns = conns
        self.limits = limits

    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write
        self.conns.add(transport)
        # uvloop sets TCP_NODELAY on every TCP transport it creates
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.limits is not None:
            self.limits.opened(self)

    def get_buffer(self, Py_ssize_t sizehint):
        return self.buf

    def buffer_updated(self, Py_ssize_t nbytes):
        # copy out now: the buffer is shared and the transport may keep what it is given
        self.write(PyBytes_FromStringAndSize(self.buf.data, nbytes))
        if self.limits is not None:
            self.limits.progress(self)

    def pause_writing(self):
        self.transport.pause_reading()

    def resume_writing(self):
        self.transport.resume_reading()

    def eof_received(self):
        return False  # let the transport close itself once the echo is flushed

    def connection_lost(self, exc):
        self.conns.discard(self.transport)
        if self.limits is not None:
            self.limits.forget(self)
        self.transport = None
        self.write = None


class EchoBufferedProtocol(EchoCore, asyncio.BufferedProtocol):
    """``EchoCore`` that is also an ``asyncio.BufferedProtocol`` for ``isinstance``."""

    __slots__ = ()


cdef class EchoServer:
    """The protocol factory: owns the shared read buffer and the set of open transports.

    ``limits`` (a ``contract.Limits``, or None) is handed to every protocol.
    """

    cdef readonly ReadBuffer buf
    cdef readonly set conns
    cdef object limits

    def __init__(self, Py_ssize_t read_size=READ_SIZE, *, limits=None):
        self.buf = ReadBuffer(read_size)
        self.conns = set()
        self.limits = limits

    def __call__(self):
        return EchoBufferedProtocol(self.buf, self.conns, self.limits)

    def abort_all(self):
        """Abort every open connection (used on shutdown)."""
        for transport in list(self.conns):
            transport.abort()
