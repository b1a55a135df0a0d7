"""The embedded broker's transport: kombu's SQLAlchemy transport, waiting less per poll.

Celery's synchronous consumer loop (used with this transport) calls
``drain_events(timeout=2.0)`` and checks for shutdown only between calls, so a
worker asked to stop waits up to 2 s. `stoker run` stops its in-process worker after
every job, so that is 2 s added to every run. Capping each wait at a tenth of a second
makes a stop prompt; polling itself is unchanged (``broker_polling_interval_s``).

Registered under its own alias (kombu_url in queues/app.py); users keep writing
``sqla+sqlite:///...``.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SqlaTransport

ALIAS = "stokersqla"
MAX_DRAIN_S = 0.1


class Transport(SqlaTransport):
    def drain_events(self, connection: Any, timeout: Any = None, **kwargs: Any) -> Any:
        if timeout is not None:
            timeout = min(timeout, MAX_DRAIN_S)
        return super().drain_events(connection, timeout=timeout, **kwargs)


def register() -> None:
    TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")
