"""How geoharbor reaches a remote WFS: bounded in time, retried a little, cached, and cut off when failing.

One :class:`RemoteService` per remote endpoint and process is shared by every
collection on it. A request

* has a time limit for connecting and for each read, and a deadline for the whole
  answer (a server that trickles bytes cannot hold a worker longer);
* is retried (urllib3's ``Retry``, with exponential backoff) only when the remote could
  not be reached or answered 502/503/504, never after a read timed out: a remote that is
  slow is not made slower, and the client gets its 504 within the time limit;
* is answered from a TTL cache (cachetools) when the same request was answered lately;
  only answers that parsed are cached;
* goes through a circuit breaker (pybreaker): after ``failures`` failures in a row the
  remote is not asked for ``reset_s`` seconds and requests fail at once with a 502, so a
  dead remote costs nothing to the rest of the server.

Failures become :class:`~providers.errors.BadGateway` (502) or
:class:`~providers.errors.GatewayTimeout` (504). An OWS ExceptionReport is the remote
refusing *this* request, not the remote failing: it is a 502 that does not count
towards opening the circuit (one malformed filter must not cut a layer off for all).

The caches and breakers live in this process only: they are caches. What every
process must know (which remote layers are published) lives in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pybreaker
import requests
from cachetools import TTLCache
from lxml import etree
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from providers.errors import BadGateway, GatewayTimeout, InvalidData

LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

#: OWS exception documents (OWS 1.1 and 2.0, WFS 1.0's ServiceExceptionReport).
EXCEPTION_ROOTS = {"ExceptionReport", "ServiceExceptionReport"}

#: Parses remote XML without fetching DTDs or entities from anywhere (no XXE, no network).
XML_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)

USER_AGENT = "geoharbor (OGC API - Features republishing a WFS)"


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """Limits and caching for one remote service (``wfs:`` in the configuration, or a source's own)."""

    timeout_s: float = 10.0  # to connect, and between two reads
    deadline_s: float = 30.0  # for a whole answer, however it trickles in
    retries: int = 2  # on connection failures and 502/503/504 answers
    backoff_s: float = 0.2  # first wait before a retry, doubled each time
    cache_ttl_s: float = 300.0  # how long an answer is reused
    cache_mb: float = 32.0  # answers kept per remote service, in MB
    failures: int = 5  # failures in a row that open the circuit
    reset_s: float = 30.0  # how long an open circuit refuses before trying again
    max_response_mb: float = 64.0  # a larger answer is refused

    @classmethod
    def from_config(cls, *layers: Mapping[str, Any] | None) -> RemoteOptions:
        """Options from configuration mappings, later ones winning; unknown keys are ignored."""
        known = set(cls.__dataclass_fields__)
        values: dict[str, Any] = {}
        for layer in layers:
            values.update({k: v for k, v in (layer or {}).items() if k in known})
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RemoteException(BadGateway):
    """The remote answered an OWS ExceptionReport (it is up; it refused this request)."""


def check_url(url: Any) -> str:
    """An absolute http(s) URL with a host, without fragment; InvalidData for anything else.

    Only http and https: ``file:``, ``ftp:``, ``gopher:`` and friends would turn the
    server into a reader of its own disk or a relay to other protocols.
    """
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise InvalidData("url must be an http or https URL")
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidData("url must be an absolute http or https URL")
    if parts.username or parts.password:
        raise InvalidData("url must not carry credentials")
    return parts._replace(fragment="").geturl()


def raise_for_exception(root: etree._Element) -> None:
    """Raise RemoteException when ``root`` is an OWS exception report, with the remote's own text."""
    if etree.QName(root).localname not in EXCEPTION_ROOTS:
        return
    texts = []
    for element in root.iter():
        if not isinstance(element.tag, str):
            continue
        name = etree.QName(element).localname
        if name in ("ExceptionText", "ServiceException") and element.text and element.text.strip():
            texts.append(" ".join(element.text.split()))
        elif name == "Exception" and element.get("exceptionCode"):
            texts.append(f"[{element.get('exceptionCode')}]")
    raise RemoteException(
        "the remote WFS refused the request: " + (" ".join(texts)[:500] or "no reason given")
    )


def parse_xml(data: bytes, what: str) -> etree._Element:
    """The root of an XML answer; BadGateway for anything that is not well-formed XML."""
    try:
        root = etree.fromstring(data, XML_PARSER)
    except etree.XMLSyntaxError as exc:
        raise BadGateway(f"the remote WFS answered {what} that is not well-formed XML: {exc}"[:400]) from exc
    raise_for_exception(root)
    return root


class _Failed(Exception):
    """Carries a ProviderError through the breaker so that it counts as a failure."""

    def __init__(self, error: BadGateway | GatewayTimeout) -> None:
        super().__init__(error.message)
        self.error = error


class RemoteService:
    """One remote endpoint as this process reaches it."""

    def __init__(self, url: str, options: RemoteOptions | None = None) -> None:
        self.url = check_url(url)
        self.options = options or RemoteOptions()
        opts = self.options
        self._session = requests.Session()
        self._session.headers["User-Agent"] = USER_AGENT
        retry = Retry(
            total=opts.retries,
            connect=opts.retries,
            read=0,  # a read that timed out or broke is not asked again: the client waits already
            status=opts.retries,
            other=0,
            backoff_factor=opts.backoff_s,
            backoff_max=max(opts.backoff_s * 8, 1.0),
            status_forcelist=(502, 503, 504),
            allowed_methods=None,  # WFS reads are idempotent, GET or POST
            raise_on_status=False,
            respect_retry_after_header=False,  # a Retry-After of minutes would break the time limit
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=8)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._cache: TTLCache = TTLCache(
            maxsize=max(1, int(opts.cache_mb * (1 << 20))), ttl=opts.cache_ttl_s, getsizeof=len
        )
        self._lock = threading.Lock()
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=opts.failures,
            reset_timeout=opts.reset_s,
            exclude=[RemoteException],
            throw_new_error_on_trip=False,
            name=self.url,
        )

    # -- use ------------------------------------------------------------------------------------
    def fetch(self, params: Mapping[str, str], parse: Callable[[bytes], T], what: str = "an answer") -> T:
        """GET the service with ``params`` and ``parse`` the answer; from the cache when it is there.

        ``parse`` runs inside the breaker: an answer it cannot read (garbage) is a
        failure of the remote like a refused connection.
        """
        key = tuple(sorted((str(k).lower(), str(v)) for k, v in params.items()))
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None:
            return parse(cached)
        try:
            data, result = self.breaker.call(self._attempt, dict(params), parse, what)
        except pybreaker.CircuitBreakerError:
            raise BadGateway(
                f"the remote WFS {self.url} is failing; it is not asked again for up to "
                f"{self.options.reset_s:g} s"
            ) from None
        except _Failed as failed:
            raise failed.error from None
        if len(data) <= self._cache.maxsize:
            with self._lock:
                self._cache[key] = data
        return result

    def _attempt(self, params: dict[str, str], parse: Callable[[bytes], T], what: str) -> tuple[bytes, T]:
        try:
            data = self._download(params, what)
            return data, parse(data)
        except RemoteException:
            raise  # excluded from the breaker's count
        except (BadGateway, GatewayTimeout) as exc:
            LOGGER.warning("remote WFS %s: %s", self.url, exc.message)
            raise _Failed(exc) from exc

    def _download(self, params: dict[str, str], what: str) -> bytes:
        opts = self.options
        limit = int(opts.max_response_mb * (1 << 20))
        started = time.monotonic()
        try:
            with self._session.get(
                self.url, params=params, timeout=(opts.timeout_s, opts.timeout_s), stream=True
            ) as response:
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_content(chunk_size=65536):
                    size += len(chunk)
                    if size > limit:
                        raise BadGateway(f"the remote WFS answered more than {opts.max_response_mb:g} MB")
                    if time.monotonic() - started > opts.deadline_s:
                        raise GatewayTimeout(
                            f"the remote WFS did not finish its answer within {opts.deadline_s:g} s"
                        )
                    chunks.append(chunk)
                data = b"".join(chunks)
                status = response.status_code
        except requests.exceptions.Timeout as exc:
            raise GatewayTimeout(f"the remote WFS did not answer within {opts.timeout_s:g} s") from exc
        except requests.exceptions.ConnectionError as exc:
            if "timed out" in str(exc).lower():
                raise GatewayTimeout(f"the remote WFS did not answer within {opts.timeout_s:g} s") from exc
            raise BadGateway(f"cannot reach the remote WFS: {_reason(exc)}") from exc
        except requests.exceptions.RequestException as exc:
            raise BadGateway(f"the remote WFS broke off: {_reason(exc)}") from exc
        if status >= 400:
            if data.lstrip()[:1] == b"<":
                try:
                    raise_for_exception(etree.fromstring(data, XML_PARSER))
                except etree.XMLSyntaxError:
                    pass
            raise BadGateway(f"the remote WFS answered HTTP {status} to {what}")
        return data

    # -- state ------------------------------------------------------------------------------------
    def ping(self) -> bool:
        """Whether the remote is considered up (its circuit is not open); asks nothing over the network."""
        return self.breaker.current_state != pybreaker.STATE_OPEN

    @property
    def state(self) -> str:
        return str(self.breaker.current_state)

    def close(self) -> None:
        self._session.close()


def _reason(exc: Exception) -> str:
    """The innermost reason of a requests error, short (no URL with its query string)."""
    inner: BaseException = exc
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__  # type: ignore[assignment]
    text = str(inner) or type(inner).__name__
    return text.split(":")[-1].strip()[:200] or type(inner).__name__
