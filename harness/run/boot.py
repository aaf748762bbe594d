"""One VM of a boot group: start QEMU on the group's machine spec, log in, and take the guest
through the boot steps of the procedure (data NIC; on OSes whose queue counts are boot settings,
write them and reboot)."""
from __future__ import annotations

import hashlib
import os
import time
import traceback
from dataclasses import dataclass

from harness.guests import BootState, driver_class
from harness.images.bootimage import BootImage, ImageUnavailable, first_login
from harness.run.procedure import boot_steps, data_address, machine_spec, tap_queue_count
from harness.vm.machine import DATA_MAC, free_port

BOOT_TIMEOUT_S = 120.0
CLOUD_BOOT_TIMEOUT_S = float(os.environ.get("XMITBENCH_CLOUD_BOOT_TIMEOUT_S", 600.0))  # TCG is slow
SSH_TIMEOUT_S = float(os.environ.get("XMITBENCH_SSH_TIMEOUT_S", 30.0))


def prepare_images(host, names: list[str], built, allow_unverified: bool, log) -> dict:
    """Each image a cell names, ready to boot, or the reason it is not (its cells are skipped)."""
    images: dict[str, BootImage | ImageUnavailable] = {}
    for name in dict.fromkeys(names):
        try:
            images[name] = host.prepare_image(name, log, built, allow_unverified)
            if not images[name].verified:
                log(f"WARNING: image {name} is NOT checksum-verified (--allow-unverified); "
                    f"every row of its cells says image_verified=false")
        except ImageUnavailable as e:
            images[name] = e
            log(f"image {name}: {e}; its cells are recorded as skipped")
    return images


@dataclass
class VM:
    machine: object
    shell: object
    guest: object
    boot: dict          # this boot's manifest entry (kept up to date while cells run)

    def close(self) -> None:
        self.shell.close()
        self.machine.stop()


def start_machine(host, rd, dp, key, key_dir, boot_key, image: BootImage, accel: str, boot_no: int,
                  extra_cmdline: str = ""):
    """Start QEMU for one boot; returns (machine, spec, boot entry), the entry already in the
    manifest so that a boot that fails later is recorded with its argv."""
    tapname = "xbt" + hashlib.sha1(f"{rd.run_id}-{boot_no}".encode()).hexdigest()[:8]
    fds = dp.open_tap(tapname, tap_queue_count(boot_key))
    serial = rd.path / "serial" / f"boot{boot_no:02d}-{boot_key.image}-{boot_key.nic}.log"
    state = key_dir / f"boot{boot_no}"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    disk, seed = host.boot_disk(image, key.public_line, state)
    spec = machine_spec(boot_key, accel, kernel=image.kernel, initrd=image.initrd, disk=disk, seed_iso=seed,
                        serial_log=serial, qmp_socket=state / "qmp.sock", ssh_port=free_port(),
                        ssh_pubkey_b64=key.public_b64, tap_fds=fds,
                        guest_egress=image.guest_egress, extra_cmdline=extra_cmdline)
    m = host.machine(spec)
    boot = {"boot": boot_no, "group": boot_key.label, "image": boot_key.image, "argv": m.argv,
            "serial_log": str(serial.relative_to(rd.path)), "guest_egress": spec.guest_egress}
    rd.manifest["boots"].append(boot)
    try:
        m.start()
    finally:
        for fd in fds:
            os.close(fd)
    boot["qemu_pid"] = m.pid
    return m, spec, boot


def login(host, m, spec, boot: dict, key, boot_key, image: BootImage, accel: str, pin_vcpus: bool,
          t0: float, inspect=None) -> VM:
    """Wait for the guest, log in, run the boot steps. A failure stops this VM and re-raises,
    with the error in the boot's manifest entry. `t0`: monotonic time before QEMU started.
    `inspect`: this boot takes the inspect step, calling inspect(guest) (inspect.write_bundle)."""
    try:
        if not image.is_cloud:
            m.wait_serial("xmitbench: ready", BOOT_TIMEOUT_S)
        shell, over_ssh = first_login(image, key.public_line,
                                      lambda user: host.shell(spec.ssh_port, key, user),
                                      SSH_TIMEOUT_S if not image.is_cloud else CLOUD_BOOT_TIMEOUT_S)
        if over_ssh:       # what the seed could not do for this release, done over SSH
            boot["first_boot_over_ssh"] = over_ssh
        guest = driver_class(boot_key.os)(shell, image.tools, state=BootState())
        for step in boot_steps(guest, boot_key, inspect=inspect is not None):
            if step.action == "data_interface":
                guest.setup_data_interface(DATA_MAC, data_address())
            elif step.action == "boot_config":
                guest.run(step.command)
                boot["rebooted_for"] = step.command
            elif step.action == "reboot":
                boot["reboot_s"] = round(guest.reboot(timeout=CLOUD_BOOT_TIMEOUT_S), 2)
            elif step.action == "inspect":
                t_inspect = time.monotonic()
                inspect(guest)
                boot["inspect_s"] = round(time.monotonic() - t_inspect, 2)    # not part of boot_to_ssh_s
            else:
                raise ValueError(f"no runner action for boot step {step.action!r}")
    except BaseException:
        boot["error"] = traceback.format_exc(limit=1).strip().splitlines()[-1]
        m.stop()
        raise
    if pin_vcpus:
        boot["vcpu_pinning"] = m.pin_vcpus()
    boot["boot_to_ssh_s"] = round(time.monotonic() - t0 - boot.get("inspect_s", 0), 2)
    boot["ssh_host_key"] = shell.host_key_fingerprint
    boot["kernel"] = guest.kernel_release()
    boot["kernel_sha256"] = image.info.get("bzImage_sha256")    # None for a disk image's own kernel
    boot["driver"] = guest.nic_driver()
    boot["tx_queues_at_boot"] = guest.tx_queue_count()
    boot["lock_method"] = guest.lock_method(accel)
    guest.state.lock_stat = guest.lock_stat_probe()
    if guest.state.lock_stat:
        boot["lock_stat"] = guest.LOCK_STAT_METHOD
    return VM(m, shell, guest, boot)
