"""geoharbor scaled out on one machine, the way an operator runs it on several.

A PostgreSQL primary and its streaming replica (clusters of their own, made with
Debian's ``pg_createcluster`` on free ports, the replica by ``pg_basebackup -R``),
pgbouncer in transaction mode in front of both, geoharbor hosts (``geoharbor
serve``, each its own port and process group), one ``geoharbor worker`` and HAProxy
balancing the hosts round robin, with health checks on ``/health/ready`` and an admin
socket to take a host out before it is stopped. Everything listens on loopback only
and is removed by :meth:`Deployment.close` (clusters by ``pg_dropcluster --stop``).

Used by the scale test (tests/scale/test_scale.py) and the scale bench
(bench/scale.py). Runs as root (clusters belong to ``postgres``; pgbouncer drops to it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from conftest import free_port, load_countries  # noqa: E402  (tests/conftest.py)

PG_VERSION = "15"
#: Prefix of the clusters made here; one left by a run that died is dropped by the next.
CLUSTER_PREFIX = "ghscale"
#: The user everything connects as (trust on loopback, in clusters made for the run).
PG_USER = "postgres"
READY_PATH = "/health/ready"
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")

#: Points anyone may edit: Natural Earth countries' points on surface, plus what the load writes.
#: ``marker`` names one write; ``version`` counts the writes to a feature.
POINTS_SQL = """
CREATE TABLE harness_points AS
  SELECT id, name, continent, 0 AS version, NULL::text AS marker, NULL::integer AS client,
         ST_PointOnSurface(geom)::geometry(Point, 4326) AS geom
  FROM countries;
ALTER TABLE harness_points ADD PRIMARY KEY (id);
CREATE SEQUENCE harness_points_id_seq OWNED BY harness_points.id;
SELECT setval('harness_points_id_seq', (SELECT max(id) FROM harness_points));
ALTER TABLE harness_points ALTER COLUMN id SET DEFAULT nextval('harness_points_id_seq');
CREATE INDEX ON harness_points USING gist (geom);
-- Every row version ever written, so that "stored exactly once" is checked on the writes
-- themselves, not only on the last value of each feature.
CREATE TABLE harness_history (
  seq bigserial PRIMARY KEY, fid integer, marker text, version integer, at timestamptz DEFAULT now());
CREATE FUNCTION harness_remember() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO harness_history (fid, marker, version) VALUES (NEW.id, NEW.marker, NEW.version);
  RETURN NEW;
END $$;
CREATE TRIGGER harness_remember AFTER INSERT OR UPDATE ON harness_points
  FOR EACH ROW EXECUTE FUNCTION harness_remember();
ANALYZE;
"""


def executable(name: str) -> str:
    """A Debian tool (pgbouncer and haproxy live in /usr/sbin, off a user's PATH)."""
    found = shutil.which(name) or next((str(Path(d) / name) for d in SBIN if (Path(d) / name).exists()), None)
    if found is None:
        raise RuntimeError(f"{name} is not installed: apt-get install -y {name}")
    return found


def geoharbor_executable() -> str:
    return shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """``check()``'s first truthy answer within ``timeout`` seconds; RuntimeError naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            found = check()
            if found:
                return found
        except Exception as exc:  # noqa: BLE001 - retried until the deadline, then reported
            last = exc
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}" + (f": {last!r}" if last else ""))


# -- PostgreSQL ---------------------------------------------------------------------------------------
@dataclass
class Cluster:
    """A PostgreSQL cluster of this run (``pg_createcluster``), on a loopback port."""

    name: str
    port: int

    @property
    def data_dir(self) -> Path:
        return Path(f"/var/lib/postgresql/{PG_VERSION}/{self.name}")

    def url(self, db: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{db}"

    def connect(self, db: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(self.url(db), autocommit=True, connect_timeout=5)

    def postmaster(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def start(self) -> None:
        _run(["pg_ctlcluster", PG_VERSION, self.name, "start"])
        wait_for(lambda: self.connect().close() or True, 30, f"cluster {self.name} to accept connections")

    def drop(self) -> None:
        subprocess.run(
            ["pg_dropcluster", "--stop", PG_VERSION, self.name], capture_output=True, check=False, timeout=60
        )


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _create_cluster(name: str, port: int, settings: dict[str, str]) -> Cluster:
    options = [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]
    _run(
        [
            "pg_createcluster",
            PG_VERSION,
            name,
            "-p",
            str(port),
            "--start-conf=manual",
            *options,
            "--",
            "--auth-local=trust",
            "--auth-host=trust",
        ]
    )
    return Cluster(name, port)


#: Small clusters: this machine also runs the main cluster and the other test suites.
CLUSTER_SETTINGS = {
    "listen_addresses": "localhost",
    "max_connections": "150",
    "shared_buffers": "64MB",
    "wal_level": "replica",
    "max_wal_senders": "4",
    "fsync": "off",  # what is tested is not durability against power loss
}


def create_primary(name: str) -> Cluster:
    """A new cluster, not started (its caller records it first, so that it is dropped whatever happens)."""
    return _create_cluster(name, free_port(), CLUSTER_SETTINGS)


def create_replica(primary: Cluster, name: str, apply_delay_ms: int = 0) -> Cluster:
    """A hot standby streaming from ``primary``: a cluster whose data directory is replaced
    by ``pg_basebackup -R`` (which writes standby.signal and primary_conninfo).

    ``apply_delay_ms`` (``recovery_min_apply_delay``) makes the replica a known time behind,
    as a loaded replica is: reads that must see a write can then tell it from the primary.
    """
    # Feedback keeps the primary's vacuum from removing rows a replica query still reads
    # (else such queries are cancelled: "conflict with recovery"), as read replicas are run.
    settings = {**CLUSTER_SETTINGS, "hot_standby": "on", "hot_standby_feedback": "on"}
    if apply_delay_ms:
        settings["recovery_min_apply_delay"] = f"{apply_delay_ms}ms"
    return _create_cluster(name, free_port(), settings)


def clone_primary(primary: Cluster, replica: Cluster) -> None:
    """Replace ``replica``'s data directory by a base backup of ``primary``, then start it."""
    shutil.rmtree(replica.data_dir)
    _run(
        [
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            PG_USER,
            "-D",
            str(replica.data_dir),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ],
        user="postgres",
    )
    replica.data_dir.chmod(0o700)
    replica.start()


def drop_leftover_clusters() -> None:
    """Clusters a killed earlier run of this module left behind (its pid is in their name)."""
    listed = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[1].startswith(CLUSTER_PREFIX):
            continue
        pid = parts[1][len(CLUSTER_PREFIX) :].split("_")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            Cluster(parts[1], int(parts[2])).drop()


def prepare_database(primary: Cluster, db: str) -> str:
    """Database ``db`` on the primary with Natural Earth countries and the editable points."""
    with primary.connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # noqa: S608 - test constant
        conn.execute(f'CREATE DATABASE "{db}"')
    url = primary.url(db)
    load_countries(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(POINTS_SQL)
    return url


# -- pgbouncer ----------------------------------------------------------------------------------------
class Pooler:
    """pgbouncer (transaction mode) in front of the primary (``db``) and the replica (``db_replica``)."""

    def __init__(self, workdir: Path, db: str, primary: Cluster, replica: Cluster, pool_size: int = 20):
        self.port = free_port()
        self.db = db
        self.replica_db = f"{db}_replica"
        workdir.mkdir(parents=True, exist_ok=True)
        shutil.chown(workdir, PG_USER)
        (workdir / "userlist.txt").write_text(f'"{PG_USER}" ""\n')
        self.log_path = workdir / "pgbouncer.log"
        ini = workdir / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"{db} = host=127.0.0.1 port={primary.port} dbname={db}\n"
            f"{self.replica_db} = host=127.0.0.1 port={replica.port} dbname={db}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {workdir}\n"
            "auth_type = trust\n"
            f"auth_file = {workdir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 1000\n"
            f"default_pool_size = {pool_size}\n"
            "ignore_startup_parameters = extra_float_digits\n"
            f"admin_users = {PG_USER}\n"
        )
        for path in workdir.iterdir():
            shutil.chown(path, PG_USER)
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [executable("pgbouncer"), "-u", PG_USER, str(ini)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for(lambda: self._answers(), 20, "pgbouncer")

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited: {self.log_path.read_text()[-2000:]}")
        with psycopg.connect(self.url(self.db), connect_timeout=3, prepare_threshold=None) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)

    def url(self, db: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        _terminate(self.process, 10)
        self.log.close()


# -- geoharbor ------------------------------------------------------------------------------------------
def host_config(
    db: str,
    primary: Cluster,
    pooler: Pooler,
    *,
    replica_reads: bool = True,
    workers: int = 2,
    threads: int = 2,
    pool_max: int = 4,
) -> dict[str, Any]:
    """One config for every host and the job worker: queries through pgbouncer (primary and
    replica), LISTEN/NOTIFY straight to the primary, no server-side prepared statements."""
    source: dict[str, Any] = {
        "type": "postgis",
        "url": pooler.url(pooler.db),
        "direct_url": primary.url(db),
        "prepare_threshold": None,
        "pool_max": pool_max,
        "publish_schemas": [],
    }
    if replica_reads:
        source["read_url"] = pooler.url(pooler.replica_db)
    return {
        "server": {
            "bind": "127.0.0.1:5000",  # each host is given its port on the command line
            "workers": workers,
            "threads": threads,
            "log_level": "WARNING",
            "trust_proxy_headers": True,
            "timeout": 60,
        },
        "sources": {"main": source},
        "store": {"source": "main", "tables": "main"},
        # Hosts run no job worker of their own: the deployment's one worker runs every job.
        "jobs": {"workers": 0, "concurrency": 1, "heartbeat_s": 1, "lost_after_s": 30},
        "collections": {
            "countries": {"source": "main", "table": "countries", "title": "Countries"},
            "points": {"source": "main", "table": "harness_points", "editable": True, "title": "Points"},
        },
    }


class Host:
    """One ``geoharbor serve`` (gunicorn master and workers) in a process group of its own."""

    def __init__(self, name: str, config_path: Path, workdir: Path, port: int | None = None) -> None:
        self.name = name
        self.port = port or free_port()
        self.config_path = config_path
        self.workdir = workdir
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.workdir / f"host-{self.name}-{self.starts}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                geoharbor_executable(),
                "serve",
                "-c",
                str(self.config_path),
                "--bind",
                f"127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 takes master and workers
        )
        log.close()

    def ready(self) -> bool:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"host {self.name} exited:\n{self.log_tail()}")
        return requests.get(self.url + READY_PATH, timeout=5).status_code == 200

    def wait_ready(self, timeout: float = 60) -> None:
        wait_for(self.ready, timeout, f"host {self.name} to be ready", 0.2)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a host that loses power; returns once every
        process of it is gone (until then the kernel still accepts connections on its port)."""
        assert self.process is not None
        group = self.pids()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        wait_for(
            lambda: not any(_alive(pid) for pid in group), 10, f"host {self.name}'s processes to die", 0.005
        )

    def terminate(self, timeout: float = 40) -> int:
        """SIGTERM to the gunicorn master: in-flight requests finish, then it exits; its exit code."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def pids(self) -> list[int]:
        """The master and its workers (for CPU accounting)."""
        if self.process is None or self.process.poll() is not None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [self.process.pid, *(int(p) for p in children.read_text().split())]
        except OSError:
            return [self.process.pid]

    def log_tail(self, n: int = 4000) -> str:
        path = self.workdir / f"host-{self.name}-{self.starts}.log"
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


class JobWorker:
    """``geoharbor worker``: runs the jobs every host defers."""

    def __init__(self, config_path: Path, workdir: Path) -> None:
        self.log_path = workdir / "worker.log"
        log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [geoharbor_executable(), "worker", "-c", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self) -> None:
        _terminate(self.process, 30)


# -- HAProxy --------------------------------------------------------------------------------------------
class Balancer:
    """HAProxy: round robin over the hosts, health checks on READY_PATH, an admin socket.

    Failed connections are retried on another host (``retries`` + ``redispatch``). A GET
    or HEAD whose host died before answering is sent again to another (``retry-on``); any
    other request is never sent twice (``disable-l7-retry``): a write must not be applied
    twice, so a write in flight on a host that dies fails (502), and its client does not know
    whether it was applied. ``X-Served-By`` names the host of every answer.
    """

    BACKEND = "hosts"

    def __init__(self, workdir: Path, hosts: list[Host], check_ms: int = 300) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.socket_path = workdir / "haproxy.sock"
        servers = "".join(f"    server {h.name} 127.0.0.1:{h.port} check\n" for h in hosts)
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(
            "global\n"
            f"    stats socket {self.socket_path} mode 600 level admin\n"
            "    log stdout format raw local0\n"
            "defaults\n"
            "    mode http\n"
            "    log global\n"
            "    option httplog\n"
            "    option forwardfor\n"
            "    timeout connect 2s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "    timeout http-keep-alive 10s\n"
            "    retries 3\n"
            "    option redispatch 1\n"
            "    retry-on conn-failure empty-response response-timeout\n"
            "frontend web\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    http-request disable-l7-retry unless METH_GET\n"
            f"    default_backend {self.BACKEND}\n"
            f"backend {self.BACKEND}\n"
            "    balance roundrobin\n"
            "    option httpchk\n"
            f"    http-check send meth GET uri {READY_PATH}\n"
            "    http-check expect status 200\n"
            f"    default-server inter {check_ms}ms fastinter {check_ms}ms downinter {check_ms}ms"
            " fall 2 rise 2\n"
            "    http-response set-header X-Served-By %[srv_name]\n"
            f"{servers}"
        )
        _run([executable("haproxy"), "-c", "-f", str(self.config_path)])
        self.log = open(workdir / "haproxy.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [executable("haproxy"), "-db", "-f", str(self.config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: self.socket_path.exists(), 10, "haproxy's admin socket")

    def admin(self, command: str) -> str:
        """One command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` of the hosts' backend: name -> fields (status, scur, ...)."""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == self.BACKEND and row.get("svname") not in ("FRONTEND", "BACKEND"):
                out[row["svname"]] = row
        return out

    def status(self, host: str) -> str:
        return self.servers()[host]["status"]

    def wait_status(self, host: str, prefix: str, timeout: float = 30) -> None:
        wait_for(lambda: self.status(host).startswith(prefix), timeout, f"haproxy to see {host} {prefix}")

    def drain(self, host: str, timeout: float = 30) -> None:
        """Take ``host`` out: no new request goes to it; returns once none is in flight there."""
        self.admin(f"disable server {self.BACKEND}/{host}")
        wait_for(lambda: self.servers()[host]["scur"] == "0", timeout, f"{host} to finish its requests", 0.05)

    def restore(self, host: str, timeout: float = 30) -> None:
        """Put ``host`` back; returns once its health checks pass."""
        self.admin(f"enable server {self.BACKEND}/{host}")
        self.wait_status(host, "UP", timeout)

    def stop(self) -> None:
        _terminate(self.process, 10)
        self.log.close()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _terminate(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- the whole ------------------------------------------------------------------------------------------
@dataclass
class Deployment:
    """Primary + replica, pgbouncer, ``len(host_names)`` hosts, one job worker, HAProxy."""

    db: str
    host_names: tuple[str, ...] = ("a", "b")
    apply_delay_ms: int = 0
    replica_reads: bool = True
    workers: int = 2
    threads: int = 2
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="geoharbor-scale-")))
    primary: Cluster | None = None
    replica: Cluster | None = None
    pooler: Pooler | None = None
    hosts: dict[str, Host] = field(default_factory=dict)
    worker: JobWorker | None = None
    balancer: Balancer | None = None
    config_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def start(self) -> Deployment:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        self.workdir.chmod(0o755)
        drop_leftover_clusters()
        started = time.monotonic()
        prefix = f"{CLUSTER_PREFIX}{os.getpid()}_{self.db}"
        self.primary = create_primary(f"{prefix}_primary")
        self.primary.start()
        prepare_database(self.primary, self.db)
        self.replica = create_replica(self.primary, f"{prefix}_replica", self.apply_delay_ms)
        clone_primary(self.primary, self.replica)
        self.timings["postgresql_s"] = time.monotonic() - started
        self.pooler = Pooler(self.workdir / "pgbouncer", self.db, self.primary, self.replica)
        config = self.host_config(self.replica_reads)
        self.config_path = self.write_config("geoharbor", config)
        started = time.monotonic()
        for name in self.host_names:
            self.hosts[name] = Host(name, self.config_path, self.workdir)
            self.hosts[name].start()
        self.worker = JobWorker(self.config_path, self.workdir)
        for host in self.hosts.values():
            host.wait_ready()
        self.timings["hosts_s"] = time.monotonic() - started
        self.balancer = Balancer(self.workdir, list(self.hosts.values()))
        for name in self.hosts:
            self.balancer.wait_status(name, "UP")

    def write_config(self, name: str, config: dict[str, Any]) -> Path:
        path = self.workdir / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def host_config(self, replica_reads: bool) -> dict[str, Any]:
        """The hosts' config of this deployment, with or without the replica for reads."""
        assert self.primary is not None and self.pooler is not None
        return host_config(
            self.db,
            self.primary,
            self.pooler,
            replica_reads=replica_reads,
            workers=self.workers,
            threads=self.threads,
        )

    def restart_host(
        self, name: str, config_path: Path | None = None, mark: Callable[[str], None] = lambda step: None
    ) -> None:
        """Out of HAProxy, SIGTERM (in-flight requests finish), started again (with
        ``config_path`` if given), back in once ready: a restart no client notices.
        ``mark(step)`` is called after each step."""
        assert self.balancer is not None
        host = self.hosts[name]
        self.balancer.drain(name)
        mark(f"{name} drained")
        code = host.terminate()
        mark(f"{name} stopped")
        if code != 0:
            raise RuntimeError(f"host {name} exited {code} on SIGTERM:\n{host.log_tail()}")
        if config_path is not None:
            host.config_path = config_path
        host.start()
        host.wait_ready()
        mark(f"{name} ready")
        self.balancer.restore(name)
        mark(f"{name} back")

    def server_pids(self) -> list[int]:
        return [pid for host in self.hosts.values() for pid in host.pids()]

    def postgres_pids(self) -> list[int]:
        """Every process of both clusters (postmaster, backends, WAL sender and receiver ...)."""
        out = []
        for cluster in (self.primary, self.replica):
            pid = cluster.postmaster() if cluster else None
            if pid is None:
                continue
            out.append(pid)
            try:
                out += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except OSError:
                pass
        return out

    def close(self, keep_files: bool = False) -> None:
        """Stop everything and drop both clusters; the work directory (configs, logs) goes
        too unless ``keep_files``."""
        for part in (self.balancer, *self.hosts.values(), self.worker, self.pooler):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:  # noqa: BLE001 - the rest must still be stopped
                    print(f"deployment: stopping {part!r}: {exc!r}", file=sys.stderr)
        for cluster in (self.replica, self.primary):
            if cluster is not None:
                cluster.drop()
        if keep_files:
            print(f"deployment: files kept in {self.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
