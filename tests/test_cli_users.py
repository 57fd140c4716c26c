"""``geoharbor user|role|key`` end to end: the commands change the store a running server reads.

A protected server of its own (master key, SQLite store) answers the keys the
command prints; a PostgreSQL store in a database of its own shows the commands work
on that backend too.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
import yaml
from conftest import ADMIN_URL, Server, free_port, server_config
from test_rest_users import MASTER, Api

from server.auth import key_digest
from server.cli import main

EXE = shutil.which("geoharbor", path=str(Path(sys.executable).parent)) or "geoharbor"
KEY_LINE = re.compile(r"^[0-9a-f]{32}\n$")


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``geoharbor`` command, as an operator runs it."""
    return subprocess.run([EXE, *args, "-c", str(config)], capture_output=True, text=True, timeout=120)


def run_here(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The same command's ``main`` in this process (a process start costs most of a second)."""
    out, err = io.StringIO(), io.StringIO()
    argv = [*args, "-c", str(config)]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refusing the command line
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def ok(config: Path, *args: str) -> str:
    done = run_here(config, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def refused(config: Path, *args: str, says: str) -> None:
    """Bad input: exit code 2, a message on stderr naming the problem, nothing on stdout."""
    done = run_here(config, *args)
    assert done.returncode == 2, (args, done.returncode, done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert done.stdout == ""


@pytest.fixture(scope="module")
def served(pg_url: str, gpkg_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("cli_users")
    config = server_config(pg_url, gpkg_path, free_port())
    config["store"] = {"path": str(workdir / "state.sqlite"), "tables": "pg"}
    config["auth"] = {"api_key": MASTER}
    srv = Server(config, workdir)
    yield srv
    srv.stop()


def test_users_roles_and_keys_from_the_command_line(served):
    config = served.config_path
    api = Api(served.url)
    ok(config, "role", "add", "staff")
    ok(config, "role", "add", "editors", "--parent", "staff")
    refused(config, "role", "add", "staff", says="taken")
    refused(config, "role", "add", "orphans", "--parent", "nobody", says="no role named 'nobody'")
    assert re.search(r"editors\s+staff", ok(config, "role", "list"))

    ok(config, "user", "add", "alice", "--email", "alice@example.org", "--role", "editors")
    ok(config, "user", "add", "root", "--admin")
    refused(config, "user", "add", "alice", says="taken")
    refused(config, "user", "add", "bob", "--role", "nobody", says="no role 'nobody'")
    refused(config, "user", "add", "bad name", says="username")
    listed = ok(config, "user", "list")
    assert re.search(r"alice\s+alice@example.org\s+no\s+yes\s+editors", listed)
    assert re.search(r"root\s+-\s+yes\s+yes", listed)
    assert "bob" not in listed

    # The key is printed once, alone on stdout; it works against the running server at once.
    made = run(config, "key", "create", "--user", "alice", "--scope", "read,write", "--expires", "30d",
               "--description", "laptop")  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert KEY_LINE.match(made.stdout), made.stdout
    key = made.stdout.strip()
    assert key not in made.stderr and key[:6] in made.stderr
    me = api.call("GET", "/users/me", 200, key)
    assert me["username"] == "alice" and me["scopes"] == ["read", "write"] and me["admin"] is False
    assert len(me["role_ids"]) == 2  # editors and, through it, staff
    assert api.statuses("/users/me", key) == [200] * 8
    api.call("GET", "/users", 403, key)
    expires = api.call("GET", "/keys", 200, key)["data"][0]["expires"]
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30)).timestamp()) < 120

    admin = run(config, "key", "create", "--user", "root", "--scope", "read,write,admin").stdout.strip()
    assert api.call("GET", "/users", 200, admin)["total"] == 2
    until = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    dated = ok(config, "key", "create", "--user", "root", "--expires", until.isoformat()).strip()
    assert api.call("GET", "/users/me", 200, dated)["scopes"] == ["read"]

    refused(config, "key", "create", "--user", "nobody", says="no user named 'nobody'")
    refused(config, "key", "create", "--user", "alice", "--scope", "read,everything", says="unknown scope")
    refused(config, "key", "create", "--user", "alice", "--scope", "admin", says="admin scope")
    refused(config, "key", "create", "--user", "alice", "--expires", "2001-01-01", says="future")
    refused(config, "key", "create", "--user", "alice", "--expires", "soon", says="expires")
    assert run_here(config, "key", "create", "--scope", "read").returncode == 2  # --user is required

    # Lists show the first characters, never a key.
    keys = ok(config, "key", "list")
    assert key[:6] in keys and admin[:6] in keys and "laptop" in keys
    assert key not in keys and admin not in keys
    alices = ok(config, "key", "list", "--user", "alice")
    assert key[:6] in alices and admin[:6] not in alices
    refused(config, "key", "list", "--user", "nobody", says="no user named")

    # Revoking is seen by every worker of the running server on its next request.
    key_id = api.call("GET", "/keys", 200, key)["data"][0]["id"]
    revoked = run(config, "key", "revoke", str(key_id))
    assert revoked.returncode == 0 and "revoked" in revoked.stderr, revoked.stderr
    assert api.statuses("/users/me", key) == [401] * 8
    refused(config, "key", "revoke", str(key_id), says="not found")
    assert run_here(config, "key", "revoke", "one").returncode == 2
    assert key[:6] not in ok(config, "key", "list")
    assert re.search(rf"{key_id}\s+alice\s+{key[:6]}.*revoked", ok(config, "key", "list", "--all"))

    # The store keeps digests only.
    store_file = Path(served.config_path).parent / "state.sqlite"
    content = store_file.read_bytes() + (
        Path(f"{store_file}-wal").read_bytes() if Path(f"{store_file}-wal").exists() else b""
    )
    for made_key in (key, admin, dated):
        assert made_key.encode() not in content
        assert key_digest(made_key).encode() in content


def test_bad_config_exits_2(tmp_path):
    done = run(tmp_path / "missing.yml", "user", "list")  # also: refused before any store opens
    assert done.returncode == 2 and "geoharbor:" in done.stderr


@pytest.fixture()
def pg_store(pg_url: str, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A config whose store is the ``geoharbor`` schema of a database of its own."""
    name = "gh_users_cli_store"
    base, _, _ = ADMIN_URL.rpartition("/")
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    config = {
        "server": {"bind": f"127.0.0.1:{free_port()}"},
        "sources": {"state": {"type": "postgis", "url": url}},
        "collections": {},
        "store": {"source": "state"},
    }
    path = tmp_path / "pg.yml"
    path.write_text(yaml.safe_dump(config))
    yield path, url
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_commands_on_a_postgresql_store(pg_store):
    config, url = pg_store
    ok(config, "role", "add", "editors")
    ok(config, "user", "add", "ann", "--role", "editors", "--admin")
    made = run(config, "key", "create", "--user", "ann", "--scope", "read,write,admin")
    assert made.returncode == 0 and KEY_LINE.match(made.stdout), made.stderr
    key = made.stdout
    key = key.strip()
    assert "ann" in ok(config, "user", "list")
    assert key[:6] in ok(config, "key", "list", "--user", "ann")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT kind, key, body::text FROM geoharbor.records ORDER BY id").fetchall()
        generation = conn.execute(
            "SELECT revision FROM geoharbor.revisions WHERE source = 'registry'"
        ).fetchone()
    assert [r[0] for r in rows] == ["role", "user", "key"]
    assert rows[2][1] == key_digest(key) and not [r for r in rows if key in repr(r)]
    assert generation[0] == 3  # every change moved the generation the workers follow
    key_id = ok(config, "key", "list").splitlines()[1].split()[0]
    ok(config, "key", "revoke", key_id)
    assert "revoked" in ok(config, "key", "list", "--all")
