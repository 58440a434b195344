"""The /proc readers: /proc/stat's per-CPU lines, a run's own processes, the machine's tuning.

Synthetic text and process tables, so the parsing is checked exactly; one
read of the real files checks that this machine's have the shape parsed.
"""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from sockbench import machine, procfs
from sockbench.procfs import CPU_FIELDS, parse_cpu_times, process_family, read_cpu_times

STAT = """cpu  239766 0 69478 214842 790 0 27431 127 0 0
cpu0 116795 0 32596 111347 278 0 14331 58 0 0
cpu1 122970 3 36882 103494 511 7 13100 69 5 0
cpu12 1 2 3 4 5 6 7 8 9 10
intr 11507895 0 0 0 0
ctxt 123
cpu9 9 9 9 9 9 9 9 9 9 9
"""


def test_the_per_cpu_lines_in_field_order():
    assert CPU_FIELDS == ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    assert parse_cpu_times(STAT) == {
        0: [116795, 0, 32596, 111347, 278, 0, 14331, 58],
        1: [122970, 3, 36882, 103494, 511, 7, 13100, 69],  # guest (5) is inside user already: not kept
        12: [1, 2, 3, 4, 5, 6, 7, 8],
    }  # the machine's total is not a CPU, and a "cpu" line after the others is not read
    assert parse_cpu_times(STAT, cpus=[1, 5]) == {1: [122970, 3, 36882, 103494, 511, 7, 13100, 69]}


def test_an_old_kernel_without_steal_reads_it_as_zero():
    assert parse_cpu_times("cpu  1 2 3 4 5 6 7\ncpu0 1 2 3 4 5 6 7\n") == {0: [1, 2, 3, 4, 5, 6, 7, 0]}


def test_this_machine_has_a_line_per_usable_cpu():
    usable = sorted(os.sched_getaffinity(0))
    now = read_cpu_times(usable)
    assert sorted(now) == usable
    assert all(len(v) == len(CPU_FIELDS) and min(v) >= 0 for v in now.values())


def test_a_runs_own_processes_are_it_its_ancestors_and_its_servers_family():
    # 1 <- 10 <- 20 (this run) <- 30 (the server) <- 31 (its child); 20 <- 40 (a hog the caller started);
    # 10 <- 50 (a sibling of the run: another helper's test)
    parents = {1: 0, 10: 1, 20: 10, 30: 20, 31: 30, 40: 20, 50: 10}
    assert process_family(20, own=(30,), parents=parents) == {1, 10, 20, 30, 31}
    assert process_family(20, parents=parents) == {1, 10, 20}
    # a parent loop (a pid reused while read) ends
    assert process_family(5, parents={5: 6, 6: 5}) == {5, 6}


def test_the_busy_warning_names_at_most_three_in_one_line():
    from sockbench.bench.load.harness import busy_warning

    busy = [procfs.BusyProcess(100 + i, f"cmd{i} " + "x" * (80 if i == 0 else 0), 1.0 - i / 10, 0) for i in range(5)]
    line = busy_warning([0, 1], busy)
    assert "\n" not in line and line.startswith("sockbench: warning: busy on CPUs 0,1 before the run: pid 100 (cmd0 ")
    assert "..., 100% of a CPU), pid 101 (cmd1 , 90% of a CPU), pid 102" in line
    assert line.endswith(" and 2 more; the figures may be disturbed") and "pid 103" not in line
    assert busy_warning([1], []) == ""
    assert busy_warning([1], busy[1:2]).startswith("sockbench: warning: busy on CPU 1 before")


def test_irq_time_accounting_reads_the_kernel_config(monkeypatch):
    monkeypatch.setattr(procfs, "_kernel_config", lambda: "CONFIG_TICK_CPU_ACCOUNTING=y\n# CONFIG_IRQ_TIME_ACCOUNTING is not set\n")
    assert procfs.irq_time_accounting() is False
    monkeypatch.setattr(procfs, "_kernel_config", lambda: "CONFIG_IRQ_TIME_ACCOUNTING=y\n")
    assert procfs.irq_time_accounting() is True
    monkeypatch.setattr(procfs, "_kernel_config", lambda: None)
    monkeypatch.setattr(procfs.os.path, "exists", lambda p: False)
    assert procfs.irq_time_accounting() is None


def test_the_machine_tuning_in_pyperfs_words(monkeypatch, tmp_path):
    files = {
        "/sys/devices/system/cpu/isolated": "2-3,5\n",
        "/sys/devices/system/cpu/nohz_full": "(null)\n",
        "/sys/devices/system/cpu/smt/active": "1\n",
        "/proc/sys/kernel/randomize_va_space": "2\n",
        "/proc/loadavg": "0.52 0.40 0.31 1/234 5678\n",
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor": "performance\n",
        "/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor": "powersave\n",
    }
    monkeypatch.setattr(machine, "_read", lambda path: files[path].strip() if path in files else None)
    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: {0, 1})
    damon = [{"kdamond": 0, "state": "on", "pid": 84, "sample_us": 500000}]
    monkeypatch.setattr(machine, "damon_monitors", lambda: damon)
    assert machine.tuning_info() == {"isolcpus": [2, 3, 5], "nohz_full": [], "governor": {"0": "performance", "1": "powersave"},
                                     "smt": True, "aslr": "Full randomization", "loadavg": [0.52, 0.40, 0.31],
                                     "damon": damon}
    files["/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"] = "performance\n"
    files["/proc/sys/kernel/randomize_va_space"] = "0\n"
    del files["/sys/devices/system/cpu/smt/active"], files["/sys/devices/system/cpu/nohz_full"]
    t = machine.tuning_info()
    assert (t["governor"], t["aslr"], t["smt"], t["nohz_full"]) == ("performance", "No randomization", None, None)


def test_the_machine_metadata_carries_the_tuning():
    info = machine.machine_info()
    assert set(machine.tuning_info()) <= set(info)
    assert info["aslr"] in (None, *machine.ASLR_NAMES.values())
    assert info["loadavg"] is None or len(info["loadavg"]) == 3


@pytest.mark.parametrize("text,expected", [("", []), ("(null)", []), ("0-1", [0, 1]), ("garbage", None)])
def test_a_sysfs_cpu_list(monkeypatch, text, expected):
    monkeypatch.setattr(machine, "_read", lambda path: text)
    assert machine._cpu_list("/x") == expected


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_a_listening_sockets_inode_is_listed_until_it_is_closed(family, host):
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen()
        inode = os.fstat(sock.fileno()).st_ino
        assert inode in procfs.tcp_socket_inodes()
    finally:
        sock.close()
    assert inode not in procfs.tcp_socket_inodes()


def test_a_process_threads_are_listed_with_their_state_and_kernel_wait():
    started, release = threading.Event(), threading.Event()

    def waiter():
        started.set()
        release.wait(10)  # a futex wait: asleep in the kernel

    t = threading.Thread(target=waiter, daemon=True, name="sb-waiter")
    t.start()
    started.wait(10)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = procfs.thread_states(os.getpid())
            other = [s for s in states if s[0] == t.native_id]
            if other and other[0][2] == "S" and other[0][3] not in ("", "0"):
                break  # read asleep, and where (a thread on its way into the wait reads "0" a moment)
            time.sleep(0.01)
    finally:
        release.set()
        t.join(10)
    tids = [tid for tid, _, _, _ in states]
    assert tids == sorted(tids) and os.getpid() in tids, "every thread by its tid, the main thread's is the pid"
    assert all(state in "RSDTtZXIP" and len(state) == 1 for _, _, state, _ in states)
    (tid, name, state, wchan), = other
    assert state == "S" and wchan not in ("", "0"), "asleep, and where in the kernel"
    assert name, "each thread's name (its process's, unless it was given one)"


def test_a_gone_process_has_no_threads():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert procfs.thread_states(proc.pid) == []


def test_every_threads_runtime_slices_and_cpu_are_read():
    snap = procfs.thread_snapshot()
    me = threading.get_native_id()
    pid, ppid, runtime, slices, cpu, comm = snap[me]
    assert pid == os.getpid() and ppid == os.getppid() and runtime > 0 and slices > 0
    assert cpu in range(os.cpu_count()) and comm


def test_a_command_marks_itself_the_runs_root_unless_one_above_it_did(monkeypatch):
    monkeypatch.delenv(procfs.RUN_ROOT_ENV, raising=False)
    procfs.mark_run_root()
    assert os.environ[procfs.RUN_ROOT_ENV] == str(os.getpid())
    monkeypatch.setenv(procfs.RUN_ROOT_ENV, "1")
    procfs.mark_run_root()
    assert os.environ[procfs.RUN_ROOT_ENV] == "1"
