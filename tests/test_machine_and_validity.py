"""Pure parts of the machine layer and validity checks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.vm.machine import MachineSpec, build_argv, data_device, tap_queues
from harness.run.validity import app_bytes_total, conservation, queue_spread, sender_saturation

REPO = Path(__file__).resolve().parent.parent


def spec(**kw):
    base = dict(kernel=Path("/k"), initrd=Path("/i"), qemu_device="virtio-net-pci", queues=4, vcpus=4,
                memory_mib=1024, accel="tcg", ssh_port=2222, ssh_pubkey_b64="AAAA",
                serial_log=Path("/s.log"), qmp_socket=Path("/q.sock"), tap_fds=[3, 4, 5, 6])
    base.update(kw)
    return MachineSpec(**base)


def test_virtio_multiqueue_argv():
    argv = build_argv(spec())
    assert "tap,id=data,fds=3:4:5:6,vhost=off" in argv
    assert "virtio-net-pci,netdev=data,mac=52:54:00:12:34:56,romfile=,mq=on,vectors=10" in argv
    assert argv[argv.index("-cpu") + 1] == "max,-hypervisor"   # TCG: lock waits visible
    assert argv[argv.index("-smp") + 1] == "4"


def test_management_is_loopback_only_and_restricted():
    net = [a for a in build_argv(spec()) if a.startswith("user,")][0]
    assert "hostfwd=tcp:127.0.0.1:2222-" in net and "restrict=on" in net
    assert "net=198.19.0.0/24" in net


def test_single_queue_devices():
    assert data_device("e1000e", 1) == "e1000e,netdev=data,mac=52:54:00:12:34:56,romfile="
    assert tap_queues("e1000e", 2) == 1 and tap_queues("virtio-net-pci", 2) == 2
    argv = build_argv(spec(qemu_device="e1000e", queues=1, tap_fds=[7]))
    assert "tap,id=data,fd=7,vhost=off" in argv
    # KVM: a NIC model without a vhost backend keeps vhost=off
    assert "tap,id=data,fd=7,vhost=off" in build_argv(spec(accel="kvm", qemu_device="e1000e", queues=1, tap_fds=[7]))


def test_kvm_argv_uses_vhost_and_pv_spinlocks():
    """KVM: virtio-net taps go through vhost-net (queues and vectors as under TCG), and the CPU
    offers kvm-pv-unhalt so a Linux guest uses PV qspinlock, whose every waiter reaches
    lock:contention_begin (harness.vm.machine, the Linux 6.1 source notes)."""
    argv = build_argv(spec(accel="kvm"))
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "tap,id=data,fds=3:4:5:6,vhost=on" in argv
    assert "virtio-net-pci,netdev=data,mac=52:54:00:12:34:56,romfile=,mq=on,vectors=10" in argv
    assert argv[argv.index("-cpu") + 1] == "host,kvm-pv-unhalt=on,enforce"
    tcg = build_argv(spec())
    assert [a.replace("vhost=off", "vhost=on") for a in tcg if "netdev=data" in a or a.startswith("tap,")] == \
        [a for a in argv if "netdev=data" in a or a.startswith("tap,")]     # only vhost differs on the data NIC


def test_conservation_accounts_headers_per_packet():
    ok = conservation(app_bytes=1_000_000, nic_bytes=1_000_000 + 100 * 66, nic_packets=100, proto="tcp")
    assert ok["ok"] and ok["ratio"] == 1.0
    lossy = conservation(app_bytes=1_000_000, nic_bytes=900_000 + 100 * 42, nic_packets=100, proto="udp")
    assert not lossy["ok"] and lossy["unexplained_bytes"] == 100_000


def test_queue_spread_flags_idle_queue():
    assert queue_spread({0: 500, 1: 500}, 2)["ok"]
    bad = queue_spread({0: 1000, 1: 2}, 2)
    assert not bad["ok"] and bad["idle_queues"] == [1]


def test_sender_saturation():
    assert sender_saturation({0: 0.99, 1: 0.5}, [0])["saturated"]
    assert not sender_saturation({0: 0.5, 1: 0.99}, [0])["saturated"]


def test_app_bytes_include_omitted_intervals():
    doc = {"intervals": [{"sum": {"bytes": 10, "omitted": True}}, {"sum": {"bytes": 5, "omitted": False}}]}
    assert app_bytes_total(json.dumps(doc)) == 15


def test_cli_bad_workload_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[workload]\nname = "x"\n[machine]\nvcpus = 2\n[matrix]\nnic = ["tulip"]\n')
    results = tmp_path / "results"
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(bad), "--results", str(results)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "matrix.nic" in lines[0] and "virtio-net" in lines[0]
    assert not results.exists()   # nothing started


def test_plan_prints_argv_and_commands():
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(REPO / "workloads/default.toml")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    # one boot per NIC (igb too: planned on a fetched or fetchable QEMU >= 8.0, not skipped);
    # the untraced twins run first on it
    assert p.stdout.count("qemu: ") == 3
    assert "-device igb,netdev=data" in p.stdout and "skipped linux-deb.igb" not in p.stdout
    assert "ethtool -L xb0 combined 2" in p.stdout
    assert "skipped linux-deb.e1000e.q2" in p.stdout


def test_plan_linux_and_freebsd_share_the_data_nic_line():
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(REPO / "workloads/linux-vs-freebsd.toml")],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    # one QEMU line per boot group, FreeBSD's included; its loader tunables and reboot are shown
    assert out.count("qemu: ") == out.count("== boot group ") >= 4
    assert "hw.vtnet.mq_max_pairs" in out and "shutdown -r now" in out and "cpuset -l" in out
    for nic in ("virtio-net", "e1000e"):
        assert f"{nic}: data NIC, tap and CPU options across freebsd-14.3 and linux-deb: identical" in out
    # a FreeBSD q1 cell boots the same 2-queue device as Linux; the tunable picks 1 queue
    assert "freebsd-14.3.virtio-net.q1.dev2" in out
    # guest scripts are printed as they run: a heredoc's end marker at column 0, so it pastes
    assert "\nXB_D_EOF\n" in out


def test_plan_shows_the_inspect_step_on_the_first_boot_of_each_image_and_nic(tmp_path):
    """workload.inspect: the `images inspect` capture is a boot step of the procedure, taken by
    the first boot of each (image, NIC) only; without the key no boot takes it."""
    base = ('[workload]\nname = "i"\n{}[matrix]\nimage = ["linux-deb", "freebsd-14.3"]\n'
            'nic = ["virtio-net"]\nqueues = [1, 2]\n')
    outs = []
    for extra in ("inspect = true\n", ""):
        wl = tmp_path / f"i{len(outs)}.toml"
        wl.write_text(base.format(extra))
        p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(wl)],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
        assert p.returncode == 0, p.stderr
        outs.append(p.stdout)
    with_inspect, without = outs
    groups = with_inspect.split("== boot group ")[1:]
    # linux-deb: one boot; freebsd-14.3: q1 and q2 boot apart (queue counts are loader tunables)
    assert [g.split(" ")[1].split(".virtio")[0] for g in groups] == ["linux-deb", "freebsd-14.3", "freebsd-14.3"]
    assert ["first-contact bundle" in g for g in groups] == [True, True, False]
    assert "ethtool -S xb0" in groups[0] and "cloud-init status --wait --long" in groups[0]
    assert "sysctl dev.vtnet" in groups[1]
    assert "first-contact bundle" not in without


def _plan(workload: str, accel: str | None) -> str:
    import os
    env = {k: v for k, v in os.environ.items() if k != "XMITBENCH_ACCEL"}
    if accel:
        env["XMITBENCH_ACCEL"] = accel
    p = subprocess.run([sys.executable, "-m", "harness.cli", "plan", str(REPO / "workloads" / workload)],
                       capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("accel", ["kvm", "tcg", None])
def test_plan_prints_the_kvm_or_tcg_argv_and_lock_method(accel):
    """`plan` resolves accel "auto" as the runner would without probing: XMITBENCH_ACCEL, else
    TCG. Each variant's data tap, CPU and lock method text are pinned."""
    from harness.vm.machine import lock_visibility_method
    out = _plan("linux-vs-freebsd.toml", accel)
    qemu = [line for line in out.splitlines() if line.strip().startswith("qemu: ")]
    methods = [line.strip() for line in out.splitlines() if line.strip().startswith("lock method: ")]
    assert qemu and len(methods) == len(qemu)
    kvm = accel == "kvm"
    virtio = [q for q in qemu if "virtio-net-pci,netdev=data" in q]
    e1000e = [q for q in qemu if "e1000e,netdev=data" in q]
    assert virtio and e1000e
    assert all((",vhost=on" if kvm else ",vhost=off") in q for q in virtio)
    assert all(",vhost=off" in q for q in e1000e)
    cpu = "-cpu host,kvm-pv-unhalt=on,enforce" if kvm else "-cpu max,-hypervisor"
    assert all(cpu in q and ("-accel kvm" if kvm else "-accel tcg,thread=multi") in q for q in qemu)
    linux = "lock method: " + lock_visibility_method("kvm" if kvm else "tcg")
    assert linux in methods
    assert ("PV qspinlock" in linux) == kvm and ("native qspinlock" in linux) != kvm
    assert "lock method: lockstat(1): DTrace lockstat provider, contention events (-C)" in methods  # FreeBSD
    assert ("accel kvm: XMITBENCH_ACCEL" in out) == kvm
    for nic in ("virtio-net", "e1000e"):      # Linux and FreeBSD boot the same data NIC and CPU
        assert f"{nic}: data NIC, tap and CPU options across freebsd-14.3 and linux-deb: identical" in out


def test_run_key_is_private(tmp_path):
    import stat
    from harness.vm.ssh import make_key
    k = make_key(tmp_path / "keys")
    assert stat.S_IMODE(k.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert k.public_line.startswith("ssh-ed25519 ")
