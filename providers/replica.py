"""A PostGIS source's read replica, and which reads of a request may use it.

A streaming replica replays the primary's WAL a little later than the primary
commits it. Reads sent to it are therefore correct only when it has replayed what
the reader must see. What a reader must see is said in *revisions*: the rows of
``geoharbor.revisions``, bumped by every write in the write's transaction and
replicated like the data, so the revisions read on the replica tell exactly what it
has replayed of each table (and of the registry's generation).

* :class:`ReadScope` is one request's view: whether its reads may go to a replica at
  all (safe methods only: a write, and every read made while writing, uses the
  primary), the revisions its client must see (the ``gh_rev`` cookie the server set
  on the client's own write responses; see server/consistency.py), and the writes it
  made, which the server turns into that cookie. It lives in a context variable set
  for each request; outside requests (jobs, the CLI) there is none and every read
  uses the primary.
* :class:`Replica` holds the pool on the replica, the highest revisions it is known
  to have replayed (they only grow, so a floor met once is met for good), and
  whether it answers. A replica that fails is left alone for ``RETRY_S`` while a
  thread probes it, and its reads go to the primary meanwhile: a replica down costs
  latency, never an error.

For each database a request reads, the choice is made once, at its first read, and
kept for the whole request: a tile's revision and the tile itself then come from the
same server, so a tile built on the replica is cached under the replica's revision,
never under a newer one read on the primary.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

LOGGER = logging.getLogger(__name__)

#: How long a replica that failed is not used (seconds); a thread probes it meanwhile.
RETRY_S = 5.0
#: How long a read waits for a connection to the replica before it reads on the primary (seconds).
CHECKOUT_S = 1.0
#: Connection timeout of the probe of a replica that failed (seconds).
PROBE_CONNECT_S = 2

#: The revisions statement (the same as the primary's, see ``PostGISDatabase.revisions_statement``).
_REVISIONS = "SELECT source, revision FROM geoharbor.revisions WHERE source = ANY(%s)"
#: The replica's replay position and the time of the last transaction it replayed.
_REPLAY = (
    "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, "
    "extract(epoch FROM now() - pg_last_xact_replay_timestamp())"
)


@dataclass(slots=True)
class ReadScope:
    """What the reads of one request may use (see the module doc)."""

    #: Whether reads may go to a replica at all (GET and HEAD requests).
    replica_ok: bool
    #: Revisions the client must see, by source name then revision key (``schema.table``).
    floors: dict[str, dict[str, int]] = field(default_factory=dict)
    #: More revisions a database's reads must see, asked when its first read chooses where
    #: to read: the registry generation the process publishes, for the store's database.
    base: Callable[[Any], Mapping[str, int]] | None = None
    #: The writes this request made: (source name, revision key, revision).
    written: list[tuple[str, str, int]] = field(default_factory=list)
    #: Where each database's reads of this request go, once chosen: True for its replica.
    chosen: dict[int, bool] = field(default_factory=dict)

    def floor(self, database: Any) -> dict[str, int]:
        """The revisions ``database``'s replica must have replayed to serve this request."""
        need = dict(self.floors.get(database.name, {}))
        if self.base is not None:
            for key, revision in self.base(database).items():
                need[key] = max(revision, need.get(key, 0))
        return need


#: The scope of the request being served in this thread; None outside requests.
SCOPE: contextvars.ContextVar[ReadScope | None] = contextvars.ContextVar("geoharbor_read_scope", default=None)


def wrote(source: str, key: str, revision: int) -> None:
    """Note a revision this request's write committed (or is committing): the client is told."""
    scope = SCOPE.get()
    if scope is not None:
        scope.written.append((source, key, revision))


def _first_line(exc: BaseException) -> str:
    """An error's first line, for logs and /health."""
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def lsn_bytes(lsn: str | None) -> int | None:
    """A WAL position (``16/B374D848``) as a byte offset."""
    if not lsn:
        return None
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


class Replica:
    """One source's read replica: its pool, what it has replayed, and whether it answers."""

    def __init__(
        self,
        name: str,
        url: str,
        make_pool: Callable[[str, str], ConnectionPool],
        connect_kwargs: dict[str, Any],
    ) -> None:
        self.name = name
        self.url = url
        self._make_pool = make_pool
        self._connect_kwargs = connect_kwargs
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        #: The highest revision of each key seen on the replica: it has replayed at least that.
        self.known: dict[str, int] = {}
        #: Until when (monotonic) the replica is not used, after a failure.
        self.down_until = 0.0
        self.error: str | None = None
        self._prober: threading.Thread | None = None

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = self._make_pool(self.url, f"geoharbor-replica-{self.name}")
        return self._pool

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled replica connection; PoolTimeout or OperationalError when it does not answer."""
        with self.pool.connection(timeout=CHECKOUT_S) as conn:
            yield conn

    def saw(self, revisions: Mapping[str, int]) -> None:
        """Revisions read on the replica: it has replayed at least these."""
        for key, revision in revisions.items():
            if revision > self.known.get(key, -1):
                self.known[key] = revision

    def has(self, floor: Mapping[str, int]) -> bool:
        """Whether the replica is known to have replayed ``floor`` (no I/O)."""
        return all(self.known.get(key, -1) >= revision for key, revision in floor.items())

    def serves(self, floor: Mapping[str, int]) -> bool:
        """Whether reads that must see ``floor`` may go to the replica now.

        Free when a previous read showed the replica that far; else one read of its
        revisions. False (reads go to the primary) when it is behind or does not answer.
        """
        if not self.up:
            return False
        if self.has(floor):
            return True
        keys = list(floor)
        try:
            with self.connection() as conn:
                rows = conn.execute(_REVISIONS, (keys,)).fetchall()
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self.failed(exc)
            return False
        except psycopg.Error as exc:  # no revision table replayed yet: behind
            LOGGER.debug("replica of %s cannot tell its revisions: %s", self.name, exc)
            return False
        self.saw({key: 0 for key in keys} | {str(k): int(v) for k, v in rows})
        if self.has(floor):
            return True
        LOGGER.debug("replica of %s is behind %s: reading from the primary", self.name, floor)
        return False

    def failed(self, exc: BaseException) -> None:
        """The replica did not answer: its reads go to the primary until a probe finds it back."""
        first = self.up
        self.down_until = time.monotonic() + RETRY_S
        self.error = _first_line(exc)
        if first:
            LOGGER.warning("replica of %s is down, reading from the primary: %s", self.name, self.error)
        with self._lock:
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(
                    target=self._probe, name="geoharbor-replica-probe", daemon=True
                )
                self._prober.start()

    def _probe(self) -> None:
        """Try the replica every ``RETRY_S`` until it answers; then drop the pool's dead connections."""
        while True:
            time.sleep(max(0.0, self.down_until - time.monotonic()))
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=PROBE_CONNECT_S, **self._connect_kwargs
                ) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error as exc:
                self.down_until = time.monotonic() + RETRY_S
                self.error = _first_line(exc)
                continue
            if self._pool is not None:
                self._pool.check()  # connections opened before the failure are dead
            self.error = None
            self.down_until = 0.0
            LOGGER.warning("replica of %s answers again: reads go back to it", self.name)
            return

    def status(self, primary_lsn: str | None) -> dict[str, Any]:
        """``up``, and the lag in seconds and bytes behind ``primary_lsn`` (the primary's
        current WAL position), for /health and /metrics.

        ``lag_s`` is the age of the last transaction replayed, or 0 when the replica has
        replayed everything the primary wrote (an idle primary is not a lagging replica).
        """
        if not self.up:
            return {"up": False, "error": self.error}
        try:
            with self.connection() as conn:
                recovering, replayed, age = conn.execute(_REPLAY, prepare=False).fetchone()  # type: ignore[misc]
        except (psycopg.Error, PoolTimeout) as exc:
            self.failed(exc)
            return {"up": False, "error": self.error}
        if not recovering:
            return {"up": True, "lag_s": 0.0, "lag_bytes": 0, "warning": "not a replica (not in recovery)"}
        behind = None
        if primary_lsn is not None and replayed is not None:
            behind = max(0, lsn_bytes(primary_lsn) - lsn_bytes(replayed))  # type: ignore[operator]
        lag = 0.0 if behind == 0 or age is None else max(0.0, float(age))
        return {"up": True, "lag_s": round(lag, 3), "lag_bytes": behind}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
