"""Splitting text for speech: sentences, then chunks of bounded size.

Chunks end at sentence boundaries so the joins are natural pauses. A "sentence"
longer than a chunk (a 10,000-character run with no punctuation) is cut at the last
whitespace that fits, and only cut mid-word when there is no whitespace at all.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

# A sentence ends at . ! ? … (with any closing quotes or brackets that follow) before
# whitespace; CJK full stops end a sentence without needing whitespace after them.
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？]")
_BLANK_LINES = re.compile(r"\n\s*\n")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text (a BOM is dropped), or errors.InvalidInput naming ``source`` and the byte."""
    from stoker.errors import InvalidInput

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{source} is not valid UTF-8 (bad byte at offset {exc.start}); "
            f"convert it first, e.g. `iconv -f latin1 -t utf-8 {source}`."
        ) from exc
    if "\x00" in text:
        raise InvalidInput(f"{source} contains NUL bytes, so it looks binary, not text.")
    return text


def read_text_file(path: Path) -> str:
    """The UTF-8 text of the file at ``path`` (see :func:`decode_text`);
    errors.InvalidInput naming the file when it cannot be read or is not text."""
    from stoker.errors import InvalidInput

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror or exc}.") from None
    return decode_text(data, str(path))


def normalise(text: str) -> str:
    """NFC-normalise and drop control characters other than newlines and tabs."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    # Most text has nothing to drop, and str.isprintable (false only for categories C
    # and Z, the ASCII space aside) says so in C, where the filter below is a Python
    # loop over every character: a fifth of the time of reading a PDF's pages.
    if text.replace("\n", " ").replace("\t", " ").isprintable():
        return text
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c)[0] != "C")


def flat_paragraphs(text: str) -> str:
    """Whitespace collapsed inside each paragraph, paragraphs one blank line apart,
    empty ones dropped: text out of a layout (PDF lines, HTML indentation) as prose."""
    paragraphs = (" ".join(p.split()) for p in _PARAGRAPH_BREAK.split(text))
    return "\n\n".join(p for p in paragraphs if p)


def split_sentences(text: str) -> list[str]:
    """Sentences in order, whitespace-trimmed, empty ones dropped.

    Paragraph breaks always end a sentence, even without punctuation (headings).
    """
    sentences: list[str] = []
    for paragraph in _BLANK_LINES.split(text):
        flat = " ".join(paragraph.split())
        start = 0
        for end in _SENTENCE_END.finditer(flat):
            sentences.append(flat[start : end.end()].strip())
            start = end.end()
        sentences.append(flat[start:].strip())
    return [s for s in sentences if s]


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        cut = rest.rfind(" ", 0, max_chars + 1)
        if cut <= 0:
            cut = max_chars  # no whitespace at all: cut mid-word rather than fail
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return pieces


def pack_chunks(sentences: list[str], max_chars: int) -> list[str]:
    """Greedily join sentences into chunks of at most ``max_chars`` characters."""
    chunks: list[str] = []
    current = ""
    for sentence in sentences:
        for piece in _cut_long(sentence, max_chars):
            if current and len(current) + 1 + len(piece) > max_chars:
                chunks.append(current)
                current = piece
            else:
                current = f"{current} {piece}" if current else piece
    if current:
        chunks.append(current)
    return chunks
