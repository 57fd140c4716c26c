"""The ``geoharbor`` command: serve, write the OpenAPI document, build the demo data,
import spatial files, and manage users, roles and API keys in the configured store.

The first admin of a deployment is made here (``geoharbor user add NAME --admin``
then ``geoharbor key create --user NAME --scope read,write,admin``), or over REST
with the master key. Commands that print a key print it once, alone on its line of
stdout; everything else goes to stderr, so ``KEY=$(geoharbor key create ...)`` works.
Bad input (an unknown user, scope or role, a taken name, an expiry in the past)
exits with 2 and says what is wrong.

``geoharbor serve`` runs gunicorn's threaded workers (gthread), never sync ones: an
event stream (server/streams.py) holds its thread for as long as the client follows
it, which would take a whole sync worker away. Each worker gets ``server.threads``
threads for ordinary requests plus one per event stream it may serve
(``server.max_streams``); server/streams.py keeps ordinary requests to
``server.threads`` at once, as before. gevent would serve more streams per worker but
must patch every blocking call of psycopg, GDAL and pyogrio, which not all of them
allow; threads need nothing of the libraries. On SIGTERM a worker first ends its
streams, so a graceful stop is not held up by clients that never leave, and closes its
listening sockets, so that new connections are refused (a load balancer retries them
elsewhere) while the requests in flight finish. Prometheus
counters of all workers are added up through ``PROMETHEUS_MULTIPROC_DIR`` (server/metrics.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from providers.errors import ProviderError
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
    # Before anything imports prometheus_client: it picks its mode when first imported.
    metrics_dir = _metrics_dir()
    from server import streams

    server = config["server"]
    options = {
        "bind": args.bind or server["bind"],
        "workers": args.workers or server["workers"],
        "threads": server["threads"] + streams.max_streams(config),
        "timeout": args.timeout or server["timeout"],
        "graceful_timeout": 30,
        "accesslog": "-" if args.access_log else None,
        "worker_class": "gthread",
        "post_worker_init": _post_worker_init,
        "child_exit": _forget_worker,
        # One shared control socket path would make several servers on a host collide.
        "control_socket_disable": True,
        # CQL2 filters with polygons make long URLs; 8190 is gunicorn's largest finite limit.
        "limit_request_line": 8190,
        # A key sent as ?api_key= must not reach the access log in clear.
        "logger_class": "server.access_log.KeyRedactingLogger",
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
    workers = _start_job_workers(config, os.environ["GEOHARBOR_CONFIG"])
    master = os.getpid()
    try:
        Server().run()
    finally:
        # gunicorn's workers are forks of this process and leave by SystemExit through this
        # very frame: only the master may stop the job workers and remove the metrics
        # directory, or one worker's restart would take them from the whole server.
        if os.getpid() == master:
            _stop(workers)
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


#: The directory where gunicorn workers write their Prometheus values (prometheus_client's name).
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _metrics_dir() -> str | None:
    """Give the workers an empty directory for their Prometheus values; the one made, if any.

    A directory the operator named is emptied of a previous run's values, as
    prometheus_client requires; else a temporary one is made, removed when serve ends.
    """
    given = os.environ.get(METRICS_DIR_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        return None
    made = tempfile.mkdtemp(prefix="geoharbor-metrics-")
    os.environ[METRICS_DIR_ENV] = made
    return made


def _post_worker_init(worker: Any) -> None:
    """gunicorn ``post_worker_init``: streams end on SIGTERM, and a worker that crashes says where."""
    _end_streams_on_sigterm(worker)
    _dump_tracebacks_on_crash()


def _dump_tracebacks_on_crash() -> None:
    """A worker killed by a fault (SIGSEGV in a C extension, SIGABRT when gunicorn's timeout
    kills a stuck worker) writes every thread's Python traceback to the server log first:
    otherwise the log says only that a worker died and its request's connection was reset."""
    import faulthandler

    faulthandler.enable(all_threads=True)


def _end_streams_on_sigterm(worker: Any) -> None:
    """gunicorn ``post_worker_init``: on SIGTERM, end the worker's event streams and stop
    listening, then stop as usual (the requests in flight finish)."""
    import signal

    from server import streams

    graceful = signal.getsignal(signal.SIGTERM)

    def stop(signum: int, frame: Any) -> None:
        streams.SHUTDOWN.set()
        if callable(graceful):
            graceful(signum, frame)
        _stop_listening(worker)

    signal.signal(signal.SIGTERM, stop)


def _stop_listening(worker: Any) -> None:
    """Have the worker close its copies of the listening sockets, from its own loop.

    A stopping gthread worker stops accepting but keeps its copy of the listening socket
    until its last request ends, and the kernel goes on completing connections nobody
    will accept: they wait, then are reset. Once the arbiter and every stopping worker
    have closed theirs, a new connection is refused at once, and a load balancer sends
    it to another host. A worker stopped alone (a reload) leaves the socket to the
    workers that go on.

    The closing runs in the worker's event loop (its method queue), never in this signal
    handler, which may have interrupted that loop: the listeners leave the poller first,
    so no event of theirs reaches a closed socket. The queue is fed from a thread, as
    its lock may be held by the code this handler interrupted. A worker without that
    loop (not gthread) stops as gunicorn has it.
    """
    queue = getattr(worker, "method_queue", None)
    disable = getattr(worker, "set_accept_enabled", None)
    if queue is None or disable is None:
        return

    def close_listeners() -> None:
        disable(False)
        for listener in getattr(worker, "sockets", []):
            raw = getattr(listener, "sock", None)
            if raw is not None:
                raw.close()  # the wrapper stays: the worker's last clean-up closes it again

    import threading

    threading.Thread(target=queue.defer, args=(close_listeners,), daemon=True).start()


def _forget_worker(server: Any, worker: Any) -> None:
    """gunicorn ``child_exit``: a dead worker's live gauges go with it (its counters stay summed)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def _start_job_workers(config: dict[str, Any], path: str) -> list[subprocess.Popen]:
    """``jobs.workers`` ``geoharbor worker`` processes next to gunicorn (PostgreSQL store only:
    in embedded mode the server runs jobs itself). Web workers never run jobs."""
    if "source" not in config["store"]:
        return []
    command = [sys.executable, "-m", "server.cli", "worker", "-c", path]
    return [subprocess.Popen(command, preexec_fn=_die_with_parent) for _ in range(config["jobs"]["workers"])]


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when the server process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()  # its running job is failed as lost by the next worker


def worker(args: argparse.Namespace) -> int:
    """Run jobs (imports, processing) from the queue on the store's database until stopped."""
    from server.jobs import run_worker

    config = load(_config_path(args))
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] if args.queues else None
    _say(f"job worker {os.getpid()} on {_config_path(args)}")
    run_worker(config, concurrency=args.concurrency, queues=queues)
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


# -- imports ---------------------------------------------------------------------------------
class _ProgressBar:
    """Features done / total on stderr: redrawn in place on a terminal, a line a second otherwise."""

    WIDTH = 30

    def __init__(self, label: str) -> None:
        self.label = label
        self.tty = sys.stderr.isatty()
        self.shown_at = 0.0
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.shown_at < (0.2 if self.tty else 1.0) and done < total:
            return
        self.shown_at = now
        share = done / total if total else 1.0
        filled = int(share * self.WIDTH)
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        text = f"{self.label} [{bar}] {share:4.0%} {done:,}/{total:,} features"
        print(f"\r{text}" if self.tty else text, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.shown_at:
            print(file=sys.stderr)


def import_file(args: argparse.Namespace) -> int:
    """Load a file's layer into a source's table and publish it as a layer (see providers.loader)."""
    from providers import loader
    from providers.errors import InvalidQuery, Unavailable
    from server.publish import publish_loaded
    from server.registry import Registry

    config = load(_config_path(args))
    source = args.source or config["store"]["tables"]
    if source not in config["sources"]:
        raise InvalidQuery(f"no source named {source!r} (configured: {', '.join(config['sources'])})")
    mode = loader.parse_mode(args.mode)
    registry = Registry(config)
    try:
        if source in registry.source_errors:
            raise Unavailable(f"source {source!r} is unavailable: {registry.source_errors[source]}")
        target = registry.sources[source]
        label = Path(args.file).name
        bar = _ProgressBar(f"geoharbor: {label}")
        started = time.monotonic()
        try:
            result = loader.load(args.file, args.layer, target, args.table, mode, progress=bar, srs=args.srs)
        finally:
            bar.close()
        seconds = time.monotonic() - started
        record = publish_loaded(registry, source, result, mode, title=args.title)
        rate = result.features / seconds if seconds > 0 else 0.0
        _say(
            f"imported {result.features:,} features into {result.table} ({source}, {mode.value}, "
            f"EPSG:{result.srid}, {result.geometry_type}) in {seconds:.1f} s ({rate:,.0f}/s); "
            f"collection {record.key!r} (layer {record.id})"
        )
    finally:
        registry.close()
    return 0


# -- users, roles and keys ------------------------------------------------------------------
@contextmanager
def _accounts(args: argparse.Namespace) -> Iterator[Any]:
    """The configured store's accounts, opened alone (no source is published to do this)."""
    from providers.postgis import PostGISDatabase
    from providers.store import PostgresStore, SQLiteStore, Store
    from server.accounts import Accounts

    config = load(_config_path(args))
    spec = config["store"]
    db = None
    store: Store
    if "source" in spec:
        db = PostGISDatabase(config["sources"][spec["source"]]["url"], pool_min=1, pool_max=1)
        store = PostgresStore(db)
    else:
        store = SQLiteStore(spec["path"])
    try:
        yield Accounts(store)
    finally:
        store.close()
        if db is not None:
            db.close()


def _say(message: str) -> None:
    print(f"geoharbor: {message}", file=sys.stderr)


def _when(epoch: float | None) -> str:
    return "never" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _table(rows: list[list[Any]], header: list[str]) -> None:
    """Rows in aligned columns on stdout (a header first)."""
    cells = [header, *[["-" if v is None or v == "" else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def user_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"username": args.name, "admin": args.admin, "roles": args.role or []}
    for name in ("email", "firstname", "lastname"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    with _accounts(args) as acc:
        record = acc.create_user(body)
    _say(f"user {record.body['username']!r} created (id {record.id}{', admin' if args.admin else ''})")
    return 0


def user_list(args: argparse.Namespace) -> int:
    with _accounts(args) as acc:
        users = acc.store.list("user")
        roles = {r.id: r.body.get("name") for r in acc.store.list("role")}
    rows = [
        [
            u.id,
            u.body.get("username"),
            u.body.get("email"),
            "yes" if u.body.get("admin") else "no",
            "yes" if u.body.get("active", True) else "no",
            ",".join(str(roles.get(r, r)) for r in u.body.get("roles", [])),
        ]
        for u in users
    ]
    _table(rows, ["ID", "USERNAME", "EMAIL", "ADMIN", "ACTIVE", "ROLES"])
    return 0


def role_add(args: argparse.Namespace) -> int:
    with _accounts(args) as acc:
        body: dict[str, Any] = {"name": args.name}
        if args.parent is not None:
            body["parent_id"] = args.parent if args.parent.isdigit() else acc.role_named(args.parent).id
        record = acc.create_role(body)
    _say(f"role {record.body['name']!r} created (id {record.id})")
    return 0


def role_list(args: argparse.Namespace) -> int:
    with _accounts(args) as acc:
        roles = acc.store.list("role")
    names = {r.id: r.body.get("name") for r in roles}
    parent = [names.get(r.body.get("parent_id"), r.body.get("parent_id")) for r in roles]
    _table(
        [[r.id, r.body.get("name"), p] for r, p in zip(roles, parent, strict=True)], ["ID", "NAME", "PARENT"]
    )
    return 0


def key_create(args: argparse.Namespace) -> int:
    """Make a key and print it once, alone on stdout; what it is goes to stderr."""
    from server.accounts import parse_expires, parse_scopes

    scopes = parse_scopes(args.scope)
    expires = parse_expires(args.expires)
    with _accounts(args) as acc:
        user = acc.user_named(args.user)
        key, record = acc.create_key(user, scopes, args.description, expires)
    _say(
        f"key {record.id} ({record.body['key_trunc']}...) for {args.user!r}, scopes {','.join(scopes)}, "
        f"expires {_when(expires)}; it is shown once, below, and never again"
    )
    print(key, flush=True)
    return 0


def key_list(args: argparse.Namespace) -> int:
    """Keys with their first characters, never the keys (the store has only their digests)."""
    with _accounts(args) as acc:
        users = {u.id: u.body.get("username") for u in acc.store.list("user")}
        wanted = None if args.user is None else acc.user_named(args.user).id
        records = acc.store.list("key") if args.all else acc.keys()
        if wanted is not None:
            records = [r for r in records if r.body.get("user_id") == wanted]
    rows = [
        [
            r.id,
            users.get(r.body.get("user_id"), r.body.get("user_id")),
            r.body.get("key_trunc"),
            ",".join(r.body.get("scopes", [])),
            _when(r.body.get("expires")),
            "yes" if r.body.get("active", True) else "revoked",
            r.body.get("description"),
        ]
        for r in records
    ]
    _table(rows, ["ID", "USER", "KEY_TRUNC", "SCOPES", "EXPIRES", "ACTIVE", "DESCRIPTION"])
    return 0


def key_revoke(args: argparse.Namespace) -> int:
    with _accounts(args) as acc:
        record = acc.revoke_key(args.id)
    _say(f"key {record.id} ({record.body['key_trunc']}...) revoked; every worker refuses it from now on")
    return 0


def _account_commands(sub: Any) -> None:
    """``user``, ``role`` and ``key`` with their own sub-commands."""

    def group(name: str, help_text: str) -> Any:
        parser = sub.add_parser(name, help=help_text)
        return parser.add_subparsers(dest=f"{name}_command", required=True)

    def command(parent: Any, name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> Any:
        parser = parent.add_parser(name, help=help_text)
        parser.add_argument(
            "-c", "--config", help=f"YAML config (default $GEOHARBOR_CONFIG or {DEFAULT_CONFIG})"
        )
        parser.set_defaults(func=func)
        return parser

    users = group("user", "manage users")
    p = command(users, "add", user_add, "create a user")
    p.add_argument("name", help="user name")
    p.add_argument("--email")
    p.add_argument("--firstname")
    p.add_argument("--lastname")
    p.add_argument("--admin", action="store_true", help="the user administers users, roles and keys")
    p.add_argument("--role", action="append", metavar="ROLE", help="a role (name or id); repeat for more")
    command(users, "list", user_list, "list users")

    roles = group("role", "manage roles")
    p = command(roles, "add", role_add, "create a role")
    p.add_argument("name", help="role name")
    p.add_argument("--parent", help="the role it inherits from (name or id)")
    command(roles, "list", role_list, "list roles")

    keys = group("key", "manage API keys")
    p = command(keys, "create", key_create, "create an API key and print it once")
    p.add_argument("--user", required=True, help="whose key")
    p.add_argument("--scope", default="read", help="comma-separated: read, write, admin (default read)")
    p.add_argument("--expires", help="a duration (30d, 12h, 2w) or an ISO 8601 time; default never")
    p.add_argument("--description")
    p = command(keys, "list", key_list, "list API keys (never the keys themselves)")
    p.add_argument("--user", help="only this user's keys")
    p.add_argument("--all", action="store_true", help="revoked keys too")
    p = command(keys, "revoke", key_revoke, "revoke an API key")
    p.add_argument("id", type=int, help="key id (see key list)")


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
    p = sub.add_parser("worker", help="run background jobs (imports ...) from the queue")
    p.add_argument("-c", "--config", help=f"YAML config (default $GEOHARBOR_CONFIG or {DEFAULT_CONFIG})")
    p.add_argument("--concurrency", type=int, help="jobs at once (default jobs.concurrency)")
    p.add_argument("--queues", help="comma-separated procrastinate queues (default all)")
    p.set_defaults(func=worker)
    p = sub.add_parser("openapi", help="write the OpenAPI document")
    p.add_argument("-c", "--config")
    p.add_argument("-o", "--output", default="openapi/openapi.json")
    p.add_argument("--url", help="public base URL to put in the document")
    p.set_defaults(func=openapi)
    p = sub.add_parser("demo", help="(re)build the demo GeoPackage")
    p.add_argument("-o", "--output", default="data/demo.gpkg")
    p.set_defaults(func=demo)
    p = sub.add_parser("import", help="load a spatial file into a table and publish it")
    p.add_argument(
        "file", help="a spatial file, a directory or a zip (Shapefile, GeoPackage, GeoJSON, CSV ...)"
    )
    p.add_argument("--layer", help="the layer to load when the file has several")
    p.add_argument("--table", help="target table (default: the layer name); schema.table for PostGIS")
    p.add_argument("--source", help="configured source to write to (default: store.tables)")
    p.add_argument("--mode", default="create", choices=["create", "replace", "append"])
    p.add_argument("--srs", help="the data's CRS (EPSG:n) when the file has none")
    p.add_argument("--title", help="title of the published collection")
    p.add_argument("-c", "--config", help=f"YAML config (default $GEOHARBOR_CONFIG or {DEFAULT_CONFIG})")
    p.set_defaults(func=import_file)
    _account_commands(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"geoharbor: {exc}", file=sys.stderr)
        return 2
    except ProviderError as exc:
        # Bad input (unknown user, taken name, bad scope ...) exits 2; a store that does
        # not answer is no fault of the input.
        print(f"geoharbor: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2


if __name__ == "__main__":
    sys.exit(main())
