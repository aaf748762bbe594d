"""GuestShell (the fabric management channel) against an in-process paramiko SSH server on
127.0.0.1: results and rc, our own check, timeouts, a lost connection raising promptly,
no silent reconnect, put/get over SFTP, the per-run key. No QEMU, no root."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import paramiko
import pytest

from harness.vm.ssh import CommandTimeout, GuestShell, SSHError, make_key


class _Server(paramiko.ServerInterface):
    def __init__(self, pub_b64: str):
        self.pub_b64 = pub_b64

    def check_auth_publickey(self, username, key):
        ok = username == "root" and key.get_base64() == self.pub_b64
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        threading.Thread(target=self._exec, args=(channel, command.decode()), daemon=True).start()
        return True

    def _exec(self, channel, command):
        p = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.procs.append(p)
        out, err = p.communicate()
        try:
            channel.sendall(out)
            channel.sendall_stderr(err)
            channel.send_exit_status(p.returncode)
            channel.close()
        except Exception:  # noqa: BLE001 — the transport was dropped under us
            pass


class _SFTPHandle(paramiko.SFTPHandle):
    def stat(self):
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))


class _SFTP(paramiko.SFTPServerInterface):
    def open(self, path, flags, attr):
        mode = "r+b" if flags & os.O_RDWR else ("wb" if flags & os.O_WRONLY else "rb")
        f = open(path, mode)
        h = _SFTPHandle(flags)
        h.readfile = h.writefile = f
        return h

    def stat(self, path):
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(path))
        except OSError as e:
            return paramiko.SFTPServer.convert_errno(e.errno)

    lstat = stat

    def chattr(self, path, attr):   # fabric's put preserves the local mode
        os.chmod(path, attr.st_mode & 0o7777)
        return paramiko.SFTP_OK


@pytest.fixture
def sshd(tmp_path):
    """(port, key, server state, transports): a one-thread-per-connection SSH server."""
    key = make_key(tmp_path / "key")
    host_key = paramiko.Ed25519Key.from_private_key_file(str(key.private_path))  # any key will do
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    state = {"transports": [], "stop": False}
    server = _Server(key.public_b64)
    server.procs = []

    def accept():
        while not state["stop"]:
            try:
                s, _ = lsock.accept()
            except OSError:
                return
            t = paramiko.Transport(s)
            t.add_server_key(host_key)
            t.set_subsystem_handler("sftp", paramiko.SFTPServer, _SFTP)
            state["transports"].append(t)
            t.start_server(server=server)
    threading.Thread(target=accept, daemon=True).start()
    yield lsock.getsockname()[1], key, state
    state["stop"] = True
    lsock.close()
    for t in state["transports"]:
        t.close()
    for p in server.procs:
        if p.poll() is None:
            p.kill()


def test_run_rc_stdout_stderr_and_check(sshd):
    port, key, _ = sshd
    sh = GuestShell(port, key)
    assert sh.connect(timeout=10) < 10
    assert sh.host_key_fingerprint.startswith("ssh-ed25519 ")
    assert isinstance(sh.client, paramiko.SSHClient) and sh.client.get_transport().is_active()
    assert (sh.port, sh.key, sh.user) == (port, key, "root")
    assert sh.run("echo out; echo err >&2") == (0, "out\n", "err\n")
    rc, out, err = sh.run("echo x; echo bad >&2; exit 3", check=False)
    assert (rc, out, err) == (3, "x\n", "bad\n")
    with pytest.raises(SSHError, match=r"guest command failed \(3\): echo oops >&2; exit 3: oops"):
        sh.run("echo oops >&2; exit 3")
    big = sh.run("head -c 300000 /dev/zero | tr '\\0' a")[1]
    assert big == "a" * 300000
    sh.close()
    assert sh.client is None
    with pytest.raises(SSHError, match="not connected"):
        sh.run("true")


def test_loopback_only_and_key_required(sshd, tmp_path):
    port, key, _ = sshd
    with pytest.raises(AssertionError):
        GuestShell(port, key, host="10.0.0.1")
    other = make_key(tmp_path / "other")
    with pytest.raises(SSHError, match="not up within"):
        GuestShell(port, other).connect(timeout=2)


def test_timeout_raises_command_timeout_promptly(sshd):
    port, key, _ = sshd
    sh = GuestShell(port, key)
    sh.connect(timeout=10)
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match="guest command timed out after 1 s: sleep 30"):
        sh.run("sleep 30", timeout=1)
    assert time.monotonic() - t0 < 5
    assert sh.run("echo still")[1] == "still\n"     # the connection survives a timed-out command
    sh.close()


@pytest.mark.parametrize("side", ["server", "client"])
def test_lost_connection_raises_promptly_and_never_reconnects(sshd, side):
    port, key, state = sshd
    sh = GuestShell(port, key)
    sh.connect(timeout=10)

    def drop():
        time.sleep(0.5)
        if side == "server":          # the guest (QEMU) went away
            state["transports"][-1].sock.shutdown(socket.SHUT_RDWR)
        else:                          # faults.py drop-ssh does exactly this
            sh.client.get_transport().close()
    threading.Thread(target=drop, daemon=True).start()
    t0 = time.monotonic()
    with pytest.raises(SSHError, match="SSH connection lost") as ei:
        sh.run("sleep 30", timeout=20)
    assert not isinstance(ei.value, CommandTimeout)
    assert time.monotonic() - t0 < 5
    n = len(state["transports"])
    with pytest.raises(SSHError, match="SSH connection lost"):
        sh.run("true")
    with pytest.raises(SSHError, match="SSH connection lost"):
        sh.run_detached("true")
    assert len(state["transports"]) == n, "fabric reconnected silently"
    sh.close()
    sh.connect(timeout=10)                     # an explicit reconnect works (reboot path)
    assert sh.run("echo back")[1] == "back\n"
    sh.close()


def test_run_detached_does_not_wait(sshd, tmp_path):
    port, key, _ = sshd
    sh = GuestShell(port, key)
    sh.connect(timeout=10)
    mark = tmp_path / "detached"
    t0 = time.monotonic()
    sh.run_detached(f"sleep 1; touch {mark}")
    assert time.monotonic() - t0 < 1
    for _ in range(50):
        if mark.exists():
            break
        time.sleep(0.1)
    assert mark.exists()
    sh.close()


def test_put_get(sshd, tmp_path):
    port, key, _ = sshd
    sh = GuestShell(port, key)
    sh.connect(timeout=10)
    src, remote, back = tmp_path / "src.bin", tmp_path / "remote.bin", tmp_path / "back.bin"
    src.write_bytes(os.urandom(200_000))
    sh.put(src, str(remote))
    assert remote.read_bytes() == src.read_bytes()
    sh.get(str(remote), back)
    assert back.read_bytes() == src.read_bytes()
    with pytest.raises(SSHError, match="SSH failure during `get"):
        sh.get(str(tmp_path / "missing"), tmp_path / "x")
    sh.close()
