"""NoCloud seed ISO: cloud-config content, the YAML writer, the ISO read back with pycdlib."""
from __future__ import annotations

import io
import shutil
import subprocess

import pycdlib
import pytest

from harness.images import seed

yaml = pytest.importorskip("yaml")   # PyYAML is what cloud-init itself parses user-data with

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK+MH4E8KO32N5CXRvXVqvyZVl0+6ue4DobdhU0FqFd+ xmitbench-run"


def test_linux_cloud_config():
    cfg = seed.cloud_config("debian", KEY, None, ["ethtool -L ens4 combined 2"])
    assert cfg["users"] == [{"name": "debian", "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                             "lock_passwd": True, "ssh_authorized_keys": [KEY]}]
    # cc_ssh gives top-level keys to root, without the "log in as ..." prefix when disable_root is false.
    assert cfg["disable_root"] is False and cfg["ssh_authorized_keys"] == [KEY]
    assert cfg["packages"] == ["iperf3", "ethtool", "iproute2"] and cfg["package_update"] is True
    assert cfg["runcmd"] == ["ethtool -L ens4 combined 2"]
    no_root = seed.cloud_config("ubuntu", KEY, [], [], root=False)
    assert set(no_root) == {"users"}


def test_freebsd_cloud_config():
    cfg = seed.cloud_config("freebsd", KEY, None, ["sysctl dev.vtnet.0"], os_name="freebsd")
    # The default user takes top-level keys in every nuageinit version; `users` would replace it.
    assert cfg["ssh_authorized_keys"] == [KEY] and "users" not in cfg
    assert cfg["packages"] == ["iperf3"] and "package_update" not in cfg
    # sshd says PermitRootLogin no: root's key and key-only root logins come first in runcmd.
    assert cfg["runcmd"][1] == f"echo '{KEY}' >> /root/.ssh/authorized_keys"
    assert "echo 'PermitRootLogin prohibit-password' >> /etc/ssh/sshd_config" in cfg["runcmd"]
    assert cfg["runcmd"][-1] == "sysctl dev.vtnet.0"
    other = seed.cloud_config("bench", KEY, [], None, os_name="freebsd", root=False)
    assert other == {"users": [{"name": "bench", "ssh_authorized_keys": [KEY]}]}


def test_bad_inputs_refused():
    with pytest.raises(ValueError, match="pubkey"):
        seed.cloud_config("debian", "ssh-ed25519 AAAA' ; rm -rf /", None, None)
    with pytest.raises(ValueError, match="os_name"):
        seed.cloud_config("x", KEY, None, None, os_name="windows")
    for bad in ({"runcmd": ["a\nb"]}, {"runcmd": ["echo \"it's\""]}, {"k": None}, {"k": 1.5},
                {"bad key": 1}, {"k": [["nested"]]}):
        with pytest.raises(ValueError):
            seed.to_yaml(bad)


def test_yaml_reads_back_the_same():
    docs = [
        seed.cloud_config("debian", KEY, None, ['echo "quoted" > /tmp/a', "echo 'single' # not a comment",
                                                "key: value - [x] {y} & *z !t %u @v `w`", "yes", "1234", ""]),
        seed.cloud_config("freebsd", KEY, None, None, os_name="freebsd"),
        seed.metadata("xb-run-1", "xb-guest"),
        {"version": 2, "ethernets": {"mgmt": {"match": {"macaddress": "52:54:00:12:34:56"},
                                              "set-name": "xbmgmt", "dhcp4": True}},
         "empty_list": [], "empty_map": {}, "flag": False},
    ]
    for doc in docs:
        text = seed.to_yaml(doc)
        assert yaml.safe_load(text) == doc, text
        assert text.endswith("\n")


def test_yaml_shape_is_plain_block_style():
    text = seed.to_yaml({"users": [{"name": "u", "ssh_authorized_keys": [KEY]}], "n": 3})
    assert text == f'users:\n  - name: "u"\n    ssh_authorized_keys:\n      - "{KEY}"\nn: 3\n'


def test_nuageinit_supports_by_release():
    assert seed.nuageinit_supports("13.5") == frozenset()
    s141 = seed.nuageinit_supports("14.1")
    assert {"users", "ssh_authorized_keys", "network"} <= s141
    assert not {"runcmd", "packages", "write_files"} & s141          # fall back to SSH there
    assert {"runcmd", "packages"} <= seed.nuageinit_supports("14.2")
    assert "write_files" not in seed.nuageinit_supports("14.2")
    assert "write_files" in seed.nuageinit_supports("14.3")
    assert "network-config" in seed.nuageinit_supports("15.0")
    assert seed.nuageinit_supports("16.0") == seed.nuageinit_supports("15.0")
    assert seed.nuageinit_supports("14.3-RELEASE") == seed.nuageinit_supports("14.3")
    with pytest.raises(ValueError):
        seed.nuageinit_supports("trixie")


def read_iso_file(iso: pycdlib.PyCdlib, name: str, kind: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **{f"{kind}_path": f"/{name}"})
    return out.getvalue()


@pytest.mark.parametrize("with_network", [False, True])
def test_seed_iso_reads_back(tmp_path, with_network):
    user = seed.cloud_config("debian", KEY, None, ["true"])
    meta = seed.metadata("xb-1", "xb-guest")
    net = {"version": 2, "ethernets": {"e": {"match": {"name": "en*"}, "dhcp4": True}}} if with_network else None
    path = seed.make_seed_iso(tmp_path / "seed" / "seed.iso", user, meta, net)
    assert path == tmp_path / "seed" / "seed.iso" and not (tmp_path / "seed" / "seed.iso.tmp").exists()
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().rstrip() == "cidata"
        assert iso.joliet_vd.volume_identifier.decode("utf-16-be").rstrip() == "cidata"
        names = {c.rock_ridge.name() for c in iso.list_children(rr_path="/") if c.rock_ridge} - {b".", b".."}
        expected = {b"user-data", b"meta-data"} | ({b"network-config"} if with_network else set())
        assert names == expected
        for kind in ("rr", "joliet"):
            ud = read_iso_file(iso, "user-data", kind).decode()
            assert ud.splitlines()[0] == "#cloud-config"
            assert yaml.safe_load(ud) == user
            assert yaml.safe_load(read_iso_file(iso, "meta-data", kind)) == meta
            if with_network:
                assert yaml.safe_load(read_iso_file(iso, "network-config", kind)) == net
    finally:
        iso.close()
    # What cloud-init looks for on Linux: a filesystem labelled cidata.
    if shutil.which("blkid"):
        out = subprocess.run(["blkid", "-o", "export", str(path)], capture_output=True, text=True).stdout
        assert "LABEL=cidata" in out.splitlines() and "TYPE=iso9660" in out.splitlines()


def test_user_data_text_passthrough():
    assert seed.user_data_text("#!/bin/sh\necho hi\n").startswith("#!")
    with pytest.raises(ValueError):
        seed.user_data_text("users: []\n")


class _Shell:
    """Records what first_login does on each login user's connection."""
    def __init__(self, log, user):
        self.log, self.user = log, user

    def connect(self, timeout=30.0):
        self.log.append(("connect", self.user))

    def run(self, cmd, timeout=60.0, check=True):
        self.log.append(("run", self.user, cmd))
        return 0, "", ""

    def close(self):
        self.log.append(("close", self.user))


@pytest.mark.parametrize("release, fallback", [("14.1", True), ("14.2", False), ("14.3", False), ("15.0", False)])
def test_first_login_does_over_ssh_what_the_releases_nuageinit_cannot(release, fallback, monkeypatch, tmp_path):
    from harness.images import bootimage as B
    (tmp_path / "d.qcow2").write_bytes(b"")
    cat = tmp_path / "catalog.toml"
    cat.write_text(f'[[image]]\nname = "fbsd-x"\nos = "freebsd"\nrelease = "{release}"\ndefault_user = "freebsd"\n'
                   f'path = "{tmp_path / "d.qcow2"}"\nsha256 = "{"0" * 64}"\n')
    monkeypatch.setenv("XMITBENCH_CATALOG", str(cat))
    img = B.BootImage("fbsd-x", "freebsd", disk=tmp_path / "d.qcow2", release=release, seed_user="freebsd")
    log: list = []
    shell, done = B.first_login(img, KEY, lambda user: _Shell(log, user), timeout=60)
    assert shell.user == "root" and log[-1] == ("connect", "root")
    if not fallback:
        assert done == "" and log == [("connect", "root")]
        return
    # 14.1: no runcmd/packages in nuageinit -> the default user sets root up and installs iperf3
    assert [e[:2] for e in log] == [("connect", "freebsd"), ("run", "freebsd"), ("close", "freebsd"),
                                    ("connect", "root")]
    script = log[1][2]
    assert script.startswith("su -m root -c ") and done.startswith("as freebsd: su -m root -c ")
    for step in ("/root/.ssh/authorized_keys", "PermitRootLogin prohibit-password", "pkg install -y iperf3",
                 "service sshd restart", KEY.split()[1]):
        assert step in script
