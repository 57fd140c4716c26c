"""Events that cross processes and hosts: a job's log lines and state, rule evaluations.

An event is a small JSON document published on a *channel* (``job:<id>``,
``evaluations``). Events are stored, so a subscriber that connects late or comes back
after a dropped connection reads what it missed (``Last-Event-ID``) instead of losing
it; each has an id that grows within its channel, the order subscribers see.

* PostgreSQL store: events live in ``geoharbor.events`` of the store's database. A
  publish inserts the event and sends ``NOTIFY geoharbor_events`` with its id and
  channel in the same transaction (the payload stays small whatever the event), under
  a transaction lock of its channel, so ids commit in order within a channel and a
  reader that has seen id N never finds a smaller one later. Each process keeps one
  listening connection (a thread) that wakes the subscribers of the notified channel;
  they read the rows themselves.
* SQLite store (embedded mode, one host): the ``events`` table of the store's file,
  polled at a short interval (SQLite has no notifications); writers are serialised
  by SQLite, so ids are in commit order too.

Events older than ``RETENTION_S`` are pruned, at most every ``PRUNE_EVERY_S`` by each
publishing process. Reading needs no lock and costs one indexed range read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout

from providers.errors import InvalidQuery, Unavailable
from providers.store import PostgresStore, SQLiteConnections, SQLiteStore, Store

LOGGER = logging.getLogger(__name__)

#: The PostgreSQL notification channel every geoharbor event is announced on.
NOTIFY_CHANNEL = "geoharbor_events"
#: First key of the transaction locks that order the events of one channel ("ev").
LOCK_SPACE = 0x6576
#: Channel names are ours (``job:<uuid>``, ``evaluations``): short, and they travel in NOTIFY payloads.
MAX_CHANNEL = 200
#: Events are kept this long (seconds): long enough for a client to come back, or for a job's log.
RETENTION_S = 24 * 3600
#: A publishing process prunes old events at most this often (seconds).
PRUNE_EVERY_S = 300
#: Events read at once by a subscriber.
BATCH = 500
#: SQLite store: how often a subscriber looks for new events (seconds).
POLL_S = 0.25
#: The listening connection is tried again after this long when it fails (seconds).
RECONNECT_S = 2.0
#: A woken subscriber reads at once; one never woken still reads this often (seconds).
SAFETY_READ_S = 30.0


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its id (ordered within its channel), channel, body and time (epoch)."""

    id: int
    channel: str
    body: dict[str, Any]
    created: float


def _check_channel(channel: str) -> None:
    if not channel or len(channel) > MAX_CHANNEL or "\n" in channel:
        raise InvalidQuery(f"invalid event channel {channel[:50]!r}")


class EventBus(ABC):
    """Publish events, read them back by channel, and wait for new ones."""

    #: How long a subscriber waits before reading again without being woken (None: until woken).
    poll_s: float | None = None

    def __init__(self) -> None:
        self._pruned_at = 0.0

    @abstractmethod
    def _insert(self, channel: str, body: dict[str, Any]) -> int:
        """Store (and announce) one event; its id."""

    @abstractmethod
    def read(self, channel: str, after: int, limit: int = BATCH) -> list[Event]:
        """The events of ``channel`` with an id above ``after``, oldest first."""

    @abstractmethod
    def last_id(self, channel: str) -> int:
        """The id of the newest stored event of ``channel`` (0 when none)."""

    @abstractmethod
    def prune(self, older_than_s: float = RETENTION_S) -> int:
        """Delete events older than ``older_than_s`` seconds; how many went."""

    def publish(self, channel: str, body: dict[str, Any]) -> int:
        """Store ``body`` on ``channel`` and wake its subscribers everywhere; returns the event id."""
        _check_channel(channel)
        event_id = self._insert(channel, body)
        if time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            try:
                self.prune()
            except Unavailable as exc:  # the next publish tries again; the event itself is stored
                LOGGER.warning("old events not pruned: %s", exc.message)
        return event_id

    def subscribe(self, channel: str, after: int | None = None) -> Subscription:
        """Follow ``channel`` from the event after id ``after`` (None: only events from now on)."""
        _check_channel(channel)
        subscription = Subscription(self, channel, 0)
        self._register(subscription)
        # Registered first, then positioned: an event stored in between is read, not missed.
        subscription.last = self.last_id(channel) if after is None else max(0, after)
        return subscription

    def _register(self, subscription: Subscription) -> None:  # noqa: B027 - only PostgreSQL wakes
        """Start waking ``subscription`` when its channel is announced (PostgreSQL)."""

    def _unregister(self, subscription: Subscription) -> None:  # noqa: B027 - only PostgreSQL wakes
        """Stop waking ``subscription``."""

    def close(self) -> None:  # noqa: B027 - a bus that holds nothing has nothing to release
        """Release the connections held for listening."""


class Subscription:
    """One reader of one channel: the events after the last one it returned, as they come."""

    def __init__(self, bus: EventBus, channel: str, last: int) -> None:
        self.bus = bus
        self.channel = channel
        self.last = last
        self._wake = threading.Event()
        self._wake.set()  # the first call reads
        self._read_at = 0.0
        self._closed = False

    def wake(self) -> None:
        self._wake.set()

    def next(self, timeout: float) -> list[Event]:
        """The events after the last returned, waiting up to ``timeout`` seconds for one; [] if none came.

        The store is read only when there may be something new: when woken (PostgreSQL),
        every ``poll_s`` (SQLite), and every ``SAFETY_READ_S`` regardless; an idle
        subscriber costs no query. The flag is cleared before the read: a notification
        that arrives after it sets the flag again, so the wait returns at once and the
        next read finds its event.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        poll = self.bus.poll_s
        period = SAFETY_READ_S if poll is None else min(poll, SAFETY_READ_S)
        while not self._closed:
            now = time.monotonic()
            if self._wake.is_set() or now - self._read_at >= period:
                self._wake.clear()
                self._read_at = now
                found = self.bus.read(self.channel, self.last)
                if found:
                    self.last = found[-1].id
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._wake.wait(min(remaining, max(0.0, self._read_at + period - time.monotonic())))
        return []

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.bus._unregister(self)
            self._wake.set()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- PostgreSQL ----------------------------------------------------------------------------------

_PG_DDL = """
CREATE SCHEMA IF NOT EXISTS geoharbor;
CREATE TABLE IF NOT EXISTS geoharbor.events (
  id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
  channel text NOT NULL,
  body jsonb NOT NULL,
  created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS events_channel ON geoharbor.events (channel, id);
CREATE INDEX IF NOT EXISTS events_created ON geoharbor.events (created);
"""


class PostgresBus(EventBus):
    """Events in ``geoharbor.events`` of a PostGIS database, announced with LISTEN/NOTIFY.

    ``database`` is a :class:`providers.postgis.PostGISDatabase` (its pool for reads and
    writes; its direct URL, past any pooler, for the one listening connection of each process).
    """

    def __init__(self, database: Any) -> None:
        super().__init__()
        self.db = database
        self._ready = False
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[Subscription]] = {}
        self._listener: threading.Thread | None = None
        self._listener_pid: int | None = None
        self._stop = threading.Event()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection with the table in place; a lost database is Unavailable (503)."""
        try:
            if not self._ready:
                with self._lock, self.db.connection() as conn, conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(hashtext('geoharbor.events'))")
                    conn.execute(_PG_DDL)
                    self._ready = True
            with self.db.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Unavailable(f"event store unavailable: {exc}") from exc

    def _insert(self, channel: str, body: dict[str, Any]) -> int:
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_SPACE, channel))
            row = conn.execute(
                "INSERT INTO geoharbor.events (channel, body) VALUES (%s, %s) RETURNING id",
                (channel, Jsonb(body)),
            ).fetchone()
            assert row is not None  # an INSERT ... RETURNING returns its row
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, f"{row[0]} {channel}"))
        return int(row[0])

    def read(self, channel: str, after: int, limit: int = BATCH) -> list[Event]:
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT id, body, extract(epoch FROM created) FROM geoharbor.events "
                "WHERE channel = %s AND id > %s ORDER BY id LIMIT %s",
                (channel, after, limit),
            ).fetchall()
        return [Event(int(r[0]), channel, r[1], float(r[2])) for r in rows]

    def last_id(self, channel: str) -> int:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT coalesce(max(id), 0) FROM geoharbor.events WHERE channel = %s", (channel,)
            ).fetchone()
        return int(row[0]) if row else 0

    def prune(self, older_than_s: float = RETENTION_S) -> int:
        with self._connection() as conn:
            return conn.execute(
                "DELETE FROM geoharbor.events WHERE created < now() - make_interval(secs => %s)",
                (float(older_than_s),),
            ).rowcount

    # -- waking subscribers ----------------------------------------------------------------------
    def _register(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.setdefault(subscription.channel, set()).add(subscription)
            if self._listener is None or self._listener_pid != os.getpid() or not self._listener.is_alive():
                # One listener per process: a thread does not survive a fork.
                self._stop.clear()
                self._listener = threading.Thread(target=self._listen, name="geoharbor-events", daemon=True)
                self._listener_pid = os.getpid()
                self._listener.start()

    def _unregister(self, subscription: Subscription) -> None:
        with self._lock:
            found = self._subscribers.get(subscription.channel)
            if found is not None:
                found.discard(subscription)
                if not found:
                    del self._subscribers[subscription.channel]

    def _wake(self, channel: str | None) -> None:
        """Wake the subscribers of ``channel``, or all of them (None: notifications may have been lost)."""
        with self._lock:
            if channel is None:
                targets = [s for subs in self._subscribers.values() for s in subs]
            else:
                targets = list(self._subscribers.get(channel, ()))
        for subscription in targets:
            subscription.wake()

    def _listen(self) -> None:
        """LISTEN on a connection of its own for as long as the process lives.

        After a failure every subscriber is woken once the connection is back: they read
        what was published meanwhile, whose notifications went nowhere.
        """
        while not self._stop.is_set():
            try:
                # Directly, not through a transaction pooler: LISTEN needs a session of its own.
                with self.db.connect_direct(autocommit=True, connect_timeout=10) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
                    self._wake(None)
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0):
                            _, _, channel = notify.payload.partition(" ")
                            self._wake(channel)
            except psycopg.Error as exc:
                LOGGER.warning("event listener lost its connection, reconnecting: %s", exc)
                self._stop.wait(RECONNECT_S)

    def close(self) -> None:
        self._stop.set()
        listener = self._listener
        if listener is not None and listener.is_alive() and self._listener_pid == os.getpid():
            listener.join(5)
        self._listener = None


# -- SQLite (embedded mode) ----------------------------------------------------------------------

_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  channel TEXT NOT NULL,
  body TEXT NOT NULL,
  created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_channel ON events (channel, id);
CREATE INDEX IF NOT EXISTS events_created ON events (created);
"""


class SQLiteBus(EventBus):
    """Events in the ``events`` table of the SQLite store's file, polled by subscribers."""

    poll_s = POLL_S

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._connections = SQLiteConnections(path, _SQLITE_DDL)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def _run(self, statement: str, params: tuple) -> list[tuple]:
        try:
            return self._conn.execute(statement, params).fetchall()
        except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk full
            raise Unavailable(f"event store unavailable: {exc}") from exc

    def _insert(self, channel: str, body: dict[str, Any]) -> int:
        ((event_id,),) = self._run(
            "INSERT INTO events (channel, body, created) VALUES (?, ?, ?) RETURNING id",
            (channel, orjson.dumps(body).decode(), time.time()),
        )
        return int(event_id)

    def read(self, channel: str, after: int, limit: int = BATCH) -> list[Event]:
        rows = self._run(
            "SELECT id, body, created FROM events WHERE channel = ? AND id > ? ORDER BY id LIMIT ?",
            (channel, after, limit),
        )
        return [Event(int(r[0]), channel, orjson.loads(r[1]), float(r[2])) for r in rows]

    def last_id(self, channel: str) -> int:
        ((found,),) = self._run("SELECT coalesce(max(id), 0) FROM events WHERE channel = ?", (channel,))
        return int(found)

    def prune(self, older_than_s: float = RETENTION_S) -> int:
        try:
            return self._conn.execute(
                "DELETE FROM events WHERE created < ?", (time.time() - older_than_s,)
            ).rowcount
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"event store unavailable: {exc}") from exc

    def close(self) -> None:
        self._connections.close()


# -- one bus per store ---------------------------------------------------------------------------

_BUSES: weakref.WeakKeyDictionary[Store, EventBus] = weakref.WeakKeyDictionary()
_BUSES_LOCK = threading.Lock()


def bus_for(store: Store) -> EventBus:
    """The event bus next to ``store`` (one per store object, so one listener per process)."""
    with _BUSES_LOCK:
        found = _BUSES.get(store)
        if found is None:
            if isinstance(store, PostgresStore):
                found = PostgresBus(store.db)
            elif isinstance(store, SQLiteStore):
                found = SQLiteBus(store.path)
            else:
                raise TypeError(f"no event bus for {type(store).__name__}")
            _BUSES[store] = found
        return found


def publish(store: Store, channel: str, event: dict[str, Any]) -> int:
    """Publish ``event`` on ``channel`` of the bus next to ``store``; its id."""
    return bus_for(store).publish(channel, event)
