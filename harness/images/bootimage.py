"""What a boot group boots: the built initramfs guest, or a catalog cloud image (checksummed
base + per-run qcow2 overlay + NoCloud seed). An image that cannot be had is an
`ImageUnavailable` with the reason, which the runner records as skipped cells."""
from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.images.guestimage import DEFAULT_TOOLS, build_linux_deb
from harness.images.local import local_image

# Guest egress: a catalog cloud image installs iperf3 (and ethtool) from its package
# repositories on first boot, so its management NIC cannot be `restrict=on`. The initramfs
# guest and the harness's own cloud image (iperf3 and ethtool built in) need nothing.
CLOUD_PACKAGES_NEED_EGRESS = True


class ImageUnavailable(RuntimeError):
    pass


@dataclass
class BootImage:
    name: str
    os: str
    kernel: Path | None = None       # direct kernel boot (the initramfs guest)
    initrd: Path | None = None
    disk: Path | None = None         # base image for a per-boot overlay (cloud images)
    release: str = ""
    user: str = "root"
    tools: dict = field(default_factory=dict)
    verified: bool = True
    info: dict = field(default_factory=dict)   # for the manifest
    seed_user: str = "root"          # the user the seed sets up besides root (a catalog's default_user)
    packages_on_first_boot: bool = True   # the seed asks for iperf3 & co. (False: already in the image)

    @property
    def is_cloud(self) -> bool:
        """Booted from disk with a NoCloud seed, by its own boot loader and first-boot agent."""
        return self.disk is not None

    @property
    def guest_egress(self) -> bool:
        """The management NIC needs egress: only for package installs on first boot."""
        return self.is_cloud and self.packages_on_first_boot and CLOUD_PACKAGES_NEED_EGRESS


def linux_deb_image(log=print, built=None) -> BootImage:
    """The default guest: Debian's packaged kernel of the host's release + initramfs userland."""
    return kernel_boot_image("linux-deb", built or build_linux_deb(log=log))


def _release_image(release: str, log) -> BootImage:
    """The initramfs guest of one Debian release, whatever the host runs (a private apt state
    for a release other than the host's). An archive apt cannot reach: ImageUnavailable."""
    from harness.images.guestimage import ImageBuildError
    try:
        return kernel_boot_image(f"linux-deb-{release}", build_linux_deb(log=log, release=release))
    except ImageBuildError as e:
        raise ImageUnavailable(str(e)) from None


def linux_deb_12_image(log=print, built=None) -> BootImage:
    """Debian 12 (bookworm): Linux 6.1."""
    return _release_image("12", log)


def linux_deb_13_image(log=print, built=None) -> BootImage:
    """Debian 13 (trixie): Linux 6.12."""
    return _release_image("13", log)


def kernel_boot_image(name: str, img) -> BootImage:
    """A BootImage for a built initramfs guest (a guestimage.GuestImage)."""
    return BootImage(name, "linux", kernel=img.kernel, initrd=img.initrd, release=img.kernel_release,
                     tools=img.manifest["tools"],
                     info={"name": img.name, "key": img.key, "kernel_release": img.kernel_release,
                           "debian_release": img.manifest.get("debian_release"),
                           "kernel_source": img.manifest.get("kernel_source"),
                           "bzImage_sha256": img.manifest.get("bzImage_sha256"),
                           "initramfs_sha256": img.manifest.get("initramfs_sha256"),
                           "build_s": img.manifest.get("build_s")})


def prepare_image(name: str, log=print, allow_unverified: bool = False, built=None) -> BootImage:
    """`built`: the default guest if the caller already has it (building checks apt again)."""
    local = local_image(name)
    if local is not None:
        return local.build(log=log, built=built if name == "linux-deb" else None)
    from harness.images.catalog import ImageFetchError, fetch, load_catalog, read_marker, reachability
    image = load_catalog().get(name)
    if image.url and not read_marker(image):
        reason = reachability(image)
        if reason:
            raise ImageUnavailable(reason)
    try:
        got = fetch(image, allow_unverified=allow_unverified)
    except ImageFetchError as e:
        msg = str(e)      # the runner names the image; the catalog's own prefix would say it twice
        raise ImageUnavailable(msg[len(name) + 2:] if msg.startswith(f"{name}: ") else msg) from None
    return BootImage(name, image.os, disk=got.path, release=image.release, user="root",
                     tools=dict(DEFAULT_TOOLS) if image.os == "linux" else {},
                     verified=got.verified, seed_user=image.default_user,
                     info={"name": name, "release": image.release, "source_url": got.source_url,
                           "sha256": got.sha, "source_digest": got.source_digest, "verified": got.verified,
                           "unverified_reason": got.reason, "kernel_release": None})


def seed_steps_over_ssh(image: BootImage, pubkey_line: str) -> tuple[str, str] | None:
    """(login user, root script) for what this image's first-boot agent cannot do from the
    seed, or None. FreeBSD 14.1's nuageinit knows no runcmd/packages: the harness then logs
    in as the default user `freebsd` (its key comes through ssh_authorized_keys in every
    nuageinit), becomes root with su (FreeBSD VM images: root has no password, the default
    user is in wheel) and does the same steps itself: root's key, key-only root login, iperf3."""
    if image.os != "freebsd":
        return None
    from harness.images.seed import DEFAULT_PACKAGES, freebsd_root_login_steps, nuageinit_supports
    keys = nuageinit_supports(image.release)
    if {"runcmd", "packages"} <= keys:
        return None
    user = image.seed_user
    steps = freebsd_root_login_steps(pubkey_line)
    if "packages" not in keys:
        steps.append("env ASSUME_ALWAYS_YES=yes pkg install -y " + " ".join(DEFAULT_PACKAGES["freebsd"]))
    steps.append("service sshd restart")
    return user, "su -m root -c " + shlex.quote(" && ".join(steps))


def first_login(image: BootImage, pubkey_line: str, make_shell, timeout: float):
    """A root shell on a freshly booted guest: directly, or through the default user when the
    seed could not set root up (seed_steps_over_ssh). `make_shell(user)` gives an unconnected
    GuestShell. Returns (shell, what was done over SSH or "")."""
    fallback = seed_steps_over_ssh(image, pubkey_line) if image.is_cloud else None
    if fallback:
        user, script = fallback
        t0 = time.monotonic()
        sh = make_shell(user)
        sh.connect(timeout=timeout)
        sh.run(script, timeout=600)      # pkg install over the guest's own network
        sh.close()
        root = make_shell("root")
        root.connect(timeout=max(30.0, timeout - (time.monotonic() - t0)))
        return root, f"as {user}: {script}"
    root = make_shell("root")
    root.connect(timeout=timeout)
    return root, ""


def seed_for(image: BootImage, pubkey_line: str, dest: Path) -> Path:
    """NoCloud seed ISO, the same for every disk image of an OS: root logs in with the per-run
    key; the packages the guest needs unless the image has them; on Linux a network-config
    that runs DHCP on the management NIC only (by its MAC), so cloud-init never touches the
    data NIC (its fallback would pick whichever NIC sorts first)."""
    from harness.images.seed import cloud_config, make_seed_iso, management_network_config, metadata
    cfg = cloud_config(image.seed_user, pubkey_line, os_name=image.os, root=True,
                       packages=None if image.packages_on_first_boot else [])
    net = management_network_config() if image.os == "linux" else None
    return make_seed_iso(dest, cfg, metadata(f"xmitbench-{dest.stem}", "xmitbench-guest"), net)


def debian_cloud_image(log=print, built=None) -> BootImage:
    """`debian-cloud`: the Debian 12 cloud image built here with mmdebstrap (cloudimage.py),
    booted exactly like a catalog cloud image; nothing to install on first boot."""
    from harness.images.cloudimage import build_debian_cloud
    from harness.images.guestimage import ImageBuildError
    try:
        disk, man = build_debian_cloud(log=log)
    except ImageBuildError as e:
        raise ImageUnavailable(str(e)) from None
    return BootImage("debian-cloud", "linux", disk=disk, release=man["release"], user="root",
                     tools=dict(man["tools"]), verified=True, seed_user="root", packages_on_first_boot=False,
                     info={"name": "debian-cloud", "image_kind": man["image_kind"], "release": man["release"],
                           "sha256": man["sha256"], "key": man["key"], "kernel_release": man["kernel_release"],
                           "boot_loader": man["boot_loader"], "build_s": man["build_s"],
                           "cloud_init": man["installed"].get("cloud-init"), "verified": True,
                           "source": "built here from Debian packages (apt-verified), sha256 of the qcow2"})
