"""DAMON's monitors: read from a sysfs tree laid out as the kernel's, paused for a block and turned on after it.

A fake tree under tmp_path stands in for /sys/kernel/mm/damon/admin, so the
pausing is checked exactly and never touches this machine's monitors.
"""

import os
import signal
import subprocess
import sys

import pytest

from sockbench import damon
from sockbench.bench.report.document import _damon_alert, _tuning
from sockbench.bench.schema import Machine
from sockbench.errors import UsageError


def _tree(tmp_path, states, sample_us=500000):
    admin = tmp_path / "admin"
    kd = admin / "kdamonds"
    kd.mkdir(parents=True)
    (kd / "nr_kdamonds").write_text(f"{len(states)}\n")
    for n, state in enumerate(states):
        folder = kd / str(n)
        intervals = folder / "contexts" / "0" / "monitoring_attrs" / "intervals"
        intervals.mkdir(parents=True)
        (intervals / "sample_us").write_text(f"{sample_us}\n")
        (folder / "state").write_text(state + "\n")
        (folder / "pid").write_text(f"{100 + n}\n" if state == "on" else "-1\n")
    return str(admin)


def _states(admin):
    kd = os.path.join(admin, "kdamonds")
    return [open(os.path.join(kd, str(n), "state")).read().strip() for n in range(int(open(os.path.join(kd, "nr_kdamonds")).read()))]


pytestmark = pytest.mark.unit


def test_the_monitors_with_their_state_thread_and_sampling(tmp_path):
    admin = _tree(tmp_path, ["on", "off"])
    assert damon.monitors(admin) == [{"kdamond": 0, "state": "on", "pid": 100, "sample_us": 500000},
                                     {"kdamond": 1, "state": "off", "pid": None, "sample_us": 500000}]
    assert [m["kdamond"] for m in damon.running(damon.monitors(admin))] == [0]


def test_a_kernel_without_damon_reads_none_and_pauses_nothing(tmp_path):
    assert damon.monitors(str(tmp_path / "absent")) is None
    lines = []
    with damon.paused(admin=str(tmp_path / "absent"), log=lines.append) as done:
        assert done == []
    assert lines == ["--pause-damon: no DAMON monitor is on here; nothing to pause"]


def test_the_monitors_that_were_on_are_off_in_the_block_and_on_after_it(tmp_path):
    admin = _tree(tmp_path, ["on", "off", "on"])
    lines = []
    with damon.paused(admin=admin, log=lines.append) as done:
        assert done == [0, 2]
        assert _states(admin) == ["off", "off", "off"]
    assert _states(admin) == ["on", "off", "on"]
    assert "monitors 0, 2" in lines[0] and f"echo on > {admin}/kdamonds/2/state" in lines[0]


def test_the_monitors_are_on_again_when_the_block_fails(tmp_path):
    admin = _tree(tmp_path, ["on"])
    with pytest.raises(RuntimeError):
        with damon.paused(admin=admin):
            assert _states(admin) == ["off"]
            raise RuntimeError("the run failed")
    assert _states(admin) == ["on"]


def test_not_pausing_leaves_the_monitors_alone(tmp_path):
    admin = _tree(tmp_path, ["on"])
    with damon.paused(False, admin=admin) as done:
        assert done == [] and _states(admin) == ["on"]


def test_a_monitor_that_cannot_be_paused_is_one_line_and_the_others_are_on_again(tmp_path, monkeypatch):
    admin = _tree(tmp_path, ["on", "on"])
    real = damon._write

    def write(path, value):
        if path.endswith(os.path.join("1", "state")):
            raise PermissionError(13, "Permission denied")
        real(path, value)

    monkeypatch.setattr(damon, "_write", write)
    with pytest.raises(UsageError, match=r"--pause-damon cannot write .*kdamonds/1/state \(Permission denied\); run as root"):
        with damon.paused(admin=admin):
            pytest.fail("the block must not run")
    assert _states(admin) == ["on", "on"]


def test_sigterm_in_the_block_turns_the_monitors_on_again(tmp_path):
    admin = _tree(tmp_path, ["on"])
    code = ("import os, signal, sys, time\n"
            "from sockbench import damon\n"
            f"with damon.paused(admin={admin!r}):\n"
            "    print('paused', flush=True)\n"
            "    time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "paused\n"
        assert _states(admin) == ["off"]
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 143
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert _states(admin) == ["on"]


def test_the_note_names_the_monitors_on_and_the_option():
    on = [{"kdamond": 0, "state": "on", "pid": 84, "sample_us": 500000}]
    assert damon.note(on).startswith("the kernel's DAMON is on (kdamond 0 sampling every 500 ms)")
    assert "--pause-damon" in damon.note(on)
    assert damon.note([{"kdamond": 0, "state": "off"}]) == damon.note(None) == damon.note([]) == ""


def test_the_report_says_whether_damon_ran_and_warns_when_it_did():
    on = Machine(damon=[{"kdamond": 0, "state": "on", "pid": 84, "sample_us": 500000}])
    assert _tuning(on).endswith("DAMON on (kdamond 0)")
    assert _tuning(Machine(damon=[{"kdamond": 0, "state": "off"}]), [0]).endswith(
        "DAMON paused for the run (--pause-damon: kdamond 0)")
    assert _tuning(Machine(damon=[])).endswith("DAMON off")
    assert "DAMON" not in _tuning(Machine())

    class Results:
        def __init__(self, machine, rounds=()):
            self._m, self.results = machine, list(rounds)

        def machine_record(self):
            return self._m

    class Round:
        machine = on

    assert _damon_alert(Results(on)).startswith("The kernel's DAMON is on")
    assert _damon_alert(Results(Machine(damon=[]), [Round()])).startswith("The kernel's DAMON is on")
    assert _damon_alert(Results(Machine(damon=[]))) == ""


def test_compare_says_when_one_run_had_damon_on_and_the_other_paused():
    from sockbench.bench.report.compare import machine_notes

    on = Machine(cpu_model="x", damon=[{"kdamond": 0, "state": "on", "pid": 84, "sample_us": 500000}])
    paused_ = Machine(cpu_model="x", damon=[{"kdamond": 0, "state": "off", "pid": None, "sample_us": 500000}])
    assert machine_notes(on, paused_) == ["machine DAMON differs: A on, B off"]
    assert machine_notes(on, on) == [] and machine_notes(Machine(cpu_model="x"), paused_) == []


@pytest.mark.parametrize("argv", [["run"], ["ab", "uvloop", "uvloop"], ["load", "cython"]])
def test_the_commands_that_measure_take_pause_damon(argv):
    from sockbench.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(argv + ["--pause-damon"]).pause_damon is True
    assert parser.parse_args(argv).pause_damon is False
