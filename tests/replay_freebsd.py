"""A FreeBSD guest played from outputs in FreeBSD's formats, behind the runner's host seam.

``ReplayHost`` stands in for harness.run.host.Host: no QEMU, no namespace, no SSH, no network
traffic. Each "machine" is a ``FakeMachine`` (a serial log the test can write to) with a
``ReplayVM`` behind it: one booted FreeBSD 14.3 guest whose counters are a
tests/fixtures/freebsd/generate.py ``FreeBSDGuestModel``. ``ReplayShell`` answers exactly the
commands the FreeBSD guest driver sends (harness/guests/freebsd.py, in the order
harness/run/procedure.py gives them) with that model's outputs in FreeBSD's formats; a command
it has no recording for fails (rc 127), so a driver change that the replay does not know
breaks the test instead of being answered with something made up.

What this proves is that xmitbench's pipeline (procedure, runner, parsers, validity, results,
analysis, summary, report) handles a FreeBSD guest. It is not a FreeBSD result: the numbers are
made up, only the formats are FreeBSD's.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

from harness.images.bootimage import BootImage, ImageUnavailable
from harness.vm.stacks import PeerStack

FIX = Path(__file__).parent / "fixtures"
_spec = importlib.util.spec_from_file_location("freebsd_fixture_gen", FIX / "freebsd" / "generate.py")
GEN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GEN)

REPLAY_OF = ("recorded FreeBSD 14.3 outputs (rendered in FreeBSD's formats by "
             "tests/fixtures/freebsd/generate.py; no FreeBSD guest ran)")
SECTION = "@@xmitbench-section "
PANIC = "panic: _mtx_lock_sleep: recursed on non-recursive mutex vtnet1-tx1 @ /usr/src/sys/dev/virtio/network/if_vtnet.c:2482"




def _ssh_error():
    from harness.vm.ssh import SSHError
    return SSHError


# --------------------------------------------------------------------------------------------
class ReplayVM:
    """The guest behind one FakeMachine: loader.conf survives reboots, counters do not."""

    def __init__(self, machine: "FakeMachine", device_pairs: int, vcpus: int, on_senders=None):
        self.machine, self.device_pairs, self.vcpus = machine, device_pairs, vcpus
        self.on_senders = on_senders
        self.loader: dict[str, str] = {}
        self.boots = -1
        self.pending_reboot = False
        self.dead: str | None = None           # set by a panic: SSH is gone
        self.commands: list[str] = []
        self.unanswered: list[str] = []        # commands without a recording (rc 127)
        self.boot()

    @property
    def queues(self) -> int:
        if self.loader.get("hw.vtnet.mq_disable") == "1":
            return 1
        pairs = int(self.loader.get("hw.vtnet.mq_max_pairs", self.device_pairs))
        return max(1, min(pairs, self.device_pairs, self.vcpus))

    def boot(self) -> None:
        self.boots += 1
        self.pending_reboot = False
        self.model = GEN.FreeBSDGuestModel(boot=self.machine.boot_no * 10 + self.boots, queues=self.queues,
                                           vcpus=self.vcpus, device_pairs=self.device_pairs)
        self.machine.write_serial(
            f"---<<BOOT>>---\nFreeBSD {GEN.RELEASE} #0 releng/14.3-n271432-8c9ce319fef7: GENERIC amd64\n"
            f"vtnet1: <VirtIO Networking Adapter> on virtio_pci2\nvtnet1: Ethernet address: {GEN.DATA_MAC}\n"
            f"vtnet1: netmap queues/slots: TX {self.queues}/256, RX {self.queues}/128\n"
            f"FreeBSD/amd64 ({GEN.HOSTNAME}) (ttyu0)\n\nlogin: ")

    # -- commands -----------------------------------------------------------------------
    def answer(self, cmd: str) -> tuple[int, str]:
        self.commands.append(cmd)
        m = self.model
        if cmd.startswith("rm -rf /tmp/xb"):
            return 0, self._senders(cmd)
        if cmd.startswith(f"echo '{SECTION}"):
            out = []
            for name, sub in re.findall(rf"echo '{SECTION}(\w+)'; (.*?) 2>&1(?:; |$)", cmd):
                rc, text = self.answer(sub)
                out.append(f"{SECTION}{name}\n{text}")
            return 0, "".join(out)
        if cmd.startswith("sed -i '' '/# xmitbench$/d' /boot/loader.conf"):
            self.loader = dict(re.findall(r"echo '([\w.]+)=\"(\d+)\" # xmitbench' >> /boot/loader.conf", cmd))
            return 0, ""
        exact = {
            "sysctl -n kern.boottime": lambda: GEN.boottime(m.boottime),
            "uname -r": lambda: GEN.RELEASE + "\n",
            "/sbin/ifconfig -a ether": lambda: GEN.ifconfig_a_ether(m.data_up),
            f"/sbin/ifconfig vtnet1 inet {GEN.GUEST_DATA_IP}/24 up": lambda: m.configure_data_nic() or "",
            "/sbin/sysctl -N dev.vtnet.1": lambda: m.sysctl_names(1),
            "kldload -n dtraceall": lambda: "",
            "/usr/bin/netstat --libxo json -i -d -b -I vtnet1": lambda: m.netstat_i("vtnet1"),
            "/usr/bin/netstat --libxo json -s -f inet": m.netstat_s,
            "/sbin/sysctl dev.vtnet.1": lambda: m.sysctl_dev(1),
            "/usr/bin/vmstat -ia": m.vmstat_ia,
            "/sbin/sysctl -n kern.cp_times": m.cp_times,
            "true": lambda: "",
        }
        if cmd in exact:
            return 0, exact[cmd]()
        if cmd.startswith("su -m root -c "):      # first boot over SSH (nuageinit without runcmd)
            return 0, ""
        self.unanswered.append(cmd)
        return 127, f"replay: no recorded output for this command: {cmd[:200]}"

    def _senders(self, script: str) -> str:
        """The senders script of harness.guests.freebsd, run against /tmp/xb of this guest."""
        fs: dict[str, str] = {}
        heredocs = re.findall(r"cat > (\S+) <<'XB_D_EOF'\n(.*?)XB_D_EOF\n?", script, flags=re.S)
        for path, body in heredocs:
            fs[path] = body
        script = re.sub(r"cat > \S+ <<'XB_D_EOF'\n.*?XB_D_EOF\n?", "", script, flags=re.S)
        procs, lock_tracing, out = [], False, []
        for line in filter(None, script.splitlines()):
            if line.startswith("rm -rf /tmp/xb"):
                fs = {k: v for k, v in fs.items() if not k.startswith("/tmp/xb/")} | dict(heredocs)
            elif line.startswith('echo "start $(date +%s)" > /tmp/xb/churn.txt'):
                fs["/tmp/xb/churn.txt"] = f"start {self.model.boottime + 300}\n"
            elif line.startswith("/usr/sbin/lockstat ") or line.startswith("/usr/sbin/dtrace "):
                lock_tracing = True
            elif line.startswith("/usr/bin/cpuset -l "):
                args = shlex.split(line.split(" > ", 1)[0])
                opt = {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("-")}
                procs.append({"port": int(opt["-p"]), "t": int(opt["-t"]), "O": int(opt["-O"]),
                              "P": int(opt["-P"])})
            elif line == "wait":
                if self.on_senders:
                    self.on_senders(self, procs)
                if self.dead:
                    raise _ssh_error()(f"SSH connection lost during `{script[:60]}...` ({self.dead})")
                p0 = procs[0]
                files = self.model.senders([p["port"] for p in procs], p0["P"], p0["t"], p0["O"], lock_tracing)
                fs.update({f"/tmp/xb/{k}": v for k, v in files.items()})
            elif line.startswith(f"echo '{SECTION}"):
                name, _, rest = line[len(f"echo '{SECTION}"):].partition("'; cat ")
                out.append(f"{SECTION}{name}\n")
                quiet = rest.endswith("2>/dev/null")
                for path in rest.replace("2>/dev/null", "").split():
                    if path in fs:
                        out.append(fs[path])
                    elif not quiet:
                        out.append(f"cat: {path}: No such file or directory\n")
            else:
                raise _ssh_error()(f"guest command failed (127): replay has no recording for `{line[:120]}`")
        return "".join(out)


class ReplayShell:
    """GuestShell-like: run / run_detached / connect / close / host_key_fingerprint."""

    def __init__(self, vm: ReplayVM, user: str):
        self.vm, self.user = vm, user
        self.connected = False
        self.host_key_fingerprint = "ssh-ed25519 (replay: no SSH, recorded outputs)"

    def connect(self, timeout: float = 30.0) -> float:
        if self.vm.dead:
            raise _ssh_error()(f"SSH to replay guest not up within {timeout:.0f} s: {self.vm.dead}")
        if self.vm.pending_reboot:
            self.vm.boot()
        self.connected = True
        return 0.0

    def run(self, command: str, timeout: float = 60.0, check: bool = True) -> tuple[int, str, str]:
        if not self.connected:
            raise _ssh_error()("not connected")
        if self.vm.dead:
            raise _ssh_error()(f"SSH connection lost before `{command[:60]}`")
        rc, out = self.vm.answer(command)
        err = out if rc else ""
        if check and rc:
            raise _ssh_error()(f"guest command failed ({rc}): {command[:80]}: {err.strip()[-300:]}")
        return rc, (out if not rc else ""), err

    def run_detached(self, command: str) -> None:
        self.vm.commands.append(command)
        if command.strip() != "shutdown -r now":
            raise _ssh_error()(f"replay has no recording for detached `{command[:80]}`")
        self.vm.pending_reboot = True
        self.vm.machine.write_serial("Waiting (max 60 seconds) for system process `vnlru' to stop... done\n"
                                     "All buffers synced.\nUptime: 1m2s\n")

    def close(self) -> None:
        self.connected = False


class FakeMachine:
    """Machine-like, no process: a serial log (the run dir's, as QEMU would write it)."""

    def __init__(self, spec, host: "ReplayHost"):
        self.spec, self.host = spec, host
        self.boot_no = len(host.machines)
        self.argv = ["(replay: no QEMU started)"]
        self.pid = None
        self.started = self.stopped = False
        self.vm: ReplayVM | None = None

    def write_serial(self, text: str) -> None:
        p = Path(self.spec.serial_log)
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a") as f:
            f.write(text if text.endswith("\n") else text + "\n")

    def start(self) -> None:
        self.started = True
        self.vm = ReplayVM(self, device_pairs=self.spec.queues, vcpus=self.spec.vcpus,
                           on_senders=self.host.on_senders)

    def alive(self) -> bool:
        return self.started and not self.stopped

    def exit_reason(self) -> str:
        return "replay machine stopped" if self.stopped else "running"

    def settle(self, timeout: float) -> None:
        pass

    def kill(self) -> None:
        self.stopped = True

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped = True

    def wait_serial(self, marker: str, timeout: float) -> float:
        if marker not in Path(self.spec.serial_log).read_text():
            raise RuntimeError(f"replay guest did not print {marker!r}")
        return 0.0

    def pin_vcpus(self) -> list[dict]:
        return []

    def serial_size(self) -> int:
        p = Path(self.spec.serial_log)
        return p.stat().st_size if p.exists() else 0

    def serial_since(self, offset: int) -> str:
        p = Path(self.spec.serial_log)
        if not p.exists():
            return ""
        with open(p, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def serial_tail(self, n: int = 40) -> str:
        p = Path(self.spec.serial_log)
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""


class FakeDataPlane:
    """DataPlane-like: no namespace, tap or iperf3 server; records what it was asked. The peer
    tap's counters are the replayed guest's (what its NIC sent, segmented by the host)."""

    def __init__(self, host: "ReplayHost", run_id: str):
        self.host, self.run_id = host, run_id
        self.calls: list[tuple] = []
        self.servers_running = False
        self.servers: list = []       # no peer processes in a replay (the peer-throttle fault finds none)
        self.created = False

    def create(self) -> None:
        self.calls.append(("create",))
        self.created = True

    def destroy(self) -> None:
        self.calls.append(("destroy",))
        self.stop_servers()
        self.created = False

    def open_tap(self, name: str, queues: int) -> list[int]:
        self.calls.append(("open_tap", name, queues))
        return []

    def stack_unsupported(self, kind: str) -> str | None:
        return None if kind == "direct" else f"replay: no recording of stack {kind}"

    def add_stack(self, kind: str) -> PeerStack:
        self.calls.append(("add_stack", kind))
        return PeerStack(kind, detail="")

    def peer_stats(self) -> dict:
        """No peer side is replayed: no server CPU, no peer-namespace counters."""
        return {"servers": {}, "net": ""}

    def start_servers(self, ports, timeout: float = 10.0, bind: str = "") -> None:
        self.calls.append(("start_servers", tuple(ports), bind))
        self.servers_running = True

    def stop_servers(self) -> None:
        self.calls.append(("stop_servers",))
        self.servers_running = False

    def tap_stats(self) -> dict:
        vm = self.host.active_vm()
        if vm is None:
            return {}
        t = vm.model.tap
        rx = {"bytes": t["bytes"], "packets": t["packets"], "errors": 0, "dropped": t["dropped"],
              "over_errors": 0, "multicast": 0}
        return {"ifindex": 4, "ifname": "xbt-replay", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
                "mtu": 1500, "operstate": "UP", "stats64": {"rx": rx, "tx": {"bytes": 0, "packets": 0, "errors": 0,
                                                                               "dropped": 0, "carrier_errors": 0,
                                                                               "collisions": 0}}}


class ReplayHost:
    """harness.run.host.Host for a replay of recorded FreeBSD outputs (see the module doc).
    ``on_senders(vm, procs)`` is called when a senders script reaches `wait` (a test uses it
    to write a `panic:` line and take the guest down)."""
    kind = "replay"
    replay_of = REPLAY_OF

    def __init__(self, on_senders=None):
        self.on_senders = on_senders
        self.machines: list[FakeMachine] = []
        self.dataplanes: list[FakeDataPlane] = []
        self.by_port: dict[int, FakeMachine] = {}

    def active_vm(self) -> ReplayVM | None:
        live = [m for m in self.machines if m.alive()]
        return live[-1].vm if live else None

    def select_qemu(self, needed_devices, log):
        from harness.images.hostqemu import QemuChoice
        from harness.vm.qemu import QemuBinary
        return QemuChoice(QemuBinary("none", "replay: no QEMU started"))

    def device_help(self) -> str:
        return (FIX / "qemu" / "device_help_7.2.txt").read_text()

    def qemu_version(self) -> str:
        return "none (replay: no QEMU started)"

    def probe_accel(self, kernel, initrd) -> tuple[str, str]:
        return "tcg", "replay: the recorded outputs are of a FreeBSD guest under TCG (no guest booted here)"

    def clean_stale(self) -> list[str]:
        return []

    def build_guest(self, log):
        return SimpleNamespace(name="none (replay)", key="replay", kernel=None, initrd=None,
                               kernel_release=None, manifest={})

    def prepare_image(self, name, log, built, allow_unverified) -> BootImage:
        from harness.images.catalog import load_catalog
        img = load_catalog().images.get(name)
        if img is None or img.os != "freebsd":
            raise ImageUnavailable(f"replay: only FreeBSD recordings are replayed, not {name}")
        return BootImage(name, "freebsd", disk=Path("/nonexistent/replay-has-no-disk"), release=img.release,
                         user="root", tools={}, verified=True,
                         info={"name": name, "release": img.release, "replay": REPLAY_OF, "kernel_release": GEN.RELEASE})

    def make_key(self, directory):
        return SimpleNamespace(public_line="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIReplayReplayReplayReplayReplayReplayRepl xmitbench-replay",
                               public_b64="c3NoLWVkMjU1MTkgcmVwbGF5")

    def dataplane(self, run_id: str) -> FakeDataPlane:
        dp = FakeDataPlane(self, run_id)
        self.dataplanes.append(dp)
        return dp

    def boot_disk(self, image, public_line, state_dir):
        return None, None

    def machine(self, spec) -> FakeMachine:
        m = FakeMachine(spec, self)
        self.machines.append(m)
        self.by_port[spec.ssh_port] = m
        return m

    def shell(self, port: int, key, user: str) -> ReplayShell:
        return ReplayShell(self.by_port[port].vm, user)

    def thread_stats(self, pid) -> dict[str, str]:
        return {}           # no QEMU threads: host CPU columns stay empty for a replay

    def activity(self) -> dict:
        return {"loadavg": None, "other_qemu_pids": [], "other_xmitbench_netns": [], "replay": True}


def lockstat_warns_once(match, warning: str):
    """An ``on_senders`` that makes lockstat print ``warning`` (without "lockstat: warning: ")
    in the first episode where ``match(vm, procs)`` is true, as lockstat.c does on DTrace drops."""
    state = {"done": False}

    def hook(vm: ReplayVM, procs: list[dict]) -> None:
        hit = not state["done"] and match(vm, procs)
        state["done"] |= hit
        vm.model.lockstat_warnings = (warning,) if hit else ()
    return hook


def all_of(*hooks):
    """One ``on_senders`` that calls each hook in turn."""
    def hook(vm: ReplayVM, procs: list[dict]) -> None:
        for h in hooks:
            h(vm, procs)
    return hook


def panic_once(match):
    """An ``on_senders`` that panics the guest the first time ``match(vm, procs)`` is true."""
    state = {"done": False}

    def hook(vm: ReplayVM, procs: list[dict]) -> None:
        if not state["done"] and match(vm, procs):
            state["done"] = True
            vm.machine.write_serial(f"{PANIC}\ncpuid = 1\ntime = 1795457123\nKDB: stack backtrace:\n"
                                    "#0 0xffffffff80b9002d at kdb_backtrace+0x5d\n")
            vm.dead = "guest panicked"
    return hook
