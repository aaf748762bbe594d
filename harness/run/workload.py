"""Workload files: load and validate a TOML matrix, expand it into cells.

Schema (every key optional unless marked required)::

    [workload]
    name = "default"        # required; letters, digits, '.', '_', '-'
    description = ""
    repetitions = 1         # 1..100, or "auto": at least 3, then more until the throughput CI
                            # reaches ci_target_pct, rep_budget_s is spent or max_repetitions ran
    ci_target_pct = "auto"  # "auto" only: 95 % CI half-width target, % of the mean; 0.1..100;
                            # "auto" = 10 under TCG, 3 on KVM (resolved at run time)
    rep_budget_s = 90       # "auto" only: wall seconds per cell, 10..86400
    max_repetitions = 10    # "auto" only: 3..100
    duration_s = 10         # iperf3 -t, 1..3600
    warmup_s = 1            # iperf3 --omit, 0..60 (iperf3 runs duration_s + warmup_s)
    lock_stats = false      # collect lock contention statistics
    udp_bitrate = "0"       # iperf3 -b for UDP cells ("0" = unlimited)
    require_queue_spread = false  # true: a multi-queue cell with an idle TX queue is invalid
                            # (default: queue spread is only reported; one flow on one queue is real)
    inspect = false         # true: the first boot of each image and NIC also writes the
                            # `images inspect` bundle to <run dir>/inspect/<image>.<nic>/

    [machine]
    vcpus = 2               # 1..64
    memory_mib = 1024       # 256..65536
    accel = "auto"          # auto | kvm | tcg
    image = "linux-deb"     # one of KNOWN_IMAGES
    os = "linux"            # linux | freebsd; defaults to the image's OS and must match it

    [matrix]                # every key a list (an axis); the cells are the cross product
    nic = ["virtio-net"]    # required; names in harness.vm.nics.NICS
    queues = [1]            # TX queues, 1..vcpus
    procs = [1]             # iperf3 sender processes, 1..64 (process i pinned to vCPU i % vcpus)
    streams = [1]           # iperf3 -P per process, 1..128
    proto = ["tcp"]         # tcp | udp
    msg_size = [0]          # iperf3 -l; TCP 0..1048576 (0 = iperf3 default), UDP 16..65507

A (nic, queues) pair the NIC cannot do (more queues than the model has, or a count its driver
cannot take) is not an error: "1 and 2 queues where the model has them" is the normal use, so
such cells come back as skipped with a reason. It is an error only when nothing is left to run.

`udp_bitrate` lives in [workload], not [matrix]: it is one per-run iperf3 setting like
duration_s, and keeping [matrix] all lists means every key there is an axis.

Validation is pure apart from reading the file; every problem raises InputError with the
file, the dotted key and what would have been accepted.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import dataclasses
import itertools
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from harness.counters.confidence import MIN_REPS_TEST
from harness.errors import InputError
from harness.images.local import LOCAL_IMAGES
from harness.guests import driver_class, os_names
from harness.vm.nics import NICS
from harness.vm.stacks import KINDS as STACK_KINDS

def warmup_run(cell: "Cell") -> "CellRun":
    """A boot's warm-up: the boot's next cell, untraced, under its own id (status warmup)."""
    return CellRun(dataclasses.replace(cell, cell_id=cell.cell_id + WARMUP_SUFFIX, traced=False), 0)


UNTRACED_SUFFIX = ".untraced"   # the cell id of a probe-effect twin (traced=False)
WARMUP_SUFFIX = ".warmup"   # the cell id of a boot's warm-up run (status "warmup" in the cells table)

# Guest images a workload may name, with the OS each one runs: the images the harness builds
# (images/local.py) and every catalog image.
KNOWN_IMAGES: dict[str, str] = {name: img.os for name, img in LOCAL_IMAGES.items()}


def known_images() -> dict[str, str]:
    """Image name -> OS: the built-in guest plus every image of the catalog(s)."""
    images = dict(KNOWN_IMAGES)
    try:
        from harness.images.catalog import load_catalog
    except ImportError:  # catalog not available: only the built-in guest
        return images
    for img in load_catalog().images.values():
        images.setdefault(img.name, img.os)
    return images
ACCELS = ("auto", "kvm", "tcg")
PROTOS = ("tcp", "udp")

# Limits, with where they come from.
REPETITIONS = (1, 100)
AUTO = "auto"
AUTO_MIN_REPS = MIN_REPS_TEST          # repetitions = "auto" runs at least this many
MAX_REPETITIONS = (AUTO_MIN_REPS, 100)
MAX_REPETITIONS_DEFAULT = 10
REP_BUDGET_S = (10, 86400)
REP_BUDGET_S_DEFAULT = 90              # per cell: the default matrix stays within 15 min under TCG
CI_TARGET_PCT = (0.1, 100.0)
DURATION_S = (1, 3600)
WARMUP_S = (0, 60)
RETRIES = (0, 3)
CELL_TIMEOUT_S = (0, 7200)
VCPUS = (1, 64)
MEMORY_MIB = (256, 65536)
PROCS = (1, 64)
STREAMS = (1, 128)            # iperf3 MAX_STREAMS
TCP_MSG_SIZE = (0, 1 << 20)   # iperf3 MAX_BLOCKSIZE is 1 MiB; 0 = leave -l out
UDP_MSG_SIZE = (16, 65507)    # iperf3 MIN_UDP_BLOCKSIZE, MAX_UDP_BLOCKSIZE (65535 - 8 - 20)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BITRATE_RE = re.compile(r"\d+(\.\d+)?[KMGTkmgt]?")

_SCHEMA: dict[str, tuple[str, ...]] = {
    "workload": ("name", "description", "repetitions", "duration_s", "warmup_s",
                 "lock_stats", "udp_bitrate", "retries", "cell_timeout_s", "probe_effect",
                 "churn_interval_s", "churn_count", "shuffle_seed", "warmup_after_boot", "require_queue_spread",
                 "inspect", "ci_target_pct", "rep_budget_s", "max_repetitions"),
    "machine": ("vcpus", "memory_mib", "accel", "image", "os", "pin_vcpus", "kernel", "modules"),
    "matrix": ("image", "nic", "queues", "procs", "streams", "proto", "msg_size", "stack", "churn"),
    "setup": ("linux", "freebsd"),
}
# How traffic reaches the NIC: directly, or through a stacked virtual device (Linux: LLTX).
STACKS = STACK_KINDS
# Control-path reconfiguration run in a bounded loop while the senders run.
CHURNS = ("none", "link-flap", "mtu", "queues")
CHURN_INTERVAL_S = (1, 60)
CHURN_COUNT = (1, 100)


@dataclass(frozen=True)
class Machine:
    vcpus: int
    memory_mib: int
    accel: str
    image: str
    os: str
    kernel: Path | None = None      # a user bzImage replacing the kernel of USER_KERNEL_IMAGE
    modules: Path | None = None     # its /lib/modules/<release> (None: everything built in)


@dataclass(frozen=True)
class Matrix:
    image: tuple[str, ...]          # empty: machine.image only
    nic: tuple[str, ...]
    queues: tuple[int, ...]
    procs: tuple[int, ...]
    streams: tuple[int, ...]
    proto: tuple[str, ...]
    msg_size: tuple[int, ...]
    stack: tuple[str, ...] = ("direct",)
    churn: tuple[str, ...] = ("none",)


@dataclass(frozen=True)
class Workload:
    path: Path          # as given by the user
    sha256: str         # of the file bytes, recorded in the run manifest
    name: str
    description: str
    repetitions: int
    duration_s: int
    warmup_s: int
    lock_stats: bool
    udp_bitrate: str
    machine: Machine
    matrix: Matrix
    retries: int = 1            # a failed cell run may be re-run this many times
    cell_timeout_s: int = 0     # 0 = derived: duration + warm-up + 90 s
    probe_effect: bool = False  # each traced cell also runs once untraced, next to its first repetition
    warmup_after_boot: bool = False   # every boot first runs its next cell as a warm-up (status warmup)
    churn_interval_s: int = 2
    churn_count: int = 3
    setup: tuple[tuple[str, tuple[str, ...]], ...] = ()   # (os, guest commands run before each cell)
    shuffle_seed: int | None = None   # seeded random cell order within each repetition
    pin_vcpus: bool = False           # pin each vCPU thread to its own host CPU
    require_queue_spread: bool = False   # an idle configured TX queue invalidates the cell
    inspect: bool = False             # the first boot of each image and NIC captures an inspect bundle
    # repetitions = "auto" (harness.run.repetitions): `repetitions` is then the planned minimum
    repetitions_auto: bool = False
    ci_target_pct: float | None = None   # None: "auto", resolved by the accelerator at run time
    rep_budget_s: int = REP_BUDGET_S_DEFAULT
    max_repetitions: int = MAX_REPETITIONS_DEFAULT

    def setup_for(self, os_name: str) -> tuple[str, ...]:
        return dict(self.setup).get(os_name, ())


@dataclass(frozen=True)
class BootKey:
    """Everything that needs its own VM boot. Cells with equal keys share one VM.

    ``queues`` is the TX queue count the VM boots with: for NICs whose queue count changes at
    run time it is the largest any cell of that NIC needs (the guest driver selects fewer);
    otherwise it is the cell's own count, set by the guest kernel at boot (FreeBSD loader
    tunables). ``device_queues`` (0: same as ``queues``) is what the emulated device offers:
    the largest count of that NIC in the workload, so every kernel gets the identical QEMU
    device line and only the guest's own setting differs.
    """
    image: str
    os: str
    nic: str
    vcpus: int
    memory_mib: int
    accel: str
    queues: int
    device_queues: int = 0

    @property
    def qemu_queues(self) -> int:
        """Queue pairs of the emulated device (the QEMU command line)."""
        return self.device_queues or self.queues

    @property
    def label(self) -> str:
        return (f"{self.image}.{self.nic}.q{self.queues}" + (f".dev{self.device_queues}" if self.device_queues else "")
                + f".c{self.vcpus}.m{self.memory_mib}.{self.accel}")


@dataclass(frozen=True)
class Cell:
    cell_id: str        # stable and readable: "<image>.<nic>.q<queues>.p<procs>.s<streams>.<proto>.m<msg_size>"
    image: str
    os: str
    nic: str
    queues: int
    procs: int
    streams: int
    proto: str
    msg_size: int       # 0 = iperf3 default
    duration_s: int
    warmup_s: int
    udp_bitrate: str
    boot_key: BootKey
    stack: str = "direct"
    churn: str = "none"
    traced: bool = True


@dataclass(frozen=True)
class CellRun:
    cell: Cell
    rep: int            # 0-based

    @property
    def run_id(self) -> str:
        return f"{self.cell.cell_id}.r{self.rep}"


@dataclass(frozen=True)
class SkippedCell:
    cell: Cell
    reason: str


class Expansion(NamedTuple):
    runs: list[CellRun]
    skipped: list[SkippedCell]


# ---------------------------------------------------------------------------------------------
# Loading


def load_workload(path: str | os.PathLike[str]) -> Workload:
    """Read and validate a workload file; raise InputError on any problem."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(path, "", f"cannot read workload file: {e.strerror or e}") from None
    return parse_workload(data, path)


def parse_workload(data: bytes, path: str | os.PathLike[str]) -> Workload:
    """Validate the bytes of a workload file; ``path`` is only used in messages and kept."""
    v = _Validator(os.fspath(path))
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise v.error(f"line {line}", "not UTF-8 text; TOML files must be UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise v.syntax_error(str(e)) from None

    for table in doc:
        if table not in _SCHEMA:
            what = "table" if isinstance(doc[table], dict) else "top-level key"
            raise v.error(table, f"unknown {what}; allowed tables: {', '.join(sorted(_SCHEMA))}")
    tables = {t: v.table(doc, t) for t in _SCHEMA}
    for t, keys in _SCHEMA.items():
        for k in tables[t]:
            if k not in keys:
                raise v.error(f"{t}.{k}", f"unknown key; allowed: {', '.join(sorted(keys))}")

    w, m, x = tables["workload"], tables["machine"], tables["matrix"]
    name = v.required(w, "workload", "name", 'e.g. name = "default"')
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise v.error("workload.name", "expected a string of 1..64 letters, digits, '.', '_' or '-'"
                      f" starting with a letter or digit, got {_describe(name)}")
    description = v.string(w, "workload.description", "")
    repetitions_auto = w.get("repetitions") == AUTO
    if repetitions_auto:
        repetitions = AUTO_MIN_REPS
    elif isinstance(w.get("repetitions"), str):
        raise v.error("workload.repetitions", f"expected an integer in {REPETITIONS[0]}..{REPETITIONS[1]} "
                      f'or "{AUTO}", got {_describe(w["repetitions"])}')
    else:
        repetitions = v.integer(w, "workload.repetitions", REPETITIONS, 1, f'or "{AUTO}"')
    for key in ("ci_target_pct", "rep_budget_s", "max_repetitions"):
        if key in w and not repetitions_auto:
            raise v.error(f"workload.{key}", f'only used with repetitions = "{AUTO}"; '
                          f"remove it or set repetitions = \"{AUTO}\"")
    ci_target_pct = v.number_or_auto(w, "workload.ci_target_pct", CI_TARGET_PCT)
    rep_budget_s = v.integer(w, "workload.rep_budget_s", REP_BUDGET_S, REP_BUDGET_S_DEFAULT)
    max_repetitions = v.integer(w, "workload.max_repetitions", MAX_REPETITIONS, MAX_REPETITIONS_DEFAULT)
    duration_s = v.integer(w, "workload.duration_s", DURATION_S, 10)
    warmup_s = v.integer(w, "workload.warmup_s", WARMUP_S, 1)
    lock_stats = v.boolean(w, "workload.lock_stats", False)
    retries = v.integer(w, "workload.retries", RETRIES, 1)
    probe_effect = v.boolean(w, "workload.probe_effect", False)
    warmup_after_boot = v.boolean(w, "workload.warmup_after_boot", False)
    churn_interval_s = v.integer(w, "workload.churn_interval_s", CHURN_INTERVAL_S, 2)
    churn_count = v.integer(w, "workload.churn_count", CHURN_COUNT, 3)
    shuffle_seed = v.integer(w, "workload.shuffle_seed", (0, 2**31 - 1), -1) if "shuffle_seed" in w else None
    cell_timeout_s = v.integer(w, "workload.cell_timeout_s", CELL_TIMEOUT_S, 0)
    require_queue_spread = v.boolean(w, "workload.require_queue_spread", False)
    inspect = v.boolean(w, "workload.inspect", False)
    udp_bitrate = w.get("udp_bitrate", "0")
    if not isinstance(udp_bitrate, str) or not _BITRATE_RE.fullmatch(udp_bitrate):
        raise v.error("workload.udp_bitrate", 'expected an iperf3 -b rate as a string such as '
                      f'"0" (unlimited), "500M" or "1.5G", got {_describe(udp_bitrate)}')

    vcpus = v.integer(m, "machine.vcpus", VCPUS, 2)
    memory_mib = v.integer(m, "machine.memory_mib", MEMORY_MIB, 1024)
    pin_vcpus = v.boolean(m, "machine.pin_vcpus", False)
    accel = v.choice(m, "machine.accel", ACCELS, "auto", "accelerator")
    images = known_images()
    image = v.choice(m, "machine.image", tuple(images), "linux-deb", "image")
    os_name = v.choice(m, "machine.os", os_names(), images[image], "OS")
    if os_name != images[image]:
        raise v.error("machine.os", f'"{os_name}" does not match image "{image}" '
                      f'(a {images[image]} image); allowed: {images[image]}')
    image_axis = v.choice_list("matrix.image", x["image"], tuple(images), "image") if "image" in x else ()
    kernel, modules = _user_kernel(v, m, image, Path(path).parent)

    nic = v.required(x, "matrix", "nic", 'e.g. nic = ["virtio-net"]')
    nic = v.choice_list("matrix.nic", nic, tuple(NICS), "NIC")
    queues = v.int_list(x, "matrix.queues", (1, vcpus), [1], "at most machine.vcpus")
    procs = v.int_list(x, "matrix.procs", PROCS, [1])
    streams = v.int_list(x, "matrix.streams", STREAMS, [1])
    proto = v.choice_list("matrix.proto", x.get("proto", ["tcp"]), PROTOS, "protocol")
    stack = v.choice_list("matrix.stack", x.get("stack", ["direct"]), STACKS, "stack")
    churn = v.choice_list("matrix.churn", x.get("churn", ["none"]), CHURNS, "churn action")
    setup = []
    for os_key, cmds in tables["setup"].items():
        if not isinstance(cmds, list) or not all(isinstance(c, str) and c.strip() for c in cmds):
            raise v.error(f"setup.{os_key}", f"expected a list of non-empty guest shell commands, got {_describe(cmds)}")
        setup.append((os_key, tuple(cmds)))
    if "udp" in proto:
        msg_size = v.int_list(x, "matrix.msg_size", UDP_MSG_SIZE, [],
                              'iperf3 UDP datagram size, as matrix.proto has "udp"',
                              required=True)
    else:
        msg_size = v.int_list(x, "matrix.msg_size", TCP_MSG_SIZE, [0], "0 = iperf3 default")

    wl = Workload(
        path=Path(path), sha256=hashlib.sha256(data).hexdigest(), name=name,
        description=description, repetitions=repetitions, duration_s=duration_s,
        warmup_s=warmup_s, lock_stats=lock_stats, udp_bitrate=udp_bitrate,
        machine=Machine(vcpus, memory_mib, accel, image, os_name, kernel, modules),
        matrix=Matrix(image_axis, nic, queues, procs, streams, proto, msg_size, stack, churn),
        retries=retries, cell_timeout_s=cell_timeout_s, probe_effect=probe_effect,
        warmup_after_boot=warmup_after_boot,
        churn_interval_s=churn_interval_s, churn_count=churn_count, setup=tuple(setup),
        shuffle_seed=shuffle_seed, pin_vcpus=pin_vcpus, require_queue_spread=require_queue_spread,
        inspect=inspect,
        repetitions_auto=repetitions_auto,
        ci_target_pct=ci_target_pct, rep_budget_s=rep_budget_s, max_repetitions=max_repetitions,
    )
    if not expand(wl).runs:
        allowed = "; ".join(f"{n} {_queue_counts(n, os_name, vcpus)}" for n in nic)
        raise v.error("matrix.queues", f"no (nic, queues) pair can run on {os_name}; "
                      f"TX queue counts per NIC: {allowed}")
    return wl


def _queue_counts(nic: str, os_name: str, vcpus: int) -> str:
    ok = [q for q in range(1, vcpus + 1) if driver_class(os_name).queue_skip_reason(nic, q, vcpus) is None]
    if ok == list(range(1, len(ok) + 1)) and len(ok) > 2:
        return f"1..{ok[-1]}"
    return ", ".join(map(str, ok)) or "none"


def _kind(value: Any) -> str:
    # bool before int: in Python a bool *is* an int, in TOML it is not.
    for t, name in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"),
                    (list, "list"), (dict, "table"), (_dt.date, "date"), (_dt.time, "time")):
        if isinstance(value, t):
            return name
    return type(value).__name__


def _show(value: Any) -> str:
    """A value as it would be written in TOML (short)."""
    if isinstance(value, (bool, str)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_show(x) for x in value) + "]"
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, (_dt.date, _dt.time)):
        return value.isoformat()
    return str(value)


def _describe(value: Any) -> str:
    return f"{_kind(value)} {_show(value)}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


USER_KERNEL_IMAGE = "linux-deb"     # the image whose kernel [machine] kernel = ... replaces


def _user_kernel(v: "_Validator", m: dict, image: str, base: Path) -> tuple[Path | None, Path | None]:
    """[machine] kernel/modules: a readable bzImage (and a modules directory), relative paths
    taken from the workload file's directory. The user kernel boots with linux-deb's userland."""
    if "kernel" not in m:
        if "modules" in m:
            raise v.error("machine.modules", "only together with machine.kernel (a bzImage path)")
        return None, None
    if image != USER_KERNEL_IMAGE:
        raise v.error("machine.kernel", f'replaces the kernel of image "{USER_KERNEL_IMAGE}" only, '
                                        f'machine.image is "{image}"; allowed: machine.image = "{USER_KERNEL_IMAGE}"')
    paths = []
    for key in ("kernel", "modules"):
        raw = m.get(key)
        if raw is None:
            paths.append(None)
            continue
        if not isinstance(raw, str) or not raw.strip():
            raise v.error(f"machine.{key}", f"expected a path string, got {_describe(raw)}")
        p = Path(raw).expanduser()
        paths.append(p if p.is_absolute() else base / p)
    kernel, modules = paths
    if not kernel.is_file() or not os.access(kernel, os.R_OK):
        raise v.error("machine.kernel", f"{kernel}: missing or unreadable; expected a bzImage file")
    from harness.images.guestimage import bzimage_release
    try:
        bzimage_release(kernel)
    except (OSError, ValueError) as e:
        raise v.error("machine.kernel", f"{kernel}: {e}; expected a bzImage file") from None
    if modules is not None and not modules.is_dir():
        raise v.error("machine.modules", f"{modules}: not a directory; expected /lib/modules/<release>")
    return kernel, modules


class _Validator:
    """Small typed getters that raise InputError naming the file and dotted key."""

    def __init__(self, path: str):
        self.path = path

    def error(self, key: str, message: str) -> InputError:
        return InputError(self.path, key, message)

    def syntax_error(self, text: str) -> InputError:
        # tomllib: "Expected '=' after a key in a key/value pair (at line 3, column 5)"
        m = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", text)
        if m:
            return self.error(f"line {m[2]}", f"TOML syntax error: {m[1]} (column {m[3]})")
        return self.error("", f"TOML syntax error: {text}")

    def table(self, doc: dict, name: str) -> dict:
        value = doc.get(name, {})
        if not isinstance(value, dict):
            raise self.error(name, f"expected a table [{name}], got {_describe(value)}")
        return value

    def required(self, table: dict, tname: str, key: str, example: str) -> Any:
        if key not in table:
            raise self.error(f"{tname}.{key}", f"missing; required ({example})")
        return table[key]

    def integer(self, table: dict, dotted: str, bounds: tuple[int, int], default: int, alt: str = "") -> int:
        """``alt``: another accepted form named in the messages (e.g. 'or "auto"')."""
        return self._int(dotted, table.get(dotted.split(".")[-1], default), bounds, alt=alt)

    def _int(self, key: str, value: Any, bounds: tuple[int, int], why: str = "", alt: str = "") -> int:
        lo, hi = bounds
        note = f" ({why})" if why else ""
        also = f" {alt}" if alt else ""
        if not _is_int(value):
            raise self.error(key, f"expected an integer in {lo}..{hi}{also}{note}, got {_describe(value)}")
        if not lo <= value <= hi:
            raise self.error(key, f"{value} is out of range; allowed {lo}..{hi}{also}{note}")
        return value

    def number_or_auto(self, table: dict, dotted: str, bounds: tuple[float, float]) -> float | None:
        """A number in bounds, or "auto" (the default) -> None."""
        value = table.get(dotted.split(".")[-1], AUTO)
        if value == AUTO:
            return None
        lo, hi = bounds
        if not (_is_int(value) or isinstance(value, float)) or value != value:
            raise self.error(dotted, f'expected a number in {lo:g}..{hi:g} or "{AUTO}", got {_describe(value)}')
        if not lo <= value <= hi:
            raise self.error(dotted, f'{value} is out of range; allowed {lo:g}..{hi:g} or "{AUTO}"')
        return float(value)

    def boolean(self, table: dict, dotted: str, default: bool) -> bool:
        value = table.get(dotted.split(".")[-1], default)
        if not isinstance(value, bool):
            raise self.error(dotted, f"expected true or false, got {_describe(value)}")
        return value

    def string(self, table: dict, dotted: str, default: str) -> str:
        value = table.get(dotted.split(".")[-1], default)
        if not isinstance(value, str):
            raise self.error(dotted, f"expected a string, got {_describe(value)}")
        return value

    def _one_of(self, key: str, value: Any, allowed: tuple[str, ...], what: str) -> str:
        names = ", ".join(sorted(allowed))
        if not isinstance(value, str):
            raise self.error(key, f"expected a {what} name, one of: {names}; got {_describe(value)}")
        if value not in allowed:
            raise self.error(key, f"unknown {what} {_show(value)}; allowed: {names}")
        return value

    def choice(self, table: dict, dotted: str, allowed: tuple[str, ...], default: str,
               what: str) -> str:
        return self._one_of(dotted, table.get(dotted.split(".")[-1], default), allowed, what)

    def _list(self, key: str, value: Any, want: str) -> list:
        if not isinstance(value, list):
            raise self.error(key, f"expected a list of {want}, got {_describe(value)}")
        if not value:
            raise self.error(key, f"empty list; expected a non-empty list of {want}")
        return value

    def _unique(self, key: str, items: list) -> tuple:
        seen = set()
        for i, item in enumerate(items):
            if item in seen:
                raise self.error(f"{key}[{i}]", f"duplicate value {_show(item)}; "
                                 "list entries must be unique")
            seen.add(item)
        return tuple(items)

    def choice_list(self, key: str, value: Any, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
        items = self._list(key, value, f"{what} names: {', '.join(sorted(allowed))}")
        items = [self._one_of(f"{key}[{i}]", item, allowed, what) for i, item in enumerate(items)]
        return self._unique(key, items)

    def int_list(self, table: dict, key: str, bounds: tuple[int, int], default: list[int],
                 why: str = "", required: bool = False) -> tuple[int, ...]:
        short = key.split(".")[-1]
        if required and short not in table:
            raise self.error(key, f"missing; required ({why}), allowed {bounds[0]}..{bounds[1]}")
        value = table.get(short, default)
        items = self._list(key, value, f"integers in {bounds[0]}..{bounds[1]}")
        items = [self._int(f"{key}[{i}]", item, bounds, why) for i, item in enumerate(items)]
        return self._unique(key, items)


# ---------------------------------------------------------------------------------------------
# Expansion


def expand(workload: Workload) -> Expansion:
    """All cell runs of the workload in execution order, and the cells skipped with reasons.

    Order: boot groups in order of first appearance in the matrix (nic outermost, then queues,
    procs, streams, proto, msg_size as listed); within a group, repetitions are INTERLEAVED —
    rep 0 of every cell, then rep 1 of every cell, ... Slow drift inside a VM's life (host
    load, thermal state, guest memory and socket state ageing) then spreads evenly over all
    cells of the group instead of loading onto the cells that happen to run last, and a run
    cut short still has every cell measured at least once.
    """
    wl, mc, mx = workload, workload.machine, workload.matrix
    # The largest queue count each runtime-changeable NIC needs: its VM boots with that.
    boot_queues: dict[tuple[str, str], int] = {}
    device_queues: dict[str, int] = {}   # per NIC over every image: one device line for all kernels
    combos: list[tuple[Any, ...]] = []
    skipped: list[SkippedCell] = []
    images = known_images()
    for image, nic_name, q, p, s, proto, size, stack, churn in itertools.product(
            mx.image or (mc.image,), mx.nic, mx.queues, mx.procs, mx.streams, mx.proto, mx.msg_size,
            mx.stack, mx.churn):
        os_name = images[image]
        guest = driver_class(os_name)
        reason = guest.queue_skip_reason(nic_name, q, mc.vcpus) or guest.stack_skip_reason(stack)
        if reason is None and churn == "queues" and not guest.queues_at_runtime(nic_name):
            reason = f"{nic_name} on {os_name} cannot change TX queues at run time"
        combos.append((image, os_name, nic_name, q, p, s, proto, size, stack, churn, reason))
        if reason is None:
            boot_queues[image, nic_name] = max(boot_queues.get((image, nic_name), 0), q)
            device_queues[nic_name] = max(device_queues.get(nic_name, 0), q)

    groups: dict[BootKey, list[Cell]] = {}
    untraced: dict[BootKey, list[Cell]] = {}   # probe-effect twins, on the same VM
    for image, os_name, nic_name, q, p, s, proto, size, stack, churn, reason in combos:
        runtime = driver_class(os_name).queues_at_runtime(nic_name) and reason is None
        bq = boot_queues[image, nic_name] if runtime else q
        dq = device_queues.get(nic_name, bq) if reason is None else bq
        key = BootKey(image, os_name, nic_name, mc.vcpus, mc.memory_mib, mc.accel, bq,
                      device_queues=dq if dq != bq else 0)
        cell_id = (f"{image}.{nic_name}.q{q}.p{p}.s{s}.{proto}.m{size}"
                   + ("" if stack == "direct" else f".{stack}") + ("" if churn == "none" else f".churn-{churn}"))
        cell = Cell(
            cell_id=cell_id, image=image, os=os_name, nic=nic_name, queues=q,
            procs=p, streams=s, proto=proto, msg_size=size, duration_s=wl.duration_s,
            warmup_s=wl.warmup_s, udp_bitrate=wl.udp_bitrate, boot_key=key, stack=stack, churn=churn)
        if reason is None:
            groups.setdefault(key, []).append(cell)
            if wl.lock_stats and wl.probe_effect:
                # the probe-effect twin: same cell, one repetition, on the same VM right next to
                # its traced cell's first repetition (tracing is installed once per boot, never
                # removed: removing hist triggers hung the 6.1 guest; a twin after it pauses it)
                untraced.setdefault(key, []).append(dataclasses.replace(
                    cell, cell_id=cell_id + UNTRACED_SUFFIX, traced=False))
        else:
            skipped.append(SkippedCell(cell, reason))

    def order(cells: list[Cell], rep: int) -> list[Cell]:
        # A seeded shuffle per repetition (A/B cells interleave differently each time, so
        # drift cannot line up with one configuration); the seed is in the workload and manifest.
        if wl.shuffle_seed is None:
            return cells
        import random
        out = list(cells)
        random.Random(wl.shuffle_seed * 1000 + rep).shuffle(out)
        return out

    def first_round(key: BootKey, cells: list[Cell]) -> list[CellRun]:
        # Each probe-effect pair runs adjacent in time, in alternating order (ABBA across
        # pairs: untraced-traced, traced-untraced, ...), the phase seeded: neither side of a
        # pair always runs first, so drift on the VM cannot line up with tracing.
        twins = {c.cell_id[: -len(UNTRACED_SUFFIX)]: c for c in untraced.get(key, [])}
        phase = (wl.shuffle_seed or 0) % 2
        out: list[CellRun] = []
        for k, cell in enumerate(order(cells, 0)):
            twin = twins.get(cell.cell_id)
            pair = [CellRun(cell, 0)] if twin is None else (
                [CellRun(twin, 0), CellRun(cell, 0)] if (k + phase) % 2 == 0 else [CellRun(cell, 0), CellRun(twin, 0)])
            out += pair
        return out

    runs = [run for key, cells in groups.items()
            for run in first_round(key, cells)
            + [CellRun(cell, rep) for rep in range(1, wl.repetitions) for cell in order(cells, rep)]]
    return Expansion(runs, skipped)
