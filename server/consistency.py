"""Read-your-writes across hosts and read replicas: the ``gh_rev`` cookie.

With a read replica (a PostGIS source's ``read_url``), the reads of GET and HEAD
requests go to the replica, which replays the primary's changes a little later. A
client that has just written must still read its write on its next request, whichever
host answers it. So every response to a request that wrote carries what the write
committed, and the client sends it back:

* ``Set-Cookie: gh_rev=<token>`` (session cookie, ``Path=/``, ``HttpOnly``,
  ``SameSite=Lax``): browsers and cookie-keeping clients need nothing more;
* the same token in the ``X-Geoharbor-Revision`` response header, for clients that keep
  no cookies: they send it back in an ``X-Geoharbor-Revision`` request header.

The token lists ``<source>:<schema.table>:<revision>`` entries (each name
percent-encoded) separated by ``|``: the revision of ``geoharbor.revisions`` each
write committed. A request carrying a token reads a source's replica only once the
replica has replayed those revisions (providers/replica.py), else the primary. A
write response merges the request's token with its own writes, keeping the newest
``MAX_ENTRIES``. A token that cannot be read is ignored: it can only ask for more
freshness, never for less.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from flask import Flask
from werkzeug.http import dump_cookie, parse_cookie

from providers.replica import SCOPE, ReadScope
from providers.store import GENERATION_KEY
from server.registry import Registry

#: The cookie that carries a client's own write revisions.
COOKIE = "gh_rev"
#: The header that carries them for clients without cookies (request and response).
HEADER = "X-Geoharbor-Revision"
#: At most this many (source, table) entries are kept in a token.
MAX_ENTRIES = 16
#: A longer token is ignored rather than parsed.
MAX_TOKEN = 4096
#: Methods whose reads may go to a replica; any other request reads the primary.
REPLICA_METHODS = frozenset({"GET", "HEAD"})

Entries = dict[tuple[str, str], int]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def parse_token(text: str | None) -> Entries:
    """The (source, table) -> revision entries of a token; unreadable parts are skipped."""
    found: Entries = {}
    if not text or len(text) > MAX_TOKEN:
        return found
    for part in text.split("|")[-MAX_ENTRIES:]:
        source, _, rest = part.partition(":")
        key, _, revision = rest.rpartition(":")
        if not source or not key or not revision.isdigit() or len(revision) > 18:
            continue
        name = (unquote(source), unquote(key))
        found.pop(name, None)  # the later entry of a name is the newer
        found[name] = max(int(revision), found.get(name, 0))
    return found


def format_token(entries: Entries) -> str:
    """Entries as a token, oldest first, at most :data:`MAX_ENTRIES`."""
    items = list(entries.items())[-MAX_ENTRIES:]
    return "|".join(f"{quote(s, safe='')}:{quote(k, safe='')}:{r}" for (s, k), r in items)


def floors(entries: Entries) -> dict[str, dict[str, int]]:
    """Entries by source, as :class:`ReadScope` takes them."""
    out: dict[str, dict[str, int]] = {}
    for (source, key), revision in entries.items():
        out.setdefault(source, {})[key] = revision
    return out


class ReadYourWrites:
    """WSGI middleware: each request's :class:`ReadScope`, and the token on write responses.

    Outermost, so that tiles answered before Flask (server/tile_fast_path.py) read
    within the scope too.
    """

    def __init__(self, app: WSGIApp, registry: Registry) -> None:
        self.app = app
        self.registry = registry
        store_source = registry.config.get("store", {}).get("source")
        self._store_db = registry.sources.get(store_source) if store_source else None

    def _base(self, database: Any) -> Mapping[str, int]:
        """The store's database must have replayed the layers this process publishes: a
        layer's table may be new."""
        generation = self.registry.published_generation
        if database is self._store_db and generation:
            return {GENERATION_KEY: generation}
        return {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sent = parse_token(environ.get("HTTP_X_GEOHARBOR_REVISION"))
        cookie = environ.get("HTTP_COOKIE")
        if cookie and COOKIE in cookie:
            sent = parse_token(parse_cookie(cookie).get(COOKIE)) | sent
        scope = ReadScope(
            replica_ok=environ.get("REQUEST_METHOD") in REPLICA_METHODS, floors=floors(sent), base=self._base
        )
        SCOPE.set(scope)

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if scope.written:
                entries = dict(sent)
                for source, key, revision in scope.written:
                    entries.pop((source, key), None)
                    entries[(source, key)] = max(revision, sent.get((source, key), 0))
                token = format_token(entries)
                headers.append(
                    ("Set-Cookie", dump_cookie(COOKIE, token, path="/", httponly=True, samesite="Lax"))
                )
                headers.append((HEADER, token))
            return start_response(status, headers, exc_info)

        # Not reset after the response: the next request of this thread sets its own, and the
        # body of a streamed response still reads within this one.
        return self.app(environ, start)


def install(app: Flask) -> None:
    """Wrap the whole application (call last, after every other middleware)."""
    registry = app.extensions["geoharbor"].registry
    app.wsgi_app = ReadYourWrites(app.wsgi_app, registry)  # type: ignore[method-assign]
