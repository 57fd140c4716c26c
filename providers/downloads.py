"""Fetching a remote file (http, https, ftp) into a directory, within a size limit.

The importer's ``remote`` data names a URL; the server downloads it and unpacks it
when it is a zip. The transfer is a stream copied through
:func:`providers.files.save_parts`, so the bytes are counted against the limit as
they arrive (a remote that sends more than announced stops at the limit, with
nothing left behind), a zip is unpacked with the same zip-slip and zip-bomb guards
as an upload, and the file name comes from the URL's last path segment, never
from a path the remote chooses.
"""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests
import urllib3

from providers.errors import InvalidData, InvalidQuery, ProviderError
from providers.files import save_parts

SCHEMES = ("http", "https", "ftp")


class RemoteError(ProviderError):
    """The remote server did not deliver the file (unreachable, error status, timeout)."""

    status = 502
    code = "BadGateway"


def check_url(url: str) -> str:
    """The URL if its scheme is one the importer fetches; InvalidQuery otherwise."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES or not parts.hostname:
        raise InvalidQuery(f"cannot fetch {url[:200]!r}: give an http, https or ftp URL")
    return url


def download(
    url: str,
    directory: Path,
    max_bytes: int,
    timeout_s: float,
    username: str | None = None,
    password: str | None = None,
) -> int:
    """Fetch ``url`` into ``directory`` (created), unpacking a zip; returns the bytes on disk.

    On any failure ``directory`` is removed, so a failed fetch leaves nothing behind.
    """
    check_url(url)
    name = PurePosixPath(unquote(urlsplit(url).path)).name or "download"
    try:
        with _open(url, timeout_s, username, password) as stream:
            try:
                return save_parts([(name, stream)], directory, max_bytes)
            except (
                requests.RequestException,
                urllib3.exceptions.HTTPError,
                TimeoutError,
                ConnectionError,
            ) as exc:
                raise RemoteError(f"the transfer from {_shown(url)} failed: {type(exc).__name__}") from exc
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


@contextmanager
def _open(url: str, timeout_s: float, username: str | None, password: str | None) -> Iterator[IO[bytes]]:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "ftp":
        yield from _ftp(url, timeout_s, username, password)
        return
    auth = (username, password or "") if username else None
    try:
        response = requests.get(url, stream=True, timeout=timeout_s, auth=auth, allow_redirects=True)
    except requests.Timeout as exc:
        raise RemoteError(f"{_shown(url)} did not answer within {timeout_s:g} s") from exc
    except requests.RequestException as exc:
        raise RemoteError(f"cannot fetch {_shown(url)}: {type(exc).__name__}") from exc
    with response:
        if response.status_code == 404:
            raise InvalidData(f"{_shown(url)} answered 404: no such file")
        if not response.ok:
            raise RemoteError(f"{_shown(url)} answered HTTP {response.status_code}")
        response.raw.decode_content = True
        yield response.raw


def _ftp(url: str, timeout_s: float, username: str | None, password: str | None) -> Iterator[IO[bytes]]:
    parts = urlsplit(url)
    if username:
        netloc = f"{quote(username, safe='')}:{quote(password or '', safe='')}@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit(parts._replace(netloc=netloc))
    try:
        stream = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 - scheme checked: ftp
    except OSError as exc:
        raise RemoteError(f"cannot fetch {_shown(url)}: {exc}") from exc
    with stream:
        yield stream


def _shown(url: str) -> str:
    """The URL without its credentials, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=host))[:200]
