"""Render a ``bench.report.blocks.Document`` to Markdown and to self-contained HTML.

Why it is built this way: each format escapes the document's plain text in
exactly one place.  Markdown is for reading in a repository, so it stays the
GitHub-flavoured Markdown a person would write (pipe tables, ``**`` for a
flagged cell) with a backslash before every character that would otherwise
start markup; images are linked by their relative path.  The HTML file is the
one to share: one file, the images inlined as base64 data, no network, no
scripts, a small fixed stylesheet in which each flag has its colour and
explains itself on hover.  No table may widen the page: cells wrap (long
tokens too), and below 700 px each table row becomes a card whose cells
carry their column's name (``data-label``), so a phone never scrolls
sideways; a table that still cannot fit scrolls inside its own box.
"""

import base64
import html
import mimetypes
import os
import re

from sockbench.bench.report.blocks import (
    Alert, Code, Emph, Heading, Image, KeyValues, Legend, Paragraph, Strong, Table, WarningList,
)

__all__ = ["to_markdown", "to_html", "md_escape"]


# --- Markdown -----------------------------------------------------------------------------------

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|&~])")  # ~: GitHub's ~~strikethrough~~


def md_escape(text):
    """``text`` as literal Markdown: a backslash before each character that could start markup."""
    return _MD_SPECIAL.sub(r"\\\1", str(text))


def _md_code(text):
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_inline(text):
    parts = (text,) if isinstance(text, str) else text
    out = []
    for p in parts:
        if isinstance(p, Emph):
            out.append(f"*{md_escape(p.text)}*")
        elif isinstance(p, Strong):
            out.append(f"**{md_escape(p.text)}**")
        elif isinstance(p, Code):
            out.append(_md_code(p.text))
        else:
            out.append(md_escape(p))
    return "".join(out)


def _md_cell(text):
    # a table row is one line: a line break inside a cell would end the table
    return md_escape(" ".join(str(text).splitlines()))


def _md_table(header, rows):
    lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _md_legend(flags, doc):
    # two trailing spaces: a line break, one flag's meaning per line
    return "\n".join(f"*{md_escape(f)}*: {md_escape(doc.flag_help[f])}.  " for f in flags)


def _md_block(b, doc):
    if isinstance(b, Heading):
        return "#" * b.level + " " + md_escape(b.text)
    if isinstance(b, Paragraph):
        return _md_inline(b.text)
    if isinstance(b, Alert):
        return f"> **{md_escape(b.text)}**"
    if isinstance(b, KeyValues):
        return _md_table(b.header, [[_md_cell(k), _md_cell(v)] for k, v in b.rows])
    if isinstance(b, Table):
        flag_col = b.flag_column % len(b.columns)
        rows = []
        for row in b.rows:
            cells = [_md_cell(c) for c in row.cells]
            if row.flags:
                cells[flag_col] = f"**{cells[flag_col]}**"
            rows.append(cells)
        return _md_table(b.columns, rows)
    if isinstance(b, WarningList):
        items = "\n".join(f"- **{md_escape(flag)}** {md_escape(text)}" for flag, text in b.items)
        if not b.legend:
            return items
        return items + "\n\n" + _md_legend(sorted({f for f, _ in b.items}), doc)
    if isinstance(b, Legend):
        return _md_legend(b.flags, doc)
    if isinstance(b, Image):
        return f"![{md_escape(b.alt)}]({b.src})"
    raise TypeError(f"no Markdown for a {type(b).__name__} block")


def to_markdown(doc):
    """The document as one Markdown text (blocks separated by a blank line)."""
    parts = ["# " + md_escape(doc.title)] + [_md_block(b, doc) for b in doc.blocks]
    return "\n\n".join(parts) + "\n"


# --- HTML ------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.tw{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:12.5px;max-width:100%}
th,td{border:1px solid #ddd;padding:3px 6px;text-align:right;vertical-align:top;overflow-wrap:break-word}
th{background:#f4f4f4;font-weight:600} td:first-child,th:first-child{text-align:left}
table.settings td{text-align:left;overflow-wrap:anywhere}
tr.flagged td{background:#fff4f0}
.flag{display:inline-block;padding:1px 5px;border-radius:3px;font-weight:bold;font-size:10.5px;color:#fff;margin:1px 2px 1px 0;white-space:nowrap}
.INVALID{background:#c0392b} .STARVED{background:#922b21} .DISTURBED{background:#5d6d7e} .CLIENT-BOUND{background:#d35400}
.UNSTABLE{background:#b7950b} .OUTLIERS{background:#a04000} .WIDE-CI{background:#7f8c8d} .BEHIND{background:#7d3c98} .LOSSY{background:#1f618d}
.ok{color:#1e8449}
.banner{background:#c0392b;color:#fff;padding:.7em 1em;border-radius:4px;font-weight:bold}
.warnbox{border:1px solid #d35400;background:#fdf2e9;padding:.3em 1em;border-radius:4px}
.good,.flags{border:1px solid #1e8449;background:#eafaf1;padding:.5em 1em;border-radius:4px}
.flags{border-color:#d35400;background:#fdf2e9}
.verdict{font-size:15px;margin:.4em 0}
.legend{font-size:13px;color:#444} .legend dt{font-weight:bold;display:inline} .legend dd{display:inline;margin:0 0 0 .3em}
.legend div{margin:.15em 0}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0 .3em}
.note{color:#555;font-size:13px}
code{overflow-wrap:anywhere}
@media (max-width:700px){
 body{margin:.5em auto;padding:0 .5em}
 table.data,table.data tbody,table.data tr,table.data td{display:block;width:auto}
 table.data tr:first-child{display:none}
 table.data tr{border:1px solid #ccc;margin:0 0 .6em;border-radius:4px}
 table.data td{border:none;border-bottom:1px solid #eee;text-align:right;padding:3px 6px}
 table.data td::before{content:attr(data-label);float:left;font-weight:600;color:#555;padding-right:.6em;text-align:left}
 table.settings th,table.settings td{display:block;text-align:left;border:none}
}
"""

_e = html.escape


def _html_inline(text):
    parts = (text,) if isinstance(text, str) else text
    out = []
    for p in parts:
        if isinstance(p, Emph):
            out.append(f"<i>{_e(p.text)}</i>")
        elif isinstance(p, Strong):
            out.append(f"<b>{_e(p.text)}</b>")
        elif isinstance(p, Code):
            out.append(f"<code>{_e(p.text)}</code>")
        else:
            out.append(_e(p))
    return "".join(out)


def _badges(flags, doc):
    if not flags:
        return '<span class="ok">ok</span>'
    return "".join(f'<span class="flag {_e(f)}" title="{_e(doc.flag_help[f])}">{_e(f)}</span>' for f in flags)


def _data_uri(path):
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode("ascii")


def _html_block(b, doc, base_dir):
    if isinstance(b, Heading):
        return f"<h{b.level}>{_e(b.text)}</h{b.level}>"
    if isinstance(b, Paragraph):
        cls = f' class="{b.style}"' if b.style else ""
        return f"<p{cls}>{_html_inline(b.text)}</p>"
    if isinstance(b, Alert):
        return f'<p class="banner">{_e(b.text)}</p>'
    if isinstance(b, KeyValues):
        rows = [f"<tr><th>{_e(str(k))}</th><td>{_e(str(v))}</td></tr>" for k, v in b.rows]
        return "\n".join(['<div class="tw"><table class="settings">', *rows, "</table></div>"])
    if isinstance(b, Table):
        # data-label: on a narrow screen each row becomes a card whose cells name their column (see _CSS)
        flag_col = b.flag_column % len(b.columns)
        lines = ['<div class="tw"><table class="data">',
                 "<tr>" + "".join(f"<th>{_e(c)}</th>" for c in b.columns) + "</tr>"]
        for row in b.rows:
            tds = [f'<td data-label="{_e(c)}">{_e(str(v))}</td>' for c, v in zip(b.columns, row.cells)]
            tds[flag_col] = f'<td data-label="{_e(b.columns[flag_col])}">{_badges(row.flags, doc)}</td>'
            cls = ' class="flagged"' if row.flags else ""
            lines.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
        lines.append("</table></div>")
        return "\n".join(lines)
    if isinstance(b, WarningList):
        lines = ['<div class="warnbox"><ul>']
        lines += [f"<li>{_badges([flag], doc)} {_e(text)}</li>" for flag, text in b.items]
        lines.append("</ul>")
        if b.legend:
            lines += [f'<p class="note"><b>{_e(f)}</b>: {_e(doc.flag_help[f])}.</p>' for f in sorted({f for f, _ in b.items})]
        lines.append("</div>")
        return "\n".join(lines)
    if isinstance(b, Legend):
        items = [f"<div><dt>{_badges([f], doc)}</dt><dd>{_e(doc.flag_help[f])}.</dd></div>" for f in b.flags]
        return '<dl class="legend">' + "".join(items) + "</dl>"
    if isinstance(b, Image):
        return f'<img alt="{_e(b.alt)}" src="{_data_uri(os.path.join(base_dir, b.src))}">'
    raise TypeError(f"no HTML for a {type(b).__name__} block")


def to_html(doc, base_dir):
    """The document as one self-contained HTML page; images are read from ``base_dir`` and inlined."""
    head = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(doc.title)}</title>", f"<style>{_CSS}</style></head><body>", f"<h1>{_e(doc.title)}</h1>"]
    body = [_html_block(b, doc, base_dir) for b in doc.blocks]
    return "\n".join(head + body + ["</body></html>"]) + "\n"
