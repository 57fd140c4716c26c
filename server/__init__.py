"""geoharbor's HTTP server: the Flask app, its blueprints and its command line."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("geoharbor")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
