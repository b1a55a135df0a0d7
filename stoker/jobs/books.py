"""Reading a book (EPUB, Markdown or plain text) into titled, speakable chapters.

Every format ends in the same :class:`Book`: chapter titles are real titles (a TOC
entry, a heading, a "Chapter 1" line), never empty, and each chapter's text is
:func:`speakable` — plain paragraphs separated by blank lines, without footnote
marks or URLs, and without its own title repeated at the start. Sentence splitting
and chunking happen later (:mod:`stoker.jobs.text`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stoker.errors import InvalidInput, MissingDependency
from stoker.jobs.text import decode_text, flat_paragraphs, normalise

if TYPE_CHECKING:
    from markdown_it.token import Token


@dataclass(frozen=True)
class Chapter:
    """One chapter: its title (never empty) and its speakable text (never empty)."""

    title: str
    text: str


@dataclass(frozen=True)
class Book:
    """A book read by :func:`read_book`; ``cover`` is JPEG or PNG bytes (EPUB only)."""

    title: str
    author: str | None
    chapters: tuple[Chapter, ...]
    cover: bytes | None = None
    cover_type: str | None = None


#: "auto" | "heading" | "blank-lines:N" | "none"
ChaptersBy = str

_RULE_HELP = "use 'auto', 'heading', 'none' or 'blank-lines:N' (N blank lines between chapters)"
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]'’”]")
_NOTE_MARK = re.compile(r"\[\d{1,3}\]|\*+|[†‡]|[⁰¹²³⁴⁵⁶⁷⁸⁹]+")
# A space left before punctuation where a mark or image was removed ("word [1]." -> "word .").
_SPACE_BEFORE_STOP = re.compile(r"[ \t]+([.,;:!?])(?=\s|$)")
# "Chapter 1", "CHAPTER II.", "Chapter One: The Storm" alone on a line. The number must
# end the line or be followed by punctuation, so prose like "Chapter 1 was long" is not
# taken for a heading; "Prologue" and "Epilogue" count when alone on their line.
_NUMBER_WORD = (
    r"one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen"
    r"|fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy"
    r"|eighty|ninety|hundred"
)
_CHAPTER_LINE = re.compile(
    r"^[ \t]*(?:(?:CHAPTER|Chapter)[ \t]+"
    rf"(?i:\d+|[ivxlcdm]+|(?:{_NUMBER_WORD})(?:[- ](?:{_NUMBER_WORD}))?)"
    r"(?:[ \t]*[.:\-–—][^\n]*)?|(?:PROLOGUE|Prologue|EPILOGUE|Epilogue)[ \t]*)[ \t]*$",
    re.MULTILINE,
)
_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*$")
_WORD = re.compile(r"\w+")


def speakable(text: str) -> str:
    """Text as a voice should read it; paragraphs are separated by one blank line.

    Normalises (NFC, no control characters), replaces URLs with "a link", removes
    footnote marks ("[12]", "*", "†", superscript digits) and collapses whitespace
    inside paragraphs. Numbers and abbreviations are left for the phonemizer; long
    runs without punctuation are kept whole. Never raises.
    """
    text = _URL.sub("a link", normalise(text))
    text = _SPACE_BEFORE_STOP.sub(r"\1", _NOTE_MARK.sub("", text))
    return flat_paragraphs(text)


def read_book(
    path: Path,
    *,
    chapters_by: ChaptersBy = "auto",
    skip_front_matter: bool = True,
    name: str | None = None,
) -> Book:
    """Read an .epub, .md/.markdown or .txt/.text file (suffix, any case) into a Book.

    ``chapters_by``: "auto" (EPUB: spine and TOC; Markdown: headings; text: "Chapter N"
    lines, else one chapter), "heading" (the same), "blank-lines:N" (Markdown and text:
    N or more blank lines end a chapter) or "none" (one chapter). ``skip_front_matter``
    drops EPUB copyright, dedication, contents and similar pages. ``name`` (default
    ``path.name``) is how every message names the file.

    Raises InvalidInput (unknown suffix, empty or undecodable file, malformed EPUB, no
    text to speak, a bad ``chapters_by``) and MissingDependency (ebooklib,
    beautifulsoup4 or markdown-it-py not installed).
    """
    name = name or path.name
    rule = _parse_rule(chapters_by)
    suffix = path.suffix.lower()
    if suffix not in (".epub", ".md", ".markdown", ".txt", ".text"):
        raise InvalidInput(f"{name} is not a book stoker can read (.epub, .md, .txt)")
    if path.stat().st_size == 0:
        raise InvalidInput(f"{name} is empty.")
    if suffix == ".epub":
        return _read_epub(path, rule, skip_front_matter, name)
    source = normalise(decode_text(path.read_bytes(), name))
    title = Path(name).stem
    if suffix in (".txt", ".text"):
        drafts = _text_chapters(source, rule, title)
    else:
        title, drafts = _markdown_chapters(source, rule, title)
    chapters = chapters_from(drafts)
    if not chapters:
        raise InvalidInput(f"{name} has no text to speak (it is blank or only markup).")
    return Book(title=title, author=None, chapters=chapters)


def _read_epub(path: Path, rule: str | int, skip_front_matter: bool, name: str) -> Book:
    if isinstance(rule, int):
        raise InvalidInput(
            f"chapters_by='blank-lines:{rule}' does not apply to EPUB books like {name}; "
            f"use 'auto' (the book's own chapters) or 'none'."
        )
    from stoker.jobs.epub import read_epub  # here, so Markdown and text need no bs4

    return read_epub(path, name=name, one_chapter=rule == "none", skip=skip_front_matter)


def _parse_rule(chapters_by: str) -> str | int:
    """The rule as "auto", "heading" or "none", or N for "blank-lines:N".

    Raises InvalidInput naming the option and the accepted forms for anything else.
    """
    rule = chapters_by.strip().lower()
    if rule in ("auto", "heading", "none"):
        return rule
    match = re.fullmatch(r"blank-lines:(\d+)", rule)
    if match and int(match.group(1)) >= 1:
        return int(match.group(1))
    raise InvalidInput(f"chapters_by={chapters_by!r} is not a chapter rule; {_RULE_HELP}.")


def _without_title(text: str, title: str) -> str:
    """``text`` minus leading paragraphs that spell out ``title`` ("Chapter 1", "The Storm").

    Compares words case-insensitively, so "CHAPTER ONE" then "The Storm" are both
    dropped for the title "Chapter One: The Storm".
    """
    wanted = _WORD.findall(title.casefold())
    paragraphs = text.split("\n\n")
    while paragraphs:
        words = _WORD.findall(paragraphs[0].casefold())
        if not words or words != wanted[: len(words)]:
            break
        wanted = wanted[len(words) :]
        paragraphs.pop(0)
    return "\n\n".join(paragraphs)


def chapters_from(drafts: list[tuple[str | None, str]]) -> tuple[Chapter, ...]:
    """Chapters from (title or None, raw text): made speakable, untitled ones named
    "Chapter N" (N counts kept chapters), the title not repeated at the start of the
    text. Drafts with nothing left to say are dropped, so the result may be empty."""
    chapters: list[Chapter] = []
    for title, raw in drafts:
        title = " ".join(speakable(title or "").split()) or f"Chapter {len(chapters) + 1}"
        text = _without_title(speakable(raw), title)
        if text:
            chapters.append(Chapter(title=title, text=text))
    return tuple(chapters)


# --- plain text ------------------------------------------------------------------


def _text_chapters(source: str, rule: str | int, title: str) -> list[tuple[str | None, str]]:
    """(title, text) drafts of a plain-text book under ``rule``."""
    if isinstance(rule, int):
        return [_titled_by_first_line(part) for part in _split_blank_lines(source, rule)]
    if rule == "none":
        return [(title, source)]
    starts = [m.start() for m in _CHAPTER_LINE.finditer(source)]
    if not starts:
        return [(title, source)]
    drafts = []
    if source[: starts[0]].strip():
        drafts.append(_titled_by_first_line(source[: starts[0]], default=title))
    for start, end in zip(starts, [*starts[1:], len(source)], strict=True):
        heading, _, body = source[start:end].strip().partition("\n")
        drafts.append((heading, body))
    return drafts


def _split_blank_lines(source: str, n: int) -> list[str]:
    """Parts of ``source`` separated by ``n`` or more consecutive blank lines."""
    return re.split(rf"\n(?:[ \t]*\n){{{n},}}", source)


def _titled_by_first_line(part: str, default: str | None = None) -> tuple[str | None, str]:
    """(title, text): the first paragraph is the title when it is one short line
    (< 80 characters) that does not end like a sentence and text follows it; else
    ``default`` (a chapter's only paragraph is never taken as its title: it would be lost)."""
    first, _, rest = part.strip().partition("\n\n")
    line = first.strip()
    short = line and "\n" not in line and len(line) < 80 and not _SENTENCE_END.search(line)
    if short and rest.strip():
        return line, rest
    return default, part


# --- Markdown --------------------------------------------------------------------


def _markdown_chapters(
    source: str, rule: str | int, stem: str
) -> tuple[str, list[tuple[str | None, str]]]:
    """(book title, drafts) of a Markdown book; the title is the first ``#`` or ``stem``."""
    if isinstance(rule, int):
        parts = _split_blank_lines(source, rule)
        drafts = [_titled_by_first_line(_blocks_text(_markdown_blocks(p))) for p in parts]
        return _markdown_title(_markdown_blocks(source), stem), drafts
    blocks = _markdown_blocks(source)
    title = _markdown_title(blocks, stem)
    if rule == "none":
        return title, [(title, _blocks_text(blocks))]
    return title, _split_at_headings(blocks, _chapter_level(blocks), title)


def _markdown_title(blocks: list[tuple[int, str]], stem: str) -> str:
    return next((text for level, text in blocks if level == 1 and text.strip()), stem)


def _chapter_level(blocks: list[tuple[int, str]]) -> int:
    """The heading level that starts chapters: 1, or 2 when there is no ``#`` heading
    or the only ``#`` is the book's title above ``##`` chapters; 0 when neither."""
    levels = [level for level, _ in blocks if level]
    ones = levels.count(1)
    if 2 in levels and (ones == 0 or (ones == 1 and levels[0] == 1)):
        return 2
    return 1 if ones else 0


def _split_at_headings(
    blocks: list[tuple[int, str]], level: int, book_title: str
) -> list[tuple[str | None, str]]:
    """Drafts starting at each heading of ``level`` (or above); the lead is titled
    by the book. A ``#`` book title above ``##`` chapters is not itself spoken."""
    drafts: list[tuple[str | None, list[str]]] = [(book_title, [])]
    for block_level, text in blocks:
        if level == 2 and block_level == 1:
            continue  # the book's title: the listener hears it as the book's name
        if block_level and block_level <= level:
            drafts.append((text, []))
        else:
            drafts[-1][1].append(text)
    return [(title, "\n\n".join(texts)) for title, texts in drafts]


def _blocks_text(blocks: list[tuple[int, str]]) -> str:
    return "\n\n".join(text for _, text in blocks)


def _markdown_blocks(source: str) -> list[tuple[int, str]]:
    """(heading level or 0, plain text) for each heading, paragraph, list item and
    table cell. Code blocks, raw HTML and images are dropped; links keep their text."""
    try:
        from markdown_it import MarkdownIt
    except ImportError as exc:
        raise MissingDependency("markdown-it-py", "audiobook", "Reading Markdown books") from exc
    blocks: list[tuple[int, str]] = []
    level = 0
    for token in MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(source):
        if token.type == "heading_open":
            level = int(token.tag[1])
        elif token.type == "inline":
            blocks.append((level, _inline_text(token.children or [])))
            level = 0
    return blocks


def _inline_text(children: list[Token]) -> str:
    """Plain text of inline tokens: text and code spans kept, images and HTML dropped."""
    parts = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)
