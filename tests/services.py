"""Real services for the tests: a PostgreSQL server and a Ray head node, each in
its own temporary folder on loopback ports, torn down by process (never a
machine-wide ``ray stop``: other Ray clusters on the machine must survive).

A service that cannot start raises ``ServiceError`` with the reason, and the
test using it fails (it is never skipped).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class ServiceError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise ServiceError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:g} s: {_tail(log)}")


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL, to the service's own process group only."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        except ProcessLookupError:
            pass
    try:  # children that outlived the leader
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line holds ``text`` (a service's private folder)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(entry.name))
    return out


# ------------------------------------------------------------- PostgreSQL


class PostgresServer:
    """``postgres`` in a temp folder on a loopback port, password-protected.

    initdb refuses to run as root, so as root the server runs as ``nobody``.
    """

    def __init__(self) -> None:
        initdb = PG_BIN / "initdb"
        if not initdb.exists():
            found = shutil.which("initdb")
            if found is None:
                raise ServiceError(
                    "PostgreSQL is not installed (no initdb): apt-get install -y postgresql (scripts/test.sh does it)"
                )
            initdb = Path(found)
        self.bin = initdb.parent
        self.password = secrets.token_urlsafe(12)
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.user = None
        if os.geteuid() == 0:
            self.user = "nobody"
            ent = pwd.getpwnam(self.user)
            os.chown(self.root, ent.pw_uid, ent.pw_gid)
        self.proc: subprocess.Popen | None = None
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            args, user=self.user, capture_output=True, text=True, timeout=120, cwd=self.root, env=self._env()
        )
        if proc.returncode != 0:
            raise ServiceError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-1500:]}")

    def _env(self) -> dict:
        return {"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C", "PGPASSWORD": self.password}

    def _start(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self.user:
            ent = pwd.getpwnam(self.user)
            os.chown(pwfile, ent.pw_uid, ent.pw_gid)
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
        )
        pwfile.unlink()
        self._launch()

    def _launch(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.data),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=300",
                    "-c",
                    "fsync=off",
                ],
                user=self.user,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=self._env(),
                start_new_session=True,
            )
        _wait_port(self.port, self.proc, 60, "postgres", self.log)
        deadline = time.monotonic() + 30
        while True:  # the port opens before the server accepts logins
            try:
                self._run(
                    str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "select 1"
                )
                return
            except ServiceError:
                if time.monotonic() > deadline:
                    raise

    def restart(self, down_seconds: float = 0.0) -> float:
        """Stop the server (fast shutdown: every client connection is cut, as in ``pg_ctl restart -m fast``),
        keep it down ``down_seconds``, start it again on the same port and data. Returns the seconds it was down."""
        stopped = time.monotonic()
        self.shutdown()
        time.sleep(down_seconds)
        self._launch()
        return time.monotonic() - stopped

    def shutdown(self) -> None:
        """Stop the server (fast shutdown) and keep its data, for ``restart``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URL (password included)."""
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def url(self, name: str, scheme: str = "postgresql") -> str:
        return f"{scheme}://postgres:{self.password}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)  # fast shutdown
                try:
                    self.proc.wait(30)
                except subprocess.TimeoutExpired:
                    pass
            _stop_group(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ Ray


class RayHead:
    """``ray start --head --block`` on 127.0.0.1 with its own temp folder, ports and token; with ``join``
    (a head's address), ``ray start --address`` instead: a second node of that cluster on this machine."""

    def __init__(self, *, token: str | None = None, num_cpus: int = 1, join: str | None = None) -> None:
        self.token = token if token is not None else secrets.token_hex(32)
        # Unix socket paths under the temp folder must stay short (108 bytes).
        self.temp = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log = self.temp / "head.log"
        low = free_port()
        ports = {
            "--node-manager-port": free_port(),
            "--object-manager-port": free_port(),
            "--dashboard-agent-listen-port": free_port(),
            "--dashboard-agent-grpc-port": free_port(),
            "--runtime-env-agent-port": free_port(),
            "--metrics-export-port": free_port(),
        }
        role = ["--head", f"--port={self.port}", "--include-dashboard=false"] if join is None else [f"--address={join}"]
        if join is not None:
            self.address = join
        args = [
            sys.executable,
            "-m",
            "ray.scripts.scripts",
            "start",
            *role,
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp}",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            "--disable-usage-stats",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 40}",
            *(f"{k}={v}" for k, v in ports.items()),
        ]
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        env.pop("RAY_ADDRESS", None)
        started = time.monotonic()
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=self.temp
            )
        try:
            if join is None:
                _wait_port(self.port, self.proc, 120, "ray start --head", self.log)
            self._wait_raylet(started)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started

    def _wait_raylet(self, started: float) -> None:
        # The GCS port opens first; the node is usable once ``ray start`` says so.
        deadline = started + 120
        while time.monotonic() < deadline:
            if "Ray runtime started" in _tail(self.log, 100_000):
                return
            if self.proc.poll() is not None:
                raise ServiceError(f"ray start exited with {self.proc.returncode}: {_tail(self.log)}")
            time.sleep(0.3)
        raise ServiceError(f"ray start --head did not come up within 120 s: {_tail(self.log)}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pids(self) -> list[int]:
        """Every process of this node: its ``ray start`` session (raylet, workers) and any that left it."""
        out = set(_pids_mentioning(str(self.temp)))
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == self.proc.pid:
                        out.add(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    pass
        return sorted(out)

    def stop(self, timeout: float = 30) -> None:
        _stop_group(self.proc, timeout=timeout)
        for pid in _pids_mentioning(str(self.temp)):  # a process that left the group but runs in our folder
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)
