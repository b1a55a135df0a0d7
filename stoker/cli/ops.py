"""Operating stoker: worker, models, doctor."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Annotated

import typer

from stoker.cli.app import (
    DeviceOpt,
    JsonOpt,
    app,
    console,
    settings_of,
    table_of,
)

if TYPE_CHECKING:
    from stoker.workers.fleet import Fleet

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
def models(
    ctx: typer.Context,
    as_json: JsonOpt = False,
    loaded: Annotated[
        bool, typer.Option("--loaded", help="What each live worker holds now (Redis).")
    ] = False,
    footprints: Annotated[
        bool,
        typer.Option(
            "--footprints", help="The memory each model was measured to take, fleet-wide (Redis)."
        ),
    ] = False,
    forget: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME",
            help="Delete a model's measured footprints so its next load measures it again.",
        ),
    ] = None,
) -> None:
    """The models and voices this machine can load, and where they come from.

    With a Redis job store, also those only live workers have (source fleet)."""
    from stoker.jobs import capabilities_for
    from stoker.workers.cards import fleet_cards
    from stoker.workers.catalog import ModelCatalog
    from stoker.workers.coverage import live_beats, workers_serving

    if loaded:
        _loaded_models(ctx, as_json)
        return
    if forget:
        _forget_footprints(ctx, forget, as_json)
        return
    if footprints:
        _footprints(ctx, as_json)
        return
    settings = settings_of(ctx)
    catalog = ModelCatalog(settings, fleet=fleet_cards(settings))
    # With a shared fleet: how many live workers have each model (its files are
    # where the work runs, which need not be this machine), and the models only
    # they have (from their model cards) after this machine's own.
    beats = live_beats(settings)
    here = catalog.all()
    known = {s.name for s in here}
    specs = here + [s for s in catalog.fleet_specs() if s.name not in known]
    kinds = {s.name: capabilities_for(s) for s in specs}
    serving = None if beats is None else {n: workers_serving(beats, n, k) for n, k in kinds.items()}
    if as_json:
        rows = [
            {
                "name": s.name,
                "backend": s.backend,
                "capabilities": kinds[s.name],
                "source": s.source,
                "path": str(s.path),
                "missing": [str(p) for p in catalog.missing_files(s)],
                "workers": None if serving is None else serving[s.name],
            }
            for s in specs
        ]
        print(json.dumps(rows, indent=2))
        return
    columns = ["name", "backend", "for", "source", "path", "status"]
    table = table_of(*columns, *([] if serving is None else ["live workers"]))
    table.columns[0].no_wrap = True  # names are what people copy; wrap the paths instead
    for spec in specs:
        missing = catalog.missing_files(spec)
        status = f"[red]missing {missing[0]}[/]" if missing else "[green]ok[/]"
        if spec.card is not None:
            status = "[green]on the workers[/]"
        row = [
            spec.name,
            spec.backend,
            ", ".join(kinds[spec.name]),
            spec.source,
            str(spec.path),
            status,
        ]
        table.add_row(*row, *([] if serving is None else [str(serving[spec.name])]))
    console.print(table)


def _shared_fleet(ctx: typer.Context, what: str) -> Fleet:
    """The fleet's shared records, or exit 1 saying why there are none (embedded)."""
    from stoker.workers.fleet import open_fleet

    fleet = open_fleet(settings_of(ctx))
    if not fleet.shared:
        console.print(
            f"Workers share {what} only when the job store is Redis (set "
            f"STOKER_BROKER_URL=redis://...); the embedded default has none to show."
        )
        raise typer.Exit(1)
    return fleet


def _footprints(ctx: typer.Context, as_json: bool) -> None:
    """Every shared measurement: model, device kind, MiB, where and when."""
    records = _shared_fleet(ctx, "measured footprints").footprints()
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    table = table_of("model", "device", "MiB", "measured on", "when", "fingerprint")
    now = time.time()
    for r in records:
        when = f"{_ago(now - r.at)} ago" if r.at else "-"
        table.add_row(
            r.name or "-", r.device_kind, _mib(r.bytes), r.host or "-", when, r.fingerprint[:12]
        )
    console.print(table)
    console.print(
        f"{len(records)} measurement(s); a model not listed is estimated from its size on "
        f"disk at its first load"
    )


def _forget_footprints(ctx: typer.Context, names: list[str], as_json: bool) -> None:
    """Delete the shared measurements of each name (also as this machine's catalog
    resolves it: a name's files and options are its fingerprint)."""
    from stoker.errors import StokerError
    from stoker.workers.catalog import ModelCatalog

    fleet = _shared_fleet(ctx, "measured footprints")
    catalog = ModelCatalog(settings_of(ctx))
    gone, missing = [], []
    for name in names:
        try:
            fingerprints = {catalog.get(name).fingerprint}
        except StokerError:  # not a model here; it may be one on another machine
            fingerprints = set()
        forgotten = fleet.forget(name, fingerprints)
        gone += forgotten
        if not forgotten:
            missing.append(name)
    if as_json:
        print(json.dumps([r.model_dump(mode="json") for r in gone], indent=2))
    else:
        for r in gone:
            what = r.name or r.fingerprint[:12]
            console.print(f"forgot {what} on {r.device_kind} ({_mib(r.bytes)} MiB)")
    if missing:
        console.print(
            f"no measurement of {', '.join(missing)}: see `stoker models --footprints` for "
            f"the names and fingerprints measured so far"
        )
        raise typer.Exit(1)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{max(seconds, 0):.0f} s"


def _loaded_models(ctx: typer.Context, as_json: bool) -> None:
    """Per live worker: pools, budgets, loaded models with footprint and last use."""
    from stoker.queues.app import MODEL_QUEUE_MARK

    beats = _shared_fleet(ctx, "what they hold").workers()
    if as_json:
        print(json.dumps([b.model_dump(mode="json") for b in beats], indent=2))
        return
    table = table_of(
        "worker", "device", "model queues", "budget MiB", "used MiB", "hit/miss/evict",
        "model", "MiB", "last use",
    )  # fmt: skip
    now = time.time()
    for beat in beats:
        for pool in beat.pools or []:
            counts = f"{pool.hits}/{pool.misses}/{pool.evictions}"
            queues = ", ".join(q for q in beat.queues if MODEL_QUEUE_MARK in q) or "-"
            head = [
                beat.hostname,
                pool.device,
                queues,
                _mib(pool.budget_bytes),
                _mib(pool.used_bytes),
                counts,
            ]
            for m in pool.models or []:
                table.add_row(
                    *head, m.name, _mib(m.footprint_bytes), f"{now - m.last_used_at:.0f} s ago"
                )
                head = [""] * len(head)
            if head[0]:
                table.add_row(*head, "-", "", "")
        if not beat.pools:
            table.add_row(beat.hostname, beat.device, "", "", "", "0/0/0", "-", "", "")
    console.print(table)
    for beat in beats:
        if beat.running and beat.running_since is not None:
            since = f"{max(0.0, now - beat.running_since):.0f} s"
            console.print(f"{beat.hostname}: running {beat.running} for {since}", highlight=False)
    console.print(f"{len(beats)} live worker(s)")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


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
