"""The ``geoharbor`` command: serve, write the OpenAPI document, build the demo data."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from server.config import ConfigError, load

DEFAULT_CONFIG = "config/demo.yml"


def _config_path(args: argparse.Namespace) -> str:
    return args.config or os.environ.get("GEOHARBOR_CONFIG") or DEFAULT_CONFIG


def _prepare_demo(config: dict[str, Any]) -> None:
    """Build any demo GeoPackage the config points at that does not exist yet."""
    from server.demo import build

    for source in config["sources"].values():
        if source["type"] == "geopackage" and Path(source["path"]).name == "demo.gpkg":
            build(source["path"])


def serve(args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    path = _config_path(args)
    config = load(path)  # fail here, with the key that is wrong, not in every worker
    _prepare_demo(config)
    server = config["server"]
    options = {
        "bind": args.bind or server["bind"],
        "workers": args.workers or server["workers"],
        "threads": server["threads"],
        "timeout": args.timeout or server["timeout"],
        "graceful_timeout": 30,
        "accesslog": "-" if args.access_log else None,
        "worker_class": "gthread" if server["threads"] > 1 else "sync",
        # One shared control socket path would make several servers on a host collide.
        "control_socket_disable": True,
        # CQL2 filters with polygons make long URLs; 8190 is gunicorn's largest finite limit.
        "limit_request_line": 8190,
    }
    os.environ["GEOHARBOR_CONFIG"] = str(Path(path).resolve())

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None and key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self):
            from server.app import create_app

            return create_app(os.environ["GEOHARBOR_CONFIG"])

    print(f"geoharbor: serving {path} on http://{options['bind']}", file=sys.stderr)
    Server().run()
    return 0


def openapi(args: argparse.Namespace) -> int:
    from server.app import create_app

    config = load(_config_path(args))
    _prepare_demo(config)
    app = create_app(config)
    base = args.url or config["server"]["url"] or f"http://{config['server']['bind']}"
    doc = app.extensions["geoharbor"].core.openapi(base.rstrip("/"))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"geoharbor: wrote {out}", file=sys.stderr)
    return 0


def demo(args: argparse.Namespace) -> int:
    from server.demo import build

    print(build(args.output, force=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geoharbor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server under gunicorn")
    p.add_argument("-c", "--config", help=f"YAML config (default $GEOHARBOR_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("-b", "--bind", help="address:port to listen on")
    p.add_argument("-w", "--workers", type=int, help="number of worker processes")
    p.add_argument("-t", "--timeout", type=int, help="worker timeout in seconds")
    p.add_argument("--access-log", action="store_true", help="log every request to stderr")
    p.set_defaults(func=serve)
    p = sub.add_parser("openapi", help="write the OpenAPI document")
    p.add_argument("-c", "--config")
    p.add_argument("-o", "--output", default="openapi/openapi.json")
    p.add_argument("--url", help="public base URL to put in the document")
    p.set_defaults(func=openapi)
    p = sub.add_parser("demo", help="(re)build the demo GeoPackage")
    p.add_argument("-o", "--output", default="data/demo.gpkg")
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"geoharbor: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
