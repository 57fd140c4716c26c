"""Errors that data access raises and every front door maps to its own format.

Providers never know about HTTP; each class carries the status code a server
should answer so the OGC, MapFish and REST blueprints agree on what went wrong.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class; ``status`` is the HTTP status a front door should answer."""

    status = 500
    code = "ServerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidQuery(ProviderError):
    """A request parameter is malformed or names something the collection lacks."""

    status = 400
    code = "InvalidParameterValue"


class InvalidData(ProviderError):
    """A feature body is well-formed JSON but cannot be stored (wrong type, bad geometry)."""

    status = 422
    code = "InvalidData"


class Unauthorized(ProviderError):
    """No credentials where they are needed, or a key that is unknown, expired or revoked."""

    status = 401
    code = "Unauthorized"


class Forbidden(ProviderError):
    """Valid credentials that may not do this."""

    status = 403
    code = "Forbidden"


class TooManyRequests(ProviderError):
    """Over the rate limit; ``retry_after`` seconds until the window resets."""

    status = 429
    code = "TooManyRequests"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(ProviderError):
    status = 404
    code = "NotFound"


class Conflict(ProviderError):
    """The write clashes with what is stored (duplicate id, constraint)."""

    status = 409
    code = "Conflict"


class PreconditionFailed(ProviderError):
    """``If-Match`` named a version of the feature that is no longer current."""

    status = 412
    code = "PreconditionFailed"


class ReadOnly(ProviderError):
    """A write was sent to a collection that is not configured as editable."""

    status = 405
    code = "MethodNotAllowed"


class Unavailable(ProviderError):
    """The backing store cannot be reached or timed out."""

    status = 503
    code = "ServiceUnavailable"


class BadGateway(ProviderError):
    """A remote service behind a collection failed: refused, broke off, or answered an error or garbage."""

    status = 502
    code = "BadGateway"


class GatewayTimeout(ProviderError):
    """A remote service behind a collection did not answer in time."""

    status = 504
    code = "GatewayTimeout"
