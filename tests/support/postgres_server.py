"""A real, throw-away PostgreSQL server for the tests (Debian's ``postgresql`` package).

``initdb`` and ``pg_ctl`` refuse to run as root, and the tests (and CI) run as root, so the
server runs as the unprivileged ``postgres`` account (``runuser -u postgres --``) in a
temporary folder that account owns, on a free loopback port, with trust authentication on
127.0.0.1 only. :func:`find_bin_dir` is None where no server binaries are installed (the tests
then skip with the reason); ``.ci/run`` installs the package.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from support.node_peers import free_port

ACCOUNT = "postgres"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` holding initdb and pg_ctl, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name)
                  if Path(d).parent.name.isdigit() else 0)
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


def skip_reason() -> str | None:
    """Why a real server cannot be started here (None: it can)."""
    if find_bin_dir() is None:
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin; apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam(ACCOUNT)
        except KeyError:
            return f"no '{ACCOUNT}' account to run the server as"
    return None


class PostgresServer:
    """One server: :meth:`start`, :meth:`stop` (fast shutdown: open connections are cut),
    :meth:`restart`, :meth:`destroy`. ``dsn`` names the ``cxr`` database on 127.0.0.1."""

    def __init__(self, root: Path | None = None):
        bin_dir = find_bin_dir()
        if bin_dir is None:
            raise RuntimeError(skip_reason() or "no PostgreSQL")
        self.bin = bin_dir
        self.root = Path(root or tempfile.mkdtemp(prefix="cxr-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.log = self.root / "server.log"
        self.dsn = f"host=127.0.0.1 port={self.port} dbname=cxr user={ACCOUNT} connect_timeout=3"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", ACCOUNT, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout)

    def init(self) -> "PostgresServer":
        """initdb (trust on loopback), owned by the server's account."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, ACCOUNT, ACCOUNT)
            self.root.chmod(0o700)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", ACCOUNT,
                  "--no-sync", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                    "fsync = on\nshared_buffers = 32MB\n")
        return self

    def start(self) -> "PostgresServer":
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                  "-t", "60", "start")
        if not getattr(self, "_created", False):
            self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                      "-U", ACCOUNT, "cxr")
            self._created = True
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60",
                  "stop", check=False)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (cutting every connection), stay down ``down_s`` seconds, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()

    def psql(self, sql: str) -> str:
        """One statement through psql (tab-separated rows, no header)."""
        out = self._run(str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", ACCOUNT,
                        "-d", "cxr", "-At", "-F", "\t", "-c", sql)
        return out.stdout

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def started_server(root: Path | None = None) -> PostgresServer:
    """A fresh server, initialised and running."""
    return PostgresServer(root).init().start()
