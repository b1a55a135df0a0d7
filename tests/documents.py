"""Real documents for tests: PDFs written with fpdf2 (and encrypted with pypdf), HTML pages."""

from __future__ import annotations

from pathlib import Path


def write_pdf(path: Path, pages: list[str]) -> Path:
    """A PDF with a page per item, its text in Helvetica; "" makes a page with no text
    layer, as a scanned page has."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


def lock_pdf(path: Path, password: str) -> Path:
    """The PDF at ``path`` rewritten to open only with ``password`` (RC4: pypdf needs no
    other package for it)."""
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=str(path))
    writer.encrypt(user_password=password, algorithm="RC4-128")
    with path.open("wb") as f:
        writer.write(f)
    return path
