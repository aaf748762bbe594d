"""Pure parser for `iperf3 -c ... -J` output (iperf3 3.12, cJSON), client side."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from harness.counters import samples as S
from harness.counters.samples import Sample


@dataclass(frozen=True)
class StreamResult:
    socket: int
    bytes: int        # sender side (TCP "sender", UDP "udp")
    bps: float


@dataclass(frozen=True)
class Iperf3Result:
    """Client-side view of one run; None where the run did not report a value."""
    protocol: str | None = None            # "TCP" / "UDP"
    num_streams: int | None = None
    duration_s: float | None = None        # sender's measured seconds
    sent_bytes: int | None = None
    received_bytes: int | None = None
    sent_bps: float | None = None
    received_bps: float | None = None
    retransmits: int | None = None         # TCP only
    lost_packets: int | None = None        # UDP only (receiver's count)
    packets: int | None = None             # UDP only
    lost_percent: float | None = None      # UDP only
    cpu_host_total: float | None = None
    cpu_host_user: float | None = None
    cpu_host_system: float | None = None
    cpu_remote_total: float | None = None
    cpu_remote_user: float | None = None
    cpu_remote_system: float | None = None
    per_stream: list[StreamResult] = field(default_factory=list)
    error: str | None = None


def parse_iperf3_json(text: str) -> Iperf3Result:
    """`iperf3 -J` document: start.test_start, end.sum_sent/sum_received (TCP; 3.12 also
    prints them for UDP, where end.sum carries the receiver's loss), end.streams[].sender
    (TCP) or .udp (UDP), end.cpu_utilization_percent, and "error" when the run failed
    (then "end" is empty or partial). Text that is not JSON gives a result whose error
    says so, so a crashed client is recorded rather than raised."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        return Iperf3Result(error=f"not iperf3 JSON: {e}")
    test = doc.get("start", {}).get("test_start", {})
    end = doc.get("end", {}) or {}
    proto = test.get("protocol")
    udp = proto == "UDP"
    sent = end.get("sum_sent") or (end.get("sum") if udp else None) or {}
    received = end.get("sum_received") or (end.get("sum") if udp else None) or {}
    loss = end.get("sum", {}) if udp else {}
    cpu = end.get("cpu_utilization_percent", {})
    streams = []
    for st in end.get("streams", []):
        side = st.get("udp" if udp else "sender")
        if side:
            streams.append(StreamResult(side["socket"], side["bytes"], side["bits_per_second"]))
    return Iperf3Result(
        protocol=proto,
        num_streams=test.get("num_streams"),
        duration_s=sent.get("seconds"),
        sent_bytes=sent.get("bytes"),
        received_bytes=received.get("bytes"),
        sent_bps=sent.get("bits_per_second"),
        received_bps=received.get("bits_per_second"),
        retransmits=None if udp else sent.get("retransmits"),
        lost_packets=loss.get("lost_packets"),
        packets=loss.get("packets"),
        lost_percent=loss.get("lost_percent"),
        cpu_host_total=cpu.get("host_total"),
        cpu_host_user=cpu.get("host_user"),
        cpu_host_system=cpu.get("host_system"),
        cpu_remote_total=cpu.get("remote_total"),
        cpu_remote_user=cpu.get("remote_user"),
        cpu_remote_system=cpu.get("remote_system"),
        per_stream=streams,
        error=doc.get("error"),
    )


def to_samples(result: Iperf3Result) -> list[Sample]:
    """Run totals (gauges: final numbers of one run) named by samples.IPERF3, plus per
    stream "stream <socket> bytes"/"bps". Missing values are left out, not zero."""
    out = []
    for name, (metric, unit) in S.IPERF3.items():
        value = getattr(result, name)
        if value is not None:
            out.append(Sample("iperf3", name, metric, float(value), unit, kind="gauge"))
    for st in result.per_stream:
        out.append(Sample("iperf3", f"stream {st.socket} bytes", "iperf_stream_sent_bytes",
                          float(st.bytes), "bytes", kind="gauge"))
        out.append(Sample("iperf3", f"stream {st.socket} bps", "iperf_stream_sent_bps",
                          float(st.bps), "bits/s", kind="gauge"))
    return out
