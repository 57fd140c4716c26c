"""gunicorn's access log without API keys.

A client may send its key in the URL (``?api_key=...``, which the reference
documents and which wins over headers), and gunicorn's access log writes the
request line and the referrer as they came. Keys are never logged in clear, so
this logger masks the value of ``api_key`` in every URL it writes, and the
credential headers should a deployment's log format name them.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger

#: ``api_key=VALUE`` in a query string, however the name is cased or percent-encoded.
URL_KEY = re.compile(r"((?:^|[?&;])api(?:_|%5[fF])key=)[^&;#\s\"]*", re.IGNORECASE)
#: Header atoms (``{name}i``) that carry credentials.
CREDENTIAL_HEADERS = frozenset({"{api-key}i", "{x-api-key}i", "{authorization}i", "{cookie}i"})
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the value of every ``api_key`` query parameter masked."""
    return URL_KEY.sub(lambda m: m.group(1) + MASK, text) if "key" in text.lower() else text


class KeyRedactingLogger(Logger):
    """gunicorn's logger, writing access lines with API keys masked."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "f"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact(atoms[name])
        for name in CREDENTIAL_HEADERS & atoms.keys():
            atoms[name] = MASK
        return atoms
