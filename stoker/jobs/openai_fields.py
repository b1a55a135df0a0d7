"""Which fields of an OpenAI request body stoker uses, ignores or refuses.

One rule for every endpoint, whichever door the body comes through (a synchronous
API route, a Batch line, a prompt file in the Batch shape): each field is used,
ignored because it cannot change the answer here (``user``), or refused with what
to do instead. OpenAI itself answers an unknown field with a 400; dropping
``tools`` or a misspelt ``num_inference_steps`` without a word would return an
answer the client did not ask for and could not tell apart from one it did.
Pure: no model, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stoker.errors import InvalidInput

#: field → (the values that ask for nothing, why any other value is refused)
Refusals = Mapping[str, tuple[tuple[Any, ...], str]]

STREAM_REFUSED = (
    "streaming is not supported (the answer comes when the job ends); leave it out or "
    "set it to false"
)


@dataclass(frozen=True)
class EndpointFields:
    """The fields one endpoint's body may carry."""

    endpoint: str
    used: frozenset[str]
    ignored: frozenset[str] = frozenset()
    refused: Refusals = field(default_factory=dict)

    def check(self, body: Mapping[str, Any]) -> None:
        """InvalidInput naming the first field of ``body`` that is refused or unknown."""
        for name, value in body.items():
            if name in self.refused:
                allowed, why = self.refused[name]
                if not _asks_for_nothing(value, allowed):
                    raise InvalidInput(f"body.{name}: {why}.", param=name)
            elif name not in self.used and name not in self.ignored:
                raise InvalidInput(
                    f"body.{name} is not a field of {self.endpoint} that stoker knows; "
                    f"remove it (used here: {', '.join(sorted(self.used))}).",
                    param=name,
                )


def _asks_for_nothing(value: Any, allowed: tuple[Any, ...]) -> bool:
    # Same type as well as equal: True == 1 would pass as n=1 otherwise.
    return any(value is a or (type(value) is type(a) and value == a) for a in allowed)
