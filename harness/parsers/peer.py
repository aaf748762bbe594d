"""The peer end of the data plane as a possible bottleneck: CPU of the iperf3 servers the
harness started, and the namespace's own receive-side drop counters. Pure: texts in, numbers
out (``DataPlane.peer_stats`` reads the texts, the runner records the rows, the bottleneck
verdict reads them back through ``peer_inputs``).

* Server CPU: utime+stime from /proc/<server pid>/stat before and after the sender run. The
  servers are one-off (``iperf3 -s -1``): by the after reading a server may have exited; its
  PID is not reaped until ``stop_servers``, so its zombie's stat still holds the final times.
* Receive-side drops in the harness namespace (``/proc/net/snmp`` and ``/proc/net/netstat``
  read inside it): UDP ``RcvbufErrors`` (a datagram dropped because the server's socket
  buffer was full: the server did not keep up), TcpExt ``TCPToZeroWindowAdv`` (the server's
  receive buffer filled and its TCP advertised a zero window: the sender was held back by the
  receiver), ``TCPRcvQDrop`` / ``TCPBacklogDrop`` (segments dropped at a full socket).
"""
from __future__ import annotations

PEER_CPU_SOURCE = "host /proc/<peer iperf3>/stat"
PEER_NET_SOURCE = "peer netns /proc/net/snmp+netstat"
# (snmp table, counter) -> metric
PEER_COUNTERS = {
    ("Udp", "RcvbufErrors"): "peer_udp_rcvbuf_errors",
    ("Udp", "InErrors"): "peer_udp_in_errors",
    ("TcpExt", "TCPToZeroWindowAdv"): "peer_tcp_zero_window_adv",
    ("TcpExt", "TCPRcvQDrop"): "peer_tcp_rcvq_drops",
    ("TcpExt", "TCPBacklogDrop"): "peer_tcp_backlog_drops",
}
PEER_DROP_METRICS = ("peer_udp_rcvbuf_errors", "peer_tcp_rcvq_drops", "peer_tcp_backlog_drops")


def proc_cpu_s(stat_text: str, clk_tck: int = 100) -> float | None:
    """utime+stime seconds of one /proc/<pid>/stat text (fields 14 and 15); None if unparsable."""
    rp = stat_text.rfind(")")
    if rp < 0:
        return None
    fields = stat_text[rp + 2:].split()
    try:
        return (int(fields[11]) + int(fields[12])) / clk_tck
    except (IndexError, ValueError):
        return None


def snmp_counters(text: str) -> dict[tuple[str, str], float]:
    """/proc/net/snmp or /proc/net/netstat text: pairs of lines "Table: names" / "Table: values"."""
    out: dict[tuple[str, str], float] = {}
    lines = [l.split() for l in text.splitlines() if ":" in l]
    for head, vals in zip(lines[0::2], lines[1::2]):
        if head[0] == vals[0]:
            table = head[0].rstrip(":")
            for name, value in zip(head[1:], vals[1:]):
                try:
                    out[(table, name)] = float(value)
                except ValueError:
                    pass
    return out


def peer_metrics(before: dict, after: dict) -> list[tuple[str, float, str, str, str]]:
    """(metric, value, unit, source, native_name) rows for one cell run from two
    ``DataPlane.peer_stats`` readings: ``peer_server_cpu_s`` per server (native name
    ``iperf3 -s -p <port>``) and the receive-side drop counters of the namespace."""
    rows = []
    for port, text in sorted((after or {}).get("servers", {}).items()):
        a = proc_cpu_s(text)
        b = proc_cpu_s((before or {}).get("servers", {}).get(port, "")) or 0.0
        if a is not None:
            rows.append(("peer_server_cpu_s", max(a - b, 0.0), "s", PEER_CPU_SOURCE, f"iperf3 -s -p {port}"))
    nb, na = snmp_counters((before or {}).get("net", "")), snmp_counters((after or {}).get("net", ""))
    for key, metric in PEER_COUNTERS.items():
        if key in na and key in nb:
            rows.append((metric, na[key] - nb[key], "count", PEER_NET_SOURCE, f"{key[0]} {key[1]}"))
    return rows
