"""WSGI entry point for gunicorn: the app built from ``$GEOHARBOR_CONFIG``.

Each gunicorn worker imports this after the fork, so database pools and SQLite
handles are opened per worker, never shared across processes.
"""

import os

from server.app import create_app

app = create_app(os.environ.get("GEOHARBOR_CONFIG", "config/demo.yml"))
