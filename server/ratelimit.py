"""(being written)"""

from __future__ import annotations

from flask import Flask


def install(app: Flask) -> None:
    """Register this module's request hooks."""
