"""Each load host's clock offset against the coordinator, measured by sockbench itself (NTP's exchange).

Why it is built this way: a load from several hosts starts every host at one
wall-clock instant, so the figures are only as aligned as the hosts' clocks.
Keeping the clocks in step is chrony's job (it does it to microseconds on a
LAN); sockbench's job is to check and record how far apart they were, so a
result says what its start alignment was worth.  It uses NTP's own
arithmetic over the channel it already has, Dask: the coordinator notes
``t0``, asks the host for its wall clock (``Client.run`` on that worker, which
runs in the worker's event loop, beside a task that is waiting), and notes
``t3`` when the answer is back.  The host's clock read ``t1`` somewhere in
between, so its offset is ``t1 - (t0 + t3) / 2``, within ``± (t3 - t0) / 2``.
Of several exchanges the one with the shortest round trip is kept (NTP's
clock filter): its bound is the tightest, and a round trip stretched by a
busy event loop tells nothing.  The offset is recorded, not applied: an
estimate good to a Dask round trip (about a millisecond) would make a
chrony-synchronised pair of hosts worse, not better.  An offset too large
for the window (``CLOCK_OFFSET_SHARE`` of it) is a warning.
"""

import time
from dataclasses import dataclass

from sockbench.thresholds import CLOCK_OFFSET_SHARE

__all__ = ["ClockSample", "sample", "best", "host_clock_ns", "measure_offsets", "too_large", "SAMPLES"]

#: exchanges per host; the shortest round trip is kept
SAMPLES = 8


@dataclass(frozen=True)
class ClockSample:
    """One exchange: the host's clock against the midpoint of the coordinator's send and receive."""

    offset_s: float  # host clock minus coordinator clock
    delay_s: float  # the round trip: the offset is known within +- delay_s / 2


def sample(t0_ns, t1_ns, t3_ns):
    """NTP's offset and round trip from the coordinator's send ``t0``, the host's clock ``t1`` and the receive ``t3``."""
    return ClockSample(offset_s=(t1_ns - (t0_ns + t3_ns) / 2) / 1e9, delay_s=(t3_ns - t0_ns) / 1e9)


def best(samples):
    """The sample with the shortest round trip (NTP's clock filter)."""
    return min(samples, key=lambda s: s.delay_s)


def host_clock_ns():
    """The host's wall clock (run on the host, by ``Client.run``)."""
    return time.time_ns()


def measure_offsets(client, addresses, samples=SAMPLES):
    """``{worker address: ClockSample}``: each host's offset from ``samples`` exchanges through ``client``."""
    out = {}
    for addr in addresses:
        got = []
        for _ in range(samples):
            t0 = time.time_ns()
            t1 = client.run(host_clock_ns, workers=[addr])[addr]
            t3 = time.time_ns()
            got.append(sample(t0, t1, t3))
        out[addr] = best(got)
    return out


def too_large(offset, window_s):
    """Whether a host's clock is off by more than ``CLOCK_OFFSET_SHARE`` of the window, even at its bound's best."""
    return abs(offset.offset_s) - offset.delay_s / 2 > CLOCK_OFFSET_SHARE * window_s
