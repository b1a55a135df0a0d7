"""Documents into texts to embed: plain text, Markdown, HTML, PDF and EPUB files.

What ``stoker submit embed --file`` reads from a folder of documents, or from one
document. It runs on the submitter: an embed job carries texts, never files, so a
worker needs none of these readers.

A document is one text, except a PDF, which is a text per page, and an EPUB, which is
a text per chapter: a 300-page report read as one text is one vector for all of it
(or, with ``split``, passages no reader can find again). Their sections are named by
an anchor after the file's name: ``#page=N`` is the fragment PDF viewers open a file
at; ``#chapter=N`` counts the chapters :mod:`stoker.jobs.epub` finds, from 1.

pypdf reads PDFs; BeautifulSoup reads HTML and, with ebooklib, EPUB (the audiobook's
reader, front matter skipped). Each is imported only when a file of its kind is read.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stoker.errors import InvalidInput, MissingDependency
from stoker.jobs.text import decode_text, flat_paragraphs, normalise

#: Suffixes whose whole file is the text (so its size bounds the text's).
PLAIN_SUFFIXES = (".txt", ".md", ".markdown")
#: Suffixes of files that are read by a reader (and given alone are one document).
RICH_SUFFIXES = (".html", ".htm", ".pdf", ".epub")
#: Files read as documents, by suffix (any case).
DOCUMENT_SUFFIXES = PLAIN_SUFFIXES + RICH_SUFFIXES

# What a page holds but a reader does not read as its text: code, styles, menus, forms.
_HTML_DROPPED = ["head", "script", "style", "noscript", "template", "svg", "nav", "form"]
_HTML_BLOCKS = ["p", "div", "li", "blockquote", "pre", "tr", "dt", "dd", "section", "article"]
_HTML_BLOCKS += ["h1", "h2", "h3", "h4", "h5", "h6", "figcaption", "table", "hr", "main"]


@dataclass(frozen=True)
class Section:
    """One text of a document: ``anchor`` is "" for the whole file, else "#page=N" or
    "#chapter=N"; ``text`` is never blank."""

    anchor: str
    text: str


@dataclass(frozen=True)
class DocumentTexts:
    """What :func:`read_documents` found: the texts and their ids, in order, and the
    names of the documents that had no text (skipped)."""

    texts: list[str]
    ids: list[str]
    empty: list[str]


def is_document(path: Path) -> bool:
    return path.suffix.lower() in DOCUMENT_SUFFIXES


def read_documents(root: Path, limit_bytes: int) -> DocumentTexts:
    """The texts of the documents under the folder ``root`` (recursively, in path
    order), or of the one document ``root``.

    A text's id is its file's path under ``root`` (a document given alone: its name),
    then its section's anchor: ``notes/tea.txt``, ``q3.pdf#page=4``. InvalidInput
    names a file that cannot be read, or a text over ``limit_bytes``
    (``max_text_bytes``): one bad file refuses all, so nothing is half-embedded.
    """
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if is_document(p) and p.is_file())
        named = [(path, path.relative_to(root).as_posix()) for path in files]
    else:
        named = [(root, root.name)]
    found = DocumentTexts([], [], [])
    for path, name in named:
        sections = _limited(path, limit_bytes)
        if not sections:
            found.empty.append(name)
        found.texts.extend(s.text for s in sections)
        found.ids.extend(name + s.anchor for s in sections)
    return found


def _limited(path: Path, limit_bytes: int) -> list[Section]:
    """:func:`read_document`, refusing a text over ``limit_bytes`` by file and section."""
    # A text file is its text: refused by its size before it is read.
    if path.suffix.lower() in PLAIN_SUFFIXES and path.stat().st_size > limit_bytes:
        raise InvalidInput(
            f"{path} is over the {limit_bytes:,}-byte limit (max_text_bytes); split it "
            f"into several files, or raise max_text_bytes."
        )
    sections = read_document(path, str(path))
    for section in sections:
        if len(section.text.encode("utf-8")) > limit_bytes:
            raise InvalidInput(
                f"{path}{section.anchor}: its text is over the {limit_bytes:,}-byte limit "
                f"(max_text_bytes); raise max_text_bytes, or split the document."
            )
    return sections


def read_document(path: Path, name: str) -> list[Section]:
    """The texts of the document at ``path`` (``name`` is how messages call it).

    Empty when it has none: a blank file, a PDF of scanned pages (no text layer), an
    EPUB of pictures. InvalidInput when it cannot be read (not UTF-8, a damaged or
    password-protected PDF, a broken EPUB), saying which file and what to do;
    MissingDependency when its reader is not installed.
    """
    suffix = path.suffix.lower()
    if suffix not in DOCUMENT_SUFFIXES:
        raise InvalidInput(
            f"{name} is not a document stoker reads ({', '.join(DOCUMENT_SUFFIXES)})."
        )
    try:
        if suffix == ".pdf":
            return _pdf_pages(path, name)
        if suffix == ".epub":
            return _epub_chapters(path, name)
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}: {exc.strerror or exc}.") from None
    text = decode_text(data, name)
    if suffix in (".html", ".htm"):
        text = tidy(_html_text(text))
    return [Section("", text)] if text.strip() else []


def tidy(text: str) -> str:
    """Normalised, its lines joined into paragraphs (text.flat_paragraphs)."""
    return flat_paragraphs(normalise(text))


def _pdf_pages(path: Path, name: str) -> list[Section]:
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise MissingDependency("pypdf", "embed", "Reading PDF documents") from exc
    # pypdf logs each repair it makes to a damaged file; the user gets our one sentence
    # when it cannot read the file, and nothing when it can.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidInput(
                f"{name} is password-protected; save a copy without a password and embed that."
            )
        pages = [page.extract_text() or "" for page in reader.pages]
    except (InvalidInput, OSError):
        raise  # ours, or the file could not be read (said as such by read_document)
    except Exception as exc:  # pypdf fails on damaged files in many ways
        raise InvalidInput(
            f"{name} is not a PDF stoker can read ({_reason(exc)}); "
            f"check the file opens in a PDF viewer, or save it again from one."
        ) from exc
    texts = [(n, tidy(text)) for n, text in enumerate(pages, start=1)]
    return [Section(f"#page={n}", text) for n, text in texts if text]


def _epub_chapters(path: Path, name: str) -> list[Section]:
    from stoker.jobs.epub import epub_chapters

    chapters = epub_chapters(path, name=name)
    # The title leads its chapter's text: it is what the chapter is about.
    return [
        Section(f"#chapter={n}", f"{chapter.title}\n\n{chapter.text}")
        for n, chapter in enumerate(chapters, start=1)
    ]


def _html_text(markup: str) -> str:
    """The visible text of an HTML page, a blank line after each block."""
    try:
        from bs4 import BeautifulSoup
    except ImportError as exc:
        raise MissingDependency("beautifulsoup4", "embed", "Reading HTML documents") from exc
    from stoker.jobs.epub import flatten_html

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # XHTML through the HTML parser is deliberate
        soup: Any = BeautifulSoup(markup, "html.parser")
    flatten_html(soup, _HTML_DROPPED, _HTML_BLOCKS)
    return str((soup.body or soup).get_text())


def _reason(exc: Exception) -> str:
    reason = str(exc).strip() or type(exc).__name__
    return reason if len(reason) <= 80 else reason[:77] + "..."
