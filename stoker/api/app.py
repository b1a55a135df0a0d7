"""The FastAPI app factory: ``create_app(settings)``.

Settings are built here (or passed in by tests), never at import. The lifespan opens
one Stoker client and the API's own store, and runs the webhook delivery thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from stoker.api import errors
from stoker.api.meta import open_meta_store
from stoker.api.metrics import ApiMetrics
from stoker.api.middleware import BodyLimit, Timing
from stoker.api.routes import batches, files, health, jobs, models, openai
from stoker.api.state import ApiState
from stoker.api.webhooks import Deliverer, DeliveryThread, httpx_post
from stoker.client import Stoker
from stoker.config import Settings, load_settings


def create_app(settings: Settings | None = None, *, deliver_webhooks: bool = True) -> FastAPI:
    """The API over the deployment ``settings`` describe (load_settings() if None)."""
    settings = settings or load_settings()
    metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from stoker.queues.app import QUEUES
        from stoker.workers.fleet import open_fleet

        # Model names only: a request must not make workers open arbitrary files.
        stoker = Stoker(settings, model_paths=False)
        meta = open_meta_store(settings)
        state = ApiState(settings=settings, stoker=stoker, meta=meta, metrics=metrics)
        metrics.watch_queues(QUEUES, state.queue_depth)
        metrics.watch_jobs(stoker.store.counts)
        metrics.watch_workers(open_fleet(settings).workers)
        app.state.api = state
        thread = None
        if deliver_webhooks:
            thread = DeliveryThread(
                Deliverer(
                    meta,
                    lambda job_id: metrics.job_seen(stoker.status(job_id)),
                    settings.api,
                    httpx_post(settings.api.webhook_timeout_s),
                    on_result=_count(metrics),
                ),
                settings.api.poll_s,
            )
            thread.start()
        try:
            yield
        finally:
            if thread is not None:
                thread.stop()
            state.background.close()
            meta.close()
            stoker.close()

    app = FastAPI(
        title="stoker",
        summary="Batch jobs for local AI inference, with OpenAI-compatible Files and Batches.",
        version="1",
        lifespan=lifespan,
    )
    errors.install(app)
    for router in (
        jobs.router,
        files.router,
        batches.router,
        openai.router,
        models.router,
        health.router,
    ):
        app.include_router(router)
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.api.max_body_bytes,
        max_upload_bytes=settings.api.max_upload_bytes,
    )
    app.add_middleware(Timing, metrics=metrics)
    return app


def _count(metrics: ApiMetrics) -> Callable[[bool], None]:
    def on_result(ok: bool) -> None:
        (metrics.webhook_deliveries if ok else metrics.webhook_failures).inc()

    return on_result
