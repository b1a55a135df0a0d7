"""EPUB books into chapters: the spine gives the order, the TOC gives the titles.

Used by :func:`stoker.jobs.books.read_book`; ebooklib and BeautifulSoup are imported
here only, so reading Markdown or text needs neither.
"""

from __future__ import annotations

import posixpath
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from stoker.errors import InvalidInput, MissingDependency
from stoker.jobs.books import Book, Chapter, chapters_from, speakable

if TYPE_CHECKING:
    from bs4 import BeautifulSoup, Tag

# epub:type values and TOC titles of pages that are not part of the story.
_FRONT_TYPES = frozenset(
    {"cover", "titlepage", "halftitlepage", "copyright-page", "dedication", "toc"}
    | {"acknowledgments", "colophon"}
)
_FRONT_TITLE = re.compile(
    r"cover|copyright(?: page)?|dedication|(?:table of )?contents|(?:half[- ]?)?title ?page"
    r"|acknowledge?ments?|colophon|about the (?:authors?|translators?)",
    re.IGNORECASE,
)
_NOTE_TYPES = frozenset({"noteref", "footnote", "endnote", "rearnote"})
_NOTE_MARK = re.compile(r"[\[(]?[\d*†‡§¶,\s]+[\])]?")
_BLOCKS = ["p", "div", "li", "blockquote", "pre", "tr", "dt", "dd", "section", "article"]
_BLOCKS += ["h1", "h2", "h3", "h4", "h5", "h6", "figcaption", "header", "footer", "table", "hr"]
_DROPPED = ["head", "script", "style", "svg", "math", "nav", "img", "audio", "video"]
_MARKER = re.compile("\ue000(\\d+)\ue001")
# A document the TOC does not list starts a chapter only with this much text (characters);
# shorter ones are title pages, epigraphs or the tail of the previous chapter.
_MIN_UNLISTED_CHARS = 200
# A page with a picture and less text than this is a cover or a plate, not a chapter.
_MAX_PICTURE_PAGE_CHARS = 200


@dataclass(frozen=True)
class _Part:
    """A spine document, or the piece of one that a TOC entry with a #fragment starts."""

    title: str | None  # the TOC title, or the document's first heading if unlisted
    listed: bool  # the TOC points here
    front: bool  # front matter by its title or epub:type
    picture: bool  # a cover or plate: an image and almost no text
    text: str  # speakable


def read_epub(path: Path, *, name: str, one_chapter: bool = False, skip: bool = True) -> Book:
    """Read an EPUB into a Book: spine order, TOC titles, DC title/author, cover image.

    ``one_chapter`` joins every chapter (titles kept as paragraphs) into one;
    ``skip`` drops front matter. Raises InvalidInput (not a valid EPUB; no text to
    speak) and MissingDependency (ebooklib or beautifulsoup4 missing).
    """
    book = _open(path, name)
    chapters = _chapters(book, skip)
    title = _first(book, "title") or Path(name).stem
    if not chapters:
        raise InvalidInput(f"{name} has no text to speak (its chapters are empty or only images).")
    if one_chapter:
        text = "\n\n".join(f"{c.title}\n\n{c.text}" for c in chapters)
        chapters = (Chapter(title=title, text=text),)
    cover, cover_type = _cover(book)
    return Book(title, _author(book), chapters, cover=cover, cover_type=cover_type)


def epub_chapters(path: Path, *, name: str, skip: bool = True) -> tuple[Chapter, ...]:
    """The EPUB's chapters as :func:`read_epub` finds them; empty when none has text.
    Raises InvalidInput (not a valid EPUB) and MissingDependency."""
    return _chapters(_open(path, name), skip)


def _chapters(book: Any, skip: bool) -> tuple[Chapter, ...]:
    parts = _spine_parts(book)
    return chapters_from(_assemble(parts, skip=skip, has_toc=any(p.listed for p in parts)))


def _open(path: Path, name: str) -> Any:
    """The ebooklib book; InvalidInput when ebooklib cannot read the file."""
    try:
        from ebooklib import epub
    except ImportError as exc:
        raise MissingDependency("ebooklib", "audiobook", "Reading EPUB books") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ebooklib warns about its own future defaults
            return epub.read_epub(str(path), {"ignore_ncx": True})
    except Exception as exc:  # ebooklib fails on bad input in many ways (lxml, zip, KeyError)
        raise InvalidInput(
            f"{name} is not a valid EPUB ({_reason(exc)}); "
            f"re-export it from your editor or check the download."
        ) from exc


def _reason(exc: Exception) -> str:
    if isinstance(exc, zipfile.BadZipFile) or "Bad Zip" in str(exc):
        return "it is not a zip archive"
    # EpubException keeps its text in .msg; KeyError's str() adds quotes.
    reason = str(getattr(exc, "msg", None) or (exc.args[0] if exc.args else "")).strip()
    reason = reason or type(exc).__name__
    return reason if len(reason) <= 80 else reason[:77] + "..."


def _first(book: Any, field: str) -> str | None:
    values = [str(v).strip() for v, _ in book.get_metadata("DC", field) if v and str(v).strip()]
    return values[0] if values else None


def _author(book: Any) -> str | None:
    """Creators whose role is author (or unstated), joined by ", "; illustrators left out."""
    names = []
    for value, attrs in book.get_metadata("DC", "creator"):
        roles = [v for k, v in attrs.items() if k.endswith("role")]
        if value and value.strip() and (not roles or "aut" in roles):
            names.append(" ".join(value.split()))
    return ", ".join(names) or None


def _cover(book: Any) -> tuple[bytes | None, str | None]:
    """The cover image named by the OPF ``<meta name="cover">`` or marked cover-image;
    only JPEG and PNG (judged by their bytes, since media types are often wrong)."""
    import ebooklib

    named = [
        a.get("content") for _, a in book.get_metadata("OPF", "meta") if a.get("name") == "cover"
    ]
    items = [book.get_item_with_id(c) or book.get_item_with_href(c) for c in named if c]
    for item in [*items, *book.get_items_of_type(ebooklib.ITEM_COVER)]:
        data = item.get_content() if item is not None else b""
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return data, "image/png"
        if data.startswith(b"\xff\xd8\xff"):
            return data, "image/jpeg"
    return None, None


def _toc(
    entries: list[Any], found: dict[tuple[str, str | None], str]
) -> dict[tuple[str, str | None], str]:
    """(file, fragment or None) -> title for every TOC entry, nested ones included, in
    TOC order; where entries share a target the deeper (more specific) title wins."""
    for entry in entries:
        if isinstance(entry, tuple | list):
            _toc([entry[0], *entry[1]], found)
            continue
        href = getattr(entry, "href", "") or ""
        title = " ".join((getattr(entry, "title", "") or "").split())
        if href and title:
            file, _, fragment = unquote(href).partition("#")
            found[(posixpath.normpath(file), fragment or None)] = title
    return found


def _spine_parts(book: Any) -> list[_Part]:
    """Parts of each linear spine document in reading order; the nav page, non-linear
    items (cover pages, pop-up notes) and non-HTML items are left out."""
    from ebooklib import epub

    toc = _toc(book.toc, {})
    parts: list[_Part] = []
    for idref, linear in book.spine:
        item = book.get_item_with_id(idref)
        html = item is not None and item.media_type in ("application/xhtml+xml", "text/html")
        if linear == "no" or not html or isinstance(item, epub.EpubNav | epub.EpubCoverHtml):
            continue
        file = posixpath.normpath(item.file_name)  # ebooklib has already unquoted it
        entries = [(frag, title) for (f, frag), title in toc.items() if _same_file(f, file)]
        parts += _document_parts(item.content, entries)
    return parts


def _same_file(a: str, b: str) -> bool:
    """Whether two hrefs name one file; NCX hrefs may be relative to another folder."""
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def _soup(content: bytes) -> BeautifulSoup:
    try:
        from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning
    except ImportError as exc:
        raise MissingDependency("beautifulsoup4", "audiobook", "Reading EPUB books") from exc
    with warnings.catch_warnings():
        # XHTML through the lenient HTML parser is deliberate: real EPUBs are often not XML.
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        return BeautifulSoup(content, "html.parser")


def _document_parts(content: bytes, entries: list[tuple[str | None, str]]) -> list[_Part]:
    """The text before the first TOC #fragment in this document, then one part per
    fragment the document has (in document order); nothing for a nav/TOC page."""
    soup = _soup(content)
    if soup.find("nav", attrs={"epub:type": re.compile(r"\btoc\b")}):
        return []
    picture = soup.find(["img", "svg", "image"]) is not None
    _clean(soup)
    starts = {-1: _lead_part(soup, entries, picture)}
    for i, (fragment, title) in enumerate(entries):
        target = soup.find(id=fragment) if fragment else None
        if target is not None:
            # A marker in the text says where this entry starts once the HTML is flat.
            target.insert_before(f"\ue000{i}\ue001")
            starts[i] = _Part(title, True, bool(_types(target) & _FRONT_TYPES), picture, "")
    pieces = _MARKER.split((soup.body or soup).get_text())
    keys = [-1, *(int(k) for k in pieces[1::2])]
    return [_finish_part(starts[k], text) for k, text in zip(keys, pieces[::2], strict=True)]


def _lead_part(soup: BeautifulSoup, entries: list[tuple[str | None, str]], picture: bool) -> _Part:
    """The document as a whole: titled by its TOC entry without #fragment, else (not
    listed) by its first h1-h3; front matter by the epub:type of body or a section."""
    title = next((title for fragment, title in entries if fragment is None), None)
    # Only a document the TOC does not point into at all is titled by its heading.
    heading = None if entries else soup.find(["h1", "h2", "h3"])
    types = _types(soup.body or soup).union(*(_types(s) for s in soup.find_all("section")))
    if title is not None:
        return _Part(title, True, bool(types & _FRONT_TYPES), picture, "")
    heading_text = heading.get_text(" ", strip=True) if heading else None
    return _Part(heading_text or None, False, bool(types & _FRONT_TYPES), picture, "")


def _finish_part(part: _Part, raw: str) -> _Part:
    text = speakable(raw)
    front = part.front or bool(part.title and _FRONT_TITLE.fullmatch(part.title.strip(" .:")))
    picture = part.picture and len(text) < _MAX_PICTURE_PAGE_CHARS
    return _Part(part.title, part.listed, front, picture, text)


def _types(tag: Tag) -> set[str]:
    """The epub:type and role tokens of one element."""
    values = [tag.get("epub:type"), tag.get("role")]
    # ARIA roles name the same things with a prefix: role="doc-dedication".
    return {t.removeprefix("doc-") for v in values if isinstance(v, str) for t in v.split()}


def _is_note(tag: Tag) -> bool:
    """A footnote reference (superscript mark, noteref link) or an inline footnote body."""
    if _types(tag) & _NOTE_TYPES:
        return True
    return tag.name == "sup" and (
        tag.find("a") is not None or bool(_NOTE_MARK.fullmatch(tag.get_text()))
    )


def _clean(soup: BeautifulSoup) -> None:
    """Drop what is not read aloud and end every block with a blank line."""
    for tag in soup.find_all(_is_note):
        tag.decompose()
    flatten_html(soup, _DROPPED, _BLOCKS)


def flatten_html(soup: BeautifulSoup, dropped: list[str], blocks: list[str]) -> None:
    """Remove the ``dropped`` elements; make ``<br>`` a newline and end each of the
    ``blocks`` with a blank line, so ``get_text()`` keeps the paragraphs."""
    for tag in soup.find_all(dropped):
        tag.decompose()
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(blocks):
        tag.append("\n\n")


def _assemble(parts: list[_Part], *, skip: bool, has_toc: bool) -> list[tuple[str | None, str]]:
    """(title, text) drafts from the parts, in order.

    A part the TOC lists starts a chapter (unless it is skipped front matter). An
    unlisted part starts one when it has enough text and a heading, or when no chapter
    is open (or the book has no TOC); otherwise it continues the open chapter, since
    many EPUBs split one chapter across files.
    """
    drafts: list[tuple[str | None, str]] = []
    open_chapter = False
    for part in parts:
        if not part.text or part.picture:
            continue
        if skip and part.front:
            open_chapter = False
            continue
        long = len(part.text) >= _MIN_UNLISTED_CHARS
        if part.listed or (long and (part.title or not open_chapter or not has_toc)):
            drafts.append((part.title, part.text))
            open_chapter = True
        elif open_chapter:
            title, text = drafts[-1]
            drafts[-1] = (title, f"{text}\n\n{part.text}")
    return drafts
