"""Management channel: SSH (paramiko) to 127.0.0.1:<forwarded port> with a per-run key."""
from __future__ import annotations

import io
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko


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


class GuestShell:
    """Commands on the guest. Each command has a timeout; a lost connection raises SSHError."""

    def __init__(self, port: int, key: RunKey, host: str = "127.0.0.1", user: str = "root"):
        assert host == "127.0.0.1", "management is loopback only"
        self.port, self.key, self.host, self.user = port, key, host, user
        self.client: paramiko.SSHClient | None = None
        self.host_key_fingerprint: str | None = None

    def connect(self, timeout: float = 30.0) -> float:
        """Retry until the guest's sshd answers; returns seconds waited."""
        t0 = time.monotonic()
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.key.private_path))
        last = None
        while time.monotonic() - t0 < timeout:
            c = paramiko.SSHClient()
            # The guest makes a fresh host key each boot; it is reachable only via our own
            # loopback forward, so trust-on-first-use per boot is right; fingerprint recorded.
            c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
            try:
                c.connect(self.host, self.port, username=self.user, pkey=pkey, timeout=5,
                          banner_timeout=5, auth_timeout=5, allow_agent=False, look_for_keys=False)
                self.client = c
                hk = c.get_transport().get_remote_server_key()
                self.host_key_fingerprint = f"{hk.get_name()} {hk.fingerprint}"
                c.get_transport().set_keepalive(5)
                return time.monotonic() - t0
            except (paramiko.SSHException, OSError, EOFError) as e:
                last = e
                c.close()
                time.sleep(0.2)
        raise SSHError(f"SSH to {self.host}:{self.port} not up within {timeout:.0f} s: {last}")

    def run(self, command: str, timeout: float = 60.0, check: bool = True) -> tuple[int, str, str]:
        if self.client is None:
            raise SSHError("not connected")
        try:
            chan = self.client.get_transport().open_session(timeout=10)
            chan.settimeout(timeout)
            chan.exec_command(command)
            out, err = io.BytesIO(), io.BytesIO()
            deadline = time.monotonic() + timeout
            while True:
                if chan.recv_ready():
                    out.write(chan.recv(1 << 16))
                if chan.recv_stderr_ready():
                    err.write(chan.recv_stderr(1 << 16))
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > deadline:
                    chan.close()
                    raise CommandTimeout(f"guest command timed out after {timeout:.0f} s: {_short(command)}")
                if not self.client.get_transport().is_active():
                    raise SSHError("SSH connection lost")
                time.sleep(0.01)
            rc = chan.recv_exit_status()
            chan.close()
        except (socket.timeout, EOFError, paramiko.SSHException, OSError) as e:
            raise SSHError(f"SSH failure during `{_short(command)}`: {e}") from e
        o, e_ = out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")
        if rc == -1:
            raise SSHError(f"SSH channel closed without an exit status during `{_short(command)}`")
        if check and rc != 0:
            raise SSHError(f"guest command failed ({rc}): {_short(command)}: {e_.strip()[-300:]}")
        return rc, o, e_

    def run_detached(self, command: str) -> None:
        """Start a command and do not wait (e.g. one that takes the guest down)."""
        chan = self.client.get_transport().open_session(timeout=10)
        chan.exec_command(command)

    def close(self) -> None:
        if self.client:
            self.client.close()
            self.client = None
