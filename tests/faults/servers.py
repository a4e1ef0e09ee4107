"""A PostgreSQL cluster and a Redis server of the suite's own, so the fault tests can restart and flush them.

They run from the same binaries as the machine's services (Debian's `postgresql` and `redis-server`), on free
ports, in throw-away directories. Restarting or flushing the shared servers would break whatever else is using
them, and the fault suite's worker processes need more connections than a default server allows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import redis

from tests.support import free_port, wait_until

PG_BINDIR = os.environ.get("WIDGETRY_TEST_PG_BINDIR") or max(glob.glob("/usr/lib/postgresql/*/bin"), default="")


class PostgresServer:
    """A throw-away PostgreSQL cluster (`initdb`, `pg_ctl`), run as the `postgres` user when we are root."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="widgetry-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        as_root = os.geteuid() == 0
        self._user = ["runuser", "-u", "postgres", "--"] if as_root else []
        if as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        settings = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.root}'",
            # Four workers at concurrency 20, two web processes and the test's own connections.
            "max_connections": 300,
            # Durability across a crash of the machine is not under test; a clean restart keeps everything.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a restart by an operator or an orchestrator."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    async def execute(self, statement: str, database: str = "postgres") -> None:
        connection = await asyncpg.connect(self.url(database))
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    def _run(self, program: str, *args: str) -> None:
        subprocess.run([*self._user, f"{PG_BINDIR}/{program}", *args], check=True, capture_output=True, cwd=self.root)  # noqa: S603


class RedisServer:
    """A throw-away `redis-server` that keeps nothing on disk: a restart loses every key, as a flush does."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.root = Path(tempfile.mkdtemp(prefix="widgetry-faults-redis-"))
        self._process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        command = f"redis-server --port {self.port} --bind 127.0.0.1 --appendonly no --dir {self.root}".split()
        self._process = subprocess.Popen([*command, "--save", ""], stdout=subprocess.DEVNULL)  # noqa: S603
        wait_until(self._answers, 30, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(30)
        self._process = None

    def flushall(self) -> None:
        with redis.Redis.from_url(self.url) as client:
            client.flushall()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def _answers(self) -> bool:
        try:
            with redis.Redis.from_url(self.url, socket_connect_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False
