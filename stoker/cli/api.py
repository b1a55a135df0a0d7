"""`stoker api` (the HTTP API under uvicorn) and `stoker keys` (its API keys)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from stoker.cli.app import JsonOpt, app, console, settings_of, table_of
from stoker.errors import InvalidInput

keys_app = typer.Typer(help="API keys of the HTTP API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def api(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to bind (api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (api.port).")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs) until interrupted."""
    import uvicorn

    from stoker.api.app import create_app

    settings = settings_of(ctx)
    uvicorn.run(
        create_app(settings),
        host=host or settings.api.host,
        port=port or settings.api.port,
        log_level=settings.log_level.lower(),
    )


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Owner name: the key's jobs and files are its.")],
    admin: Annotated[bool, typer.Option("--admin", help="May see every owner's jobs.")] = False,
) -> None:
    """Create a key and print it once (only its hash is stored)."""
    from stoker.api.keys import create_key
    from stoker.api.meta import open_meta_store

    store = open_meta_store(settings_of(ctx))
    try:
        key, info = create_key(store, name, admin=admin)
    finally:
        store.close()
    console.print(f"key for {info.name}{' (admin)' if info.admin else ''}; it is shown only once:")
    print(key)
    console.print(f"webhook signing secret: {info.webhook_secret}")


@keys_app.command("list")
def keys_list(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Every key: name, admin, created, first characters."""
    from stoker.api.keys import list_keys
    from stoker.api.meta import open_meta_store

    store = open_meta_store(settings_of(ctx))
    try:
        keys = list_keys(store)
    finally:
        store.close()
    if as_json:
        print(json.dumps([k.model_dump(exclude={"webhook_secret"}) for k in keys]))
        return
    table = table_of("name", "admin", "created", "key starts with")
    for k in keys:
        created = datetime.fromtimestamp(k.created_at, UTC).strftime("%Y-%m-%d %H:%M")
        table.add_row(k.name, "yes" if k.admin else "", created, k.hint + "…")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(ctx: typer.Context, name: Annotated[str, typer.Argument()]) -> None:
    """Delete the key named NAME; requests with it get 401 from then on."""
    from stoker.api.keys import revoke_key
    from stoker.api.meta import open_meta_store

    store = open_meta_store(settings_of(ctx))
    try:
        if not revoke_key(store, name):
            raise InvalidInput(f"no key named {name!r}; `stoker keys list` shows them.")
    finally:
        store.close()
    console.print(f"revoked {name}")
