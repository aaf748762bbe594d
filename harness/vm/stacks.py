"""Stacked devices over the data NIC (lltx-stacking): the one table the peer namespace, the guest
drivers and the conservation check all read, so an address or an overhead is written once.

Every kind here is a lockless (LLTX) device on Linux — vlan, ip_gre and vxlan set
NETIF_F_LLTX (`dev->lltx` since 6.12) — so the lower NIC queue's _xmit_lock does the
serialising. The guest end is built by the guest driver; the peer end by `DataPlane.add_stack`.
"""
from __future__ import annotations

from dataclasses import dataclass

VLAN_ID = 100
VXLAN_VNI = 42
VXLAN_PORT = 4789       # IANA; FreeBSD's ifconfig is told it explicitly (older releases used 8472)


@dataclass(frozen=True)
class StackKind:
    kind: str
    guest_cidr: str      # the guest end's address
    peer_ip: str         # the peer namespace's end: the iperf3 servers bind here
    overhead: int        # bytes each NIC packet carries beyond a direct packet


STACKS = {
    "vlan": StackKind("vlan", "198.18.1.2/24", "198.18.1.1", 4),                     # 802.1Q tag
    "gre": StackKind("gre", "198.18.2.2/24", "198.18.2.1", 20 + 4),                  # outer IPv4 + GRE
    "vxlan": StackKind("vxlan", "198.18.3.2/24", "198.18.3.1", 14 + 20 + 8 + 8),     # outer eth/IPv4/UDP + VXLAN
}
KINDS = ("direct", *STACKS)


@dataclass(frozen=True)
class PeerStack:
    """How the peer terminated a stack in this run: the guest must match `vlan_id`, and `detail`
    goes into the cells table so a reader knows exactly what was on the wire."""
    kind: str
    vlan_id: int = VLAN_ID
    detail: str = ""
