"""bench/calibrate/vs_sockperf.py end to end: one short round against the real sockperf (skipped without it)."""

import os
import shutil

import pytest

from sockbench.bench.calibrate import vs_sockperf
from sockbench.servers import registry

pytestmark = [pytest.mark.skipif(shutil.which("sockperf") is None,
                                 reason=f"sockperf is not installed ({vs_sockperf.INSTALL_HINT})"),
              pytest.mark.slow]  # about 10 s: sockperf's own rounds over udp and tcp


def test_one_round_over_udp_and_tcp():
    if not registry.SERVERS["cython"].availability()[0]:
        pytest.skip("the cython server is not built")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    out, rows = vs_sockperf.compare(1, 0.2, 1.0, server_cpu=cpus[0], client_cpu=cpus[1])
    assert set(out) == {"udp", "tcp"} and len(rows) == 2
    for s in out.values():
        assert s.sockperf_p50_us.median > 0 and s.harness_p50_us.median > 0 and s.ratio.median > 0
        assert s.within_target in (True, False)
