"""A small threaded TCP server in the test process, with a fault a test injects, for the e2e tests.

Why it exists: the load harness and the reference C client must each catch a
wrong byte, a wrong header, a closed connection and a stall, and a fault is
easiest to place exactly in a server whose every line the test owns.  One
thread accepts and one thread serves each connection (a subclass's
``_serve``); every socket waits at most ``POLL_S`` at a time, so ``close()``
ends them all within one poll and no test leaves a thread behind.
"""

import socket
import threading

__all__ = ["POLL_S", "FaultServer", "made_and_closed"]

#: how long a socket of the server waits before it looks at ``stop`` again
POLL_S = 0.1


class FaultServer:
    """Listens on 127.0.0.1 (``address``) from construction; a subclass answers in ``_serve(conn)``."""

    def __init__(self, fault):
        self.fault = fault
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        self.sock.settimeout(POLL_S)
        while not self.stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            self.threads.append(t)
            t.start()

    def _reads(self, c):
        """What ``c`` sends, read by read, until EOF, an error or ``close()``."""
        c.settimeout(POLL_S)
        while not self.stop.is_set():
            try:
                data = c.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            yield data

    def _serve(self, c):
        raise NotImplementedError

    @staticmethod
    def _flip(data, i):
        """``data`` with byte ``i`` inverted: a wrong byte for the client to catch."""
        return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]

    @staticmethod
    def _send(c, data):
        """Send all of ``data`` on ``c``; False when the client has gone."""
        try:
            c.sendall(data)
        except OSError:
            return False
        return True

    def close(self):
        self.stop.set()
        self.sock.close()
        for t in self.threads:
            t.join(2)


def made_and_closed(cls):
    """A fixture's body: yields ``make(...)``, which starts a ``cls(...)``; every one made is closed after the test."""
    made = []

    def make(*args, **kwargs):
        s = cls(*args, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
