"""A load from several hosts, on one machine: network namespaces as hosts, Dask as the coordinator.

The lab: a switch namespace holding a bridge, a server namespace (the Dask
scheduler, ``sockbench serve cython`` and the coordinator) and two load
namespaces (one ``sockbench cluster-worker`` each), joined by veth pairs with
addresses from 10.213.0.0/24, which only these namespaces use, and no
default route: nothing here can send anywhere else.  Names carry this
process's pid, so two test runs never share a namespace.  Everything is
stopped by pid and every namespace deleted when the module ends, also on
failure.  Without root or ``ip netns`` the module skips with the reason; the
packet-loss case also needs ``nft`` (.ci/run installs it).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest

from sockbench.procfs import read_task_cpu_s

pytest.importorskip("distributed", reason="Dask distributed is not installed (pip install -e '.[cluster]')")
pytest.importorskip("sockbench.ext.loadgen", reason="the load generator is not built (pip install -e .)")

pytestmark = [pytest.mark.slow, pytest.mark.root]

PREFIX = f"sbt-{os.getpid()}"
NET = "10.213.0"
SERVER_ADDR = f"{NET}.1"
HOSTS = {"h1": f"{NET}.11", "h2": f"{NET}.12"}
SCHEDULER = f"tcp://{SERVER_ADDR}:8786"
#: the tuned worker's idle CPU, as a sanity bound: its budget (``thresholds.WORKER_IDLE_SHARE``, 0.5% of a
#: core) is a speed figure, measured quiet over 30 s windows by ``bench/calibrate/worker_idle.py``, not by a
#: timed test; a 4 s window here may or may not hold the worker's 10 s heartbeat; the untuned `dask worker`
#: idles at about 4%, which this bound still catches
IDLE_BUDGET = 0.02
IDLE_WINDOW_S = 4.0
LOAD = ["--conns", "4", "--duration", "1.5", "--warmup", "0.3", "--timeout", "10"]


def _skip_reason():
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}-probe"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"`ip netns add` failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args, ns=None):
    cmd = ["ip", *(("-n", ns) if ns else ()), *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")


def _in(ns, *cmd):
    return ["ip", "netns", "exec", ns, *cmd]


class Lab:
    """The namespaces and the processes started in them; ``close()`` undoes everything by pid and name."""

    def __init__(self):
        self.spaces = []
        self.procs = []
        self.sw, self.srv = f"{PREFIX}-sw", f"{PREFIX}-srv"
        self.load = {name: f"{PREFIX}-{name}" for name in HOSTS}

    def build(self):
        for ns in (self.sw, self.srv, *self.load.values()):
            _ip("netns", "add", ns)
            self.spaces.append(ns)
            _ip("link", "set", "lo", "up", ns=ns)
        _ip("link", "add", "br0", "type", "bridge", ns=self.sw)
        _ip("link", "set", "br0", "up", ns=self.sw)
        for i, (ns, addr) in enumerate([(self.srv, SERVER_ADDR)] + [(self.load[n], a) for n, a in HOSTS.items()]):
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"port{i}", "netns", self.sw)
            _ip("link", "set", f"port{i}", "master", "br0", "up", ns=self.sw)
            _ip("addr", "add", f"{addr}/24", "dev", "eth0", ns=ns)
            _ip("link", "set", "eth0", "up", ns=ns)

    def start(self, ns, *cmd, ready=None):
        """Start ``cmd`` in ``ns``; with ``ready``, wait for the JSON line on stdout whose event it is."""
        p = subprocess.Popen(_in(ns, *cmd), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        if ready is None:
            return p, None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"{' '.join(cmd[:4])} exited (status {p.wait()}) before it was ready")
            if line.startswith("{") and json.loads(line).get("event") == ready:
                return p, json.loads(line)
        raise RuntimeError(f"{' '.join(cmd[:4])} was not ready within 30 s")

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for ns in self.spaces:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_scheduler(ns, timeout=30):
    """Until the scheduler accepts a TCP connection (from inside its namespace)."""
    probe = f"import socket; socket.create_connection(('{SERVER_ADDR}', 8786), timeout=1).close()"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run(_in(ns, sys.executable, "-c", probe), capture_output=True).returncode == 0:
            return
        time.sleep(0.3)
    raise RuntimeError("the Dask scheduler did not listen within 30 s")


@pytest.fixture(scope="module")
def lab():
    why = _skip_reason()
    if why:
        pytest.skip(why)
    lab = Lab()
    try:
        lab.build()
        lab.start(lab.srv, sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", SERVER_ADDR,
                  "--port", "8786", "--no-dashboard")
        _wait_scheduler(lab.srv)
        _, ready = lab.start(lab.srv, sys.executable, "-m", "sockbench", "serve", "cython", "--host", SERVER_ADDR,
                             ready="ready")
        lab.port = ready["port"]
        lab.workers = {}
        for name, ns in lab.load.items():
            _, w = lab.start(ns, sys.executable, "-m", "sockbench", "cluster-worker", "--scheduler", SCHEDULER,
                             "--name", name, ready="ready")
            lab.workers[name] = w
        yield lab
    finally:
        lab.close()


def _peers(lab, port):
    """The remote addresses of the server's established connections, as ``ss`` in its namespace shows them."""
    out = subprocess.run(_in(lab.srv, "ss", "-tnH", "state", "established", f"( sport = :{port} )"),
                         capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"\s(\d+\.\d+\.\d+\.\d+):\d+\s*$", out, re.M)}


def _cluster_load(lab):
    """``sockbench load --target ... --cluster ...`` run by the coordinator in the server namespace, while the
    server's peers are watched; ``(result dict, peers seen)``."""
    seen, done = set(), threading.Event()

    def watch():
        while not done.is_set():
            seen.update(_peers(lab, lab.port))
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    try:
        r = subprocess.run(_in(lab.srv, sys.executable, "-m", "sockbench", "load", "--target",
                               f"{SERVER_ADDR}:{lab.port}", "--cluster", SCHEDULER, *LOAD, "--json", "-"),
                           capture_output=True, text=True, timeout=120)
    finally:
        done.set()
        t.join()
    assert r.stdout.startswith("{"), r.stderr
    return json.loads(r.stdout), seen


def _retransmits(ns):
    """TCP segments retransmitted in ``ns`` (its /proc/net/snmp)."""
    out = subprocess.run(_in(ns, "cat", "/proc/net/snmp"), capture_output=True, text=True).stdout
    names, values = [line.split()[1:] for line in out.splitlines() if line.startswith("Tcp:")][:2]
    return int(values[names.index("RetransSegs")])


def test_two_hosts_one_result_each_merged_exactly(lab):
    d, peers = _cluster_load(lab)
    assert d["valid"], d["invalid_reason"]
    hosts = {h["name"]: h for h in d["hosts"]}
    assert set(hosts) == set(HOSTS)
    assert all(h["valid"] and h["latency_us"]["count"] > 0 for h in hosts.values())
    # the totals are every host's messages, and the merged histogram holds every host's values
    assert d["latency_us"]["count"] == sum(h["latency_us"]["count"] for h in hosts.values())
    assert sum(h["conns"] for h in hosts.values()) == d["workload"]["conns"] == 4
    assert d["latency_us"]["max"] == max(h["latency_us"]["max"] for h in hosts.values())
    # the server saw each load host's own address
    assert peers == set(HOSTS.values())
    for h in hosts.values():
        assert abs(h["clock"]["offset_s"]) < 0.05 and h["clock"]["delay_s"] > 0  # one machine: one clock
        assert h["start_late_s"] is not None and h["worker_cpu"]["util"] is not None


def test_packet_loss_in_the_bridge_shows_retransmission_tails(lab):
    if shutil.which("nft") is None:
        pytest.skip("no `nft` (apt-get install nftables): the bridge cannot drop packets")
    clean, _ = _cluster_load(lab)
    before = {n: _retransmits(ns) for n, ns in lab.load.items()}
    # 5% of the frames the bridge forwards, either way
    rules = ("table bridge sbt {\n chain lossy {\n  type filter hook forward priority 0;\n"
             "  numgen random mod 1000 < 50 counter drop\n }\n}\n")
    subprocess.run(_in(lab.sw, "nft", "-f", "-"), input=rules, text=True, check=True)
    try:
        lossy, _ = _cluster_load(lab)
    finally:
        subprocess.run(_in(lab.sw, "nft", "delete", "table", "bridge", "sbt"), check=True)
    after = {n: _retransmits(ns) for n, ns in lab.load.items()}
    assert all(after[n] > before[n] for n in lab.load), (before, after)
    assert len(lossy["hosts"]) == len(HOSTS)
    assert lossy["latency_us"]["count"] == sum(h["latency_us"]["count"] for h in lossy["hosts"] if h["latency_us"])
    # a lost segment waits for a retransmission: the tail is far above the clean run's
    assert lossy["latency_us"]["max"] > max(10 * clean["latency_us"]["p99"], 20_000), (clean["latency_us"], lossy["latency_us"])


def _idle_shares(pids):
    before = {n: read_task_cpu_s(pid) for n, pid in pids.items()}
    time.sleep(IDLE_WINDOW_S)
    return {n: (read_task_cpu_s(pid) - before[n]) / IDLE_WINDOW_S for n, pid in pids.items()}


def test_idle_worker_stays_under_budget(lab):
    # last in the module: the workers are past their start-up and have run load tasks, as between runs
    pids = {name: w["pid"] for name, w in lab.workers.items()}
    share = _idle_shares(pids)
    if any(s > IDLE_BUDGET for s in share.values()):
        # a window disturbed by the machine's other work is measured once more, as the suite re-measures
        again = _idle_shares(pids)
        share = {n: min(share[n], again[n]) for n in share}
    assert all(s <= IDLE_BUDGET for s in share.values()), share
