"""Pure parts of the machine layer and validity checks."""
import json
import subprocess
import sys
from pathlib import Path

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
    assert build_argv(spec(accel="kvm"))[build_argv(spec(accel="kvm")).index("-cpu") + 1] == "host"


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
    assert p.stdout.count("qemu: ") == 2      # one boot per NIC; the untraced twins run first on it
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


def test_run_key_is_private(tmp_path):
    import stat
    from harness.vm.ssh import make_key
    k = make_key(tmp_path / "keys")
    assert stat.S_IMODE(k.private_path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "keys").stat().st_mode) == 0o700
    assert k.public_line.startswith("ssh-ed25519 ")
