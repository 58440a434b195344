"""The report in a real browser: headless Chromium at 1024 px (and at a phone's width) must not scroll sideways.

The page has no script of its own; the test adds one line that writes the
page's scroll width into its title, and reads it back from ``--dump-dom``.
Skipped only when no Chromium can be found (``.ci/run`` installs it where it
can).
"""

import os
import re
import shutil
import subprocess

import pytest

from report_fixture import make_results
from sockbench.bench.report.document import build_report
from sockbench.bench.suite.plan import Plan
from sockbench.servers.registry import SERVERS

#: a headless Chromium takes 5-13 s a page on the 2-core machine
pytestmark = pytest.mark.slow

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PROBE = ('<script>var n=0;document.querySelectorAll(".tw").forEach(function(e){if(e.scrollWidth>e.clientWidth)n++});'
         'document.title=document.documentElement.scrollWidth+" "+window.innerWidth+" "+n</script></body>')


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(f"no Chromium on PATH (looked for {', '.join(BROWSERS)}); apt-get install -y chromium")


def _widths(browser, html, width, tmp_path):
    probe = tmp_path / f"probe{width}.html"
    probe.write_text(html.replace("</body>", PROBE))
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          f"--window-size={width},900", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>(\d+) (\d+) (\d+)</title>", out.stdout)
    assert m, out.stderr[-2000:]
    return tuple(int(x) for x in m.groups())


@pytest.mark.parametrize("width", [1024, 500])
def test_the_report_never_scrolls_sideways(tmp_path, width):
    browser = _browser()
    d = make_results(str(tmp_path / "r"), servers=("blocking", "selectors", "asyncio-streams", "asyncio-protocol",
                                                   "uvloop", "cython-protocol", "cython"))
    html = open(build_report(d)["html"]).read()
    scroll, inner, overflowing = _widths(browser, html, width, tmp_path)
    assert inner == width or width < 1024  # a headless window may not go below 500 px
    assert scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"
    if width >= 1024:
        assert overflowing == 0, f"{overflowing} table(s) scroll inside their box at {width} px"
    assert os.path.getsize(os.path.join(d, "report.html")) < 1_000_000


def test_a_report_with_every_section_and_every_server_fits_1024_px(tmp_path):
    """Every registered server, every section the report has (protocols, open loop, transports with udp's loss
    column, worker counts, TLS, interpreters): the widest report there is still fits the window, its tables
    included."""
    browser = _browser()
    names = tuple(SERVERS)
    # one size and one connection count keep it to ~200 cells (a run of every dimension's widest tables)
    plan = Plan(servers=names, sizes=(64,), conns=(100,), open_pcts=(75,), protocols=("raw", "json"),
                transports=("tcp", "unix", "udp"), duration_s=1.0, warmup_s=0.2, interval_s=0.1,
                workers=(1, 2), server_cpus=(0, 1), tls=(False, True),
                pythons=({"label": "3.11", "python": "python3.11", "version": "CPython 3.11.9"},
                         {"label": "3.13", "python": "python3.13", "version": "CPython 3.13.0"}),
                python_servers=("asyncio-protocol", "cython"))
    d = make_results(str(tmp_path / "r"), plan=plan, rounds=3)
    report = build_report(d)
    assert all(v is not None for v in report["sections"].values()), report["sections"]
    html = open(report["html"]).read()
    scroll, inner, overflowing = _widths(browser, html, 1024, tmp_path)
    assert scroll <= inner, f"the page is {scroll} px wide in a {inner} px window"
    assert overflowing == 0, f"{overflowing} table(s) scroll inside their box at 1024 px"
    assert os.path.getsize(os.path.join(d, "report.html")) < 3_000_000
