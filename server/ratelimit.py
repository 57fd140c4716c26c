"""Rate limits per API key and per client address, counted where every worker sees them.

``auth.rate_limit.key`` bounds each API key, ``auth.rate_limit.anonymous`` each client
address (a request without a key, or with a key that is not valid: guessing keys is
counted against the guesser's address). A keyed request counts only against its key,
so users behind one NAT keep their own allowance. Each is a fixed window (``120/minute``:
at most 120 requests from the start of each minute); over it, 429 with ``Retry-After``.

The counters are rows of the state store, one atomic UPSERT per request
(:meth:`providers.store.Store.hit`), so N workers on M hosts share one limit. The
``limits`` library was considered: its storages are memory, Redis, Memcached and
MongoDB, none of which a geoharbor deployment has, and it has no PostgreSQL storage.

CORS preflights (``OPTIONS`` with ``Access-Control-Request-Method``) and ``/health``
(load balancers probe it) are not counted. With no rate configured nothing is
installed, so the feature costs nothing when off.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from dataclasses import dataclass

from flask import Flask, Response, current_app, g, request

from providers.errors import ProviderError, TooManyRequests, Unauthorized
from providers.store import Store
from server.auth import presented_key
from server.registry import STORE_RETRY_S

LOGGER = logging.getLogger(__name__)

#: Seconds of each unit a rate may be given in (``auth.rate_limit`` values: ``N/unit``).
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

#: Paths never counted: probes of load balancers and orchestrators.
EXEMPT_PATHS = frozenset({"/health", "/health/live", "/health/ready"})

#: Seconds between two purges of ended windows by one process.
PURGE_EVERY_S = 300.0

#: The headers a limited response carries, exposed to web clients of other origins.
HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset", "Retry-After")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``limit`` requests per window of ``window_s`` seconds."""

    limit: int
    window_s: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``120/minute`` (the config schema has checked the form already)."""
        count, _, unit = text.partition("/")
        return cls(int(count), UNITS[unit])


def address_bucket(address: str | None) -> str:
    """The bucket of a client address: an IPv6 client by its /64, an IPv4 client by itself.

    One IPv6 host is given a whole /64 by its network and may use any address in it;
    counting each address apart would let one host multiply its allowance at will.
    """
    try:
        ip = ipaddress.ip_address((address or "").split("%")[0])
    except ValueError:
        return f"addr:{address or 'unknown'}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is the IPv4 client a.b.c.d
            return f"addr:{ip.ipv4_mapped}"
        return f"addr:{ipaddress.ip_network(f'{ip}/64', strict=False)}"
    return f"addr:{ip}"


class RateLimiter:
    """Chooses a request's bucket and counts it in the store."""

    def __init__(self, anonymous: Rate | None, key: Rate | None) -> None:
        self.anonymous = anonymous
        self.key = key
        self._lock = threading.Lock()
        self._purge_at = time.monotonic() + PURGE_EVERY_S
        self._skip_until = 0.0

    def bucket(self) -> tuple[str, Rate] | None:
        """The bucket this request counts in and its rate; None when it is not limited."""
        key = presented_key(request)
        if key is not None:
            auth = current_app.extensions["geoharbor"].auth
            try:
                identity = auth.identify(key)
            except Unauthorized:
                identity = None  # an invalid key: counted against the address; 401 comes next
            except ProviderError:
                identity = None  # the store cannot say now; the access check will answer
            if identity is not None:
                if self.key is None:
                    return None
                name = "master" if identity.key_id is None else str(identity.key_id)
                return f"key:{name}:{self.key.window_s}", self.key
        if self.anonymous is None:
            return None
        return f"{address_bucket(request.remote_addr)}:{self.anonymous.window_s}", self.anonymous

    def check(self) -> None:
        """Count the request; 429 once its bucket is over its rate."""
        if request.path in EXEMPT_PATHS or (
            request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method")
        ):
            return  # a browser's CORS preflight comes with the request it asks for: counted once
        found = self.bucket()
        if found is None:
            return
        name, rate = found
        if time.monotonic() < self._skip_until:
            return
        store = current_app.extensions["geoharbor"].registry.store
        try:
            hits, reset_at = store.hit(name, rate.window_s)
            self._maybe_purge(store)
        except ProviderError as exc:
            # A limit protects the service; it must not take it down with the store, nor
            # make every request wait for a store that does not answer: requests go
            # uncounted for a while. Access checks still fail closed on their own.
            self._skip_until = time.monotonic() + STORE_RETRY_S
            LOGGER.warning(
                "rate limits not counted for %.0f s, the store failed: %s", STORE_RETRY_S, exc.message
            )
            return
        # Whole seconds to the window's end by this host's clock, within one window
        # whatever the skew between this host and the database's clock.
        reset_in = min(rate.window_s, max(1, math.ceil(reset_at - time.time())))
        g.rate_limit = (rate.limit, max(0, rate.limit - hits), reset_in)
        if hits > rate.limit:
            raise TooManyRequests(
                f"rate limit of {rate.limit} requests per {rate.window_s} s exceeded; retry in {reset_in} s",
                reset_in,
            )

    def _maybe_purge(self, store: Store) -> None:
        """Drop ended windows now and then, so one-off client addresses do not pile up."""
        now = time.monotonic()
        with self._lock:
            if now < self._purge_at:
                return
            self._purge_at = now + PURGE_EVERY_S
        store.purge_counters()


def install(app: Flask) -> None:
    """Limit requests when ``auth.rate_limit`` sets a rate; otherwise install nothing.

    The check runs before every other request hook (registry sync, access check): a
    refused request then costs one counter update and nothing else, and requests the
    access check refuses (bad keys) are counted too.
    """
    rates = app.config["GEOHARBOR"]["auth"].get("rate_limit") or {}
    anonymous, key = rates.get("anonymous"), rates.get("key")
    if not anonymous and not key:
        return
    limiter = RateLimiter(Rate.parse(anonymous) if anonymous else None, Rate.parse(key) if key else None)

    def limit_rate() -> None:
        limiter.check()

    app.before_request_funcs.setdefault(None, []).insert(0, limit_rate)

    @app.after_request
    def rate_headers(response: Response) -> Response:
        found = g.get("rate_limit")
        if found is None:
            return response
        limit, remaining, reset_in = found
        response.headers["X-RateLimit-Limit"] = str(limit)
        response.headers["X-RateLimit-Remaining"] = str(remaining)
        response.headers["X-RateLimit-Reset"] = str(reset_in)  # seconds, as Retry-After
        exposed = response.headers.get("Access-Control-Expose-Headers")
        if exposed:  # let web clients on other origins see them too
            response.headers["Access-Control-Expose-Headers"] = ", ".join([exposed, *HEADERS])
        return response
