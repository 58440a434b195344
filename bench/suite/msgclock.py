"""A virtual clock for pytest-benchmark, so that its statistics are about messages, not wall time.

Why it exists: pytest-benchmark times the function it is given.  One round of
the suite is one fixed-duration load run, so its wall time is the same for
every server and says nothing.  The suite therefore gives the benchmark
fixture this clock (``@pytest.mark.benchmark(timer=msgclock.clock)``, the
plugin's documented per-test timer option).  It only moves when the suite
hands a measured round to the plugin (``advance``), by the figure that round
measured, so it does not matter that a cell's rounds are measured before the
plugin is given them (``test_echo_bench``: their number is known only then):

* closed loop: the seconds per message, ``1 / msgs_per_s``.  pytest-benchmark's
  ``ops`` column is then msgs/s, and ``pytest-benchmark compare`` compares
  throughput;
* open loop: the round's p99 latency in seconds (the offered rate is fixed, so
  latency is what the round measured).

``pedantic`` mode never calibrates the timer, so a clock that stands still
between rounds is safe.  The real figures, all of them, are in ``extra_info``.
"""

__all__ = ["clock", "advance"]

_now = 0.0


def clock():
    """The virtual time in seconds."""
    return _now


def advance(seconds):
    """Move the clock forward by one round's measured figure (seconds, > 0)."""
    global _now
    if not seconds > 0:
        raise ValueError(f"the message clock only moves forward, not by {seconds!r}")
    _now += float(seconds)
