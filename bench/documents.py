"""Reading documents for embed: stoker's reader against plain pypdf, same files, same run.

`stoker submit embed --file FOLDER` reads every document on the submitter before the
job is queued (stoker/jobs/documents.py). For a folder of PDFs that is pypdf's text
extraction, page by page, plus what stoker adds: joining each page's lines into prose,
skipping pages without text, the size limit and the ids. This times both over the same
folder of PDFs (written once with fpdf2, untimed):

  1. plain: ``PdfReader(path)``, then ``page.extract_text()`` for every page;
  2. stoker: ``read_documents(folder, max_text_bytes)``, texts and ids.

A page of ~300 words costs the model far more to embed than to read (the embed tables
in docs/benchmarks.md: ~80 ms a 256-token passage on 2 cores), so the column to read is
what stoker adds to pypdf.

Usage: python bench/documents.py [--pdfs 40] [--pages 10] [--repeats 3] [--no-write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import machine, markdown_table, timed_interleaved, write_section  # noqa: E402
from tests.documents import write_pdf  # noqa: E402
from tests.texts import story  # noqa: E402


def plain_read(folder: Path) -> int:
    from pypdf import PdfReader

    pages = 0
    for path in sorted(folder.glob("*.pdf")):
        for page in PdfReader(path).pages:
            page.extract_text()
            pages += 1
    return pages


def stoker_read(folder: Path) -> int:
    from stoker.jobs.documents import read_documents

    return len(read_documents(folder, 1_000_000).texts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pdfs", type=int, default=40)
    parser.add_argument("--pages", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for n in range(args.pdfs):
            write_pdf(
                folder / f"doc{n:03}.pdf", [f"{n}.{p} " + story(300) for p in range(args.pages)]
            )
        pages = args.pdfs * args.pages
        # Both sides read every page with text: the same work, checked before timing.
        assert plain_read(folder) == stoker_read(folder) == pages
        plain_s, stoker_s = timed_interleaved(
            [lambda: plain_read(folder), lambda: stoker_read(folder)], args.repeats
        )

    rows = [
        ["plain pypdf, extract_text per page", f"{plain_s:.2f}", f"{pages / plain_s:.0f}", "1.00"],
        [
            "stoker read_documents (texts and ids)",
            f"{stoker_s:.2f}",
            f"{pages / stoker_s:.0f}",
            f"{plain_s / stoker_s:.2f}",
        ],
    ]
    header = [f"read {args.pdfs} PDFs × {args.pages} pages of ~300 words", "seconds", "pages/s"]
    body = "\n\n".join(
        [
            f"Command: `python bench/documents.py --pdfs {args.pdfs} --pages {args.pages} "
            f"--repeats {args.repeats}` on {machine()}.",
            markdown_table([*header, "× plain"], rows),
            f"Medians of {args.repeats} interleaved runs.",
        ]
    )
    print(body)
    if not args.no_write:
        write_section("documents-read", body)


if __name__ == "__main__":
    main()
