"""Reading documents to embed: real PDFs (fpdf2), HTML pages and EPUBs (ebooklib)."""

from __future__ import annotations

from pathlib import Path

import pytest

from stoker.cli.embed import read_texts
from stoker.errors import InvalidInput
from stoker.jobs.documents import Section, read_document
from tests.books import a_story, write_epub
from tests.documents import lock_pdf, write_pdf

FIRST = "The lighthouse keeper wrote the weather in his log every evening at six."
THIRD = "On the third page the storm came in from the west and the lamp held."


def test_a_pdf_is_a_text_per_page_and_a_page_without_text_is_left_out(tmp_path: Path) -> None:
    # Given a PDF of three pages, the second with no text layer (as a scan has)
    pdf = write_pdf(tmp_path / "log.pdf", [FIRST, "", THIRD])

    # When it is read
    sections = read_document(pdf, "log.pdf")

    # Then its pages with text are sections named by the fragment viewers open at,
    # their lines joined back into prose
    assert sections == [Section("#page=1", FIRST), Section("#page=3", THIRD)]


def test_a_damaged_or_locked_pdf_is_refused_by_name_saying_what_to_do(tmp_path: Path) -> None:
    # Given a PDF cut short, a file that only has a PDF's name, and a locked PDF
    whole = write_pdf(tmp_path / "whole.pdf", [FIRST]).read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(whole[: len(whole) // 3])
    fake = tmp_path / "fake.pdf"
    fake.write_text("not a pdf at all")
    locked = lock_pdf(write_pdf(tmp_path / "locked.pdf", [FIRST]), "secret")

    # When each is read, then each is refused naming it and saying what to do
    for path in (cut, fake):
        with pytest.raises(InvalidInput, match=rf"{path.name} is not a PDF stoker can read"):
            read_document(path, path.name)
    with pytest.raises(InvalidInput, match=r"locked.pdf is password-protected; save a copy"):
        read_document(locked, "locked.pdf")


def test_a_pdf_locked_with_no_password_is_read(tmp_path: Path) -> None:
    # Given a PDF encrypted with an empty user password (print/copy restrictions only)
    pdf = lock_pdf(write_pdf(tmp_path / "open.pdf", [FIRST]), "")
    # When it is read, then it opens as viewers open it
    assert read_document(pdf, "open.pdf") == [Section("#page=1", FIRST)]


def test_an_html_page_is_its_visible_text_in_paragraphs(tmp_path: Path) -> None:
    # Given a page with a head, a script, a style, a menu and two paragraphs
    page = tmp_path / "page.html"
    page.write_text(
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<nav><a href='/'>Home</a></nav><script>var x = 1;</script>"
        "<h1>The  Keeper</h1><p>He wrote\n   the weather.</p><p>Then <b>slept</b>.</p>"
        "</body></html>"
    )
    # When it is read, then only what a reader sees is its text, a paragraph per block
    assert read_document(page, "page.html") == [
        Section("", "The Keeper\n\nHe wrote the weather.\n\nThen slept.")
    ]


def test_an_epub_is_a_text_per_chapter_led_by_its_title(tmp_path: Path) -> None:
    # Given an EPUB of three chapters with front matter
    story = a_story(3, 4)
    book = write_epub(tmp_path / "b.epub", "The Keeper", "A. N. Author", story, front_matter=True)

    # When it is read
    sections = read_document(book, "b.epub")

    # Then each chapter is a section, its title first; front matter is not a text
    assert [s.anchor for s in sections] == ["#chapter=1", "#chapter=2", "#chapter=3"]
    for section, (title, text) in zip(sections, story, strict=True):
        assert section.text.startswith(f"{title}\n\n") and text.split(".")[0] in section.text


def test_a_folder_of_mixed_documents_names_each_text_by_file_and_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a folder with a note, a two-page PDF, a page, a scanned PDF and an image
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("A note.")
    write_pdf(docs / "b.pdf", [FIRST, THIRD])
    (docs / "c.htm").write_text("<p>A page.</p>")
    write_pdf(docs / "scan.pdf", ["", ""])
    (docs / "d.png").write_bytes(b"\x89PNG")

    # When the folder is read
    texts, ids = read_texts(docs, 1000)

    # Then every text is named by its file and section; the scan is skipped, named
    assert ids == ["a.md", "b.pdf#page=1", "b.pdf#page=2", "c.htm"]
    assert texts == ["A note.", FIRST, THIRD, "A page."]
    warning = capsys.readouterr().err.replace("\n", " ")
    assert "skipped 1 file(s) with no text" in warning and "scan.pdf" in warning

    # And a page over the limit is refused naming the file and the page
    write_pdf(docs / "b.pdf", [FIRST, "word " * 300])
    with pytest.raises(InvalidInput, match=r"b.pdf#page=2: its text is over the 1,000-byte"):
        read_texts(docs, 1000)


def test_one_document_given_as_the_file_is_read_as_a_document(tmp_path: Path) -> None:
    # Given a PDF and a scanned PDF given to --file on their own
    pdf = write_pdf(tmp_path / "log.pdf", [FIRST, THIRD])
    scan = write_pdf(tmp_path / "scan.pdf", [""])

    # When each is read, then the PDF's pages are texts named by the file's name; the
    # scan, with nothing to embed, is refused saying why
    assert read_texts(pdf, 1000) == ([FIRST, THIRD], ["log.pdf#page=1", "log.pdf#page=2"])
    with pytest.raises(InvalidInput, match=r"scan.pdf has no text in it .*OCR"):
        read_texts(scan, 1000)
