"""The data plane: a network namespace the harness creates and removes, holding the
guest NIC's tap and the iperf3 servers. Addresses are from 198.18.0.0/15 (RFC 2544).

The tap is created *inside* the namespace by opening /dev/net/tun from a thread that
has joined it (setns applies per thread; the netns of a tun device is fixed at open),
and the file descriptors are handed to QEMU. The tap is not persistent: it vanishes
when the last descriptor closes, i.e. when QEMU exits, so it cannot leak.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

from .machine import DATA_PREFIX, PEER_DATA_IP, die_with_parent

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_MULTI_QUEUE = 0x0100
IFF_VNET_HDR = 0x4000

NETNS_PREFIX = "xb-"
STATE_DIR = Path(os.environ.get("XMITBENCH_STATE", "/run/xmitbench"))


class DataPlaneError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise DataPlaneError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _in_netns(netns: str, fn):
    """Run fn() in a thread that has joined `netns`; return its result."""
    box: dict = {}

    def target():
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns failed")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 — re-raised in the caller
            box["error"] = e

    t = threading.Thread(target=target, name=f"setns-{netns}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class DataPlane:
    """One namespace per run; one tap per booted machine; iperf3 servers per cell."""

    def __init__(self, run_id: str):
        self.netns = f"{NETNS_PREFIX}{run_id}"[:32]
        self.tap = None
        self.servers: list[subprocess.Popen] = []
        self.created = False
        self._stack_probe: dict[str, str | None] = {}   # stack kind -> why unsupported (None: fine)

    # -- namespace ----------------------------------------------------------------
    def create(self) -> None:
        _ip("netns", "add", self.netns)
        self.created = True
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        (STATE_DIR / f"{self.netns}.pid").write_text(str(os.getpid()))
        _ip("-n", self.netns, "link", "set", "lo", "up")

    def destroy(self) -> None:
        self.stop_servers()
        if self.created:
            _ip("netns", "delete", self.netns, check=False)
            self.created = False
        try:
            (STATE_DIR / f"{self.netns}.pid").unlink()
        except FileNotFoundError:
            pass

    # -- tap ------------------------------------------------------------------------
    def open_tap(self, name: str, queues: int) -> list[int]:
        """Create tap `name` in the namespace with `queues` queues; return the fds."""
        flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (IFF_MULTI_QUEUE if queues > 1 else 0)

        def open_all():
            fds = []
            try:
                for _ in range(queues):
                    fd = os.open("/dev/net/tun", os.O_RDWR)
                    fds.append(fd)
                    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
            except OSError:
                for fd in fds:
                    os.close(fd)
                raise
            return fds

        fds = _in_netns(self.netns, open_all)
        for fd in fds:
            os.set_inheritable(fd, True)
        self.tap = name
        self.stacks: set[str] = set()
        _ip("-n", self.netns, "addr", "add", f"{PEER_DATA_IP}/{DATA_PREFIX}", "dev", name)
        _ip("-n", self.netns, "link", "set", name, "up")
        return fds

    # peer side of the stacked devices (the guest driver builds the other end)
    PEER_STACKS = {"vlan": ("xbv100", "198.18.1.1/24"), "gre": ("xbgre", "198.18.2.1/24")}

    def stack_unsupported(self, kind: str) -> str | None:
        """Why the peer namespace cannot terminate a stacked device on this host, or None.
        Probed once per kind on a throw-away veth (some host kernels lack 8021q / ip_gre)."""
        if kind == "direct":
            return None
        cache = self._stack_probe
        if kind not in cache:
            probe = ["link", "add", "link", "xbprobe0", "name", "xbprobe0.7", "type", "vlan", "id", "7"] \
                if kind == "vlan" else ["link", "add", "xbprobegre", "type", "gre", "local", "198.18.255.1",
                                        "remote", "198.18.255.2"]
            _ip("-n", self.netns, "link", "add", "xbprobe0", "type", "veth", "peer", "name", "xbprobe1")
            r = _ip("-n", self.netns, *probe, check=False)
            _ip("-n", self.netns, "link", "del", "xbprobe0", check=False)
            _ip("-n", self.netns, "link", "del", "xbprobegre", check=False)
            cache[kind] = (None if r.returncode == 0 else
                           f"the host kernel cannot terminate {kind} in the peer namespace "
                           f"(ip link add type {kind}: {r.stderr.strip()})")
        return cache[kind]

    def add_stack(self, kind: str) -> None:
        if kind == "direct" or kind in self.stacks:
            return
        dev, addr = self.PEER_STACKS[kind]
        if kind == "vlan":
            _ip("-n", self.netns, "link", "add", "link", self.tap, "name", dev, "type", "vlan", "id", "100")
        else:
            _ip("-n", self.netns, "link", "add", dev, "type", "gre", "local", PEER_DATA_IP,
                "remote", "198.18.0.2", "ttl", "64")
        _ip("-n", self.netns, "addr", "add", addr, "dev", dev)
        _ip("-n", self.netns, "link", "set", dev, "up")
        self.stacks.add(kind)

    # -- peers ----------------------------------------------------------------------
    def start_servers(self, ports: list[int], timeout: float = 10.0, bind: str = PEER_DATA_IP) -> None:
        """One-off iperf3 servers (`-1`), one per sender process, bound to the peer address."""
        self.stop_servers()
        for port in ports:
            # `ip netns exec` execs iperf3, so the PID we hold is iperf3's own.
            self.servers.append(subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "iperf3", "-s", "-1", "-B", bind,
                 "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ss = subprocess.run(["ip", "netns", "exec", self.netns, "ss", "-Htln"],
                                capture_output=True, text=True, timeout=10).stdout
            listening = {int(l.split()[3].rsplit(":", 1)[1]) for l in ss.splitlines() if l.strip()}
            if all(p in listening for p in ports):
                return
            dead = [s for s in self.servers if s.poll() is not None]
            if dead:
                raise DataPlaneError("iperf3 server exited: " + dead[0].stderr.read().decode().strip())
            time.sleep(0.05)
        raise DataPlaneError(f"iperf3 servers not listening on {ports} within {timeout} s")

    def stop_servers(self) -> None:
        for s in self.servers:
            if s.poll() is None:
                s.send_signal(signal.SIGTERM)
                try:
                    s.wait(3)
                except subprocess.TimeoutExpired:
                    s.kill()
                    s.wait(3)
        self.servers = []

    def tap_stats(self) -> dict:
        """Peer-side view of the tap (`ip -s -j link`): what actually arrived from the guest."""
        if not self.tap:
            return {}
        out = _ip("-n", self.netns, "-s", "-j", "link", "show", "dev", self.tap).stdout
        return json.loads(out)[0]


def stale_namespaces() -> list[str]:
    """Namespaces recorded by runs whose harness process is gone."""
    out = []
    if STATE_DIR.exists():
        for f in STATE_DIR.glob(f"{NETNS_PREFIX}*.pid"):
            try:
                os.kill(int(f.read_text()), 0)
            except (ProcessLookupError, ValueError):
                out.append(f.stem)
            except PermissionError:
                pass
    return out


def clean_stale() -> list[str]:
    removed = []
    for ns in stale_namespaces():
        _ip("netns", "delete", ns, check=False)
        (STATE_DIR / f"{ns}.pid").unlink(missing_ok=True)
        removed.append(ns)
    return removed
