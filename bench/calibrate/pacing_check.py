"""Open-loop pacing: does the harness send at the asked rate, and does its schedule drift?

Usage::

    python -m sockbench.bench.calibrate.pacing_check [--server cython] [--rate 50000] [--duration 30] [--runs 3]

Why it is built this way: an open-loop figure is only honest if the load
really arrived at the stated rate.  The harness computes every send time from
the message's index (``start + g / rate``), never by adding intervals, so it
cannot drift by construction; this script checks that claim from the outside
with the per-interval ``sent`` time series of the result JSON:

* achieved rate vs target over the whole window (the goal: within 1%);
* the first half vs the second half of the window (drift would show as a
  difference);
* the slope of a least-squares line through the per-interval sent counts,
  as a fraction of the rate over the whole run;
* the largest lag of the cumulative sent count behind the ideal schedule.

Several runs; medians and spread.  It stays out of the normal runs.  Each
run's figures are one ``PacingFigures`` read from the typed ``LoadResult``;
``--json`` writes the list of them with ``dataclasses.asdict``.
"""

import argparse
import statistics
import sys
from dataclasses import asdict, dataclass

from sockbench.bench.calibrate.common import field_names, fmt_spread, spread
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.jsonfile import write_json_atomic
from sockbench.servers import registry

__all__ = ["PacingFigures", "SUMMARY", "pacing_metrics", "json_document", "main"]


@dataclass(frozen=True)
class PacingFigures:
    """The pacing figures of one open-loop run (rates in msgs/s, drifts as fractions of the target rate)."""

    target_rate: float
    achieved_rate: float
    pacing_error: float
    first_half_rate: float
    second_half_rate: float
    half_drift: float
    slope_drift: float
    max_lag_ms: float
    latency_p50_us: float | None
    latency_p99_us: float | None
    service_p99_us: float | None
    client_cpu_util: float | None
    client_busy_util: float | None
    behind: bool | None
    valid: bool


_F = field_names(PacingFigures)
#: the figures summarised over the runs, with their format spec
SUMMARY = ((_F.pacing_error, "+.4%"), (_F.half_drift, "+.4%"), (_F.slope_drift, "+.4%"), (_F.max_lag_ms, ".3f"),
           (_F.latency_p50_us, ".1f"), (_F.latency_p99_us, ".1f"), (_F.service_p99_us, ".1f"),
           (_F.client_cpu_util, ".1%"), (_F.client_busy_util, ".1%"))


def pacing_metrics(result):
    """The pacing figures of one open-loop ``LoadResult``."""
    ts, tp = result.timeseries, result.throughput
    k0 = ts.warmup_intervals
    dt = ts.interval_s
    rate = tp.target_rate
    dur = result.workload.duration_s
    n = int(round(dur / dt))
    sent = ts.sent[k0 : k0 + n]
    half = len(sent) // 2
    first = sum(sent[:half]) / (half * dt)
    second = sum(sent[half:]) / ((len(sent) - half) * dt)
    xs = [i * dt for i in range(len(sent))]
    mx, my = statistics.fmean(xs), statistics.fmean(sent)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, sent)) / sum((x - mx) ** 2 for x in xs)  # msgs/interval per s
    cum, lag = 0, 0.0
    for i, s in enumerate(sent):
        cum += s
        lag = max(lag, rate * dt * (i + 1) - cum)
    return PacingFigures(
        target_rate=rate,
        achieved_rate=tp.achieved_rate,
        pacing_error=tp.pacing_error,
        first_half_rate=first,
        second_half_rate=second,
        half_drift=(second - first) / rate,
        slope_drift=slope / dt * dur / rate,
        max_lag_ms=lag / rate * 1000,
        latency_p50_us=result.latency_us.p50,
        latency_p99_us=result.latency_us.p99,
        service_p99_us=result.service_us.p99,
        client_cpu_util=result.client.cpu_util,
        client_busy_util=result.client.busy_util or result.client.cpu_util,
        behind=tp.behind,
        valid=result.valid,
    )


def json_document(runs):
    """The ``--json`` document: every run's figures, in order."""
    return [asdict(m) for m in runs]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sockbench.bench.calibrate.pacing_check", description=__doc__.split("\n")[0])
    default = "cython" if "cython" in registry.available_names() else "uvloop"
    ap.add_argument("--server", default=default)
    ap.add_argument("--rate", type=float, default=50000.0)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="also write every run's figures here")
    a = ap.parse_args(argv)
    runs = []
    for i in range(a.runs):
        m = pacing_metrics(run_load(LoadSpec(server=a.server, mode="open", conns=a.conns, size=64, rate=a.rate,
                                             duration_s=a.duration, warmup_s=a.warmup)))
        runs.append(m)
        print(f"run {i + 1}: achieved {m.achieved_rate:,.1f}/s ({m.pacing_error:+.4%}), halves "
              f"{m.first_half_rate:,.1f} / {m.second_half_rate:,.1f}, slope drift {m.slope_drift:+.4%}, "
              f"max lag {m.max_lag_ms:.3f} ms, p50 {m.latency_p50_us} µs p99 {m.latency_p99_us} µs, "
              f"client CPU {m.client_cpu_util:.0%} (busy {m.client_busy_util:.0%}), valid {m.valid}", file=sys.stderr)
    print(f"{a.server}: open loop, {a.conns} conns x 64 B, target {a.rate:,.0f} msgs/s, {a.duration:g} s, "
          f"{a.runs} runs, median [min..max]")
    for key, spec in SUMMARY:
        print(f"  {key:16s} {fmt_spread(spread([getattr(m, key) for m in runs]), spec)}")
    if a.json:
        write_json_atomic(a.json, json_document(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
