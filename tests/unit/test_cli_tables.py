"""CLI tables: what a narrow terminal does to them."""

from __future__ import annotations

from rich.console import Console

from stoker.cli.app import table_of


def test_a_job_id_stays_whole_in_a_narrow_terminal_and_other_cells_fold() -> None:
    # Given a jobs table with a job id and a long path, in a 60-column terminal
    job_id = "job_db9acf81babc4bc7b1415f00"
    path = "/archive/recordings/2026/interviews/the-keeper-of-the-light.flac"
    table = table_of("id", "input", "state")
    table.add_row(job_id, path, "succeeded")
    console = Console(width=60, record=True, soft_wrap=True)

    # When it is printed
    console.print(table)
    text = console.export_text()

    # Then the id is on one line, to copy into the next command; the path folds, whole
    assert job_id in text
    assert "".join(line.split("│")[2].strip() for line in text.splitlines() if "│" in line) == path
