"""Pure parsers for Linux guest counters: captured text in, Samples (or records) out.

No I/O here. Each parser documents the kernel/tool function whose output it reads; the
fixtures in tests/fixtures/linux/ reproduce those formats.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass

from harness.counters import samples as S
from harness.counters.samples import Sample

# ---------------------------------------------------------------------------------------
# ethtool -S
# ---------------------------------------------------------------------------------------
_QUEUE_NAME = re.compile(r"^(tx|rx)_queue_(\d+)_(.+)$")
# virtio_net since 6.9 (the netdev-qstats rework, virtnet_stats_sprintf): "tx0_kicks",
# "rx1_drops", ... and no per-queue packets/bytes (those went to netdev qstats).
_QUEUE_NAME_SHORT = re.compile(r"^(tx|rx)(\d+)_(.+)$")
_VMXNET3_BLOCK = {"Tx Queue#": "tx", "Rx Queue#": "rx"}


def parse_ethtool_stats(text: str, driver: str | None = None) -> list[Sample]:
    """`ethtool -S <if>` (ethtool.c do_gnicstats: "NIC statistics:" then
    ``"     %.*s: %llu"`` per driver string).

    * ``<dir>_queue_<N>_<what>`` names (virtio_net up to 6.8, igb, veth) and ``<dir><N>_<what>``
      names (virtio_net from 6.9: ``tx0_kicks``) keep the whole native name and set ``queue=N``.
    * vmxnet3 prints nested blocks: a stat named "Tx Queue#"/"Rx Queue#" whose value is the
      queue index, then its counters with names indented by 2 (counter) or 5 (a drop reason
      under the preceding "drv dropped ... total"). Names are stripped; drop reasons become
      ``"drv dropped tx total/giant hdr"`` because "giant hdr" also exists as a counter of
      its own. The driver's packet/byte totals (ucast + mcast + bcast, as in
      vmxnet3_get_stats64) are added as derived samples named ``"ucast+mcast+bcast pkts tx"``.
    ``driver`` selects the name table of samples.ETHTOOL_S; None uses all tables.
    """
    if driver is not None:
        table = S.ETHTOOL_S.get(driver, {})
    else:
        table = {k: v for t in S.ETHTOOL_S.values() for k, v in t.items()}

    out: list[Sample] = []
    block: str | None = None          # "tx"/"rx" inside a vmxnet3 queue block
    block_queue: int | None = None
    parent: str | None = None         # last 2-indent name, for 5-indent drop reasons
    sums: dict[tuple[str, str, int], int] = defaultdict(int)

    for line in text.splitlines():
        raw, sep, value = line.rpartition(": ")
        if not sep or not value.strip().isdigit():
            continue                  # "NIC statistics:", blank, or a non-counter line
        raw = raw[5:] if raw.startswith("     ") else raw.lstrip()
        val = int(value)
        name = raw.strip()
        indent = len(raw) - len(raw.lstrip(" "))

        if name in _VMXNET3_BLOCK:
            block, block_queue, parent = _VMXNET3_BLOCK[name], val, None
            continue
        if block is not None and indent > 0:
            if indent >= 4 and parent is not None:
                native = f"{parent}/{name}"
            else:
                native = parent = name
            queue, lookup = block_queue, native
            m = re.fullmatch(r"(ucast|mcast|bcast) (pkts|bytes) (tx|rx)", name)
            if m:
                sums[(m[2], m[3], queue)] += val
        else:
            block = parent = None
            native = lookup = name
            queue = None
            m = _QUEUE_NAME.match(name)
            m_short = None if m else _QUEUE_NAME_SHORT.match(name)
            if m:
                queue, lookup = int(m[2]), f"{m[1]}_queue_<N>_{m[3]}"
            elif m_short:
                queue, lookup = int(m_short[2]), f"{m_short[1]}<N>_{m_short[3]}"
        metric = table.get(lookup, native)
        kind = "gauge" if native in S.ETHTOOL_S_GAUGES else "counter"
        out.append(Sample("ethtool -S", native, metric, float(val),
                          S.unit_for(metric, native), queue, kind))

    for (what, direction, queue), total in sums.items():
        native = f"ucast+mcast+bcast {what} {direction}"
        metric = table.get(native, native)
        out.append(Sample("ethtool -S", native, metric, float(total),
                          S.unit_for(metric, native), queue))
    return out


# ---------------------------------------------------------------------------------------
# tc -s -j qdisc show dev <if>
# ---------------------------------------------------------------------------------------
# Qdiscs whose children are one per TX queue, parent "<major>:<queue+1>" (sch_mq.c
# mq_attach grafts child ntx at TC_H_MIN(ntx + 1); mqprio/taprio do the same).
MQ_KINDS = {"mq", "mqprio", "taprio"}


def parse_tc_qdisc_json(text: str) -> list[Sample]:
    """`tc -s -j qdisc show dev <if>` (iproute2 6.1): one object per qdisc.

    native_name scheme, so root and children are never confused:
      root qdisc and children of an mq-like root: ``"<kind> <handle> <field>"``, e.g.
        ``"mq 1: requeues"`` (queue None) and ``"pfifo_fast 0: requeues"`` (queue = N-1 for
        parent "1:N"; N is hex, as tc prints handles);
      any other qdisc (ingress/clsact, classful children): ``"<kind> <handle> parent
        <parent> <field>"`` with queue None.
    backlog and qlen are gauges; bytes, packets, drops, overlimits, requeues counters.
    """
    qdiscs = json.loads(text) if text.strip() else []
    root = next((q for q in qdiscs if q.get("root")), None)
    mq_major = root["handle"].split(":")[0] if root and root["kind"] in MQ_KINDS else None

    out = []
    for q in qdiscs:
        kind, handle, parent = q["kind"], q.get("handle", "?"), q.get("parent")
        queue, prefix = None, f"{kind} {handle}"
        if not q.get("root"):
            major, _, minor = (parent or "").partition(":")
            # the default mq root has handle 0: and tc prints its children's parent as ":N"
            major = major or "0"
            if mq_major is not None and major == mq_major and minor:
                queue = int(minor, 16) - 1
            else:
                prefix = f"{kind} {handle} parent {parent}"
        for field, metric in S.TC_QDISC.items():
            if field in q:
                kind_ = "gauge" if field in S.TC_QDISC_GAUGES else "counter"
                out.append(Sample("tc -s -j qdisc", f"{prefix} {field}", metric,
                                  float(q[field]), S.METRIC_UNITS[metric], queue, kind_))
    return out


def qdisc_totals(samples: list[Sample]) -> dict[str, float]:
    """Per-metric totals of the device's egress qdisc tree, counted once.

    When the root is mq-like, its own numbers are already the sum of its children:
    sch_mq.c mq_dump() zeroes the root's bstats/qstats/qlen and adds up every
    netdev_get_tx_queue(dev, ntx)->qdisc_sleeping for ntx < num_tx_queues on each dump.
    So root + children would double count; this sums the children (queue set) instead.
    Note that mq_dump walks num_tx_queues while tc lists only the real_num_tx_queues
    children (mq_attach hashes only those): after `ethtool -L` lowered the queue count the
    root also holds the hidden queues' old totals, which cancel out in deltas.
    Otherwise (single-queue root such as fq_codel or pfifo_fast) the root's values.
    Ingress/clsact and classful children ("... parent ...") are never counted.
    """
    roots = [s for s in samples if s.queue is None and " parent " not in s.native_name]
    children = [s for s in samples if s.queue is not None]
    root_kind = roots[0].native_name.split()[0] if roots else None
    chosen = children if root_kind in MQ_KINDS else roots
    totals: dict[str, float] = defaultdict(float)
    for s in chosen:
        totals[s.metric] += s.value
    return dict(totals)


# ---------------------------------------------------------------------------------------
# ip -s [-s] -j link show dev <if>
# ---------------------------------------------------------------------------------------
def parse_ip_link_json(text: str, ifname: str | None = None) -> list[Sample]:
    """`ip -s -j link show dev <if>` (iproute2 6.1 print_link_stats64): stats64.rx/tx
    objects; `-s -s` adds error breakdowns (length/crc/frame/fifo/missed, aborted/window/
    heartbeat, carrier_changes) which are parsed the same way. native_name is
    ``"<rx|tx>.<field>"``. With several links in the output, ``ifname`` picks one.
    """
    links = json.loads(text)
    if ifname is not None:
        links = [link for link in links if link.get("ifname") == ifname]
    if len(links) != 1:
        raise ValueError(f"expected one link in ip -j output, got {len(links)}")
    stats = links[0].get("stats64") or links[0].get("stats") or {}
    out = []
    for direction in ("rx", "tx"):
        for field, value in stats.get(direction, {}).items():
            native = f"{direction}.{field}"
            metric = S.IP_LINK.get(native, native)
            out.append(Sample("ip -s -j link", native, metric, float(value),
                              S.unit_for(metric, native)))
    return out


# ---------------------------------------------------------------------------------------
# /proc/net/softnet_stat
# ---------------------------------------------------------------------------------------
def parse_softnet_stat(text: str) -> list[Sample]:
    """/proc/net/softnet_stat (net/core/net-procfs.c softnet_seq_show): one line per online
    CPU, ``%08x`` columns. 11 columns before 5.10, 13 on 6.1 (adds backlog_len and the CPU
    index, needed because offline CPUs are skipped), 15 later (input_qlen, process_qlen).
    queue = the CPU index column when present, else the line number. Columns printed as a
    constant 0 are skipped; the values are u32 and wrap (delta() turns a wrap into NaN).
    """
    out = []
    for lineno, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        cols = [int(c, 16) for c in line.split()]
        names = S.SOFTNET_COLUMNS + [f"col{i}" for i in range(len(S.SOFTNET_COLUMNS), len(cols))]
        cpu = cols[12] if len(cols) >= 13 else lineno
        for name, value in zip(names, cols):
            if name is None or name == "cpu_index":
                continue
            metric = S.SOFTNET_STAT.get(name, name)
            kind = "gauge" if name in S.SOFTNET_GAUGES else "counter"
            out.append(Sample("/proc/net/softnet_stat", name, metric, float(value),
                              S.unit_for(metric, name), cpu, kind))
    return out


# ---------------------------------------------------------------------------------------
# /proc/interrupts
# ---------------------------------------------------------------------------------------
# Queue vectors: virtio_pci "virtioN-input.Q"/"-output.Q"; e1000e "<if>-rx-0"/"-tx-0";
# igb "<if>-TxRx-Q"/"-tx-Q"/"-rx-Q"; vmxnet3 "<if>-rxtx-V"/"-tx-V"/"-rx-V" (V is the vector
# number: equal to the queue for TX and for the default buddy-shared rxtx vectors, but not
# for "-rx-V" when TX vectors are separate, since those are numbered after the TX ones).
_IRQ_QUEUE = re.compile(r"-(?:input|output)\.(\d+)$|-(?:tx|rx|TxRx|rxtx)-(\d+)$")
# hwirq + flow handler ("65536-edge", "4-fasteoi", "-edge" without an irq domain)
_IRQ_TYPE = re.compile(r"^\d*-[A-Za-z_]+$")


def irq_queue(name: str) -> int | None:
    """Queue index encoded in an interrupt action name, or None."""
    m = _IRQ_QUEUE.search(name)
    return int(m[1] or m[2]) if m else None


def parse_proc_interrupts(text: str, match: str | None = None) -> list[Sample]:
    """/proc/interrupts (kernel/irq/proc.c show_interrupts): header "CPUn" per online CPU,
    then "IRQ: count... chip hwirq-handler action[, action]" or named rows such as
    "NMI: count... Non-maskable interrupts" and "ERR: count".

    One Sample per (row, CPU): native_name is the action name (device names may contain
    ", " when the line is shared) or, for named rows, the row label ("NMI", "LOC");
    queue = queue index parsed from the name (see irq_queue), cpu = CPU index from the
    header (offline CPUs are absent, so the column position is not the CPU). A row
    printed with a single count (ERR, MIS) gives cpu=None. ``match`` keeps rows whose
    name contains it. A name seen twice gets " (irq N)" appended to stay unique.
    """
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.strip().startswith("CPU")), None)
    if head is None:
        return []
    cpus = [int(tok[3:]) for tok in lines[head].split()]
    out, seen = [], set()
    for line in lines[head + 1:]:
        label, sep, rest = line.partition(":")
        if not sep:
            continue
        label, tokens = label.strip(), rest.split()
        counts = []
        while tokens and len(counts) < len(cpus) and tokens[0].isdigit():
            counts.append(int(tokens.pop(0)))
        if label.isdigit():
            types = [i for i, tok in enumerate(tokens) if _IRQ_TYPE.match(tok)]
            if types:
                name = " ".join(tokens[types[0] + 1:])
            else:
                name = tokens[-1] if len(tokens) > 1 else ""
            name = name or label
        else:
            name = label
        if match is not None and match not in name:
            continue
        if name in seen:
            name = f"{name} (irq {label})"
        seen.add(name)
        queue = irq_queue(name)
        per_cpu = len(counts) == len(cpus)
        for i, value in enumerate(counts):
            out.append(Sample("/proc/interrupts", name, S.PROC_INTERRUPTS, float(value),
                              "count", queue, "counter", cpus[i] if per_cpu else None))
    return out


# ---------------------------------------------------------------------------------------
# /proc/stat
# ---------------------------------------------------------------------------------------
def parse_proc_stat_cpu(text: str) -> list[Sample]:
    """/proc/stat "cpu" and "cpuN" lines (fs/proc/stat.c show_stat): USER_HZ ticks per mode.
    queue = N for "cpuN", None for the all-CPU "cpu" line. Other lines are ignored."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith("cpu"):
            continue
        label = fields[0][3:]
        queue = int(label) if label else None
        for name, value in zip(S.PROC_STAT_COLUMNS, fields[1:]):
            metric = S.PROC_STAT_CPU.get(name, name)
            out.append(Sample("/proc/stat", name, metric, float(value), "jiffies", queue))
    return out


# ---------------------------------------------------------------------------------------
# Lock contention: ftrace hist triggers on lock:contention_begin/contention_end
# ---------------------------------------------------------------------------------------
# The guest driver writes each text to <tracefs>/<path> in append mode (shell ">>"), in
# order. Syntax: Documentation/trace/histogram.rst (6.1): synthetic event definition,
# "keys=...:var=expr" variables, "onmatch(sys.event).<synth>($a,$b)", sort/size.
#  1. synthetic event xb_lock_wait(lock_addr, wait_ns), created at once (6.1 registers it
#     on write), so its hist can be set before any event fires;
#  2. per-lock wait histogram on it;
#  3. contention_begin: per-pid variables: lock address and timestamp;
#  4. contention_end: per-pid wait = now - begin, fires xb_lock_wait on a match;
#  5. contention_begin: who contends: (lock, flags, kernel stack) -> hits.
# Variables are per pid and read once: a contention nested inside another on the same
# task (e.g. a mutex's wait_lock while waiting for the mutex) overwrites the outer begin,
# so the outer wait is lost. Stacks and counts are unaffected.
LOCK_SYNTH_EVENT = "xb_lock_wait u64 lock_addr; u64 wait_ns"
_SYNTH_TRIGGER = "events/synthetic/xb_lock_wait/trigger"
_BEGIN_TRIGGER = "events/lock/contention_begin/trigger"
_END_TRIGGER = "events/lock/contention_end/trigger"
_WAIT_HIST = "hist:keys=lock_addr:vals=hitcount,wait_ns:sort=wait_ns.descending:size=4096"
_BEGIN_VARS = "hist:keys=common_pid:xb_addr=lock_addr:xb_ts=common_timestamp"
_END_MATCH = ("hist:keys=common_pid:xb_wait=common_timestamp-$xb_ts:"
              "onmatch(lock.contention_begin).xb_lock_wait($xb_addr,$xb_wait)")
# Per-lock maximum wait with onmax($var).save(field) (histogram.rst 2.2.3; its entries
# print "\n\tmax: %10llu" then the saved fields). Taken from the docs only, not run on a
# 6.1 kernel here: the driver ignores a write error on it (wait_ns_max stays None).
_MAX_HIST = "hist:keys=lock_addr:xb_max=wait_ns:onmax($xb_max).save(wait_ns):size=4096"


def _stack_hist(common_stacktrace: bool) -> str:
    # the key is "stacktrace" up to 6.3 and "common_stacktrace" from 6.4
    key = "common_stacktrace" if common_stacktrace else "stacktrace"
    return f"hist:keys=lock_addr,flags,{key}:vals=hitcount:sort=hitcount.descending:size=4096"


def lock_hist_setup(common_stacktrace: bool = False) -> list[tuple[str, str]]:
    """(tracefs-relative path, text to append), in order; stop and tear down on error."""
    return [
        ("synthetic_events", LOCK_SYNTH_EVENT),
        (_SYNTH_TRIGGER, _WAIT_HIST),
        (_BEGIN_TRIGGER, _BEGIN_VARS),
        (_END_TRIGGER, _END_MATCH),
        (_BEGIN_TRIGGER, _stack_hist(common_stacktrace)),
    ]


def lock_hist_teardown(common_stacktrace: bool = False) -> list[tuple[str, str]]:
    """Reverse order, each trigger removed by '!' + its text (a trigger still referenced by
    another cannot go first); then the synthetic event. Ignore errors: the optional
    trigger or a failed setup step may be absent."""
    triggers = [(p, "!" + t) for p, t in reversed(lock_hist_setup(common_stacktrace)[1:])]
    return ([(p, "!" + t) for p, t in LOCK_HIST_SETUP_OPTIONAL] + triggers
            + [("synthetic_events", "!" + LOCK_SYNTH_EVENT)])


def lock_hist_pause(common_stacktrace: bool = False, cont: bool = False) -> list[tuple[str, str]]:
    """Pause (or continue) the COUNTING hist triggers (per-lock wait, contending stacks): the
    same text plus ':pause'/':cont' names the trigger it matches (histogram.rst 2.1). Triggers
    stay installed: removing and re-adding them per cell hung the 6.1 guest. The triggers that
    define variables (xb_addr/xb_ts on begin, xb_wait + onmatch on end) cannot be paused on 6.1:
    re-parsing their text fails with "Variable already defined" (seen in error_log here), so
    they keep running, cheaply, while the counting ones are paused."""
    word = ":cont" if cont else ":pause"
    return [(p, t + word) for p, t in lock_hist_setup(common_stacktrace)[1:] if not re.search(r":xb_\w+=", t)]


LOCK_HIST_SETUP = lock_hist_setup()                          # Linux 6.1 (Debian 12)
LOCK_HIST_SETUP_OPTIONAL = [(_SYNTH_TRIGGER, _MAX_HIST)]     # after SETUP; errors ignored
LOCK_HIST_TEARDOWN = lock_hist_teardown()
LOCK_HIST_READ = {
    "wait": "events/synthetic/xb_lock_wait/hist",    # -> parse_lock_wait_hist
    "stack": "events/lock/contention_begin/hist",    # -> parse_lock_stack_hist
}
LOCK_METHOD = "ftrace hist: lock:contention_begin/end + synthetic xb_lock_wait"


@dataclass(frozen=True)
class LockWait:
    lock_addr: int
    contentions: int          # matched begin/end pairs
    wait_ns: int              # sum of waits
    wait_ns_max: int | None = None


@dataclass(frozen=True)
class LockStack:
    lock_addr: int
    flags: int | None         # LCB_F_* of contention_begin, when the key has it
    frames: tuple[str, ...]   # innermost first, as printed ("sch_direct_xmit+0x8b/0x2a0")
    hits: int


@dataclass(frozen=True)
class HistTable:
    trigger: str              # the "# trigger info:" text
    hits: int
    entries: int
    dropped: int              # > 0: the table was full, hits were lost (raise size=)


@dataclass(frozen=True)
class LockRecord:
    lock: str
    caller: str
    kind: str
    contentions: int
    wait_ns_total: int
    wait_ns_max: int | None
    method: str
    # hold time (FreeBSD lockstat -H sections): acquisitions measured and their summed hold
    # time; a hold row has no contentions and no wait (Linux's tracepoints measure no holds)
    holds: int = 0
    hold_ns_total: int | None = None
    # lock_stat only (None from the tracepoint method, which has no acquisitions)
    acquisitions: int | None = None
    wait_ns_min: int | None = None
    contention_points: str | None = None

    @property
    def contention_ratio(self) -> float | None:
        return self.contentions / self.acquisitions if self.acquisitions else None


# One hist file holds one table per trigger (trace_events_hist.c hist_show): each is
# "# event histogram\n#\n# trigger info: <spec> [active]\n#\n\n", the entries, then
# "\nTotals:\n    Hits: %llu\n    Entries: %u\n    Dropped: %llu\n"; tables are separated
# by "\n\n". An entry (hist_trigger_entry_print) is "{ " key ", " key " }" then
# " hitcount: %10llu" and "  <val>: %10llu" per value, then for onmax "\n\tmax: %10llu"
# and the saved fields, then "\n". Numeric keys print "%s: %10llu"; a stacktrace key prints
# "stacktrace:\n" then one "%*c%pS\n" (9 spaces + symbol+off/size [module]) per frame and
# the key closes with "}" alone (no space) at the start of the next line.
_ENTRY = re.compile(r"^\{ (?P<key>.*?)\}(?P<vals>[^\n]*(?:\n\t[^\n]*)*)", re.S | re.M)
_PAIR = re.compile(r"([\w.$-]+):\s+(\d+)")
_TOTALS = re.compile(r"Totals:\s+Hits: (\d+)\s+Entries: (\d+)\s+Dropped: (\d+)")
_STACK_KEY = re.compile(r"\b(?:common_)?stacktrace:")


def _hist_entries(text: str):
    """Yield (key pairs, frames or None, first-line vals, continuation vals) per entry."""
    for m in _ENTRY.finditer(text):
        key = m["key"]
        frames = None
        st = _STACK_KEY.search(key)
        if st:
            frames = tuple(f.strip() for f in key[st.end():].splitlines() if f.strip())
            key = key[:st.start()]
        first, _, more = m["vals"].partition("\n")
        yield (dict((k, int(v)) for k, v in _PAIR.findall(key)), frames,
               dict((k, int(v)) for k, v in _PAIR.findall(first)),
               dict((k, int(v)) for k, v in _PAIR.findall(more)))


def parse_hist_tables(text: str) -> list[HistTable]:
    """Trigger spec and Totals of every table in a hist file (check ``dropped``)."""
    out = []
    for chunk in re.split(r"^# event histogram$", text, flags=re.M):
        trig = re.search(r"^# trigger info: (.*)$", chunk, re.M)
        tot = _TOTALS.search(chunk)
        if tot:
            out.append(HistTable(trig[1] if trig else "", *map(int, tot.groups())))
    return out


def parse_lock_wait_hist(text: str) -> list[LockWait]:
    """events/synthetic/xb_lock_wait/hist: entries "{ lock_addr: N } hitcount: H
    wait_ns: W" of the wait table, merged by address with the "max:" of the optional
    onmax table when present."""
    waits: dict[int, list[int]] = {}
    maxes: dict[int, int] = {}
    for key, _frames, vals, more in _hist_entries(text):
        addr = key.get("lock_addr")
        if addr is None:
            continue
        if "wait_ns" in vals:
            waits[addr] = [vals.get("hitcount", 0), vals["wait_ns"]]
        if "max" in more:
            maxes[addr] = more["max"]
    return [LockWait(a, c, w, maxes.get(a)) for a, (c, w) in waits.items()]


def parse_lock_stack_hist(text: str) -> list[LockStack]:
    """events/lock/contention_begin/hist: entries of the (lock_addr, flags, stacktrace)
    table; the per-pid variable table in the same file has no stack and is skipped."""
    return [LockStack(key["lock_addr"], key.get("flags"), frames, vals.get("hitcount", 0))
            for key, frames, vals, _more in _hist_entries(text)
            if frames is not None and "lock_addr" in key]


# Frames that are the locking or tracing machinery itself, not who takes the lock.
_PLUMBING = re.compile(
    r"^(?:__)?(?:native_|pv_|__pv_)?queued_|^_*raw_|^do_raw_|^_*(?:spin|read|write)_lock"
    r"|^_*mutex_|^_*rwsem_|^_*down(?:_|$)|^_*percpu_down|^_*rt_mutex|^_*rt_spin|^rtlock"
    r"|^osq_|^_*trace|^perf_trace_|^_*bpf_trace|^event_|^stack_trace_|^contention_"
    r"|^virt_spin_lock|^lock_contended")
_SUFFIX = re.compile(r"\.(?:cold|isra|constprop|part|lto_priv|llvm)(?:\.\d+)*")

# Callers on the TX path (and a few others) that identify the lock. Checked in this order
# over all callers seen for one lock address, because one lock is taken from several places:
# __dev_queue_xmit takes the root lock (and busylock when the qdisc is running) in the
# inlined __dev_xmit_skb, while sch_direct_xmit takes HARD_TX_LOCK and then re-takes the
# root lock; an address also seen from __dev_queue_xmit is therefore the root lock.
KNOWN_LOCK_CALLERS = [
    ("__dev_queue_xmit", "qdisc root lock/busylock (Qdisc.q.lock, Qdisc.busylock; "
                         "_xmit_lock if the device has no qdisc)"),
    ("__dev_xmit_skb", "qdisc root lock/busylock (Qdisc.q.lock, Qdisc.busylock)"),
    ("net_tx_action", "qdisc root lock (Qdisc.q.lock)"),
    ("sch_direct_xmit", "HARD_TX_LOCK (netdev_queue._xmit_lock)"),
    ("netif_tx_lock", "netif_tx_lock (tx_global_lock, every _xmit_lock)"),
    ("netif_tx_lock_bh", "netif_tx_lock (tx_global_lock, every _xmit_lock)"),
    ("dev_watchdog", "netif_tx_lock in dev_watchdog (tx_global_lock, _xmit_lock)"),
    ("virtnet_poll_tx", "HARD_TX_LOCK (netdev_queue._xmit_lock) in virtio TX completion"),
    ("vmxnet3_tq_xmit", "vmxnet3 vmxnet3_tx_queue.tx_lock"),
    ("rtnl_lock", "RTNL mutex (rtnl_mutex)"),
    ("lock_sock_nested", "socket lock (sock.sk_lock)"),
    ("tcp_v4_rcv", "socket lock (bh_lock_sock)"),
]

# include/trace/events/lock.h LCB_F_* combinations, named as perf lock contention does.
# A 6.1 mutex waiter fires contention_begin twice: MUTEX|SPIN before optimistic spinning,
# MUTEX again if it then sleeps (one contention_end); its begin count may so be doubled
# and its measured wait starts at the second begin.
LOCK_KINDS = {
    0: "semaphore", 1: "spinlock", 3: "rwlock:R", 5: "rwlock:W", 2: "rwsem:R",
    4: "rwsem:W", 8: "rt-mutex", 10: "rwlock-rt:R", 12: "rwlock-rt:W",
    18: "pcpu-sem:R", 20: "pcpu-sem:W", 32: "mutex", 33: "mutex-spin",
}


def frame_function(frame: str) -> str:
    """"sch_direct_xmit.cold+0x8b/0x2a0 [mod]" -> "sch_direct_xmit"."""
    return _SUFFIX.sub("", re.split(r"[+\s]", frame.strip(), maxsplit=1)[0])


def lock_caller(frames: tuple[str, ...]) -> str:
    """First frame that is not lock/tracing plumbing, or "unknown"."""
    for frame in frames:
        fn = frame_function(frame)
        if fn and not _PLUMBING.search(fn):
            return fn
    return "unknown"


def lock_kind(flags: int | None) -> str:
    if flags is None:
        return "unknown"
    return LOCK_KINDS.get(flags, f"flags={flags:#x}")


def summarize_locks(wait_records: list[LockWait], stack_records: list[LockStack],
                    method: str = LOCK_METHOD) -> list[LockRecord]:
    """One LockRecord per (lock name, dominant caller, kind), busiest first.

    Per lock address: the dominant stack (most hits) gives ``caller`` and ``kind``; the
    name comes from KNOWN_LOCK_CALLERS over every caller seen for the address, else
    "lock in <caller>". contentions = contention_begin hits from the stack table (every
    begin, matched or not), or the wait table's matched count when no stack was seen;
    wait_ns_total = summed matched waits (0 when none matched). Addresses with the same
    name, caller and kind (e.g. the _xmit_lock of each TX queue) are then added up, since
    addresses mean nothing across boots.
    """
    stacks: dict[int, list[LockStack]] = defaultdict(list)
    for st in stack_records:
        stacks[st.lock_addr].append(st)
    waits = {w.lock_addr: w for w in wait_records}

    merged: dict[tuple[str, str, str], list] = {}
    for addr in list(waits) + [a for a in stacks if a not in waits]:
        recs, wait = stacks.get(addr, []), waits.get(addr)
        if recs:
            top = max(recs, key=lambda r: r.hits)
            caller, kind = lock_caller(top.frames), lock_kind(top.flags)
            callers = {lock_caller(r.frames) for r in recs}
            contentions = sum(r.hits for r in recs)
        else:
            caller, kind, callers, contentions = "unknown", "unknown", set(), wait.contentions
        lock = next((name for fn, name in KNOWN_LOCK_CALLERS if fn in callers),
                    f"lock in {caller}")
        acc = merged.setdefault((lock, caller, kind), [0, 0, None])
        acc[0] += contentions
        if wait is not None:
            acc[1] += wait.wait_ns
            if wait.wait_ns_max is not None:
                acc[2] = max(acc[2] or 0, wait.wait_ns_max)
    out = [LockRecord(lock, caller, kind, c, w, m, method)
           for (lock, caller, kind), (c, w, m) in merged.items()]
    return sorted(out, key=lambda r: (-r.wait_ns_total, -r.contentions, r.lock))


def lock_samples(records: list[LockRecord]) -> list[Sample]:
    """LockRecords as Samples, native_name "<lock> | <caller> | <kind>: <field>".
    contentions and wait_ns_total count since the triggers were set up (counters); the
    maximum is a gauge."""
    out = []
    for r in records:
        for field, metric in S.LOCK_HIST.items():
            value = getattr(r, field)
            if value is None:
                continue
            out.append(Sample("lock:contention hist", f"{r.lock} | {r.caller} | {r.kind}: {field}",
                              metric, float(value), S.METRIC_UNITS[metric],
                              kind="gauge" if field == "wait_ns_max" else "counter"))
    return out


def lock_hist_delta(waits_before: list[LockWait], waits_after: list[LockWait],
                    stacks_before: list[LockStack], stacks_after: list[LockStack]
                    ) -> tuple[list[LockWait], list[LockStack]]:
    """Per-interval lock records from two readings of triggers that stay installed.

    The triggers are installed once per boot (installing and removing hist triggers on
    lock:contention_* for every cell hung a 6.1 guest here), so a cell's numbers are the
    difference of cumulative tables, matched by lock address (and stack). A maximum is
    not a counter: it is kept only for locks first seen during the interval."""
    wb = {w.lock_addr: w for w in waits_before}
    waits = []
    for w in waits_after:
        b = wb.get(w.lock_addr)
        n = w.contentions - (b.contentions if b else 0)
        if n > 0:
            waits.append(LockWait(w.lock_addr, n, w.wait_ns - (b.wait_ns if b else 0),
                                  w.wait_ns_max if b is None else None))
    sb = {(s.lock_addr, s.flags, s.frames): s.hits for s in stacks_before}
    stacks = []
    for s in stacks_after:
        n = s.hits - sb.get((s.lock_addr, s.flags, s.frames), 0)
        if n > 0:
            stacks.append(LockStack(s.lock_addr, s.flags, s.frames, n))
    return waits, stacks


# ---------------------------------------------------------------------------------------
# /proc/lock_stat (CONFIG_LOCK_STAT kernels; kernel/locking/lockdep_proc.c, version 0.4)
# ---------------------------------------------------------------------------------------
# seq_header prints "lock_stat version 0.4", a dashed line, the column titles and another
# dashed line. seq_stats prints per lock class (name from the class's key name, plus
# "#<name_version>" when several classes share a name and "/<subclass>" for subclasses):
#   "%40s:" name (or "%38s-W:" / "%38s-R:" for a lock with read holds: write row, read row)
#   then con-bounces, contentions, waittime-min/max/total/avg, acq-bounces, acquisitions,
#   holdtime-min/max/total/avg; counts "%14lu", times in microseconds "%14s" of "%lld.%02d".
# If it was ever contended: a dashed line, up to LOCKSTAT_POINTS (4) contention points
#   "%40s %14lu %29s %pS" (name, count, "[<ip>]", symbol+off/size): where waiters waited,
# a dashed line, up to 4 contending points (where the holder took the lock), then a blank
# line and a dotted line. contentions = contended acquisitions (waittime.nr), acquisitions
# = holds (holdtime.nr, counted at release).
LOCK_STAT_METHOD = "lock_stat"
LOCK_STAT_CLEAR = "echo 0 > /proc/lock_stat"
_LS_NUM = r"(\d+(?:\.\d+)?)"
_LS_ROW = re.compile(r"^\s*(?P<name>\S.*?):" + r"\s+".join([""] + [_LS_NUM] * 12) + r"\s*$")
_LS_POINT = re.compile(r"^\s*(?P<name>\S.*?)\s+(?P<count>\d+)\s+\[<(?P<ip>[0-9a-fx]+)>\]\s+(?P<sym>\S+)")
_LS_FIELDS = ("con_bounces", "contentions", "wait_min_us", "wait_max_us", "wait_total_us", "wait_avg_us",
              "acq_bounces", "acquisitions", "hold_min_us", "hold_max_us", "hold_total_us", "hold_avg_us")


@dataclass(frozen=True)
class LockStatPoint:
    role: str          # "contention" (where a waiter waited) or "contending" (where the holder took it)
    count: int
    ip: str            # as printed (hashed %p on 6.1)
    symbol: str        # "sch_direct_xmit+0x8b/0x2a0"


@dataclass(frozen=True)
class LockStatClass:
    name: str          # native, as printed: "_xmit_ETHER#2", "&mm->mmap_lock-W"
    base: str          # without a -R/-W suffix
    rw: str | None     # "R", "W" or None (a lock without read holds)
    con_bounces: int
    contentions: int
    wait_ns_min: int
    wait_ns_max: int
    wait_ns_total: int
    acq_bounces: int
    acquisitions: int
    hold_ns_min: int
    hold_ns_max: int
    hold_ns_total: int
    points: tuple[LockStatPoint, ...] = ()

    @property
    def contention_ratio(self) -> float | None:
        """Contended acquisitions per acquisition (None without acquisitions)."""
        return self.contentions / self.acquisitions if self.acquisitions else None


def _us_to_ns(text: str) -> int:
    return round(float(text) * 1000)


def parse_lock_stat(text: str) -> list[LockStatClass]:
    """/proc/lock_stat -> one LockStatClass per printed row (a read/write lock gives a -W and
    a -R row; both carry the class's contention points). Raises ValueError if the text is
    not lock_stat version 0.4 (another version may order its columns differently)."""
    lines = text.splitlines()
    head = next((l for l in lines if l.strip()), "")
    m = re.match(r"lock_stat version (\S+)", head.strip())
    if not m:
        raise ValueError(f"not /proc/lock_stat output (first line {head[:60]!r})")
    if m.group(1) != "0.4":
        raise ValueError(f"lock_stat version {m.group(1)} (this parser reads 0.4)")
    rows: list[dict] = []
    group: list[dict] = []           # the rows of the class whose points follow
    role_i = -1                      # -1: no dashed line since the rows; 0 contention, 1 contending
    for line in lines[1:]:
        row = _LS_ROW.match(line)
        if row:
            name = row["name"].strip()
            rw = name[-1] if re.search(r"-[RW]$", name) else None
            base = name[:-2] if rw else name
            # the -R row of the class whose -W row came just before shares its points
            if not (rw == "R" and role_i == -1 and group and group[-1]["rw"] == "W"
                    and group[-1]["base"] == base):
                group, role_i = [], -1
            vals = row.groups()[1:]
            rec = {"name": name, "base": base, "rw": rw, "points": []}
            for field, v in zip(_LS_FIELDS, vals):
                rec[field] = v
            rows.append(rec)
            group.append(rec)
            continue
        s = line.strip()
        if s and set(s) == {"-"} and group:
            role_i += 1
            continue
        pt = _LS_POINT.match(line)
        if pt and group and role_i in (0, 1):
            p = LockStatPoint(("contention", "contending")[role_i], int(pt["count"]), pt["ip"], pt["sym"])
            for rec in group:
                rec["points"].append(p)
    out = []
    for r in rows:
        out.append(LockStatClass(
            r["name"], r["base"], r["rw"], int(r["con_bounces"]), int(r["contentions"]),
            _us_to_ns(r["wait_min_us"]), _us_to_ns(r["wait_max_us"]), _us_to_ns(r["wait_total_us"]),
            int(r["acq_bounces"]), int(r["acquisitions"]), _us_to_ns(r["hold_min_us"]),
            _us_to_ns(r["hold_max_us"]), _us_to_ns(r["hold_total_us"]), tuple(r["points"])))
    return out


def lock_stat_records(classes: list[LockStatClass], method: str = LOCK_STAT_METHOD) -> list[LockRecord]:
    """Classes that were acquired, as LockRecords (busiest first): lock = the native class
    name, caller = the function of the busiest contention point ("" if never contended),
    kind = "class" or "class:R"/"class:W", points as "count@symbol" joined by "; "."""
    out = []
    for c in classes:
        if not c.acquisitions and not c.contentions:
            continue
        waits = sorted((p for p in c.points if p.role == "contention"), key=lambda p: -p.count)
        out.append(LockRecord(
            c.name, frame_function(waits[0].symbol) if waits else "", f"class:{c.rw}" if c.rw else "class",
            c.contentions, c.wait_ns_total, c.wait_ns_max, method, acquisitions=c.acquisitions,
            wait_ns_min=c.wait_ns_min, hold_ns_total=c.hold_ns_total,
            contention_points="; ".join(f"{p.role}:{p.count}@{p.symbol}" for p in c.points) or None))
    return sorted(out, key=lambda r: (-r.contentions, -(r.acquisitions or 0), r.lock))


# The TX-path lock classes by their 6.1 lockdep names (lock_stat truncates a name to ~38
# characters and versions past #9 to one digit, so these match prefixes):
# - netdev_queue._xmit_lock: netdev_set_xmit_lockdep_class() names it netdev_lock_name[type],
#   "_xmit_ETHER" for Ethernet; netdev_set_addr_lockdep_class() gives dev->addr_list_lock a
#   second key with the SAME name, so one of the two prints as "_xmit_ETHER#2" (whichever
#   was registered second). They are told apart by their points (TX functions vs rx-mode).
#   Stacked devices using netdev_lockdep_set_classes() get "&qdisc_xmit_lock_key".
# - Qdisc.q.lock (root lock): qdisc_alloc() registers a key per qdisc, "&sch->root_lock_key"
#   (one class, "#N", per qdisc).
# - Qdisc.busylock and Qdisc.seqlock (NOLOCK qdiscs): "dev->qdisc_tx_busylock ?: &qdisc_tx_busylock".
TX_QUEUE_LOCK, QDISC_ROOT_LOCK, QDISC_BUSYLOCK, ADDR_LIST_LOCK = (
    "tx queue lock (_xmit_lock)", "qdisc root lock (q.lock)", "qdisc busylock/seqlock", "addr_list_lock")
_TX_FUNCS = re.compile(r"^(?:sch_direct_xmit|__dev_queue_xmit|dev_hard_start_xmit|virtnet_poll_tx|"
                       r"free_old_xmit|dev_watchdog|netif_tx_lock|__netif_tx_lock|netif_freeze_queues|"
                       r"dev_deactivate|virtnet_|e1000_|igb_|vmxnet3_|start_xmit|xmit_skb)")
_ADDR_FUNCS = re.compile(r"^(?:dev_set_rx_mode|__dev_set_rx_mode|dev_uc_|dev_mc_|netif_addr_lock|"
                         r"dev_addr_|__hw_addr|vlan_dev_change_rx_flags|dev_change_rx_flags)")


def tx_lock_role(lock: str, points: str | None = None) -> str | None:
    """Which TX-path lock a lock_stat class name is (None: not a TX-path lock). `points` as in
    LockRecord.contention_points tells the two "_xmit_<TYPE>" keys apart."""
    if lock.startswith("&sch->root_lock_key"):
        return QDISC_ROOT_LOCK
    if lock.startswith("dev->qdisc_tx_busylock") or lock.startswith("&qdisc_tx_busylock"):
        return QDISC_BUSYLOCK
    if lock.startswith("&qdisc_xmit_lock_key"):
        return TX_QUEUE_LOCK
    if re.match(r"^_xmit_[A-Z0-9_]+(?:#\d+)?(?:/\d+)?(?:-[RW])?$", lock):
        funcs = [frame_function(p.split("@", 1)[1]) for p in (points or "").split("; ") if "@" in p]
        if any(_ADDR_FUNCS.match(f) for f in funcs) and not any(_TX_FUNCS.match(f) for f in funcs):
            return ADDR_LIST_LOCK
        return TX_QUEUE_LOCK
    return None


def tracepoint_tx_lock_role(lock: str) -> str | None:
    """The same roles for the tracepoint method's names (summarize_locks, KNOWN_LOCK_CALLERS)."""
    if lock.startswith("qdisc root lock"):
        return QDISC_ROOT_LOCK      # root lock and busylock are not told apart by their callers
    if "_xmit_lock" in lock:
        return TX_QUEUE_LOCK
    return None
