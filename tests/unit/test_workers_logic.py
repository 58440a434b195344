"""``servers.workers``: the CPU plan, the checks and the lines, without starting a server."""

import errno
import os
import signal

import pytest

from sockbench.errors import UsageError
from sockbench.servers import workers


def test_workers_take_the_allowed_cpus_in_order():
    assert workers.worker_cpus(2, {3, 1, 2}) == ([1, 2], None)
    assert workers.worker_cpus(1, {5}) == ([5], None)


def test_more_workers_than_cpus_go_round_robin_with_one_warning():
    cpus, warning = workers.worker_cpus(5, {0, 1})
    assert cpus == [0, 1, 0, 1, 0]
    assert warning == "warning: 5 workers on 2 CPUs (0,1): workers share CPUs"
    assert workers.worker_cpus(2, {7})[1] == "warning: 2 workers on 1 CPU (7): workers share CPUs"


@pytest.mark.parametrize("n", [0, -1, 1.5, "2", True, None])
def test_a_worker_count_below_1_or_not_whole_is_a_usage_error(n):
    with pytest.raises(UsageError) as e:
        workers.check_workers(n)
    assert e.value.exit_code == 2 and "--workers" in str(e.value) and "\n" not in str(e.value)


def test_a_good_worker_count_is_kept():
    assert workers.check_workers(8) == 8


def test_how_a_worker_ended_is_said_plainly():
    assert workers.describe_exit(int(signal.SIGKILL)) == "was killed by SIGKILL"  # waitpid's status for it
    assert workers.describe_exit(3 << 8) == "exited with status 3"
    assert workers.describe_exit(0) == "exited with status 0"


class _Refusing:
    def setsockopt(self, *args):
        raise OSError(errno.ENOPROTOOPT, os.strerror(errno.ENOPROTOOPT))


def test_so_reuseport_refused_or_missing_is_one_line(monkeypatch):
    assert workers.reuse_port_error() is None  # Linux has it
    why = workers.reuse_port_error(probe=_Refusing())
    assert why.startswith("SO_REUSEPORT is refused here") and "\n" not in why
    monkeypatch.delattr(workers.socket, "SO_REUSEPORT")
    assert workers.reuse_port_error().startswith("SO_REUSEPORT is not available on this system")


def test_listeners_refuse_more_than_one_tcp_worker_without_so_reuseport(monkeypatch):
    monkeypatch.delattr(workers.socket, "SO_REUSEPORT")

    def listen(*args, **kwargs):
        raise AssertionError("nothing is bound when the check fails")

    with pytest.raises(UsageError, match="SO_REUSEPORT is not available"):
        workers._listeners(2, listen, "tcp", None, 0, None, 128)


def test_the_harness_sums_the_workers_cpu_and_keeps_every_thread():
    # deferred import: the harness is heavier than the rest of this module needs
    from sockbench.bench.load.harness import _add_samples, server_cpu

    first = (1.0, 2.0, {10: 2.5})
    more = [(0.5, 0.5, {20: 1.0}), (0.0, 1.0, {30: 0.9})]
    assert _add_samples(first, more) == (1.5, 3.5, {10: 2.5, 20: 1.0, 30: 0.9})
    assert _add_samples(first, [None]) is None, "a worker that was not read: no figure rather than a short one"
    assert _add_samples((1.0, 2.0, {}), more) == (1.5, 3.5, {}), "no threads read: the ticks are used"
    later = _add_samples((2.0, 4.0, {10: 5.5}), [(1.5, 0.5, {20: 2.0}), (0.0, 2.0, {30: 1.9})])
    user, sys_, source = server_cpu(_add_samples(first, more), later)
    assert source == "schedstat" and user + sys_ == pytest.approx(3.0 + 1.0 + 1.0)


# --- the scaling dimension of a run, and the scaling script's CPUs --------------------------------


def test_a_plan_runs_every_cell_at_each_worker_count_and_only_other_counts_change_ids():
    from sockbench.bench.schema import Cell
    from sockbench.bench.suite.plan import quick_plan

    one = quick_plan(["cython"])
    both = quick_plan(["cython"], workers=(1, 2))
    assert [c for c in both.cells() if c.workers == 1] == one.cells(), "workers 1 is the run without the dimension"
    twos = [c for c in both.cells() if c.workers == 2]
    assert [c.id for c in twos] == [c.id + "-w2" for c in one.cells()]
    assert Cell("cython", "closed", 64, 10, workers=2).describe().endswith("· 2 workers")
    assert both.min_estimate_s() == pytest.approx(2 * one.min_estimate_s())


@pytest.mark.parametrize("counts", [(0,), (1, 1), ()])
def test_a_bad_worker_dimension_is_one_line(counts):
    from sockbench.bench.suite.plan import quick_plan

    with pytest.raises(UsageError) as e:
        quick_plan(["cython"], workers=counts)
    assert "--workers" in str(e.value) or "worker count" in str(e.value)


def test_a_result_and_its_cell_carry_the_worker_count_and_old_files_read_as_one():
    from sockbench.bench.schema import Cell, CellContext, Workload

    w = Workload.from_json({"mode": "closed", "conns": 10, "size": 64, "workers": 2})
    assert w.workers == 2 and w.to_json()["workers"] == 2
    assert Workload.from_json({"mode": "closed", "conns": 10, "size": 64}).workers == 1
    cell = Cell("uvloop", "closed", 64, 10, workers=4)
    ctx = CellContext.of(cell, 1, 3, 0)
    assert CellContext.from_json(ctx.to_json(), w).cell == cell


def test_the_scaling_script_gives_the_servers_their_own_cpus_when_there_are_enough():
    from sockbench.bench.calibrate.scaling import default_cpus

    assert default_cpus(range(16), 8) == (tuple(range(8)), tuple(range(8, 16)), False)
    assert default_cpus({0, 1}, 2) == ((0, 1), (1,), True), "two cores: the client shares the last one"
