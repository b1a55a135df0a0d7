"""The `stoker` command. Thin: parse options, call stoker.client / workers, render.

Every failure a user can cause ends as one line, `error: ...`, and a non-zero exit
(2 for bad input or configuration, 1 for a job that failed or an unreachable service).
"""

from stoker.cli import (  # noqa: F401  (they register commands)
    api,
    batch,
    capabilities,
    embed,
    generate,
    jobs,
    ops,
    visual,
)
from stoker.cli.app import app, main

__all__ = ["app", "main"]
