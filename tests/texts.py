"""Plain English test texts (written for these tests; no copyright concerns)."""

from __future__ import annotations

PARAGRAPH = (
    "The lighthouse keeper climbed the stairs every evening at dusk. "
    "He carried a small lamp, a notebook, and a flask of tea. "
    "From the top he could see the harbour, the fishing boats, and the long grey sea. "
    "Some nights the wind was so strong that the windows rattled in their frames. "
    "He wrote down the weather, the ships that passed, and the time the light was lit. "
    "In the morning he walked down to the village to buy bread and read the newspaper. "
)


def sentences(n: int) -> str:
    """About ``n`` sentences of plain English, cycling through PARAGRAPH."""
    parts = [p.strip() + "." for p in PARAGRAPH.split(". ") if p.strip()]
    return " ".join(parts[i % len(parts)].rstrip(".") + "." for i in range(n))


def story(n_words: int) -> str:
    """About ``n_words`` of plain English in which no two sentences are the same.

    Benchmarks use it so content addressing cannot skip repeated chunks.
    """
    parts = [p.strip().rstrip(".") for p in PARAGRAPH.split(". ") if p.strip()]
    out: list[str] = []
    count, day = 0, 1
    while count < n_words:
        sentence = (
            f"On day {day}, {parts[day % len(parts)][0].lower()}{parts[day % len(parts)][1:]}."
        )
        out.append(sentence)
        count += len(sentence.split())
        day += 1
    return " ".join(out)
