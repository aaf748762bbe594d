"""The rule that picks a run's QEMU (harness.images.hostqemu.choose_qemu), against stand-in QEMU
binaries: small scripts that answer `-device help` and `--version` as QEMU prints them. The real
fetch and a real igb boot are in tests/test_igb_qemu.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.images import hostqemu as H
from harness.vm import qemu as Q

HELP_72 = (Path(__file__).parent / "fixtures" / "qemu" / "device_help_7.2.txt").read_text()
IGB_LINE = 'name "igb", bus PCI, desc "Intel 82576 Gigabit Ethernet Controller"\n'


def fake_qemu(path: Path, version: str, with_igb: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / f"{path.name}.help").write_text(HELP_72 + (IGB_LINE if with_igb else ""))
    path.write_text("#!/bin/sh\n"
                    f'[ "$1" = --version ] && {{ echo "QEMU emulator version {version}"; exit 0; }}\n'
                    f'cat "{path.parent / (path.name + ".help")}"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A PATH whose qemu-system-x86_64 is QEMU 7.2 without igb, and an empty cache."""
    fake_qemu(tmp_path / "bin" / "qemu-system-x86_64", "7.2.22", with_igb=False)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monkeypatch.setenv("XMITBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XMITBENCH_QEMU", raising=False)
    return tmp_path


def cache_fetched(root: Path, version: str = "1:10.0.13+ds-0+deb13u1") -> Path:
    d = root / "cache" / "qemu" / version.split(":")[-1]
    fake_qemu(d / H.LAUNCHER, "10.0.13", with_igb=True)
    (d / H.RECORD).write_text(json.dumps({"version": version, "verified": True, "fetched_at": "2026-12-02T09:00:00Z"}))
    return d / H.LAUNCHER


def test_system_qemu_when_it_has_every_needed_device(host):
    c = H.choose_qemu({"virtio-net-pci", "e1000e"}, fetch=False)
    assert (c.binary.obtained, c.unavailable, c.pending_fetch) == ("system", None, False)


def test_fetched_qemu_when_the_system_lacks_igb(host):
    launcher = cache_fetched(host)
    c = H.choose_qemu({"virtio-net-pci", "igb"}, fetch=False)
    assert c.binary.path == str(launcher) and c.unavailable is None
    assert c.binary.obtained == "fetched Debian 13 qemu-system-x86 1:10.0.13+ds-0+deb13u1"
    assert c.binary.manifest() == {"binary": str(launcher), "version": "10.0.13", "obtained": c.binary.obtained}


def test_env_wins_over_system_and_fetched(host, monkeypatch):
    cache_fetched(host)
    mine = fake_qemu(host / "mine" / "qemu", "9.2.0", with_igb=False)
    monkeypatch.setenv("XMITBENCH_QEMU", str(mine))
    for needed in ({"igb"}, {"e1000e"}):
        c = H.choose_qemu(needed, fetch=True, log=lambda *a: pytest.fail("must not fetch"))
        assert (c.binary.path, c.binary.obtained) == (str(mine), "env XMITBENCH_QEMU")


def test_plan_never_fetches_it_says_the_run_will(host):
    c = H.choose_qemu({"igb"}, fetch=False)
    assert c.binary.obtained == "system" and c.pending_fetch and c.unavailable is None
    assert not (host / "cache" / "qemu").exists()


def test_an_unverified_fetch_is_not_used(host):
    launcher = cache_fetched(host)
    rec = launcher.parent / H.RECORD
    rec.write_text(json.dumps({**json.loads(rec.read_text()), "verified": False}))
    assert H.fetched_qemu() is None


def test_machines_start_the_chosen_binary(host):
    from harness.vm.machine import MachineSpec, build_argv
    launcher = cache_fetched(host)
    try:
        Q.use(H.choose_qemu({"igb"}, fetch=False).binary)
        argv = build_argv(MachineSpec(Path("k"), Path("i"), "igb", 2))
        assert argv[0] == str(launcher)
    finally:
        Q._current = None


def test_launcher_runs_the_bundled_loader_with_its_libraries():
    text = H.launcher_text(Path("/c/qemu/10/root"), ["usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"], "1:10.0.13")
    assert "export QEMU_MODULE_DIR='/c/qemu/10/root/usr/lib/x86_64-linux-gnu/qemu'" in text
    assert ("exec '/c/qemu/10/root/loader/qemu-system-x86_64' --library-path "
            "'/c/qemu/10/root/usr/lib/x86_64-linux-gnu:/c/qemu/10/root/lib/x86_64-linux-gnu'") in text
    assert "-L '/c/qemu/10/root/usr/share/qemu' -L '/c/qemu/10/root/usr/share/seabios' \"$@\"" in text
