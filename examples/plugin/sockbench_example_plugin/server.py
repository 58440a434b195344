"""An echo server with a thread per connection: the shape of many hand-written servers, as a sockbench plugin.

The main thread accepts in a selector loop (so that a stop signal wakes it),
and starts one thread per connection, served there with blocking calls.  (A
fixed pool of threads would be the other classic shape; it fails
``sockbench check``'s idle-connections check: a busy connection waits behind
idle ones holding every thread.)

Bounded memory comes for free: a thread reads at most ``RECV_SIZE`` bytes and
writes them back whole before reading again.  A half-close flushes (the echo
of everything read was written before the next read saw EOF), then the
thread closes.  SIGTERM and SIGINT stop accepting and shut every open
connection down, so blocked threads wake and the process exits 0.
"""

import selectors
import signal
import socket
import threading

from sockbench.servers.contract import STOP_SIGNALS, AcceptErrors, log_closing, set_nodelay, unexpected

RECV_SIZE = 64 * 1024


def _serve_one(conn, peer, name):
    buf = bytearray(RECV_SIZE)
    view = memoryview(buf)
    try:
        while True:
            n = conn.recv_into(buf)
            if not n:
                return  # the peer's half-close: everything read was echoed already
            conn.sendall(view[:n])
    except (ConnectionResetError, BrokenPipeError):
        return
    except OSError as e:
        log_closing(name, peer, unexpected(e))


def serve(listener, announce, options):
    name = options["name"]
    open_conns = set()
    lock = threading.Lock()
    stop = threading.Event()
    wake_r, wake_w = socket.socketpair()

    threads = []

    def worker(conn, peer):
        try:
            _serve_one(conn, peer, name)
        finally:
            with lock:
                open_conns.discard(conn)
            conn.close()

    def on_signal(signum, frame):
        stop.set()
        wake_w.send(b"x")

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    errors = AcceptErrors(name)
    announce()
    try:
        while not stop.is_set():
            for key, _ in sel.select(1.0):
                if key.fileobj is wake_r:
                    break
                try:
                    conn, peer = listener.accept()
                except BlockingIOError:
                    continue
                except OSError as e:
                    pause = errors.pause_for(e)
                    if pause:
                        stop.wait(pause)
                    continue
                conn.setblocking(True)
                set_nodelay(conn)
                with lock:
                    open_conns.add(conn)
                t = threading.Thread(target=worker, args=(conn, peer), daemon=True)
                threads[:] = [x for x in threads if x.is_alive()] + [t]
                t.start()
    finally:
        sel.close()
        with lock:
            for conn in list(open_conns):
                try:
                    conn.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked on it
                except OSError:
                    pass
        for t in list(threads):
            t.join(1.0)
        wake_r.close()
        wake_w.close()
