"""Work that starts when its time comes rather than on a request: SCHEDULE triggers
(:func:`server.rule_runs.fire_schedules`) and scheduled harvesters
(:func:`server.geonode_harvest.fire_harvests`).

With a PostgreSQL store one procrastinate periodic task runs :func:`fire_due` for every
host (:mod:`server.jobs`); in embedded mode each serving process runs it from a thread
(:func:`start_embedded`). Either way a due time is *claimed* first, by a store record
whose key is unique (:func:`claim`), so two processes that see the same time due start
one run, not two.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from providers.errors import Conflict
from providers.store import Record, Store

LOGGER = logging.getLogger(__name__)

#: Store record kind of a claimed due time.
SCHEDULE_CLAIM = "schedule_claim"
#: How often the embedded mode's scheduler looks for work whose time has come.
SCHEDULE_EVERY_S = 15.0


def claim(store: Store, slot: str, body: dict[str, Any]) -> Record | None:
    """Claim ``slot`` (one due time of one schedule) for this process; None when another
    process claimed it first."""
    try:
        return store.insert(SCHEDULE_CLAIM, body, key=slot)
    except Conflict:
        return None


def fire_due(registry: Any, queue: Any, now: float) -> None:
    """Start everything whose time has come: SCHEDULE triggers, then scheduled harvesters.
    A failure of one kind does not keep the other from its time."""
    from server.geonode_harvest import fire_harvests
    from server.rule_runs import fire_schedules

    for fire in (fire_schedules, fire_harvests):
        try:
            fire(registry, queue, now)
        except Exception:  # noqa: BLE001 - a bad round must not stop the schedules
            LOGGER.exception("%s failed", fire.__name__)


def start_embedded(registry: Any, queue: Any) -> threading.Thread:
    """Embedded mode has no procrastinate: a daemon thread of this process runs
    :func:`fire_due` every :data:`SCHEDULE_EVERY_S` seconds."""

    def loop() -> None:
        while True:
            time.sleep(SCHEDULE_EVERY_S)
            fire_due(registry, queue, time.time())

    thread = threading.Thread(target=loop, name="schedules", daemon=True)
    thread.start()
    return thread
