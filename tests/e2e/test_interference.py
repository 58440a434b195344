"""Foreign load on the run's CPUs: a busy-loop hog pinned to one of them is seen, named and flagged.

Other test runs may share this machine, so nothing here assumes it is quiet:
a hog shows as at least the share of a CPU it must have taken, the foreign
time of a run is checked against what every other process was charged
meanwhile (it may not be more), and a quiet reading is asserted when that
was nothing.
"""

import json
import os
import subprocess
import sys
import time

import pytest

from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.bench.schema import LoadResult
from sockbench.procfs import TICK_S, _pids, _stat_fields
from sockbench.thresholds import DISTURBED_SHARE

pytest.importorskip("sockbench.ext.loadgen", reason="the load generator is not built (pip install -e .)")

SERVER_CPU, CLIENT_CPU = 0, 1
if not {SERVER_CPU, CLIENT_CPU} <= os.sched_getaffinity(0):
    pytest.skip("needs CPUs 0 and 1", allow_module_level=True)

HOG = [sys.executable, "-c", "while True: pass"]


def _start_hog(cpu):
    return subprocess.Popen(HOG, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def _stop(p):
    if p.poll() is None:
        os.kill(p.pid, 9)
    p.wait()


@pytest.mark.parametrize("side,cpu", [("server", SERVER_CPU), ("client", CLIENT_CPU)])
def test_a_hog_on_one_cpu_disturbs_the_run_with_its_share_on_that_side(side, cpu):
    hog = _start_hog(cpu)
    try:
        time.sleep(0.1)  # running before the window opens
        r = run_load(LoadSpec(server="cython", conns=10, duration_s=0.5, warmup_s=0.2,
                              server_cpus=(SERVER_CPU,), client_cpus=(CLIENT_CPU,)))
        assert hog.poll() is None, "the hog ran through the window"
    finally:
        _stop(hog)
    i = r.interference
    # the hog shares a busy CPU with the server or the load: it gets about half of it, never nothing
    assert getattr(i, f"{side}_foreign") >= 0.3, i
    assert i.disturbed is True and r.disturbed
    assert r.valid, "disturbed is a flag on the figure, not a broken run"


def test_the_hog_is_named_before_the_run_starts():
    hog = _start_hog(CLIENT_CPU)
    try:
        time.sleep(0.1)
        p = subprocess.run(
            [sys.executable, "-m", "sockbench", "load", "selectors", "--conns", "2", "--duration", "0.2", "--warmup", "0.1",
             "--server-cpus", str(SERVER_CPU), "--client-cpus", str(CLIENT_CPU), "--json", "-"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        _stop(hog)
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("sockbench: warning: busy on CPUs 0,1")]
    assert len(warnings) == 1, p.stderr
    assert f"pid {hog.pid} ({' '.join(HOG)}, " in warnings[0]
    # its own server is never named (other helpers' processes may be: they are foreign here)
    r = LoadResult.from_json(json.loads(p.stdout))
    assert f"pid {r.server_proc.pid} " not in warnings[0]
    assert "DISTURBED: " in p.stderr and r.disturbed


#: the processes one run_load starts: its server, its load process and the three git calls of the machine
#: metadata (the top level, the commit, whether the tree is dirty); counted with strace -f -e execve
OWN_SPAWNS = 5


def _ticks():
    """``{pid: cpu ticks}`` of every process now, and the last pid handed out."""
    ticks = {}
    for pid in _pids():
        f = _stat_fields(pid)
        if f is not None:
            ticks[pid] = f[1]
    with open("/proc/loadavg") as f:
        return ticks, int(f.read().split()[4])


def test_foreign_load_is_never_invented_and_a_quiet_window_reads_none():
    """What the run calls foreign is at most what the other processes were charged meanwhile (this one, the
    harness, included); over a window in which nobody else ran, that is nothing."""
    spec = LoadSpec(server="cython", conns=10, duration_s=0.5, warmup_s=0.2,
                    server_cpus=(SERVER_CPU,), client_cpus=(CLIENT_CPU,))
    for _ in range(5):
        before, last0 = _ticks()
        r = run_load(spec)
        after, last1 = _ticks()
        # every other process is seen at both ends: none came and went unseen, none but the run's own started
        if set(before) == set(after) and last1 - last0 <= OWN_SPAWNS:
            break
    else:
        pytest.skip("other processes started and ended through five tries; their CPU time cannot be accounted")
    moved = {p: (after[p] - before[p]) * TICK_S for p in before if after[p] != before[p]}
    others_s = sum(moved.values())
    i = r.interference
    foreign_s = (i.server_foreign + i.client_foreign) * spec.duration_s  # one CPU per side
    # the counters' rounding: a tick per CPU of ours, a tick per process charged
    assert foreign_s <= others_s + TICK_S * (2 + len(moved)), (i, moved)
    if not moved:
        assert i.server_foreign < DISTURBED_SHARE and i.client_foreign < DISTURBED_SHARE, i
        assert i.disturbed is False
