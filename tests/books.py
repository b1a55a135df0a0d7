"""Real books for tests: EPUB (written with ebooklib), Markdown and plain text files.

The stories are plain English written for these tests (no copyright concerns).
"""

from __future__ import annotations

import html
import struct
import zlib
from pathlib import Path

from tests.texts import PARAGRAPH

TITLES = (
    "The Harbour at Dusk",
    "A Letter from the Mainland",
    "The Storm",
    "Lamps and Ledgers",
    "The Fishing Fleet",
    "Morning in the Village",
)


def a_story(n_chapters: int, sentences_per_chapter: int) -> list[tuple[str, str]]:
    """``n_chapters`` (title, text) pairs; each text has two paragraphs of plain English.

    Every sentence names its chapter, so no two chapters share a sentence.
    """
    parts = [p.strip().rstrip(".") for p in PARAGRAPH.split(". ") if p.strip()]
    story: list[tuple[str, str]] = []
    for n in range(1, n_chapters + 1):
        title = TITLES[(n - 1) % len(TITLES)] if n <= len(TITLES) else f"Day {n}"
        sentences = [
            f"In part {n}, {parts[i % len(parts)][0].lower()}{parts[i % len(parts)][1:]}."
            for i in range(sentences_per_chapter)
        ]
        half = max(1, len(sentences) // 2)
        text = " ".join(sentences[:half]) + "\n\n" + " ".join(sentences[half:])
        story.append((title, text.strip()))
    return story


def tiny_png() -> bytes:
    """A valid 1x1 green PNG, built by hand (no imaging library needed)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # 1x1, 8-bit RGB
    pixels = zlib.compress(b"\x00\x00\xff\x00")  # filter byte, then one green pixel
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n") if p.strip())


def _front_matter(epub: object) -> list[object]:
    from ebooklib import epub as e

    copyright_page = e.EpubHtml(title="Copyright", file_name="copyright.xhtml", lang="en")
    copyright_page.content = (
        "<h1>Copyright</h1><p>Copyright 2024 by the author. All rights reserved. No part of "
        "this book may be reproduced in any form without written permission.</p>"
    )
    # Titled like a chapter: only its epub:type says what it is.
    dedication = e.EpubHtml(title="For Anna", file_name="dedication.xhtml", lang="en")
    dedication.content = (
        '<section epub:type="dedication"><h1>For Anna</h1>'
        "<p>For Anna, who kept the light burning through every winter.</p></section>"
    )
    pages = [copyright_page, dedication]
    for page in pages:
        epub.add_item(page)  # type: ignore[attr-defined]
    return pages


def write_epub(
    path: Path,
    title: str,
    author: str,
    chapters: list[tuple[str, str]],
    *,
    cover: bytes | None = None,
    front_matter: bool = False,
    nested_toc: bool = False,
    raw_html: bool = False,
) -> Path:
    """Write an EPUB 3 book: one document per chapter, a TOC, a nav page and a spine.

    Each chapter is ``<h1>title</h1>`` then one ``<p>`` per blank-line paragraph
    (with ``raw_html`` the chapter text is the document body as given). ``cover``
    (PNG bytes) adds a cover image and cover page; ``front_matter`` adds a copyright
    page and a dedication before the chapters; ``nested_toc`` puts the chapters under
    "Part One" / "Part Two" sections of the TOC.
    """
    from ebooklib import epub as e

    book = e.EpubBook()
    book.set_identifier(f"stoker-test-{abs(hash(title))}")
    book.set_title(title)
    book.set_language("en")
    book.add_author(author)
    if cover is not None:
        book.set_cover("cover.png", cover)
    pages = _front_matter(book) if front_matter else []
    docs = []
    for n, (chapter_title, text) in enumerate(chapters, start=1):
        doc = e.EpubHtml(title=chapter_title, file_name=f"chapter_{n}.xhtml", lang="en")
        body = text if raw_html else f"<h1>{html.escape(chapter_title)}</h1>{_paragraphs(text)}"
        doc.content = body
        book.add_item(doc)
        docs.append(doc)
    toc: list[object] = list(pages)
    if nested_toc:
        half = (len(docs) + 1) // 2
        toc += [(e.Section("Part One"), docs[:half]), (e.Section("Part Two"), docs[half:])]
    else:
        toc += docs
    book.toc = toc
    book.add_item(e.EpubNcx())
    book.add_item(e.EpubNav())
    book.spine = (["cover"] if cover is not None else []) + ["nav", *pages, *docs]
    e.write_epub(str(path), book)
    return path


def write_markdown(
    path: Path, chapters: list[tuple[str, str]], *, title: str | None = None, level: int = 1
) -> Path:
    """Write Markdown: ``# title`` (if given), then each chapter under a level-``level`` heading."""
    parts = [f"# {title}"] if title else []
    parts += [f"{'#' * level} {t}\n\n{text}" for t, text in chapters]
    path.write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_text(
    path: Path,
    chapters: list[tuple[str, str]],
    *,
    heading: str = "Chapter {n}: {title}",
    blank_lines: int = 1,
) -> Path:
    """Write plain text: each chapter is its ``heading`` line, a blank line, then its text.

    Chapters are separated by ``blank_lines`` empty lines.
    """
    parts = [f"{heading.format(n=n, title=t)}\n\n{text}" for n, (t, text) in enumerate(chapters, 1)]
    path.write_text(("\n" * (blank_lines + 1)).join(parts) + "\n", encoding="utf-8")
    return path


def write_epub_html(
    path: Path, documents: dict[str, str], toc: list[tuple[str, str]], *, title: str = "Odd Book"
) -> Path:
    """Write an EPUB from raw XHTML bodies (file name -> body) with a TOC of (href, title)
    pairs; hrefs may carry #fragments. The spine is the nav page, then the documents."""
    from ebooklib import epub as e

    book = e.EpubBook()
    book.set_identifier(f"stoker-test-{abs(hash(title))}")
    book.set_title(title)
    book.set_language("en")
    docs = []
    for file_name, body in documents.items():
        doc = e.EpubHtml(title=file_name, file_name=file_name, lang="en")
        doc.content = body
        book.add_item(doc)
        docs.append(doc)
    book.toc = [e.Link(href, label, f"toc-{n}") for n, (href, label) in enumerate(toc)]
    book.add_item(e.EpubNcx())
    book.add_item(e.EpubNav())
    book.spine = ["nav", *docs]
    e.write_epub(str(path), book)
    return path
