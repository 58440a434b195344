"""What ``sockbench check`` shows and writes: a table per target and transport, JSON, and JUnit XML for CI.

The JSON document (``to_json``) is owned here, as the result JSON is owned by
``bench/schema.py``: ``{"schema": 1, "kind": "sockbench-check", "passed": bool,
"runs": [CheckRun.to_json(), ...]}``.  The JUnit XML is the shape CI
services read (Jenkins, GitLab, GitHub's test reporters): one ``testsuite`` per
target and transport, one ``testcase`` per check, a ``failure`` with what was
seen, ``skipped`` with why a check does not apply.
"""

import xml.etree.ElementTree as ET

from sockbench.bench.check.base import FAIL, NA, PASS

__all__ = ["to_json", "junit_xml", "table", "CHECK_SCHEMA"]

CHECK_SCHEMA = 1
_STYLE = {PASS: "green", FAIL: "bold red", NA: "dim"}


def to_json(runs):
    return {"schema": CHECK_SCHEMA, "kind": "sockbench-check", "passed": not any(r.failed for r in runs),
            "runs": [r.to_json() for r in runs]}


def junit_xml(runs):
    """The runs as JUnit XML text."""
    root = ET.Element("testsuites", name="sockbench check", tests=str(sum(len(r.outcomes) for r in runs)),
                      failures=str(sum(r.failed for r in runs)), time=f"{sum(r.seconds for r in runs):.3f}")
    for r in runs:
        suite = ET.SubElement(root, "testsuite", name=f"{r.target} {r.transport} {r.protocol}",
                              tests=str(len(r.outcomes)), failures=str(r.failed), skipped=str(r.count(NA)),
                              errors="0", time=f"{r.seconds:.3f}")
        props = ET.SubElement(suite, "properties")
        for k, v in (("target", r.description), ("transport", r.transport), ("protocol", r.protocol),
                     ("started_by_sockbench", str(r.started).lower())):
            ET.SubElement(props, "property", name=k, value=v)
        for o in r.outcomes:
            case = ET.SubElement(suite, "testcase", classname=f"sockbench.check.{r.target}.{r.transport}",
                                 name=o.name, time=f"{o.seconds:.3f}")
            if o.status == FAIL:
                ET.SubElement(case, "failure", message=o.detail[:500], type="nonconformance").text = o.detail
            elif o.status == NA:
                ET.SubElement(case, "skipped", message=o.detail[:500])
            elif o.detail:
                ET.SubElement(case, "system-out").text = o.detail
        if r.notes:
            ET.SubElement(suite, "system-err").text = "\n".join(r.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def table(run):
    """A rich table of one run's outcomes, titled with the target, transport, protocol and counts."""
    # deferred: rich, imported when a check is shown (the library's users need not have a console)
    from rich.table import Table
    from rich.text import Text

    title = f"sockbench check {run.description} over {run.transport}" + (
        f", --protocol {run.protocol}" if run.protocol != "raw" else "")
    t = Table(title=title, caption=run.summary(), box=None, show_edge=False, title_justify="left",
              caption_justify="left")
    t.add_column("check", style="bold", no_wrap=True)
    t.add_column("result", no_wrap=True)
    t.add_column("s", justify="right", no_wrap=True)
    t.add_column("what was seen")
    for o in run.outcomes:
        t.add_row(o.name, Text(o.status.upper(), style=_STYLE[o.status]), f"{o.seconds:.2f}" if o.status != NA else "",
                  Text(o.detail, style="red" if o.status == FAIL else ("dim" if o.status == NA else "")))
    return t
