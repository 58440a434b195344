"""The report as data: a document is a title, a flag legend and a list of blocks.

Why it is built this way: the Markdown and the HTML reports must say the same
things in the same order.  Building the content once, as plain text in a few
kinds of block, and rendering it twice (``bench.report.render``) makes that
true by construction, and puts the escaping of each format in one place: the
text here is never pre-escaped or marked up, each renderer escapes it for its
own format.

Inline text is a ``str`` or a tuple of ``str``, ``Emph``, ``Strong`` and
``Code`` parts.  A table row may carry flags (``INVALID``, ``UNSTABLE``...):
the renderers make the row and its flag column stand out, and the HTML one
explains each flag with the document's ``flag_help``.
"""

from dataclasses import dataclass, field

__all__ = [
    "Emph", "Strong", "Code", "Heading", "Paragraph", "Alert", "KeyValues", "Row", "Table", "WarningList",
    "Image", "Legend", "Document",
]


@dataclass(frozen=True)
class Emph:
    text: str


@dataclass(frozen=True)
class Strong:
    text: str


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    """Running text; ``style`` is ``""``, ``"note"`` (secondary text), ``"good"`` (an all-clear),
    ``"verdict"`` (a conclusion drawn from the data) or ``"flags"`` (the count of flagged figures)."""

    text: object  # str or tuple of inline parts
    style: str = ""


@dataclass(frozen=True)
class Alert:
    """A line the reader must see before anything else (an incomplete run)."""

    text: str


@dataclass(frozen=True)
class KeyValues:
    """A two-column table of named values (the settings)."""

    rows: tuple  # ((key, value), ...)
    header: tuple = ("setting", "value")


@dataclass(frozen=True)
class Row:
    cells: tuple  # str per column
    flags: tuple = ()


@dataclass(frozen=True)
class Table:
    """A table whose ``flag_column`` (an index into the columns) holds each row's flags as text."""

    columns: tuple
    rows: tuple  # Row, ...
    flag_column: int = -1


@dataclass(frozen=True)
class WarningList:
    """One item per (flag, text), followed by the meaning of each flag that occurs unless ``legend`` is False
    (a document that shows its ``Legend`` once, elsewhere)."""

    items: tuple  # ((flag, text), ...)
    legend: bool = True


@dataclass(frozen=True)
class Legend:
    """The meaning of each of ``flags``, from the document's ``flag_help``: shown once per document."""

    flags: tuple


@dataclass(frozen=True)
class Image:
    """A picture, by its path relative to the document's folder."""

    src: str
    alt: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)
    flag_help: dict = field(default_factory=dict)  # flag -> what it means, without a final period

    def add(self, *blocks):
        self.blocks.extend(blocks)
        return self
