"""Per-cell validity checks: pure functions of parsed numbers, results go to `cells.validity`."""
from __future__ import annotations

import json

# Per-skb header bytes a Linux NIC counts on top of payload (skb->len of a GSO skb holds
# ONE header): Ethernet 14 + IPv4 20 + TCP 20+12 (timestamps) or UDP 8.
HEADER_BYTES = {"tcp": 14 + 20 + 32, "udp": 14 + 20 + 8}
CONSERVATION_TOLERANCE = 0.03
QUEUE_SHARE_MIN = 0.05


def app_bytes_total(iperf3_json: str) -> int:
    """Payload the sender wrote during the whole run, warm-up (omitted) intervals included:
    the counter snapshots bracket the whole run, iperf3's `end` sums exclude the omit phase."""
    doc = json.loads(iperf3_json)
    return int(sum(iv["sum"]["bytes"] for iv in doc.get("intervals", [])))


def conservation(app_bytes: int, nic_bytes: float, nic_packets: float, proto: str) -> dict:
    """Application payload vs bytes the NIC's TX counters saw, headers accounted per packet
    counted by the driver (an skb, so a TSO super-packet counts once)."""
    if app_bytes <= 0 or nic_bytes != nic_bytes:  # NaN
        return {"ok": False, "reason": "no application or NIC bytes", "app_bytes": app_bytes,
                "nic_bytes": nic_bytes}
    payload_on_wire = nic_bytes - nic_packets * HEADER_BYTES.get(proto, 0)
    ratio = payload_on_wire / app_bytes
    return {"ok": abs(ratio - 1) <= CONSERVATION_TOLERANCE, "app_bytes": app_bytes,
            "nic_bytes": nic_bytes, "nic_packets": nic_packets, "ratio": round(ratio, 4),
            "raw_ratio": round(nic_bytes / app_bytes, 4),
            "unexplained_bytes": round(app_bytes - payload_on_wire),
            "tolerance": CONSERVATION_TOLERANCE}


def queue_spread(per_queue_packets: dict[int, float], queues: int) -> dict:
    """Did traffic really use every configured TX queue? (the silent single-queue trap)"""
    used = {q: v for q, v in per_queue_packets.items() if q < queues}
    total = sum(used.values())
    shares = {str(q): round(v / total, 4) if total else 0.0 for q, v in sorted(used.items())}
    idle = [q for q in range(queues) if total == 0 or used.get(q, 0) / total < QUEUE_SHARE_MIN]
    return {"ok": not idle, "shares": shares, "idle_queues": idle, "min_share": QUEUE_SHARE_MIN}


def sender_saturation(cpu_busy_share: dict[int, float], pinned_cpus: list[int], threshold: float = 0.95) -> dict:
    """A pinned sender CPU at ~100 % means the cell measures the sender, not the kernel."""
    busy = {c: round(cpu_busy_share.get(c, 0.0), 3) for c in sorted(set(pinned_cpus))}
    return {"saturated": any(v >= threshold for v in busy.values()), "cpu_busy": busy,
            "threshold": threshold}
