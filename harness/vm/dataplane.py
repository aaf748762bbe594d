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

from harness.vm.machine import DATA_MAC, DATA_PREFIX, GUEST_DATA_IP, PEER_DATA_IP, PEER_DATA_MAC, die_with_parent
from harness.vm.stacks import STACKS, VLAN_ID, VXLAN_PORT, VXLAN_VNI, PeerStack

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
        # a fixed MAC: the guest's static neighbour entries for stacked devices point at it
        _ip("-n", self.netns, "link", "set", name, "address", PEER_DATA_MAC)
        _ip("-n", self.netns, "addr", "add", f"{PEER_DATA_IP}/{DATA_PREFIX}", "dev", name)
        _ip("-n", self.netns, "link", "set", name, "up")
        return fds

    # peer side of the stacked devices (the guest driver builds the other end; addresses in stacks.py)
    PEER_DEVS = {"vlan": "xbv100", "gre": "xbgre", "vxlan": "xbvx"}
    _PROBES = {
        "vlan": ["link", "add", "link", "xbprobe0", "name", "xbprobe0.7", "type", "vlan", "id", "7"],
        "gre": ["link", "add", "xbprobegre", "type", "gre", "local", "198.18.255.1", "remote", "198.18.255.2"],
        "vxlan": ["link", "add", "xbprobevx", "type", "vxlan", "id", "7", "dstport", str(VXLAN_PORT),
                  "local", "198.18.255.1", "remote", "198.18.255.2"],
    }

    def _host_can(self, kind: str) -> str | None:
        """None if the host kernel can create `kind` in the namespace, else ip's error.
        Probed once per kind on a throw-away veth (some host kernels lack 8021q / ip_gre)."""
        if kind not in self._stack_probe:
            _ip("-n", self.netns, "link", "add", "xbprobe0", "type", "veth", "peer", "name", "xbprobe1")
            r = _ip("-n", self.netns, *self._PROBES[kind], check=False)
            for dev in ("xbprobe0", "xbprobegre", "xbprobevx"):
                _ip("-n", self.netns, "link", "del", dev, check=False)
            self._stack_probe[kind] = None if r.returncode == 0 else r.stderr.strip()
        return self._stack_probe[kind]

    def stack_unsupported(self, kind: str) -> str | None:
        """Why the peer namespace cannot terminate a stacked device on this host, or None.
        A VLAN is always terminable: without 8021q the peer takes priority-tagged frames (see
        `stack_peer`)."""
        if kind in ("direct", "vlan"):
            return None
        err = self._host_can(kind)
        return None if err is None else (f"the host kernel cannot terminate {kind} in the peer namespace "
                                         f"(ip link add type {kind}: {err})")

    def stack_peer(self, kind: str) -> PeerStack:
        """How the peer will terminate `kind`; the guest end must match (its VLAN id)."""
        if kind == "vlan" and self._host_can("vlan") is not None:
            # No 8021q on the host: the guest tags with VID 0 (802.1p priority tag), which the
            # host's core receive path strips without a vlan device (__netif_receive_skb_core).
            # The guest's TX path is the same for every VID (vlan_dev_hard_start_xmit).
            return PeerStack("vlan", 0, "vid 0 (priority-tagged): the host kernel has no 8021q, its core "
                                        "receive path untags VID 0; the guest TX path is the same for any VID")
        if kind == "vlan":
            return PeerStack("vlan", VLAN_ID, f"vid {VLAN_ID}, peer vlan device on the tap")
        if kind == "vxlan":
            return PeerStack("vxlan", detail=f"vni {VXLAN_VNI}, udp {VXLAN_PORT}, peer vxlan device over the tap")
        return PeerStack(kind, detail=f"peer {kind} device" if kind != "direct" else "")

    def add_stack(self, kind: str) -> PeerStack:
        """Build the peer end of `kind` (once per run) and return how it terminates."""
        peer = self.stack_peer(kind)
        if kind == "direct" or kind in self.stacks:
            return peer
        s = STACKS[kind]
        guest_ip = s.guest_cidr.split("/")[0]
        prefix = s.guest_cidr.split("/")[1]
        dev = self.PEER_DEVS[kind]
        if kind == "vlan" and peer.vlan_id == 0:
            dev = self.tap       # the core untags VID 0 frames: they arrive on the tap itself
        elif kind == "vlan":
            _ip("-n", self.netns, "link", "add", "link", self.tap, "name", dev, "type", "vlan", "id", str(VLAN_ID))
        elif kind == "vxlan":
            _ip("-n", self.netns, "link", "add", dev, "type", "vxlan", "id", str(VXLAN_VNI), "dstport",
                str(VXLAN_PORT), "local", PEER_DATA_IP, "remote", GUEST_DATA_IP, "dev", self.tap)
        else:
            _ip("-n", self.netns, "link", "add", dev, "type", "gre", "local", PEER_DATA_IP,
                "remote", GUEST_DATA_IP, "ttl", "64")
        _ip("-n", self.netns, "addr", "add", f"{s.peer_ip}/{prefix}", "dev", dev)
        if kind == "vlan":
            # static both ways: with VID 0 the replies arrive untagged on the guest's lower
            # device, so ARP cannot resolve across the VLAN; do the same with a real VID for parity
            _ip("-n", self.netns, "neigh", "replace", guest_ip, "lladdr", DATA_MAC, "dev", dev, "nud", "permanent")
        _ip("-n", self.netns, "link", "set", dev, "up")
        if kind == "vxlan":
            # inner checksums in software: an offloaded inner TCP checksum reaches QEMU as a
            # partial-checksum vnet header, and QEMU's e1000e RX path (net_rx_pkt) completes the
            # checksum of the L4 header it parses itself, the outer UDP, so the guest sees bad
            # inner TCP checksums (TcpInCsumErrors) and the connection never opens
            subprocess.run(["ip", "netns", "exec", self.netns, "ethtool", "-K", dev, "tx", "off"],
                           check=True, capture_output=True, timeout=10)
        self.stacks.add(kind)
        return peer

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

    def peer_stats(self) -> dict:
        """Texts for ``harness.parsers.peer.peer_metrics``: /proc/<pid>/stat of every iperf3 server this
        data plane started (by port), and /proc/net/snmp + netstat read inside the namespace."""
        servers = {}
        for s in self.servers:
            port = s.args[s.args.index("-p") + 1]
            try:
                servers[port] = Path(f"/proc/{s.pid}/stat").read_text()
            except OSError:
                pass
        net = ""
        if self.created:
            p = subprocess.run(["ip", "netns", "exec", self.netns, "cat", "/proc/net/snmp", "/proc/net/netstat"],
                               capture_output=True, text=True, timeout=10)
            net = p.stdout if p.returncode == 0 else ""
        return {"servers": servers, "net": net}

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
