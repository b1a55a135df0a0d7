"""API keys: ``stoker keys create NAME`` prints a key once; only its hash is stored.

Why a plain SHA-256 and not a password hash (bcrypt, scrypt): a key is 32 random bytes
(256 bits) from :mod:`secrets`, so guessing it from its hash is as hopeless as guessing
it outright; slow hashes protect low-entropy passwords and would cost every request a
deliberate delay. A fast hash also lets a request find its key by the hash itself,
one lookup, with nothing to compare in a loop.

A key maps to an owner (its name): every job, file and batch it creates belongs to that
owner. An admin key sees every owner's. Each key also has a webhook secret (stored as is:
the API needs it to sign webhook bodies) that signs deliveries which carry no secret of
their own.
"""

from __future__ import annotations

import hashlib
import secrets
import time

from pydantic import BaseModel

from stoker.api.meta import Doc, MetaStore
from stoker.errors import InvalidInput

KEY_NS = "key"
KEY_PREFIX = "sk-stoker-"


class ApiKey(BaseModel):
    name: str  # also the owner of what the key creates
    admin: bool = False
    created_at: float
    hint: str  # the key's first characters, to tell keys apart in `stoker keys list`
    webhook_secret: str

    @property
    def owner(self) -> str:
        return self.name


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: MetaStore, name: str, *, admin: bool = False) -> tuple[str, ApiKey]:
    """A new key for ``name``: returns (the key, to show once; its record)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(f"key name {name!r} must be letters, digits, '-' or '_'.")
    if find_by_name(store, name) is not None:
        raise InvalidInput(f"a key named {name!r} exists; revoke it first or pick another name.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    info = ApiKey(
        name=name,
        admin=admin,
        created_at=time.time(),
        hint=key[: len(KEY_PREFIX) + 4],
        webhook_secret=secrets.token_hex(32),
    )
    store.put(Doc(KEY_NS, key_hash(key), name, info.created_at, info.model_dump()))
    return key, info


def authenticate(store: MetaStore, key: str) -> ApiKey | None:
    """The key's record, or None for an unknown or revoked key."""
    if not key.startswith(KEY_PREFIX):
        return None
    doc = store.get(KEY_NS, key_hash(key))
    return ApiKey.model_validate(doc.data) if doc else None


def list_keys(store: MetaStore) -> list[ApiKey]:
    return [ApiKey.model_validate(d.data) for d in store.list(KEY_NS, None, 10_000)]


def find_by_name(store: MetaStore, name: str) -> Doc | None:
    return next(iter(store.list(KEY_NS, name, 1)), None)


def revoke_key(store: MetaStore, name: str) -> bool:
    """Delete the key named ``name``; False if there is none."""
    doc = find_by_name(store, name)
    if doc is None:
        return False
    store.delete(KEY_NS, doc.id)
    return True
