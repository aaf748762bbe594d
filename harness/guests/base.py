"""What both guest drivers share: running commands over the management shell, and reading
back what the sender script printed between section markers."""
from __future__ import annotations

import re
import time
from dataclasses import replace

from ..parsers.iperf3 import parse_iperf3_json
from harness.counters.samples import METRIC_UNITS
from .contract import BootState, GuestDriver

SECTION = "@@xmitbench-section "


def split_sections(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    name = None
    buf: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith(SECTION):
            if name is not None:
                out[name] = "".join(buf)
            name, buf = line[len(SECTION):].strip(), []
        elif name is not None:
            buf.append(line)
    if name is not None:
        out[name] = "".join(buf)
    return out


def sender_outputs(raw: dict[str, str]) -> list[str]:
    """The iperf3 JSON of each sender process, in process order (iperf3_0, iperf3_1, ...,
    iperf3_10: numeric, so sender i is the process pinned to vCPU i mod vCPUs)."""
    keys = [k for k in raw if k.startswith("iperf3_") and k[7:].isdigit()]
    return [raw[k] for k in sorted(keys, key=lambda k: int(k[7:]))]


def parse_sections(raw: dict[str, str], parsers: dict) -> list:
    """Samples from each captured section by its parser; a section the snapshot did not
    capture (or that came back empty) adds nothing."""
    out: list = []
    for name, parse in parsers.items():
        if raw.get(name, "").strip():
            out += parse(raw[name])
    return out


def as_stacked(samples: list, dev: str) -> list:
    """Counters of the stacked device (vlan/vxlan/gre) kept apart from the NIC's: own source,
    metric prefixed `stack_` (native_name unchanged, so it still reads as the tool prints it)."""
    return [replace(s, source=f"{s.source} ({dev})", metric=f"stack_{s.metric}") for s in samples]


_QUEUE_INDEX = re.compile(r"(?<=_queue_)\d+(?=_)|(?<=^[tr]x)\d+(?=_)"
                          r"|(?<=\.[tr]xq)\d+(?=\.)|(?<=queue_[tr]x_)\d+(?=\.)")


def counter_pattern(native_name: str) -> str:
    """A native counter name with its queue index as "<N>" (tx_queue_1_packets ->
    tx_queue_<N>_packets, tx0_kicks -> tx<N>_kicks, dev.vtnet.0.txq1.opackets ->
    dev.vtnet.0.txq<N>.opackets)."""
    return _QUEUE_INDEX.sub("<N>", native_name)


def counter_coverage(samples: list, expected: dict[str, str]) -> list[dict]:
    """One row per native counter name pattern: `mapped` (the parser gives it a common
    vocabulary metric), `unmapped` (kept under its native name), or `missing` (the harness's
    table for this driver names it and the guest printed no counter of that metric)."""
    rows: dict[str, dict] = {}
    for s in samples:
        pat = counter_pattern(s.native_name)
        row = rows.setdefault(pat, {"native": pat, "metric": None, "status": "unmapped", "queues": set()})
        if s.metric != s.native_name or s.metric in METRIC_UNITS:     # e1000e tx_packets is both
            row["metric"], row["status"] = s.metric, "mapped"
        if s.queue is not None:
            row["queues"].add(s.queue)
    # A table may name one metric under several kernels' names (virtio_net tx_queue_<N>_kicks up
    # to 6.8, tx<N>_kicks from 6.9): missing only when no name of that metric was printed.
    seen_metrics = {r["metric"] for r in rows.values() if r["status"] == "mapped"}
    for pat, metric in expected.items():
        if pat not in rows and metric not in seen_metrics:
            rows[pat] = {"native": pat, "metric": metric, "status": "missing", "queues": set()}
    order = {"mapped": 0, "missing": 1, "unmapped": 2}
    return [dict(r, queues=sorted(r["queues"])) for r in sorted(rows.values(), key=lambda r: (order[r["status"]], r["native"]))]


class GuestBase(GuestDriver):
    """What the drivers share; each driver still declares its own attributes (see contract)."""
    state: BootState

    REBOOT_COMMAND = "shutdown -r now"

    @property
    def stack_dev(self) -> str | None:
        return self.state.stack_dev

    def boot_id(self) -> str:
        return self.run(self.BOOT_ID_COMMAND).strip()

    def reboot(self, timeout: float, poll_s: float = 3.0, sleep=time.sleep) -> float:
        """Reboot the guest and reconnect to the NEW boot. sshd of the old system can answer
        for a while after `shutdown -r now` (rc.shutdown runs first), so reconnecting alone
        proves nothing: the boot id must change. Returns seconds until the new boot answered."""
        t0 = time.monotonic()
        before = self.boot_id()
        self.shell.run_detached(self.REBOOT_COMMAND)
        self.shell.close()
        while True:
            sleep(poll_s)
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                raise RuntimeError(f"guest did not come back from its reboot within {timeout:.0f} s "
                                   f"(boot id still {before!r})")
            try:
                self.shell.connect(timeout=left)
                now = self.boot_id()
            except Exception:  # noqa: BLE001 — the old system went away under us: poll again
                now = None
            if now and now != before:
                return time.monotonic() - t0
            self.shell.close()

    def setup_stack(self, stack: str, vlan_id: int) -> str | None:
        """Create the stacked device for `stack` (idempotent); its counters join the snapshots."""
        cmd = self.stack_command(stack, vlan_id=vlan_id)
        if cmd:
            self.run(cmd)
        self.state.stack_dev = self.STACK_DEVS.get(stack)
        return cmd

    def lock_pause(self) -> None:
        cmd = self.lock_pause_script()
        if cmd:
            self.run(cmd)
        self.state.lock_paused = True

    def lock_continue(self) -> None:
        cmd = self.lock_continue_script()
        if cmd:
            self.run(cmd)
        self.state.lock_paused = False

    def run(self, cmd: str, timeout: float = 30.0, check: bool = True) -> str:
        return self.shell.run(cmd, timeout=timeout, check=check)[1]

    def kernel_release(self) -> str:
        return self.run("uname -r").strip()

    def run_senders(self, script: str, timeout: float) -> dict[str, str]:
        return split_sections(self.run(script, timeout=timeout))

    def parse_senders(self, raw: dict[str, str]):
        return [parse_iperf3_json(text) for text in sender_outputs(raw)]
