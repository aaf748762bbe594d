"""What a boot and a cell do, as ordered steps: the one source the runner executes, `plan`
prints and `commands.sh` records.

A step is a guest command (its exact text), a host action (described), or a capture. The
runner walks a cell's steps and dispatches on ``Step.action``; every guest-command step is
executed by the driver method that sends exactly ``Step.command`` (or, for ``set_queues``,
sends it only when the count differs). Commands are built before execution from the state
the guest WILL be in when they run (lock tracing installed, stacked device present).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

from harness.guests.contract import BootState
from harness.vm.machine import DATA_MAC, DATA_PREFIX, GUEST_DATA_IP, PEER_DATA_IP, MachineSpec, tap_queues
from harness.vm.nics import NICS
from harness.vm.stacks import STACKS, VLAN_ID

BASE_PORT = 5201     # the peer iperf3 servers listen on BASE_PORT + sender index


@dataclass(frozen=True)
class Step:
    action: str              # what the runner does (see Runner._execute)
    label: str               # the comment heading in plan output and commands.sh
    command: str | None = None   # the exact guest command, if the step sends one
    host: bool = False       # a host action (namespace, sinks), not sent to the guest


def machine_spec(boot_key, accel: str, *, kernel: Path | None, initrd: Path | None, disk: Path | None,
                 seed_iso: Path | None, serial_log: Path, qmp_socket: Path, ssh_port: int, ssh_pubkey_b64: str,
                 tap_fds: list[int], guest_egress: bool, extra_cmdline: str = "") -> MachineSpec:
    """The machine of one boot group: run and plan both build it here."""
    nic = NICS[boot_key.nic]
    return MachineSpec(kernel, initrd, nic.qemu_device, boot_key.qemu_queues, vcpus=boot_key.vcpus,
                       memory_mib=boot_key.memory_mib, accel=accel, ssh_port=ssh_port,
                       ssh_pubkey_b64=ssh_pubkey_b64, serial_log=serial_log, qmp_socket=qmp_socket,
                       tap_fds=tap_fds, extra_cmdline=extra_cmdline, disk=disk, seed_iso=seed_iso,
                       guest_egress=guest_egress)


def tap_queue_count(boot_key) -> int:
    return tap_queues(NICS[boot_key.nic].qemu_device, boot_key.qemu_queues)


def data_address() -> str:
    return f"{GUEST_DATA_IP}/{DATA_PREFIX}"


def inspect_dir_name(boot_key) -> str:
    """A run's first-contact bundle of one image and data NIC: `<run dir>/inspect/<this>/`."""
    return f"{boot_key.image}.{boot_key.nic}"


def boot_steps(guest, boot_key, inspect: bool = False) -> list[Step]:
    """After SSH answers: name and address the data NIC; on OSes whose queue counts are boot
    settings, write them and reboot (then name the NIC again). ``inspect``: last, capture the
    first-contact bundle (`images inspect`; a run's `workload.inspect`) in the state the cells
    will find."""
    steps = [Step("data_interface", f"data NIC: MAC {DATA_MAC} -> {data_address()} "
                                    f"(peer {PEER_DATA_IP} in the harness namespace)")]
    script = guest.boot_config_script(boot_key.nic, boot_key.queues)
    if script:
        steps += [Step("boot_config", "queue counts are boot settings: write them", script),
                  Step("reboot", f"reboot; reconnect once `{guest.BOOT_ID_COMMAND}` prints a new boot id",
                       guest.REBOOT_COMMAND),
                  Step("data_interface", "name and address the data NIC again")]
    if inspect:
        # each command is sent on its own and its output kept as <name>.txt, failures recorded
        steps.append(Step("inspect", "first-contact bundle: each command's output to inspect/.../<name>.txt, "
                                     "then coverage.txt and index.json",
                          "\n".join(guest.inspect_commands().values())))
    return steps


@contextlib.contextmanager
def _planned(guest, state: BootState):
    """Render commands as they will be when they run (the driver reads its BootState)."""
    real = guest.state
    guest.state = state
    try:
        yield
    finally:
        guest.state = real


def ports_for(cell) -> list[int]:
    return [BASE_PORT + i for i in range(cell.procs)]


def peer_ip_for(stack: str) -> str:
    return STACKS[stack].peer_ip if stack != "direct" else PEER_DATA_IP


def state_after(guest, workload, cell) -> BootState:
    """The boot's state once this cell's steps have run (lock tracing installed by a traced
    cell, the cell's stacked device present): its commands are rendered in it, and `plan`
    carries it on to the next cell, as the driver's actions leave it on a real guest."""
    installs = workload.lock_stats and cell.traced
    tracing = guest.state.lock_tracing or installs
    return replace(guest.state, lock_tracing=tracing, lock_paused=tracing and not cell.traced,
                   stack_dev=guest.STACK_DEVS.get(cell.stack))


def cell_steps(guest, workload, cell, vlan_id: int = VLAN_ID, peer_detail: str = "") -> list[Step]:
    """The ordered steps of one cell run on a booted guest. ``vlan_id`` and ``peer_detail``
    come from the peer end, which the host sets up first (it picks the VLAN id)."""
    wl = workload
    steps: list[Step] = []
    install_locks = wl.lock_stats and cell.traced and not guest.state.lock_tracing
    if install_locks:
        steps.append(Step("lock_install", "lock statistics (installed once per boot, by its first traced cell)",
                          guest.lock_start_script()))
    elif guest.state.lock_tracing and not cell.traced and not guest.state.lock_paused:
        steps.append(Step("lock_pause", "lock statistics paused for this untraced cell (left installed)",
                          guest.lock_pause_script() or "# (nothing runs between cells on this OS)"))
    elif guest.state.lock_paused and cell.traced:
        steps.append(Step("lock_continue", "lock statistics continued",
                          guest.lock_continue_script() or "# (nothing to continue on this OS)"))
    if guest.queues_at_runtime(cell.nic):
        steps.append(Step("set_queues", "queue setup", guest.set_queues_command(cell.queues)))
    else:
        steps.append(Step("check_queues", f"queue count set at boot: check {cell.queues} TX queues",
                          guest.tx_queue_count_command()))
    for cmd in wl.setup_for(cell.os):
        steps.append(Step("setup", "workload setup command", cmd))
    stack_cmd = guest.stack_command(cell.stack, vlan_id=vlan_id)
    steps.append(Step("stack", "stacked device", stack_cmd or "(direct)"))
    if peer_detail:
        steps.append(Step("peer_note", f"peer end: {peer_detail}", host=True))
    ports, peer_ip = ports_for(cell), peer_ip_for(cell.stack)
    steps.append(Step("servers", f"peer iperf3 servers on {peer_ip} ports {ports[0]}-{ports[-1]} "
                                 f"(harness namespace)", host=True))
    with _planned(guest, state_after(guest, wl, cell)):
        snapshot = guest.snapshot_command()
        churn = guest.churn_command(cell.churn, wl.churn_interval_s, wl.churn_count, cell.queues)
        script = guest.senders_script(ports, wl.machine.vcpus, peer_ip, cell.duration_s, cell.warmup_s,
                                      cell.streams, cell.proto, cell.msg_size, cell.udp_bitrate, churn=churn)
    # /proc/lock_stat (LOCK_STAT kernels): cleared just before the snapshot and read just after
    # it, so its interval holds the tracing method's (the cross-check relies on it)
    lock_stat = wl.lock_stats and cell.traced and guest.state.lock_stat
    if lock_stat:
        steps.append(Step("lock_stat_clear", "lock_stat: enable and clear", guest.lock_stat_clear_command()))
    steps += [Step("snapshot_before", "snapshot (before)", snapshot),
              Step("host_before", "host: peer tap counters, QEMU thread CPU (before)", host=True),
              Step("senders", "senders", script),
              Step("snapshot_after", "snapshot (after)", snapshot)]
    if lock_stat:
        steps.append(Step("lock_stat_read", "lock_stat: read (kept as after.lock_stat.txt)",
                          guest.lock_stat_read_command()))
    steps.append(Step("host_after", "host: peer tap counters, QEMU thread CPU (after); stop servers", host=True))
    return steps


def render(steps: list[Step]) -> str:
    """Steps as a shell script: a comment per step, then its guest command (host steps are
    comments only). commands.sh is exactly this; `plan` prints the same text."""
    out = []
    for s in steps:
        out.append(f"# {'host: ' if s.host and not s.label.startswith('host') else ''}{s.label}")
        if s.command and not s.host:
            out.append(s.command)
    return "\n".join(out) + "\n"
