"""bench/calibrate/vs_sockperf.py: the parsing of sockperf's output (fixture text), and its one line without sockperf."""

import shutil

import pytest

from sockbench.bench.calibrate import vs_sockperf
from sockbench.errors import SockbenchError

#: sockperf 3.7 ping-pong with --full-rtt, colour codes and all, as it prints it
FULL_RTT = """\
sockperf: == version #3.7-no.git ==
sockperf[CLIENT] send on:sockperf: using recvfrom() to block on socket(s)

[ 0] IP = 127.0.0.1       PORT = 11711 # UDP
sockperf: Warmup stage (sending a few dummy messages)...
sockperf: Starting test...
sockperf: Test end (interrupted by timer)
sockperf: Test ended
sockperf: [Total Run] RunTime=2.000 sec; Warm up time=400 msec; SentMessages=14341; ReceivedMessages=14340
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=1.535 sec; SentMessages=11058; ReceivedMessages=11058
sockperf: \x1b[2;35m====> avg-rtt=138.615 (std-dev=458.717)\x1b[0m
sockperf: # dropped messages = 3; # duplicated messages = 1; # out-of-order messages = 2
sockperf: Summary: Round trip is 138.615 usec
sockperf: \x1b[2;35mTotal 11058 observations\x1b[0m; each percentile contains 110.58 observations
sockperf: ---> <MAX> observation = 8117.470
sockperf: ---> percentile 99.999 = 8117.470
sockperf: ---> percentile 99.000 = 2979.892
sockperf: ---> percentile 90.000 =  132.673
sockperf: ---> percentile 50.000 =   61.713
sockperf: ---> percentile 25.000 =   54.535
sockperf: ---> <MIN> observation =   14.464
"""

#: the same without --full-rtt: sockperf prints half round trips ("latency")
HALF = """\
sockperf: ====> avg-latency=10.250 (std-dev=1.100)
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Latency is 10.250 usec
sockperf: Total 5000 observations; each percentile contains 50.00 observations
sockperf: ---> <MAX> observation =   40.000
sockperf: ---> percentile 50.000 =    9.500
"""


def test_parse_full_rtt():
    f = vs_sockperf.parse_sockperf(FULL_RTT)
    assert f.p50_rtt_us == pytest.approx(61.713)
    assert f.avg_rtt_us == pytest.approx(138.615)
    assert f.max_rtt_us == pytest.approx(8117.470)
    assert (f.observations, f.dropped, f.duplicated, f.out_of_order) == (11058, 3, 1, 2)


def test_parse_half_round_trips_are_doubled():
    f = vs_sockperf.parse_sockperf(HALF)
    assert f.p50_rtt_us == pytest.approx(19.0) and f.avg_rtt_us == pytest.approx(20.5)
    assert f.max_rtt_us == pytest.approx(80.0) and f.observations == 5000


def test_output_without_figures_is_one_line():
    with pytest.raises(SockbenchError) as e:
        vs_sockperf.parse_sockperf("sockperf: ERROR: Message received was larger than expected\n")
    assert "no latency figures" in str(e.value) and "larger than expected" in str(e.value)


def test_missing_sockperf_is_one_line_exit_2(monkeypatch, capsys):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SockbenchError) as e:
        vs_sockperf.find_sockperf()
    assert e.value.exit_code == 2 and "apt-get install -y sockperf" in str(e.value)
    assert vs_sockperf.main(["--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sockperf is not installed" in err
