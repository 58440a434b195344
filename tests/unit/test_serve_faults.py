"""The parts every server shares for faults, in process: ports, peers, accept errors, limits, the backlog.

The conformance suite (tests/conformance/test_faults.py) checks each server
from outside; these pin down the shared rules themselves.
"""

import errno

import pytest

from sockbench.errors import UsageError
from sockbench.servers import contract
from sockbench.servers.contract import AcceptErrors, Limits, format_peer, system_backlog
from sockbench.units import parse_port


@pytest.mark.parametrize("text, port", [("0", 0), ("1", 1), ("8080", 8080), (" 65535 ", 65535), (443, 443)])
def test_parse_port_accepts_0_to_65535(text, port):
    assert parse_port(text, name="--port") == port


@pytest.mark.parametrize("text", ["65536", "99999", "-1", "", "http", "80.5", "0x50"])
def test_parse_port_refuses_the_rest_in_one_line(text):
    with pytest.raises(UsageError) as info:
        parse_port(text, name="--port")
    assert str(info.value) == f"bad --port {text!r}; use a port from 0 to 65535 (0 picks a free one)"
    assert info.value.exit_code == 2


@pytest.mark.parametrize("addr, text", [
    (("127.0.0.1", 5000), "127.0.0.1:5000"),
    (("::1", 5000, 0, 0), "[::1]:5000"),
    (("fe80::1%eth0", 80, 0, 2), "[fe80::1%eth0]:80"),
    (["10.0.0.1", 1], "10.0.0.1:1"),
    (None, "an unknown peer"),
])
def test_one_spelling_of_a_peer(addr, text):
    assert format_peer(addr) == text


def test_log_lines_are_one_line_each(capsys):
    contract.log_closing("selectors", ("127.0.0.1", 9), "unexpected error: ValueError: two\nlines")
    err = capsys.readouterr().err
    assert err == "sockbench serve selectors: closing 127.0.0.1:9: unexpected error: ValueError: two lines\n"


def test_unexpected_names_the_type_and_cuts_a_long_message():
    assert contract.unexpected(RecursionError("deep")) == "unexpected error: RecursionError: deep"
    assert contract.unexpected(KeyError()) == "unexpected error: KeyError"
    assert len(contract.unexpected(ValueError("x" * 5000))) < 300


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(contract.time, "monotonic", c)
    return c


def test_accept_errors_pause_and_say_so_at_most_once_a_second(clock, capsys):
    errors = AcceptErrors("blocking")
    emfile = OSError(errno.EMFILE, "Too many open files")
    assert errors.pause_for(emfile) == contract.ACCEPT_PAUSE_S
    for _ in range(9):
        clock.now += 0.1
        assert errors.pause_for(emfile) == contract.ACCEPT_PAUSE_S
    clock.now += 0.15
    errors.pause_for(emfile)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == ("sockbench serve blocking: cannot accept connections: Too many open files (EMFILE); raise the "
                        "open-file limit (ulimit -n); accepting pauses while it lasts, open connections are still served")
    assert lines[1].endswith("(9 more times since the last line)")


@pytest.mark.parametrize("code", [errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR])
def test_accept_errors_of_one_connection_skip_it_silently(code, capsys):
    assert AcceptErrors("x").pause_for(OSError(code, "gone")) == 0.0
    assert capsys.readouterr().err == ""


def test_accept_errors_pause_on_anything_unexpected(capsys):
    assert AcceptErrors("x").pause_for(RuntimeError("can't start new thread")) == contract.ACCEPT_PAUSE_S
    assert "unexpected error: RuntimeError: can't start new thread" in capsys.readouterr().err


def test_limits_idle_clock_restarts_on_progress(clock):
    limits = Limits(idle_timeout=2.0)
    assert limits.sweep_s == 0.5
    limits.opened("a")
    limits.opened("b")
    clock.now += 1.5
    limits.progress("a")
    clock.now += 0.6
    assert limits.idle() == ["b"]
    assert limits.idle() == [], "an idle connection is returned once"
    clock.now += 1.5
    assert limits.idle() == ["a"]
    assert limits.idle_reason == "no complete message for 2 s (--idle-timeout)"


def test_limits_sweep_is_a_quarter_of_the_timeout_at_most_a_second():
    assert Limits(idle_timeout=0.4).sweep_s == 0.1
    assert Limits(idle_timeout=60).sweep_s == 1.0
    assert Limits(max_buffered=10).sweep_s is None


def test_limits_hold_refuses_the_connection_that_would_exceed_the_cap():
    limits = Limits(max_buffered=100)
    assert limits.hold("a", 60)
    assert not limits.hold("b", 41), "60 + 41 is over 100"
    assert limits.held() == 60, "the refused connection holds nothing"
    assert limits.hold("b", 40)
    assert limits.hold("a", 10), "a connection's own count is replaced, not added to"
    assert limits.held() == 50
    limits.forget("b")
    assert limits.held() == 10
    assert limits.hold("c", 90)
    assert limits.buffered_reason == "partial messages would hold more than 100 bytes in all (--max-buffered)"


def test_system_backlog_is_somaxconn(monkeypatch, tmp_path):
    path = tmp_path / "somaxconn"
    path.write_text("4096\n")
    monkeypatch.setattr(contract, "_SOMAXCONN_PATH", str(path))
    assert system_backlog() == 4096
    monkeypatch.setattr(contract, "_SOMAXCONN_PATH", str(tmp_path / "missing"))
    assert system_backlog() == contract.socket.SOMAXCONN
