"""Management channel: SSH (fabric/paramiko) to 127.0.0.1:<forwarded port> with a per-run key."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko
from fabric import Config, Connection
from fabric.runners import Remote
from invoke.exceptions import CommandTimedOut, ThreadException

class SSHError(RuntimeError):
    pass


class CommandTimeout(SSHError):
    pass


def _short(command: str) -> str:
    first = command.strip().splitlines()[0] if command.strip() else ""
    return first[:100] + (" ..." if len(first) > 100 or "\n" in command.strip() else "")


@dataclass
class RunKey:
    private_path: Path
    public_line: str

    @property
    def public_b64(self) -> str:
        return self.public_line.split()[1]


def _generate_ed25519(directory: Path) -> RunKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    k = Ed25519PrivateKey.generate()
    priv = directory / "id_ed25519"
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()))
    pub = k.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                      serialization.PublicFormat.OpenSSH).decode()
    return RunKey(priv, pub + " xmitbench")


def make_key(directory: Path) -> RunKey:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return _generate_ed25519(directory)


class _Remote(Remote):
    """fabric's remote runner, two changes: bigger reads (guest outputs can be large), and on
    Ctrl-C/SIGTERM (KeyboardInterrupt in the main thread) the channel is closed first, so the
    reader threads see EOF and the interrupt unwinds now instead of after the guest command."""
    read_chunk_size = 1 << 16

    def send_interrupt(self, interrupt):
        try:
            self.channel.close()
        finally:
            raise interrupt


def _config() -> Config:
    # No ~/.ssh/config, /etc/ssh/ssh_config or fabric/invoke yaml files: the guest is reached
    # only with the settings given here.
    return Config(ssh_config=paramiko.SSHConfig(), lazy=True,
                  overrides={"load_ssh_configs": False, "runners": {"remote": _Remote}})


class GuestShell:
    """Commands on the guest. Each command has a timeout; a lost connection raises SSHError."""

    KEEPALIVE_S = 5
    OPEN_SESSION_TIMEOUT_S = 10

    def __init__(self, port: int, key: RunKey, host: str = "127.0.0.1", user: str = "root"):
        assert host == "127.0.0.1", "management is loopback only"
        self.port, self.key, self.host, self.user = port, key, host, user
        self.conn: Connection | None = None
        self.host_key_fingerprint: str | None = None

    @property
    def client(self) -> paramiko.SSHClient | None:
        """The paramiko SSHClient of the open connection (None when not connected)."""
        return self.conn.client if self.conn is not None else None

    def _connection(self) -> Connection:
        c = Connection(self.host, user=self.user, port=self.port, config=_config(),
                       connect_timeout=5, forward_agent=False, gateway=False,
                       connect_kwargs={"key_filename": str(self.key.private_path),
                                       "allow_agent": False, "look_for_keys": False,
                                       "banner_timeout": 5, "auth_timeout": 5})
        # The guest makes a fresh host key each boot; it is reachable only via our own
        # loopback forward, so trust-on-first-use per boot is right; fingerprint recorded.
        c.client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        return c

    def connect(self, timeout: float = 30.0) -> float:
        """Retry until the guest's sshd answers; returns seconds waited."""
        t0 = time.monotonic()
        last = None
        while time.monotonic() - t0 < timeout:
            c = self._connection()
            try:
                c.open()
                t = c.transport
                hk = t.get_remote_server_key()
                self.host_key_fingerprint = f"{hk.get_name()} {hk.fingerprint}"
                t.set_keepalive(self.KEEPALIVE_S)
                t.channel_timeout = self.OPEN_SESSION_TIMEOUT_S   # fabric opens sessions without one
                self.conn = c
                return time.monotonic() - t0
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = e
                c.close()
                c.client.close()
                time.sleep(0.2)
        raise SSHError(f"SSH to {self.host}:{self.port} not up within {timeout:.0f} s: {last}")

    def _live(self, command: str) -> Connection:
        """The open connection; never a silent reconnect (fabric's run/put/get would open a new
        one): a dropped connection is a fault of the cell that had it."""
        if self.conn is None:
            raise SSHError("not connected")
        if not self.conn.is_connected:
            raise SSHError(f"SSH connection lost before `{_short(command)}`")
        return self.conn

    @staticmethod
    def _failure(conn: Connection, command: str, e: BaseException) -> SSHError:
        if isinstance(e, ThreadException):
            e = "; ".join(repr(x.value) for x in e.exceptions)
        if not conn.is_connected:
            return SSHError(f"SSH connection lost during `{_short(command)}`: {e}")
        return SSHError(f"SSH failure during `{_short(command)}`: {e}")

    def run(self, command: str, timeout: float = 60.0, check: bool = True) -> tuple[int, str, str]:
        conn = self._live(command)
        t0 = time.monotonic()
        try:
            r = conn.run(command, timeout=timeout, hide=True, warn=True, in_stream=False,
                         pty=False, encoding="utf-8")
        except CommandTimedOut as e:
            raise CommandTimeout(f"guest command timed out after {timeout:.0f} s: {_short(command)}") from e
        except (ThreadException, EOFError, paramiko.SSHException, OSError) as e:
            raise self._failure(conn, command, e) from e
        rc, o, e_ = r.exited, r.stdout, r.stderr
        if rc is None or rc == -1:
            if not conn.is_connected:
                raise SSHError(f"SSH connection lost during `{_short(command)}`")
            if time.monotonic() - t0 >= timeout:
                # invoke's timer closed the channel but was still running when the result was
                # built (seen on a loaded 2-core host): its `timed_out` flag missed it
                raise CommandTimeout(f"guest command timed out after {timeout:.0f} s: {_short(command)}")
            raise SSHError(f"SSH channel closed without an exit status during `{_short(command)}`")
        if check and rc != 0:
            raise SSHError(f"guest command failed ({rc}): {_short(command)}: {e_.strip()[-300:]}")
        return rc, o, e_

    def run_detached(self, command: str) -> None:
        """Start a command and do not wait (e.g. one that takes the guest down)."""
        conn = self._live(command)
        try:
            conn.run(command, disown=True, hide=True, in_stream=False, pty=False)
        except (EOFError, paramiko.SSHException, OSError) as e:
            raise self._failure(conn, command, e) from e

    def put(self, local: str | os.PathLike, remote: str) -> None:
        """Copy a local file to the guest (SFTP)."""
        conn = self._live(f"put {remote}")
        try:
            conn.put(os.fspath(local), remote)
        except (EOFError, paramiko.SSHException, OSError) as e:
            raise SSHError(f"SSH failure during `put {local} -> {remote}`: {e}") from e

    def get(self, remote: str, local: str | os.PathLike) -> None:
        """Copy a file from the guest to a local path (SFTP)."""
        conn = self._live(f"get {remote}")
        try:
            conn.get(remote, os.fspath(local))
        except (EOFError, paramiko.SSHException, OSError) as e:
            raise SSHError(f"SSH failure during `get {remote} -> {local}`: {e}") from e

    def close(self) -> None:
        if self.conn is not None:
            c, self.conn = self.conn, None
            try:
                c.close()
            finally:
                c.client.close()     # also when the transport is already dead (fabric skips it)
