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

Several runs; medians and spread.  It stays out of the normal runs.
"""

import argparse
import statistics
import sys

from sockbench.bench.calibrate.common import fmt_spread, spread
from sockbench.bench.load.harness import LoadSpec, run_load
from sockbench.jsonfile import write_json_atomic
from sockbench.servers import registry

__all__ = ["pacing_metrics", "main"]


def pacing_metrics(result):
    """The pacing figures of one open-loop result dict."""
    ts = result["timeseries"]
    k0 = ts["warmup_intervals"]
    dt = ts["interval_s"]
    rate = result["throughput"]["target_rate"]
    dur = result["workload"]["duration_s"]
    n = int(round(dur / dt))
    sent = ts["sent"][k0 : k0 + n]
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
    return {
        "target_rate": rate,
        "achieved_rate": result["throughput"]["achieved_rate"],
        "pacing_error": result["throughput"]["pacing_error"],
        "first_half_rate": first,
        "second_half_rate": second,
        "half_drift": (second - first) / rate,
        "slope_drift": slope / dt * dur / rate,
        "max_lag_ms": lag / rate * 1000,
        "latency_p50_us": result["latency_us"]["p50"],
        "latency_p99_us": result["latency_us"]["p99"],
        "service_p99_us": result["service_us"]["p99"],
        "client_cpu_util": result["client"]["cpu_util"],
        "client_busy_util": result["client"]["busy_util"] or result["client"]["cpu_util"],
        "behind": result["throughput"]["behind"],
        "valid": result["valid"],
    }


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
        r = run_load(LoadSpec(server=a.server, mode="open", conns=a.conns, size=64, rate=a.rate,
                              duration_s=a.duration, warmup_s=a.warmup)).to_json()
        m = pacing_metrics(r)
        runs.append(m)
        print(f"run {i + 1}: achieved {m['achieved_rate']:,.1f}/s ({m['pacing_error']:+.4%}), halves "
              f"{m['first_half_rate']:,.1f} / {m['second_half_rate']:,.1f}, slope drift {m['slope_drift']:+.4%}, "
              f"max lag {m['max_lag_ms']:.3f} ms, p50 {m['latency_p50_us']} µs p99 {m['latency_p99_us']} µs, "
              f"client CPU {m['client_cpu_util']:.0%} (busy {m['client_busy_util']:.0%}), valid {m['valid']}", file=sys.stderr)
    print(f"{a.server}: open loop, {a.conns} conns x 64 B, target {a.rate:,.0f} msgs/s, {a.duration:g} s, "
          f"{a.runs} runs, median [min..max]")
    for key, spec in (("pacing_error", "+.4%"), ("half_drift", "+.4%"), ("slope_drift", "+.4%"),
                      ("max_lag_ms", ".3f"), ("latency_p50_us", ".1f"), ("latency_p99_us", ".1f"),
                      ("service_p99_us", ".1f"), ("client_cpu_util", ".1%"), ("client_busy_util", ".1%")):
        print(f"  {key:16s} {fmt_spread(spread([m[key] for m in runs]), spec)}")
    if a.json:
        write_json_atomic(a.json, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
