"""Reading books into chapters: real EPUB, Markdown and text files written by tests/books.py."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from stoker.errors import InvalidInput
from stoker.jobs.books import Book, read_book, speakable
from tests.books import (
    a_story,
    tiny_png,
    write_epub,
    write_epub_html,
    write_markdown,
    write_text,
)

STORY = a_story(3, 6)
TITLES = [title for title, _ in STORY]
LONG = "The keeper wrote the weather in his notebook every single evening. " * 5


def _titles(book: Book) -> list[str]:
    return [c.title for c in book.chapters]


# --- EPUB ------------------------------------------------------------------------


def test_epub_chapters_follow_the_spine_with_toc_titles_and_metadata(tmp_path: Path) -> None:
    # Given an EPUB with three chapters, each starting with an <h1> of its title
    path = write_epub(tmp_path / "keeper.epub", "The Keeper", "Ann Smith", STORY)
    # When it is read
    book = read_book(path)
    # Then the chapters come in order, titled from the TOC, with the text as written
    assert (book.title, book.author) == ("The Keeper", "Ann Smith")
    assert _titles(book) == TITLES
    assert [c.text for c in book.chapters] == [text for _, text in STORY]
    # and no chapter repeats its own title (the <h1>) as its first sentence
    for chapter in book.chapters:
        assert chapter.title not in chapter.text
    assert (book.cover, book.cover_type) == (None, None)


def test_epub_nested_toc_titles_the_chapters_not_the_parts(tmp_path: Path) -> None:
    path = write_epub(tmp_path / "parts.epub", "Parts", "Ann Smith", STORY, nested_toc=True)
    assert _titles(read_book(path)) == TITLES


def test_epub_front_matter_is_skipped_unless_asked_for(tmp_path: Path) -> None:
    # Given a copyright page (by title) and a dedication (by epub:type only) before chapter 1
    path = write_epub(tmp_path / "front.epub", "Front", "Ann Smith", STORY, front_matter=True)
    # Then by default only the story is read; asked to keep them, they come first
    assert _titles(read_book(path)) == TITLES
    kept = read_book(path, skip_front_matter=False)
    assert _titles(kept) == ["Copyright", "For Anna", *TITLES]
    assert kept.chapters[1].text == "For Anna, who kept the light burning through every winter."


def test_epub_cover_image_is_returned_and_its_page_is_not_a_chapter(tmp_path: Path) -> None:
    png = tiny_png()
    path = write_epub(tmp_path / "cover.epub", "Covered", "Ann Smith", STORY, cover=png)
    book = read_book(path)
    assert (book.cover, book.cover_type) == (png, "image/png")
    assert _titles(book) == TITLES


def test_epub_toc_fragments_split_one_document_and_notes_are_not_read(tmp_path: Path) -> None:
    # Given one document holding two chapters, a footnote reference and its note, and a
    # following document the TOC does not list (the second chapter's tail)
    body = (
        f'<h2 id="one">The Harbour</h2><p>First<sup><a href="#n1">1</a></sup> part. {LONG}</p>'
        f'<h2 id="two">The Storm</h2><p>See https://example.com/storm?x=1 now[2]. {LONG}</p>'
        '<aside epub:type="footnote" id="n1"><p>A note that is not read.</p></aside>'
    )
    documents = {"text/all.xhtml": body, "text/tail.xhtml": "<p>The storm ended.</p>"}
    toc = [("text/all.xhtml#one", "The Harbour"), ("text/all.xhtml#two", "The Storm")]
    book = read_book(write_epub_html(tmp_path / "frag.epub", documents, toc))
    # Then each fragment is a chapter, the tail continues the second one
    assert _titles(book) == ["The Harbour", "The Storm"]
    first, second = (c.text for c in book.chapters)
    assert first.startswith("First part. The keeper")
    assert second.startswith("See a link now. The keeper")
    assert second.endswith("evening.\n\nThe storm ended.")
    assert "A note" not in first + second


def test_epub_document_missing_from_the_toc_is_titled_by_its_heading(tmp_path: Path) -> None:
    documents = {
        "one.xhtml": f"<h1>Listed</h1><p>{LONG}</p>",
        "two.xhtml": f"<h2>Interlude</h2><p>{LONG}</p>",
        "three.xhtml": "<p>Title page text only.</p>",
    }
    book = read_book(write_epub_html(tmp_path / "x.epub", documents, [("one.xhtml", "Listed")]))
    assert _titles(book) == ["Listed", "Interlude"]


def test_epub_as_one_chapter_keeps_the_chapter_titles_as_paragraphs(tmp_path: Path) -> None:
    path = write_epub(tmp_path / "one.epub", "All in One", "Ann Smith", STORY)
    book = read_book(path, chapters_by="none")
    assert _titles(book) == ["All in One"]
    assert book.chapters[0].text.split("\n\n")[0] == TITLES[0]
    with pytest.raises(InvalidInput, match=r"blank-lines:3.*does not apply to EPUB.*one.epub"):
        read_book(path, chapters_by="blank-lines:3")


def _zip_of_garbage(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mimetype", "application/epub+zip")
        archive.writestr("chapter.xhtml", b"\x00\xff not a book")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_zip_of_garbage, r"is not a valid EPUB \(.*container.*\); re-export it"),
        (lambda p: p.write_bytes(os.urandom(4096)), r"is not a valid EPUB \(it is not a zip"),
        (lambda p: p.write_bytes(b""), r"is empty\.$"),
    ],
    ids=["zip-of-garbage", "random-bytes", "empty"],
)
def test_malformed_epub_is_refused_naming_the_file(
    tmp_path: Path, make: Callable[[Path], object], message: str
) -> None:
    path = tmp_path / "upload-3f2a.epub"
    make(path)
    with pytest.raises(InvalidInput, match=rf"^My Novel\.epub {message}"):
        read_book(path, name="My Novel.epub")


def test_epub_of_only_images_has_no_text_to_speak(tmp_path: Path) -> None:
    plates = [("Plate 1", '<img src="p1.png" alt="A plate"/>'), ("Plate 2", "<svg></svg>")]
    path = write_epub(tmp_path / "plates.epub", "Plates", "A", plates, raw_html=True)
    with pytest.raises(InvalidInput, match=r"plates.epub has no text to speak \(its chapters"):
        read_book(path)


# --- Markdown --------------------------------------------------------------------

MARKDOWN = """\
A foreword with a [link to the site](https://example.com/about) and ![a map](map.png).

# The Harbour

The keeper saw the *boats* come in.

```python
print("code is not read")
```

## Evening

- The lamp was lit.

# The Storm

It rained, see <https://weather.example/today>.
"""


def test_markdown_chapters_start_at_top_level_headings(tmp_path: Path) -> None:
    path = tmp_path / "Harbour Tales.md"
    path.write_text(MARKDOWN, encoding="utf-8")
    book = read_book(path)
    # Then text before the first heading is titled by the book (its first # heading)
    assert book.title == "The Harbour"
    assert [(c.title, c.text) for c in book.chapters] == [
        ("The Harbour", "A foreword with a link to the site and."),
        ("The Harbour", "The keeper saw the boats come in.\n\nEvening\n\nThe lamp was lit."),
        ("The Storm", "It rained, see a link."),
    ]


def test_markdown_without_top_level_headings_splits_at_level_two(tmp_path: Path) -> None:
    path = write_markdown(tmp_path / "tales.MD", STORY, level=2)
    book = read_book(path)
    assert (book.title, _titles(book)) == ("tales", TITLES)
    assert [c.text for c in book.chapters] == [text for _, text in STORY]


def test_markdown_book_title_above_level_two_chapters_is_not_a_chapter(tmp_path: Path) -> None:
    path = write_markdown(tmp_path / "tales.markdown", STORY, title="Tales", level=2)
    book = read_book(path)
    assert (book.title, _titles(book)) == ("Tales", TITLES)


def test_markdown_without_text_has_nothing_to_speak(tmp_path: Path) -> None:
    (tmp_path / "blank.md").write_text("\n\n   \n![only](an-image.png)\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match=r"blank\.md has no text to speak"):
        read_book(tmp_path / "blank.md")


# --- plain text ------------------------------------------------------------------


def test_text_splits_at_chapter_lines_which_become_titles(tmp_path: Path) -> None:
    # Given Windows line endings, a numbered, a shouted and a titled chapter line, and
    # prose that merely starts a line with "Chapter 1"
    source = (
        "Chapter 1\n\nThe lamp was lit.\nChapter 1 was short, he thought.\n\n"
        "CHAPTER TWO\n\nThe wind rose.\n\nChapter Three: The End\n\nIt was calm."
    )
    path = tmp_path / "story.TXT"
    path.write_bytes(source.replace("\n", "\r\n").encode())
    book = read_book(path)
    assert [(c.title, c.text) for c in book.chapters] == [
        ("Chapter 1", "The lamp was lit. Chapter 1 was short, he thought."),
        ("CHAPTER TWO", "The wind rose."),
        ("Chapter Three: The End", "It was calm."),
    ]


def test_text_without_chapter_lines_is_one_chapter_by_default(tmp_path: Path) -> None:
    path = write_text(tmp_path / "story.txt", STORY, heading="{title}", blank_lines=3)
    book = read_book(path)
    assert (book.title, _titles(book)) == ("story", ["story"])


def test_text_blank_lines_rule_titles_chapters_by_a_short_first_line(tmp_path: Path) -> None:
    # Given chapters 3 blank lines apart; the last one opens with a sentence, not a title
    path = write_text(tmp_path / "s.txt", STORY[:2], heading="{title}", blank_lines=3)
    with path.open("a", encoding="utf-8") as f:
        f.write("\n\n\n\nThe end came. Nobody saw it.\n")
    book = read_book(path, chapters_by="blank-lines:3")
    assert _titles(book) == [*TITLES[:2], "Chapter 3"]
    assert [c.text for c in book.chapters[:2]] == [text for _, text in STORY[:2]]
    assert book.chapters[2].text == "The end came. Nobody saw it."
    # and with the rule "none" it is all one chapter
    assert _titles(read_book(path, chapters_by="none")) == ["s"]


@pytest.mark.parametrize("rule", ["blank-lines:x", "blank-lines:0", "chapters", ""])
def test_a_bad_chapter_rule_names_the_option_and_the_accepted_forms(
    tmp_path: Path, rule: str
) -> None:
    path = write_text(tmp_path / "s.txt", STORY)
    with pytest.raises(InvalidInput, match=r"chapters_by=.* use 'auto', 'heading', 'none' or"):
        read_book(path, chapters_by=rule)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"Chapter 1\n\nCaf\xe9 au lait.", r"notes.txt is not valid UTF-8 \(bad byte at offset"),
        (tiny_png(), r"notes.txt (is not valid UTF-8|contains NUL bytes)"),
        (b"", r"notes.txt is empty\."),
        (b"\n \n\t\n", r"notes.txt has no text to speak"),
    ],
    ids=["latin-1", "binary", "empty", "blank"],
)
def test_unreadable_text_is_refused(tmp_path: Path, data: bytes, message: str) -> None:
    (tmp_path / "notes.txt").write_bytes(data)
    with pytest.raises(InvalidInput, match=message):
        read_book(tmp_path / "notes.txt")


def test_unknown_formats_are_refused_with_the_ones_we_read(tmp_path: Path) -> None:
    (tmp_path / "book.pdf").write_bytes(b"%PDF-1.7")
    with pytest.raises(InvalidInput, match=r"^book.pdf is not a book stoker can read \(.epub"):
        read_book(tmp_path / "book.pdf")


# --- speakable -------------------------------------------------------------------


def test_speakable_removes_footnote_marks() -> None:
    text = "The light[1] burned** all night†, as logged¹² in [12] the book‡."
    assert speakable(text) == "The light burned all night, as logged in the book."


def test_speakable_replaces_urls_and_keeps_the_sentence_end() -> None:
    text = "Read https://example.com/a?b=1, www.example.org/x. Or (http://x.io/)."
    assert speakable(text) == "Read a link, a link. Or (a link)."


def test_speakable_keeps_paragraphs_and_collapses_other_whitespace() -> None:
    text = "  One\tline\nwrapped here.\r\n\r\n\n\n  Second\x07 paragraph.  "
    assert speakable(text) == "One line wrapped here.\n\nSecond paragraph."


def test_speakable_passes_emoji_and_cjk_through() -> None:
    text = "夜です。灯台守は 🌊 を見た。Café ☕ time."
    assert speakable(text) == text


def test_speakable_keeps_a_long_run_without_punctuation_whole() -> None:
    words = " ".join(["lamp"] * 2000)
    assert len(words) > 9_000
    assert speakable(words) == words
    assert speakable("x" * 10_000) == "x" * 10_000


def test_a_chapters_only_line_is_spoken_not_taken_as_its_title(tmp_path: Path) -> None:
    # Given a blank-lines book whose last chapter is one short line without a full stop
    book = tmp_path / "odd.txt"
    book.write_text("First part\n\nIt begins here.\n\n\n\nHello 👋 world 🌍 😀😀😀\n")
    chapters = read_book(book, chapters_by="blank-lines:3").chapters
    # Then that line is kept as the chapter's text (and the chapter gets a plain title)
    assert [c.title for c in chapters] == ["First part", "Chapter 2"]
    assert "Hello" in chapters[1].text and "😀" in chapters[1].text
