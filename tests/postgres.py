"""A real PostgreSQL server for the tests, from the machine's server binaries, in a temp
dir, as pytest-postgresql starts one: ``initdb``, ``pg_ctl start``, a database per test.

``initdb`` refuses to run as root, so as root the server runs as the ``postgres`` user
(the Debian package creates it) in a directory handed to that user; clients connect over
loopback TCP. The Makefile installs ``postgresql-15`` where the binaries are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

PG_BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin",
               "/usr/lib/postgresql/14/bin")
SUPERUSER = "edgeroute"


def pg_bin_dir() -> Path:
    """Where initdb and pg_ctl are: $EDGEROUTE_TEST_PG_BIN, else the Debian layout."""
    env = os.environ.get("EDGEROUTE_TEST_PG_BIN")
    for d in ([env] if env else []) + list(PG_BIN_DIRS):
        if (Path(d) / "pg_ctl").is_file():
            return Path(d)
    raise RuntimeError("no PostgreSQL server binaries (pg_ctl) found in "
                       f"{', '.join(PG_BIN_DIRS)}; `apt-get install -y postgresql-15` "
                       "(make test does) or set EDGEROUTE_TEST_PG_BIN")


class PgServer:
    """One server on a free loopback port; ``stop``/``start`` keep its data (an outage)."""

    def __init__(self, port: int) -> None:
        self.bin = pg_bin_dir()
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="edgeroute-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._run(["initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
                   "--no-sync", "-E", "UTF8"])

    def _run(self, args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self._user is not None:
            cmd = ["setpriv", f"--reuid={self._user.pw_uid}", f"--regid={self._user.pw_gid}",
                   "--clear-groups", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True,
                              cwd=self.root, timeout=120)

    def start(self) -> None:
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        r = self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log),
                       "-w", "-t", "60", "start"], check=False)
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()} "
                               f"{self.log.read_text() if self.log.exists() else ''}")

    def stop(self, mode: str = "fast") -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop"], check=False)

    def postmaster_pids(self) -> list[int]:
        """The postmaster and every backend (for a freeze: SIGSTOP them all)."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [pid, *(int(p) for p in out.stdout.split())]

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
