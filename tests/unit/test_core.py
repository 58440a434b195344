"""The core everything may use: value parsers, the atomic JSON writer and its pre-flight check, time stamps."""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from sockbench.errors import SockbenchError, UsageError
from sockbench.jsonfile import check_writable, write_json_atomic
from sockbench.timestamps import folder_stamp, iso_utc
from sockbench.units import format_size, parse_cpus, parse_number, parse_percent, parse_size


def test_sizes_round_trip_and_bad_sizes_name_the_option():
    assert [parse_size(x) for x in ("64", "1k", "16K", "1m", "2KiB")] == [64, 1024, 16384, 1 << 20, 2048]
    assert [format_size(n) for n in (64, 1024, 16384, 1 << 20, 1500)] == ["64B", "1KiB", "16KiB", "1MiB", "1500B"]
    with pytest.raises(UsageError, match=r"bad --size '12q'; use bytes"):
        parse_size("12q", name="--size")
    with pytest.raises(UsageError, match="at least 1 byte"):
        parse_size("0")


def test_numbers_cpus_and_percentages():
    assert parse_number("3", kind=int, name="--conns") == 3 and parse_number("0.5") == 0.5
    with pytest.raises(UsageError, match=r"bad --conns 'ten'; use a whole number"):
        parse_number("ten", kind=int, name="--conns")
    with pytest.raises(UsageError, match=r"> 0"):
        parse_number("0", kind=int, name="--rounds", positive=True)
    with pytest.raises(UsageError):
        parse_number("nan")
    assert parse_cpus("0") == (0,) and parse_cpus("3,1-2") == (1, 2, 3)
    for bad in ("", "a", "3-1", "-1"):
        with pytest.raises(UsageError):
            parse_cpus(bad)
    assert parse_percent("5%") == pytest.approx(0.05) and parse_percent("12.5") == pytest.approx(0.125)
    for bad in ("-3%", "100", "lots"):
        with pytest.raises(UsageError):
            parse_percent(bad)


def test_atomic_writer_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    assert path.read_text().endswith("\n")
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]


def test_check_writable_refuses_what_cannot_be_written(tmp_path):
    check_writable(tmp_path / "new" / "r.json")  # the folder is created
    assert (tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []
    with pytest.raises(SockbenchError, match="it is a folder"):
        check_writable(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SockbenchError, match=r"cannot write --json .*choose another path") as e:
        check_writable(blocker / "r.json", "--json")  # a path under a file
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_time_stamps():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", iso_utc())
    assert re.fullmatch(r"\d{8}T\d{6}Z", folder_stamp())


def test_load_checks_its_json_path_before_measuring(tmp_path):
    """An unwritable --json fails in well under the run's duration, with one line and exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "sockbench", "load", "selectors", "--duration", "30",
                        "--json", str(blocker / "r.json")], capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 15
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "cannot write --json" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_fd_limit_advice_names_procs_only_when_more_processes_would_help():
    from sockbench.bench.load.harness import nofile_advice
    from sockbench.bench.load.spec import LoadSpec
    from sockbench.bench.load.worker import FD_HEADROOM

    room = 100  # a hard limit leaving room for 100 connections per load process
    hard = room + FD_HEADROOM
    closed = LoadSpec(server="cython", conns=250, procs=1)
    assert nofile_advice(closed, hard).startswith("use --procs 3 or more")  # ceil(250 / 100)
    connect = LoadSpec(server="cython", mode="connect", conns=250)
    assert "--procs" not in nofile_advice(connect, hard) and f"at most {room} --conns" in nofile_advice(connect, hard)
    # a limit below even one connection's need: only raising it helps
    advice = nofile_advice(closed, FD_HEADROOM)
    assert "--procs" not in advice and f"at least {FD_HEADROOM + 1}" in advice
