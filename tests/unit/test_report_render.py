"""Tests of the report's document model and its two renderers (Markdown and self-contained HTML).

The report's own content is tested in test_report.py; here, hostile text
(table pipes, markup characters, HTML tags) must come out as literal text in
both formats, and both formats must carry the same blocks.
"""

import base64
import re

import pytest
from markdown_it import MarkdownIt  # comes with rich

from sockbench.bench.report.blocks import (
    Alert, Code, Document, Emph, Heading, Image, KeyValues, Paragraph, Row, Strong, Table, WarningList,
)
from sockbench.bench.report.render import md_escape, to_html, to_markdown

HOSTILE = "a|b *c* _d_ <script>alert('x')</script> [e](f) `g` & h \\ i"
HELP = {"INVALID": "do not quote it", "UNSTABLE": "re-run <quietly>"}
PNG = b"\x89PNG\r\n\x1a\nnot really a png"


def _md_html(text):
    return MarkdownIt("commonmark").enable("table").render(text)


def _doc(tmp_path):
    (tmp_path / "plots").mkdir(exist_ok=True)
    (tmp_path / "plots" / "p.png").write_bytes(PNG)
    return Document("title & <co>", flag_help=HELP).add(
        Alert("INCOMPLETE: " + HOSTILE),
        KeyValues((("machine", HOSTILE), ("commit", "abc"))),
        Heading(2, "Warnings"),
        WarningList((("INVALID", HOSTILE), ("UNSTABLE", "s2"), ("INVALID", "s3"))),
        Paragraph(("lead ", Emph("vs fastest"), " and ", Strong("bold"), " and ", Code("sockbench `report`")), "note"),
        Heading(3, HOSTILE),
        Table(("server", "msgs/s", "flags"), (Row(("s1", HOSTILE, "ok")), Row(("s2", "2", "INVALID UNSTABLE"), ("INVALID", "UNSTABLE"))),
              flag_column=2),
        Image("plots/p.png", "a plot"),
    )


def test_markdown_escapes_so_text_renders_literally(tmp_path):
    md = to_markdown(_doc(tmp_path))
    rendered = _md_html(md)
    # the hostile text comes back as text, never as markup, a link or an extra table column
    assert "<script>" not in rendered and "<em>c</em>" not in rendered and "<a " not in rendered
    assert "a|b *c* _d_ &lt;script&gt;alert('x')&lt;/script&gt; [e](f) `g` &amp; h \\ i" in rendered
    table = re.search(r"<table>.*?</table>", rendered.split("<h3>")[1], re.S).group(0)
    assert all(row.count("<td") == 3 for row in re.findall(r"<tr>.*?</tr>", table, re.S)[1:])
    # the document's own markup does render
    assert "<em>vs fastest</em>" in rendered and "<strong>bold</strong>" in rendered
    assert "<code>sockbench `report`</code>" in rendered
    assert "<td><strong>INVALID UNSTABLE</strong></td>" in rendered  # a flagged row's flags stand out
    assert '<img src="plots/p.png" alt="a plot" />' in rendered
    assert md.startswith("# title \\& \\<co\\>\n\n> **INCOMPLETE: ")


def test_markdown_warning_list_and_legend(tmp_path):
    md = to_markdown(_doc(tmp_path))
    assert "- **INVALID** s3\n" in md and "- **UNSTABLE** s2\n" in md
    # one legend line per flag present, in order, each a hard line break
    assert "*INVALID*: do not quote it.  \n*UNSTABLE*: re-run \\<quietly\\>.  \n" in md


def test_md_escape_leaves_plain_text_alone():
    plain = "closed loop · 64B messages · 100 connections: client CPU 98% (1.00×, n=3)"
    assert md_escape(plain) == plain
    assert md_escape("a|b") == "a\\|b"


def test_html_escapes_and_is_self_contained(tmp_path):
    out = to_html(_doc(tmp_path), str(tmp_path))
    assert "<script>" not in out and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in out
    assert "<title>title &amp; &lt;co&gt;</title>" in out and "<h1>title &amp; &lt;co&gt;</h1>" in out
    assert '<p class="banner">INCOMPLETE: a|b' in out
    assert '<table class="settings">' in out and "<tr><th>commit</th><td>abc</td></tr>" in out
    assert '<p class="note">lead <i>vs fastest</i> and <b>bold</b> and <code>sockbench `report`</code></p>' in out
    # flags: the row is marked, the flag column holds badges that explain themselves; an unflagged row says ok
    # (each cell names its column, for the narrow-screen layout)
    assert ('<tr class="flagged"><td data-label="server">s2</td><td data-label="msgs/s">2</td><td data-label="flags">'
            '<span class="flag INVALID" title="do not quote it">INVALID</span>'
            '<span class="flag UNSTABLE" title="re-run &lt;quietly&gt;">UNSTABLE</span></td></tr>') in out
    assert '<td data-label="flags"><span class="ok">ok</span></td></tr>' in out
    assert '<p class="note"><b>UNSTABLE</b>: re-run &lt;quietly&gt;.</p>' in out
    assert f'<img alt="a plot" src="data:image/png;base64,{base64.b64encode(PNG).decode()}">' in out
    assert "http" not in out and "src=\"plots/" not in out


def test_both_formats_carry_the_same_blocks(tmp_path):
    doc = _doc(tmp_path)
    md_rendered = _md_html(to_markdown(doc))
    out = to_html(doc, str(tmp_path))
    for tag in ("h1", "h2", "h3", "table", "li", "img"):
        assert md_rendered.count(f"<{tag}") == out.count(f"<{tag}"), tag


def test_an_unknown_block_is_refused(tmp_path):
    doc = Document("t").add(object())
    with pytest.raises(TypeError):
        to_markdown(doc)
    with pytest.raises(TypeError):
        to_html(doc, str(tmp_path))


# --- the whole report, from a folder whose names and strings are hostile ----------------------------------


def test_report_md_escapes_hostile_server_names_machine_strings_and_reasons(tmp_path):
    import glob
    import json
    import os

    from report_fixture import make_results
    from sockbench.bench.report.document import build_report
    from sockbench.bench.suite.plan import Plan

    server = "<img src=x>"
    host = "evil|host *bold* <b>x</b> [l](http://e) `c` ~~s~~"
    reason = "server died <script>alert(1)</script> | *x*"
    d = make_results(str(tmp_path / "r"), servers=(server,),
                     plan=Plan(servers=(server,), sizes=(64,), conns=(10,), open_pcts=(), protocols=()))
    meta_path = os.path.join(d, "meta.json")
    meta = json.load(open(meta_path))
    meta["machine"]["hostname"] = host
    meta["machine"]["cpu_model"] = "CPU | <i>fast</i> **"
    json.dump(meta, open(meta_path, "w"))
    raw = sorted(glob.glob(os.path.join(d, "raw", "*.json")))[0]
    r = json.load(open(raw))
    r["valid"], r["invalid_reason"] = False, reason
    json.dump(r, open(raw, "w"))

    rep = build_report(d)
    md = open(rep["md"]).read()
    rendered = _md_html(md)
    # nothing hostile became markup: no image, no tag, no link, no emphasis
    for bad in ("<img src=x", "<b>x", "<i>fast", "<script", "<a ", "<em>x</em>", "<strong>bold"):
        assert bad not in rendered, bad
    # ... and each came back as the literal text
    assert "&lt;img src=x&gt;" in rendered
    assert "evil|host *bold* &lt;b&gt;x&lt;/b&gt; [l](http://e) `c` ~~s~~" in rendered
    assert "\\~\\~s\\~\\~" in md  # GitHub's strikethrough, which commonmark does not know
    assert "CPU | &lt;i&gt;fast&lt;/i&gt; **" in rendered
    assert "server died &lt;script&gt;alert(1)&lt;/script&gt; | *x*" in rendered
    # a pipe in a cell never adds a column: every row has its table's header's width
    for table in re.findall(r"<table>.*?</table>", rendered, re.S):
        widths = {row.count("<td") + row.count("<th") for row in re.findall(r"<tr>.*?</tr>", table, re.S)}
        assert len(widths) == 1, table
    html_text = open(rep["html"]).read()
    for bad in ("<img src=x>", "<b>x</b>", "<i>fast", "<script"):
        assert bad not in html_text, bad
