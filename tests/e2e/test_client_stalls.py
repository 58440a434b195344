"""A polling open loop sees the moments its CPU was taken from it: a load process stopped inside the window.

The test takes the CPU from the load process itself, the one way to make a
client stall of a known length on any machine: SIGSTOP for ~30 ms inside the
measured window, then SIGCONT.  The loop must count at least that stall, at
least that long (it may see others: the machine is shared).  A run left alone
records the fields all the same (how many it saw depends on the machine).
"""

import os
import signal
import threading
import time

import pytest

from test_harness import _child_pid, children
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.servers import registry

pytest.importorskip("sockbench.ext.loadgen", reason="the load generator is not built (pip install -e .)")

#: open loop, one polling load process on its own CPU (the default: server on CPU 0, client on CPU 1)
SPEC = dict(server="cython", mode="open", rate=20000.0, conns=10, duration_s=1.5, warmup_s=0.3)
STOP_S = 0.030


@pytest.fixture(autouse=True)
def _cython():
    ok, why = registry.SERVERS["cython"].availability()
    if not ok:
        pytest.skip(f"cython: {why}")


def _run(stop_s=None):
    """One run of ``SPEC``; with ``stop_s``, its load process is stopped that long 40% into the window."""
    spec = LoadSpec(**SPEC)
    out, window = {}, {}
    t = threading.Thread(target=lambda: out.update(r=run_load(spec, on_window=lambda s, e: window.update(s=s, e=e))))
    before = children()
    t.start()
    try:
        if stop_s is not None:
            pid = _child_pid("-m", "sockbench.bench.load.worker", before=before)
            deadline = time.monotonic() + 30
            while "s" not in window and time.monotonic() < deadline:
                time.sleep(0.01)
            warm_end = window["s"] + int(spec.warmup_s * 1e9)
            at = warm_end + int(0.4 * (window["e"] - warm_end))
            time.sleep(max(0.0, (at - time.monotonic_ns()) / 1e9))
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(stop_s)
            finally:
                os.kill(pid, signal.SIGCONT)
    finally:
        t.join(60)
    return out["r"]


def test_a_stopped_load_process_counts_a_client_stall():
    r = _run(STOP_S)
    assert r.valid, r.invalid_reason
    c = r.client
    assert c.polling
    assert c.stalls >= 1 and c.longest_stall_s >= STOP_S - 0.005
    assert c.stall_s >= c.longest_stall_s and c.longest_stall_s < SPEC["duration_s"]


def test_a_run_left_alone_records_its_stalls():
    c = _run().client
    assert c.polling
    # however many this machine caused: measured, never None
    assert c.stalls is not None and c.stall_s is not None and c.longest_stall_s is not None
    assert c.stalls >= 0 and (c.stalls > 0) == (c.longest_stall_s > 0) and c.stall_s >= c.longest_stall_s
    # and its epoll_wait calls (a polling loop: one a pass)
    assert c.waits > 0
