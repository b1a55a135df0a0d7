"""Operating stoker: worker, models, doctor."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer

from stoker.cli.app import (
    DeviceOpt,
    JsonOpt,
    app,
    console,
    settings_of,
    table_of,
)

# --- workers, models, health ------------------------------------------------------------------


@app.command()
def worker(
    ctx: typer.Context,
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: all).")
    ] = None,
    device: DeviceOpt = "cpu",
    preload: Annotated[list[str] | None, typer.Option(help="Model to load at start.")] = None,
    loglevel: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING.")] = None,
) -> None:
    """Run a worker for one device until SIGTERM (the running chunk finishes first)."""
    from stoker.workers.process import default_queues, run_worker

    settings = settings_of(ctx)
    level = (loglevel or settings.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [q.strip() for q in queues.split(",")] if queues else default_queues()
    run_worker(settings, queues=names, device=device, preload_models=preload or [], loglevel=level)


@app.command()
def models(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """The models and voices this machine can load, and where they come from."""
    from stoker.workers.catalog import ModelCatalog

    catalog = ModelCatalog(settings_of(ctx))
    if as_json:
        rows = [
            {
                "name": s.name,
                "backend": s.backend,
                "source": s.source,
                "path": str(s.path),
                "missing": [str(p) for p in catalog.missing_files(s)],
            }
            for s in catalog.all()
        ]
        print(json.dumps(rows, indent=2))
        return
    table = table_of("name", "backend", "source", "path", "status")
    for spec in catalog.all():
        missing = catalog.missing_files(spec)
        table.add_row(
            spec.name,
            spec.backend,
            spec.source,
            str(spec.path),
            f"[red]missing {missing[0]}[/]" if missing else "[green]ok[/]",
        )
    console.print(table)


@app.command()
def doctor(ctx: typer.Context) -> None:
    """Check the broker, the job store, storage, engines and models; say how to fix each."""
    from stoker.doctor import run_checks

    checks = run_checks(settings_of(ctx))
    table = table_of("check", "", "detail", "fix")
    for c in checks:
        table.add_row(c.name, "[green]ok[/]" if c.ok else "[red]FAIL[/]", c.detail, c.fix)
    console.print(table)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)
