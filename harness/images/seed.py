"""NoCloud seed ISOs (volume id ``cidata``) for cloud-init (Linux) and nuageinit (FreeBSD).

YAML is written here, in the plain block style both consumers read, rather than as JSON
(which is valid YAML and fine for cloud-init's PyYAML): FreeBSD's nuageinit has parsed
user-data with two different parsers — the small pure-Lua ``libexec/nuageinit/yaml.lua``
(which has no escape sequences inside quotes and treats ``{...}`` text specially) and later
``lyaml`` (libyaml). Block mappings and lists with quoted strings that need no escapes mean
the same to all of them; anything else (a multi-line string, a string holding both ``'`` and
``"`` or a backslash) is refused instead of risking a different reading in the guest.

What nuageinit acts on depends on the release (``nuageinit_supports``): keys it does not know
are ignored, so the caller does those steps (packages, runcmd) over SSH instead
(bootimage.seed_steps_over_ssh). A cloud guest's management NIC is QEMU user networking with
egress (restrict=off, bootimage.CLOUD_PACKAGES_NEED_EGRESS) so its package installs can reach
the mirrors; the initramfs guest's stays restrict=on.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pycdlib

# Top-level #cloud-config keys nuageinit acts on, by release. Read from freebsd-src
# libexec/nuageinit/nuageinit and nuageinit.7: the first version (14.1) handled users,
# groups, ssh_authorized_keys (for the default user "freebsd"), ssh_keys and network, with the
# hostname from meta-data; the post-network stage (packages, users needing installed shells)
# and runcmd, package_update/upgrade, ssh_pwauth, chpasswd, fqdn/hostname came next (14.2);
# then write_files and timezone (14.3); 15.0 also reads a seed network-config file. The
# release cut points are inferred from the MFC history, not read off the releng branches.
_NUAGE_14_1 = frozenset({"users", "groups", "ssh_authorized_keys", "ssh_keys", "network"})
_NUAGE_14_2 = _NUAGE_14_1 | {"fqdn", "hostname", "runcmd", "packages", "package_update",
                             "package_upgrade", "ssh_pwauth", "chpasswd"}
_NUAGE_14_3 = _NUAGE_14_2 | {"write_files", "timezone"}
_NUAGE_15_0 = _NUAGE_14_3 | {"network-config"}   # a seed file, not a user-data key
NUAGEINIT = {(14, 1): _NUAGE_14_1, (14, 2): _NUAGE_14_2, (14, 3): _NUAGE_14_3, (15, 0): _NUAGE_15_0}

DEFAULT_PACKAGES = {"linux": ["iperf3", "ethtool", "iproute2"], "freebsd": ["iperf3"]}
DEFAULT_USER = {"freebsd": "freebsd"}   # nuageinit's built-in default user

_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_PUBKEY_RE = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+|sk-\S+) [A-Za-z0-9+/]+=*( [^'\"\\\n]*)?")


def nuageinit_supports(release: str) -> frozenset[str]:
    """#cloud-config keys the nuageinit of FreeBSD ``release`` ("14.3") acts on.

    Before 14.1 there is no nuageinit (empty set); releases newer than the newest known one
    get the newest known set.
    """
    m = re.fullmatch(r"(\d+)\.(\d+)(?:-.*)?", release)
    if not m:
        raise ValueError(f"not a FreeBSD release: {release!r} (expected e.g. \"14.3\")")
    ver = (int(m[1]), int(m[2]))
    known = [v for v in sorted(NUAGEINIT) if v <= ver]
    return NUAGEINIT[known[-1]] if known else frozenset()


def freebsd_root_login_steps(pubkey: str) -> list[str]:
    """Shell steps that let root log in with ``pubkey`` on FreeBSD (sshd says PermitRootLogin
    no): run by nuageinit's runcmd, or over SSH where a release has no runcmd."""
    return ["mkdir -p -m 700 /root/.ssh",
            f"echo '{pubkey.strip()}' >> /root/.ssh/authorized_keys",
            "chmod 600 /root/.ssh/authorized_keys",
            "sed -i '' -e '/^PermitRootLogin/d' /etc/ssh/sshd_config",
            "echo 'PermitRootLogin prohibit-password' >> /etc/ssh/sshd_config"]


def cloud_config(user: str, pubkey: str, packages: list[str] | None = None,
                 runcmd: list[str] | None = None, *, os_name: str = "linux", root: bool = True) -> dict:
    """The #cloud-config dict: ``user`` (and root, if ``root``) log in with ``pubkey``.

    ``packages=None`` means the defaults for ``os_name`` (iperf3; on Linux also ethtool, iproute2).
    Linux (cloud-init): ``user`` gets passwordless sudo; root gets the key through top-level
    ``ssh_authorized_keys`` with ``disable_root: false`` (cc_ssh then adds it to root without
    the "please log in as" command prefix). FreeBSD (nuageinit): the default user ``freebsd``
    gets the key through top-level ``ssh_authorized_keys`` (every nuageinit version), any other
    name through ``users``. FreeBSD's sshd has PermitRootLogin no, so root's key needs runcmd:
    lines that install it and allow key-only root logins are put first in ``runcmd``.
    """
    if os_name not in DEFAULT_PACKAGES:
        raise ValueError(f"os_name: {os_name!r}; allowed: linux, freebsd")
    if not _PUBKEY_RE.fullmatch(pubkey.strip()):
        raise ValueError("pubkey: expected one OpenSSH public key line without quotes or backslashes")
    pubkey = pubkey.strip()
    packages = list(DEFAULT_PACKAGES[os_name] if packages is None else packages)
    runcmd = list(runcmd or [])
    cfg: dict[str, Any] = {}
    if os_name == "freebsd":
        if user == DEFAULT_USER["freebsd"]:
            cfg["ssh_authorized_keys"] = [pubkey]
        else:
            cfg["users"] = [{"name": user, "ssh_authorized_keys": [pubkey]}]
        if root:
            runcmd = freebsd_root_login_steps(pubkey) + ["service sshd restart"] + runcmd
    else:
        if user != "root":
            cfg["users"] = [{"name": user, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                             "lock_passwd": True, "ssh_authorized_keys": [pubkey]}]
        if root or user == "root":
            cfg["disable_root"] = False
            cfg["ssh_authorized_keys"] = [pubkey]
    if packages:
        if os_name == "linux":
            cfg["package_update"] = True    # a cloud image has no apt lists yet
        cfg["packages"] = packages
    if runcmd:
        cfg["runcmd"] = runcmd
    return cfg


def management_network_config() -> dict:
    """NoCloud network-config (v1): DHCP from QEMU's user network on the management NIC,
    found by its MAC and named `mgmt0`; every other NIC is left alone."""
    from harness.vm.machine import MGMT_MAC
    return {"version": 1, "config": [{"type": "physical", "name": "mgmt0", "mac_address": MGMT_MAC,
                                      "subnets": [{"type": "dhcp"}]}]}


def metadata(instance_id: str, hostname: str) -> dict:
    """NoCloud meta-data: cloud-init needs instance-id; both read local-hostname."""
    return {"instance-id": instance_id, "local-hostname": hostname}


# --- YAML -----------------------------------------------------------------------------------

def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        if any(ord(c) < 0x20 or ord(c) == 0x7f for c in v):
            raise ValueError(f"cannot write {v!r}: control characters or newlines")
        # Neither quoting style has escapes in nuageinit's old parser: pick the one whose
        # quote character the value does not contain; YAML reads both literally then.
        if '"' not in v and "\\" not in v:
            return f'"{v}"'
        if "'" not in v:
            return f"'{v}'"
        raise ValueError(f"cannot write {v!r}: holds both quote characters or a backslash and a quote")
    raise ValueError(f"cannot write a {type(v).__name__} ({v!r}) to cloud-config YAML")


def _lines(obj: Any, ind: int) -> list[str]:
    pad, out = " " * ind, []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str) or not _KEY_RE.fullmatch(k):
                raise ValueError(f"cannot write key {k!r}: allowed letters, digits, '_', '-'")
            if isinstance(v, (dict, list)) and v:
                out += [f"{pad}{k}:"] + _lines(v, ind + 2)
            else:
                out.append(f"{pad}{k}: {'{}' if v == {} else '[]' if v == [] else _scalar(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, list):
                raise ValueError("cannot write a list inside a list")
            if isinstance(item, dict) and item:
                sub = _lines(item, ind + 2)
                out += [f"{pad}- {sub[0][ind + 2:]}"] + sub[1:]
            else:
                out.append(f"{pad}- {'{}' if item == {} else _scalar(item)}")
    else:
        out.append(pad + _scalar(obj))
    return out


def to_yaml(obj: dict) -> str:
    """Block-style YAML for a dict of dicts, lists, strings, ints and bools."""
    return "\n".join(_lines(obj, 0)) + "\n"   # nuageinit's old parser needs the final newline


def user_data_text(user_data: dict | str) -> str:
    if isinstance(user_data, str):
        if not user_data.startswith(("#cloud-config\n", "#!")):
            raise ValueError("user-data text must start with '#cloud-config' or '#!'")
        return user_data
    return "#cloud-config\n" + to_yaml(user_data)


def make_seed_iso(dest: Path, user_data: dict | str, meta_data: dict,
                  network_config: dict | None = None) -> Path:
    """Write a NoCloud seed ISO (label ``cidata``; Rock Ridge and Joliet names) to ``dest``."""
    files = {"user-data": user_data_text(user_data), "meta-data": to_yaml(meta_data)}
    if network_config is not None:
        files["network-config"] = to_yaml(network_config)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    iso = pycdlib.PyCdlib()
    # Rock Ridge names for Linux isofs and FreeBSD cd9660, Joliet too (what cloud-localds
    # writes); the ISO9660 names themselves are never read by either.
    iso.new(interchange_level=3, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    try:
        for name, text in files.items():
            data = text.encode()
            iso.add_fp(io.BytesIO(data), len(data), f"/{name.upper().replace('-', '_')}.;1",
                       rr_name=name, joliet_path=f"/{name}")
        iso.write(str(tmp))
    finally:
        iso.close()
    os.replace(tmp, dest)
    return dest
