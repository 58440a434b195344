"""``sockbench ab`` end to end: real servers and load, its folder, its exit statuses, its one-line errors.

Only the mechanics are asserted (a verdict on this machine depends on the
machine; ``bench/suite/ab.py``'s rules are proven on a synthetic load in
``tests/unit/test_ab.py``): the folder holds every round, the rounds are
paired by pass, the report builds from it, and bad input is one line, exit
2, with no folder left behind.
"""

import json
import os
import subprocess
import sys

import pytest

from sockbench.bench.report.document import build_report
from sockbench.bench.report.store import load_results

pytest.importorskip("sockbench.ext.loadgen", reason="the load generator is not built (pip install -e .)")
if not {0, 1} <= os.sched_getaffinity(0):
    pytest.skip("needs CPUs 0 and 1", allow_module_level=True)

pytestmark = pytest.mark.slow


def _ab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sockbench", "ab", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_the_same_server_twice_writes_every_round_paired_and_reports(tmp_path):
    out = str(tmp_path / "ab")
    done = _ab("uvloop", "uvloop", "--sizes", "64", "--min-pairs", "6", "--max-pairs", "6", "--duration", "0.1",
               "--warmup", "0.05", "--seed", "5", "--out", out, "--json")
    assert done.returncode in (0, 1), done.stderr
    verdicts = json.loads(done.stdout)
    assert [r["workload"] for r in verdicts["rows"]] == ["closed-64B-c100"] and verdicts["a"] == "A-uvloop"
    row = verdicts["rows"][0]
    assert row["verdict"] in ("same", "slower", "faster", "undecided (needs more rounds)")
    assert row["pairs"] + row["left_out_pairs"] == 6
    if done.returncode == 1:
        assert row["verdict"] == "slower"  # the exit status says what the verdict says
    results = load_results(out)
    a, b = results.cells[("A-uvloop", "closed-64B-c100")], results.cells[("B-uvloop", "closed-64B-c100")]
    assert [r.pass_no for r in a.results] == [r.pass_no for r in b.results] == list(range(1, 7))
    assert all(r.server_proc.user_s is not None and r.interference.canary is not None for r in a.results)
    assert results.meta.kind == "sockbench-ab" and results.meta.seed == 5 and results.meta.baseline == "A-uvloop"
    md = open(build_report(out)["md"]).read()
    assert "vs A-uvloop" in md
    assert json.load(open(os.path.join(out, "ab.json")))["rows"][0]["verdict"] == row["verdict"]


@pytest.mark.parametrize("args,message", [
    (["uvloop", "nosuch"], "unknown server 'nosuch'"),
    (["uvloop", "127.0.0.1:9"], "connection refused by 127.0.0.1:9"),
    (["127.0.0.1:7000", "unix:/tmp/sockbench-no-such.sock"], "speaks tcp and B (unix:/tmp/sockbench-no-such.sock) unix"),
    (["uvloop", "cython-protocol", "--protocol", "json"], "does not speak --protocol json"),
    (["--rev", "no-such-revision-x", "HEAD", "uvloop"], "revision 'no-such-revision-x' is not a commit"),
    (["uvloop"], "give two targets A B"),
])
def test_bad_input_is_one_line_exit_2_and_no_folder(tmp_path, args, message):
    out = tmp_path / "ab"
    done = _ab(*args, "--out", str(out))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr and not out.exists()
