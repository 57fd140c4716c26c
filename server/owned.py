"""Store records that belong to the key that made them: rules, triggers, jobs, imports, datasets.

One rule for all of them: the owner (or an admin) reads and changes its records, grants
(``resources/{id}/permissions``) open them to others, and a record the caller may not
read answers 404, so its existence does not leak. Lists leave out what the caller may
not read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from flask import current_app

from providers.errors import NotFound
from providers.store import Record, Store
from server.auth import current_auth, current_identity

Action = Literal["read", "write"]


def store() -> Store:
    return current_app.extensions["geoharbor"].registry.store


def rights(record: Record) -> frozenset[str]:
    """What the caller may do with ``record`` (read, write, share)."""
    return current_auth().resource_rights(current_identity(), record.id, record.body.get("owner"))


def readable(records: Iterable[Record]) -> list[Record]:
    """The records the caller may read, in the order given."""
    auth, identity = current_auth(), current_identity()
    return [r for r in records if auth.allowed(identity, "read", rights(r))]


def check(record: Record | None, action: Action, what: str) -> Record:
    """``record`` if the caller may ``action`` it: 404 when missing or unreadable, 401/403 otherwise."""
    if record is None:
        raise NotFound(f"{what} not found")
    granted = rights(record)
    auth, identity = current_auth(), current_identity()
    if not auth.allowed(identity, "read", granted):
        raise NotFound(f"{what} not found")
    auth.require(identity, action, granted, what)
    return record


def find(kind: str, key: str, action: Action, what: str) -> Record:
    """The record ``kind``/``key`` checked for ``action`` (see :func:`check`)."""
    return check(store().find(kind, key), action, what)


def owner() -> int | None:
    """The user a new record belongs to: the caller's (None in community mode without keys)."""
    return current_identity().user_id
