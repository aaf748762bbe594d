"""The machine layer: the ONE place that turns a machine spec into a QEMU argv, plus
starting, probing and stopping QEMU.

Management is SSH through QEMU user-mode networking forwarded to 127.0.0.1 only; the
slirp subnet is 198.19.0.0/24 (inside 198.18.0.0/15) with `restrict=on`, so the guest
can reach nothing but the forwarded port. The data plane is a tap whose file
descriptors the data-plane layer opened inside the harness namespace.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.vm import qemu as qemu_binary

MGMT_MAC = "52:54:00:00:00:01"
DATA_MAC = "52:54:00:12:34:56"
PEER_DATA_MAC = "02:78:62:00:00:01"   # the tap in the peer namespace (locally administered)
GUEST_MGMT_IP = "198.19.0.15"
GUEST_DATA_IP = "198.18.0.2"
PEER_DATA_IP = "198.18.0.1"
DATA_PREFIX = 24


@dataclass
class MachineSpec:
    kernel: Path | None       # direct kernel boot (the initramfs guest) ...
    initrd: Path | None
    qemu_device: str          # e.g. "virtio-net-pci", "e1000e", "vmxnet3", "igb"
    queues: int               # queues the NIC is created with (max used in this boot group)
    vcpus: int = 2
    memory_mib: int = 1024
    accel: str = "tcg"        # the accel actually used: "kvm" or "tcg"
    ssh_port: int = 0
    ssh_pubkey_b64: str = ""  # the base64 part of an ssh-ed25519 public key
    serial_log: Path | None = None
    qmp_socket: Path | None = None
    tap_fds: list[int] = field(default_factory=list)
    extra_cmdline: str = ""
    disk: Path | None = None        # ... or a disk image (a per-boot overlay of a cloud image)
    seed_iso: Path | None = None    # NoCloud seed for that disk
    guest_egress: bool = False      # cloud images install packages on first boot


# Which qspinlock path a Linux 6.1 guest takes decides whether a TX-lock wait reaches the
# lock:contention_begin tracepoint (sources: Linux 6.1, as built into the Debian guest kernel,
# CONFIG_PARAVIRT_SPINLOCKS=y, CONFIG_KVM_GUEST=y):
# * kernel/locking/qspinlock.c:queued_spin_lock_slowpath: `if (pv_enabled()) goto pv_queue;`
#   then `if (virt_spin_lock(lock)) return;` then the pending-bit spin (returns without a
#   trace), and only at `queue:`/`pv_queue:` trace_contention_begin(lock, LCB_F_SPIN), ended
#   at `release:` by trace_contention_end.
# * arch/x86/include/asm/qspinlock.h:virt_spin_lock: while virt_spin_lock_key is on, a
#   test-and-set loop that returns before any tracepoint: waits are INVISIBLE.
# * arch/x86/kernel/paravirt.c:native_pv_lock_init: the key goes off only without
#   X86_FEATURE_HYPERVISOR; arch/x86/kernel/kvm.c:kvm_spinlock_init turns it off too, and with
#   KVM_FEATURE_PV_UNHALT (and no KVM_HINTS_REALTIME, >1 CPU, no "nopvspin") installs
#   __pv_queued_spin_lock_slowpath (qspinlock.c rebuilt with pv_enabled() true, waits in
#   qspinlock_paravirt.h:pv_wait_node/pv_wait_head_or_lock): EVERY slowpath waiter is traced,
#   the would-be pending waiter included. Without PV_UNHALT it returns early, key still on:
#   virt_spin_lock, invisible.
# So: TCG hides the hypervisor bit (native qspinlock, queued waiters traced, the single
# pending-bit waiter not); KVM offers kvm-pv-unhalt explicitly (PV qspinlock, all waiters),
# with `enforce`: a host whose KVM cannot offer it fails the boot (the KVM probe then falls
# back to TCG and records why) instead of silently giving a guest whose waits are invisible.
KVM_CPU = "host,kvm-pv-unhalt=on,enforce"
TCG_CPU = "max,-hypervisor"


def cpu_model(accel: str) -> str:
    """The -cpu value that keeps TX-lock waits visible to lock:contention_begin (above). A
    guest that sees the hypervisor bit with no PV spinlocks spins in virt_spin_lock and
    never reaches the tracepoint (DESIGN.md, measured here under TCG)."""
    return KVM_CPU if accel == "kvm" else TCG_CPU


def lock_visibility_method(accel: str) -> str:
    """The Linux lock method text recorded per boot (manifest boots[].lock_method) and on
    every locks row (method)."""
    return (f"tracepoint lock:contention_begin/end, KVM with -cpu {KVM_CPU} (PV qspinlock "
            "__pv_queued_spin_lock_slowpath: every slowpath waiter)"
            if accel == "kvm" else
            f"tracepoint lock:contention_begin/end, TCG with -cpu {TCG_CPU} (native qspinlock slowpath)")


def build_argv(spec: MachineSpec) -> list[str]:
    """The QEMU command line. Every option is here and nowhere else."""
    if spec.queues < 1:
        raise ValueError("queues must be >= 1")
    append = " ".join(filter(None, [
        "console=ttyS0", "panic=-1", "quiet", "loglevel=4",
        f"xb.key={spec.ssh_pubkey_b64}", f"xb.mgmt_mac={MGMT_MAC}", f"xb.data_mac={DATA_MAC}",
        f"xb.data_ip={GUEST_DATA_IP}/{DATA_PREFIX}", spec.extra_cmdline]))
    argv = [
        # debug-threads: vCPU and I/O threads carry names ("CPU 0/TCG"), so host CPU time per
        # thread (recorded per cell) tells a host-side bottleneck from guest lock contention
        qemu_binary.current().path, "-name", "xmitbench,debug-threads=on", "-nodefaults", "-no-user-config", "-nographic",
        "-accel", spec.accel if spec.accel == "kvm" else "tcg,thread=multi",
        "-cpu", cpu_model(spec.accel),
        "-smp", str(spec.vcpus), "-m", str(spec.memory_mib),
    ]
    if spec.disk is None:
        argv += ["-no-reboot",  # with panic=-1 a guest panic ends QEMU instead of hanging
                 "-kernel", str(spec.kernel), "-initrd", str(spec.initrd), "-append", append]
    else:
        # a cloud image reboots itself (FreeBSD: to apply queue loader tunables)
        argv += ["-drive", f"file={spec.disk},if=virtio,format=qcow2,cache=unsafe"]
        if spec.seed_iso:
            argv += ["-drive", f"file={spec.seed_iso},if=virtio,format=raw,media=cdrom,readonly=on"]
    # restrict=on: the guest reaches nothing but the forwarded SSH port. A cloud image needs
    # its package repositories on first boot, so it gets egress (recorded in the manifest).
    restrict = "off" if spec.guest_egress else "on"
    argv += [
        "-serial", f"file:{spec.serial_log}" if spec.serial_log else "null",
        "-monitor", "none",
        "-netdev", (f"user,id=mgmt,net=198.19.0.0/24,host=198.19.0.2,restrict={restrict},"
                    f"hostfwd=tcp:127.0.0.1:{spec.ssh_port}-{GUEST_MGMT_IP}:22"),
        # romfile= : no iPXE option ROM; direct kernel boot never network-boots (saves ~1 s)
        "-device", f"virtio-net-pci,netdev=mgmt,mac={MGMT_MAC},romfile=",
    ]
    if spec.qmp_socket:
        argv += ["-qmp", f"unix:{spec.qmp_socket},server=on,wait=off"]
    if spec.tap_fds:
        fds = ":".join(str(fd) for fd in spec.tap_fds)
        argv += ["-netdev", f"tap,id=data,{'fds' if len(spec.tap_fds) > 1 else 'fd'}={fds},"
                            f"vhost={tap_vhost(spec.accel, spec.qemu_device)}"]
        argv += ["-device", data_device(spec.qemu_device, spec.queues)]
    return argv


def tap_vhost(accel: str, qemu_device: str) -> str:
    """vhost=on only for virtio-net under KVM: the host kernel's vhost-net worker
    (``vhost-<qemu pid>``, a kernel thread before Linux 6.4, a thread of the QEMU process since)
    moves the packets instead of QEMU's main loop, as a KVM deployment would. Under TCG the
    main loop keeps them (vhost=off), and other NIC models have no vhost backend."""
    return "on" if accel == "kvm" and qemu_device == "virtio-net-pci" else "off"


def data_device(qemu_device: str, queues: int) -> str:
    dev = f"{qemu_device},netdev=data,mac={DATA_MAC},romfile="
    if qemu_device == "virtio-net-pci" and queues > 1:
        # one vector per TX and RX queue, plus config and control
        dev += f",mq=on,vectors={2 * queues + 2}"
    return dev


def tap_queues(qemu_device: str, queues: int) -> int:
    """How many tap queues the backend needs: only virtio-net maps guest queues to tap queues."""
    return queues if qemu_device == "virtio-net-pci" else 1


def die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the harness dies, even by SIGKILL, so a
    crashed harness never leaves a QEMU or iperf3 running (PR_SET_PDEATHSIG = 1)."""
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device_help() -> str:
    """`-device help` of the QEMU machines start (harness.vm.qemu.current)."""
    return qemu_binary.current().device_help()


def qemu_version() -> str:
    return qemu_binary.current().version()


class MachineError(RuntimeError):
    pass


class Machine:
    """One running QEMU. Stopped by QMP `quit`, then by signal to our own PID only."""

    def __init__(self, spec: MachineSpec):
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.argv = build_argv(spec)
        self._qmp = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, pass_fds=self.spec.tap_fds,
                                     start_new_session=True, preexec_fn=die_with_parent)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_reason(self) -> str:
        if self.proc is None:
            return "not started"
        rc = self.proc.poll()
        if rc is None:
            return "running"
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        return f"QEMU exited with status {rc}" + (f": {err[-300:]}" if err else "")

    def settle(self, timeout: float) -> None:
        """Give a QEMU that is going down the chance to finish, so its status is known."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

    def kill(self) -> None:
        """SIGKILL our own QEMU (the cell watchdog); stop() then reaps it."""
        if self.alive():
            os.kill(self.proc.pid, signal.SIGKILL)

    def serial_size(self) -> int:
        p = self.spec.serial_log
        return p.stat().st_size if p and p.exists() else 0

    def serial_since(self, offset: int) -> str:
        p = self.spec.serial_log
        if not p or not p.exists():
            return ""
        with open(p, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def serial_tail(self, n: int = 40) -> str:
        p = self.spec.serial_log
        if not p or not p.exists():
            return ""
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:])

    def wait_serial(self, marker: str, timeout: float) -> float:
        """Seconds until `marker` appears on the serial console; raises on timeout/exit."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise MachineError(self.exit_reason())
            p = self.spec.serial_log
            if p and p.exists() and marker in p.read_text(errors="replace"):
                return time.monotonic() - t0
            time.sleep(0.1)
        raise MachineError(f"guest did not print {marker!r} within {timeout:.0f} s")

    def qmp(self):
        if self._qmp is None and self.spec.qmp_socket:
            from qemu.qmp.legacy import QEMUMonitorProtocol
            q = QEMUMonitorProtocol(str(self.spec.qmp_socket))
            q.connect()
            self._qmp = q
        return self._qmp

    def _qmp_return(self, command: str):
        """The command's "return" value (the legacy client hands back either the whole
        response or just its return value, depending on its version)."""
        r = self.qmp().cmd(command)
        return r["return"] if isinstance(r, dict) and "return" in r else r

    def status(self) -> str:
        try:
            return self._qmp_return("query-status")["status"]
        except Exception as e:  # noqa: BLE001 — status is advisory
            return f"unknown ({e})"

    def pin_vcpus(self) -> list[dict]:
        """Pin vCPU thread i to host CPU i (of the CPUs this process may use), so vCPUs do not
        migrate and compete on one host CPU. Thread ids come from QMP query-cpus-fast."""
        host = sorted(os.sched_getaffinity(0))
        out = []
        for cpu in self._qmp_return("query-cpus-fast"):
            target = host[cpu["cpu-index"] % len(host)]
            os.sched_setaffinity(cpu["thread-id"], {target})
            out.append({"vcpu": cpu["cpu-index"], "thread_id": cpu["thread-id"], "host_cpu": target})
        return out

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                if self.qmp():
                    self._qmp.cmd("quit")
            except Exception:  # noqa: BLE001 — fall through to signals
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self._qmp is not None:
            try:
                self._qmp.close()
            except Exception:  # noqa: BLE001
                pass
            self._qmp = None


def forced_accel() -> str | None:
    """XMITBENCH_ACCEL=kvm|tcg: what a workload's accel "auto" resolves to without probing
    (the runner's probe_accel, and `plan`, which never boots anything)."""
    v = os.environ.get("XMITBENCH_ACCEL")
    return v if v in ("kvm", "tcg") else None


def probe_accel(kernel: Path, initrd: Path, timeout: float = 20.0) -> tuple[str, str]:
    """Try KVM by booting the guest kernel until it prints on the console.

    /dev/kvm existing is not enough: under nested virtualisation a KVM guest can hang
    right after decompression. Returns (accel, reason)."""
    if forced_accel():
        return forced_accel(), "forced by XMITBENCH_ACCEL"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg", "/dev/kvm missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="xb-kvmprobe-") as d:
        # the same command line as a real boot (build_argv), minus the data NIC
        m = Machine(MachineSpec(kernel, initrd, "virtio-net-pci", 1, vcpus=1, memory_mib=256, accel="kvm",
                                ssh_port=free_port(), serial_log=Path(d) / "serial.log"))
        m.start()
        try:
            secs = m.wait_serial("xmitbench: init", timeout)
            return "kvm", f"KVM probe boot reached init in {secs:.1f} s"
        except MachineError as e:
            return "tcg", f"KVM probe boot: {e}; using TCG"
        finally:
            m.kill()
            m.stop()
