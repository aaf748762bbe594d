"""Image catalog: validation, verified download with resume, xz streaming, overlays, CLI.

Downloads go to a real HTTP server on 127.0.0.1 (a free port) that this file starts and
stops; it serves generated files and checksum files in the publishers' formats, honours
Range, and counts the body bytes it sent per path.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import random
import re
import shutil
import socket
import subprocess
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness.images import catalog as cat
from harness.images import cli as images_cli
from harness.errors import InputError

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "catalog"
FREEBSD_XZ = "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
needs_qemu_img = pytest.mark.skipif(not (shutil.which("qemu-img") and shutil.which("qemu-io")),
                                    reason="qemu-img/qemu-io (Debian qemu-utils) not installed")


# --- a small HTTP server ---------------------------------------------------------------------

class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.sent: Counter[str] = Counter()
        self.ranges: list[tuple[str, str | None]] = []   # (path, Range header) per GET
        self.honor_range = True
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(head=True)

            def do_GET(self):
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                data = owner.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                if not head:
                    owner.ranges.append((self.path, rng))
                start, end, status = 0, len(data) - 1, 200
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if m and owner.honor_range:
                    start, status = int(m[1]), 206
                    end = int(m[2]) if m[2] else end
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:end + 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if not head:
                    # count before writing: the client may finish reading (and the test
                    # assert) before this thread runs again
                    owner.sent[self.path] += len(body)
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = FileServer()
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMITBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XMITBENCH_CATALOG", raising=False)
    monkeypatch.delenv("XMITBENCH_IMAGE_BASE_URL", raising=False)
    return tmp_path / "cache"


def payload(size: int = 200 * 1024, seed: int = 1) -> bytes:
    """Compressible but not trivial bytes (a disk image is neither random nor all zeros)."""
    rnd = random.Random(seed)
    words = [bytes(rnd.randrange(256) for _ in range(rnd.randrange(4, 40))) for _ in range(64)]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words) if rnd.random() < 0.7 else bytes(rnd.randrange(1, 200))
    return bytes(out[:size])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_catalog(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "user-catalog.toml"
    p.write_text(body)
    return p


def one_image(tmp_path: Path, server: FileServer, file: str, *, checksum: str | None = "CHECKSUM.SHA512",
              algo: str = "sha512", compression: str = "xz", fmt: str = "raw", name: str = "t") -> cat.Image:
    lines = [f'name = "{name}"', 'os = "freebsd"', 'release = "14.3"', 'default_user = "freebsd"',
             f'url = "{server.url}/img/{file}"', f'compression = "{compression}"', f'format = "{fmt}"']
    if checksum:
        lines += [f'checksum_url = "{server.url}/img/{checksum}"', f'checksum_algo = "{algo}"']
    path = user_catalog(tmp_path, "[[image]]\n" + "\n".join(lines) + "\n")
    return cat.load_catalog(path).get(name)


def bsd_sum(name: str, data: bytes, algo: str = "sha512") -> bytes:
    return f"{algo.upper()} ({name}) = {hashlib.new(algo, data).hexdigest()}\n".encode()


# --- catalog ---------------------------------------------------------------------------------

def test_builtin_catalog():
    c = cat.load_catalog()
    assert set(c.images) == {"freebsd-14.3", "freebsd-15.0", "debian-12", "debian-13", "ubuntu-24.04"}
    for rel in ("14.3", "15.0"):
        img = c.get(f"freebsd-{rel}")
        base = f"https://download.freebsd.org/releases/VM-IMAGES/{rel}-RELEASE/amd64/Latest/"
        assert img.url == base + f"FreeBSD-{rel}-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
        assert img.checksum_url == base + "CHECKSUM.SHA512"
        assert (img.os, img.checksum_algo, img.compression, img.format, img.default_user) == \
            ("freebsd", "sha512", "xz", "qcow2", "freebsd")
        assert img.base_name == f"FreeBSD-{rel}-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2"
        assert img.nic_names["virtio-net"] == "vtnet0"
    deb = c.get("debian-12")
    assert deb.url.endswith("/bookworm/latest/debian-12-genericcloud-amd64.qcow2")
    assert (deb.checksum_url.rsplit("/", 1)[1], deb.checksum_algo, deb.default_user) == ("SHA512SUMS", "sha512", "debian")
    ub = c.get("ubuntu-24.04")
    assert (ub.file_name, ub.checksum_algo, ub.default_user, ub.format) == \
        ("noble-server-cloudimg-amd64.img", "sha256", "ubuntu", "qcow2")


def test_checksum_files_in_publishers_formats():
    for fixture, name, algo in (("CHECKSUM.SHA512.freebsd", FREEBSD_XZ, "sha512"),
                                ("SHA512SUMS.debian", "debian-12-genericcloud-amd64.qcow2", "sha512"),
                                ("SHA256SUMS.ubuntu", "noble-server-cloudimg-amd64.img", "sha256")):
        sums = cat.parse_checksums((FIXTURES / fixture).read_text())
        assert sums[name] == (algo, hashlib.new(algo, name.encode()).hexdigest()), fixture
    assert cat.parse_checksums("abc  not-hex-length\n") == {}


ENTRY = '''[[image]]
name = "x"
os = "linux"
release = "12"
default_user = "debian"
url = "https://example.org/d/x.qcow2"
checksum_url = "https://example.org/d/SHA512SUMS"
checksum_algo = "sha512"
'''

BAD_CATALOGS = [
    # (catalog text, dotted key in the message, words that must be in it)
    (ENTRY + "checksum_algo2 = 1\n", "image[0].checksum_algo2", "unknown key; allowed: name, os"),
    (ENTRY.replace('os = "linux"', 'os = "windows"'), "image[0].os", "allowed: linux, freebsd"),
    (ENTRY.replace('"sha512"', '"md5"'), "image[0].checksum_algo", "allowed: sha256, sha512"),
    (ENTRY + 'compression = "gz"\n', "image[0].compression", "allowed: none, xz"),
    (ENTRY + 'format = "vmdk"\n', "image[0].format", "allowed: qcow2, raw"),
    (ENTRY.replace('name = "x"\n', ""), "image[0].name", "missing; required"),
    (ENTRY.replace('name = "x"', 'name = "Bad Name"'), "image[0].name", "allowed: 1..64 of a-z"),
    (ENTRY.replace("https://example.org/d/x.qcow2", "ftp://example.org/x"), "image[0].url", "http:// or https://"),
    (ENTRY + 'path = "/nonexistent.qcow2"\n', "image[0].url", "exactly one of url"),
    (ENTRY.replace('checksum_algo = "sha512"\n', ""), "image[0].checksum_algo", "required with checksum_url"),
    (ENTRY.replace('checksum_url = "https://example.org/d/SHA512SUMS"\nchecksum_algo = "sha512"\n',
                   'sha256 = "abc"\n'), "image[0].sha256", "expected 64 hex digits"),
    (ENTRY + 'nic_names = { rtl8139 = "eth0" }\n', "image[0].nic_names.rtl8139", "allowed: virtio-net, e1000e"),
    (ENTRY.replace('release = "12"', "release = 12"), "image[0].release", "expected a non-empty string"),
    (ENTRY.replace('os = "linux"', 'os = "freebsd"').replace('"12"', '"fourteen"'), "image[0].release",
     "MAJOR.MINOR"),
    (ENTRY + ENTRY, "image[1].name", "duplicate name 'x'"),
    (ENTRY + "[images]\n", "images", "unknown top-level key; allowed: [[image]]"),
    ("[[image]\nname = 1\n", "line 1", "TOML syntax error"),
    ('image = "x"\n', "image", "array of tables"),
]


@pytest.mark.parametrize("text,key,words", BAD_CATALOGS, ids=[c[1] + ":" + c[2][:20] for c in BAD_CATALOGS])
def test_bad_catalog_one_line_with_file_and_key(tmp_path, text, key, words):
    path = user_catalog(tmp_path, text)
    with pytest.raises(InputError) as ei:
        cat.load_catalog(path)
    msg = str(ei.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: {key}: "), msg
    assert words in msg, msg


def test_user_catalog_missing_file_and_clash_with_builtin(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"^/nonexistent/c\.toml: cannot read catalog file"):
        cat.load_catalog("/nonexistent/c.toml")
    path = user_catalog(tmp_path, ENTRY.replace('name = "x"', 'name = "debian-12"'))
    monkeypatch.setenv("XMITBENCH_CATALOG", str(path))   # picked up without an argument
    with pytest.raises(InputError, match=r"image\[0\]\.name: 'debian-12' is already defined in .*catalog\.toml"):
        cat.load_catalog()
    with pytest.raises(InputError, match=r"^images fetch: name: unknown image 'nope'; allowed: debian-12"):
        cat.load_catalog(user_catalog(tmp_path, "")).get("nope", "images fetch")


# --- fetch -----------------------------------------------------------------------------------

def test_fetch_xz_verified_streamed_and_read_only(tmp_path, server, cache):
    raw = payload()
    xz = lzma.compress(raw)
    server.files["/img/t.raw.xz"] = xz
    server.files["/img/CHECKSUM.SHA512"] = bsd_sum("other.xz", b"zz") + bsd_sum("t.raw.xz", xz)
    img = one_image(tmp_path, server, "t.raw.xz")
    seen = []
    got = cat.fetch(img, progress=lambda done, total: seen.append((done, total)))
    assert got.verified and got.reason == ""
    assert got.path == cache / "images-cloud" / "t" / "t.raw"
    assert got.path.read_bytes() == raw
    assert got.sha == hashlib.sha256(raw).hexdigest()
    assert got.source_digest == "sha512:" + hashlib.sha512(xz).hexdigest()
    assert got.source_url == f"{server.url}/img/t.raw.xz"
    assert seen[-1] == (len(xz), len(xz))
    assert got.path.stat().st_mode & 0o222 == 0                  # the base is read-only
    assert not (got.path.parent / "t.raw.xz").exists()           # digest kept, .xz dropped
    assert cat.read_marker(img)["verified"] is True
    assert cat.verify(img)
    # Second fetch: the checksum file is read again, the image is not.
    server.sent.clear()
    again = cat.fetch(img)
    assert (again.path, again.sha, again.verified) == (got.path, got.sha, True)
    assert server.sent["/img/t.raw.xz"] == 0


def test_fetch_builtin_freebsd_entry_from_mirror(tmp_path, server, cache):
    """The built-in FreeBSD entry, served by name from 127.0.0.1 through the base-URL override."""
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed")
    qcow = tmp_path / "b.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow), "1M"], check=True)
    xz = lzma.compress(qcow.read_bytes())
    server.files[f"/mirror/{FREEBSD_XZ}"] = xz
    server.files["/mirror/CHECKSUM.SHA512"] = bsd_sum(FREEBSD_XZ, xz)
    img = cat.load_catalog().get("freebsd-14.3")
    got = cat.fetch(img, base_url=server.url + "/mirror/")
    assert got.verified and got.path.name == "FreeBSD-14.3-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2"
    assert got.path.read_bytes() == qcow.read_bytes()
    assert got.source_url == f"{server.url}/mirror/{FREEBSD_XZ}"


def test_wrong_checksum_refused(tmp_path, server, cache):
    xz = lzma.compress(payload())
    server.files["/img/t.raw.xz"] = xz
    server.files["/img/CHECKSUM.SHA512"] = bsd_sum("t.raw.xz", xz + b"x")
    img = one_image(tmp_path, server, "t.raw.xz")
    with pytest.raises(cat.ImageFetchError, match=r"sha512 mismatch for t\.raw\.xz: expected [0-9a-f]{128}, got"):
        cat.fetch(img)
    assert sorted(p.name for p in cat.image_dir(img).iterdir()) == [".lock"]   # nothing usable left
    assert not cat.verify(img)
    with pytest.raises(cat.ImageFetchError, match="mismatch"):
        cat.fetch(img, allow_unverified=True)   # allow_unverified never overrides a mismatch


def test_one_corrupted_byte_in_the_image_is_caught(tmp_path, server, cache):
    """The checksum file is right; one byte of the served image is not (a bad mirror, a bit
    flip in transit). Then the same byte flipped in an already verified cached base."""
    xz = lzma.compress(payload())
    server.files["/img/t.raw.xz"] = xz[:1000] + bytes([xz[1000] ^ 0x01]) + xz[1001:]
    server.files["/img/CHECKSUM.SHA512"] = bsd_sum("t.raw.xz", xz)
    img = one_image(tmp_path, server, "t.raw.xz")
    with pytest.raises(cat.ImageFetchError, match=r"sha512 mismatch for t\.raw\.xz"):
        cat.fetch(img)
    server.files["/img/t.raw.xz"] = xz                  # the mirror is fixed
    got = cat.fetch(img)
    assert got.verified and cat.verify(img)
    base = got.path
    base.chmod(0o644)
    data = bytearray(base.read_bytes())
    data[len(data) // 2] ^= 0x01
    base.write_bytes(bytes(data))
    assert not cat.verify(img)                          # `images verify` catches the cached copy


def test_missing_checksum_refused_unless_allowed(tmp_path, server, cache):
    raw = payload()
    server.files["/img/t.raw"] = raw            # no checksum file on the server: 404
    img = one_image(tmp_path, server, "t.raw", compression="none", checksum="SHA256SUMS", algo="sha256")
    with pytest.raises(cat.ImageFetchError, match=r"refusing unverified image: checksum file unreachable: "
                       r".*/img/SHA256SUMS \(HTTP 404"):
        cat.fetch(img)
    assert server.sent["/img/t.raw"] == 0       # refused before downloading anything
    got = cat.fetch(img, allow_unverified=True)
    assert not got.verified and "HTTP 404" in got.reason
    assert got.path.read_bytes() == raw and got.source_digest is None
    assert not cat.verify(img)                  # an unverified cache never counts as verified
    # A checksum file that does not list the image is refused the same way.
    server.files["/img/SHA256SUMS"] = b"%s  other.img\n" % hashlib.sha256(b"o").hexdigest().encode()
    other = one_image(tmp_path, server, "t.raw", compression="none", checksum="SHA256SUMS", algo="sha256",
                      name="t2")
    with pytest.raises(cat.ImageFetchError, match=r"SHA256SUMS does not list t\.raw"):
        cat.fetch(other)
    # No checksum source at all in the catalog.
    bare = one_image(tmp_path, server, "t.raw", compression="none", checksum=None, name="t3")
    with pytest.raises(cat.ImageFetchError, match="no checksum_url or inline digest"):
        cat.fetch(bare)


def test_resume_fetches_only_the_rest(tmp_path, server, cache):
    raw = payload(300 * 1024, seed=2)
    server.files["/img/u.img"] = raw
    server.files["/img/SHA256SUMS"] = f"{hashlib.sha256(raw).hexdigest()} *u.img\n".encode()
    img = one_image(tmp_path, server, "u.img", compression="none", checksum="SHA256SUMS", algo="sha256")
    part = cat.image_dir(img) / "u.img.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(raw[:123_456])             # an interrupted earlier download
    got = cat.fetch(img)
    assert got.verified and got.path.read_bytes() == raw
    assert [r for p, r in server.ranges if p == "/img/u.img"] == ["bytes=123456-"]
    assert server.sent["/img/u.img"] == len(raw) - 123_456
    assert not part.exists()


def test_resume_when_server_ignores_range(tmp_path, server, cache):
    raw = payload(seed=3)
    server.honor_range = False
    server.files["/img/u.img"] = raw
    server.files["/img/SHA256SUMS"] = f"{hashlib.sha256(raw).hexdigest()}  u.img\n".encode()
    img = one_image(tmp_path, server, "u.img", compression="none", checksum="SHA256SUMS", algo="sha256")
    part = cat.image_dir(img) / "u.img.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that must not survive")
    got = cat.fetch(img)
    assert got.path.read_bytes() == raw and server.sent["/img/u.img"] == len(raw)


def test_upstream_change_is_fetched_again(tmp_path, server, cache):
    """Debian's and Ubuntu's "latest" move: a new digest means a new download."""
    old, new = payload(seed=4), payload(seed=5)
    server.files["/img/u.img"] = old
    server.files["/img/SHA256SUMS"] = f"{hashlib.sha256(old).hexdigest()}  u.img\n".encode()
    img = one_image(tmp_path, server, "u.img", compression="none", checksum="SHA256SUMS", algo="sha256")
    assert cat.fetch(img).path.read_bytes() == old
    server.files["/img/u.img"] = new
    server.files["/img/SHA256SUMS"] = f"{hashlib.sha256(new).hexdigest()}  u.img\n".encode()
    assert not cat.verify(img)                  # the cache no longer matches the publisher
    got = cat.fetch(img)
    assert got.verified and got.path.read_bytes() == new and got.sha == hashlib.sha256(new).hexdigest()
    # Offline (checksum file unreachable) a base verified earlier is still used, and verified.
    server.stop()
    assert cat.fetch(img).verified and cat.verify(img)


def test_local_file_with_inline_digest(tmp_path):
    raw = payload(seed=6)
    (tmp_path / "disks").mkdir()
    (tmp_path / "disks" / "my.raw").write_bytes(raw)
    path = user_catalog(tmp_path, f'''[[image]]
name = "mine"
os = "linux"
release = "custom"
default_user = "root"
path = "disks/my.raw"
format = "raw"
sha256 = "{hashlib.sha256(raw).hexdigest()}"

[[image]]
name = "mine-bad"
os = "linux"
release = "custom"
default_user = "root"
path = "disks/my.raw"
format = "raw"
sha512 = "{"0" * 128}"
''')
    c = cat.load_catalog(path)
    got = cat.fetch(c.get("mine"))
    assert got.verified and got.path == tmp_path / "disks" / "my.raw"   # used in place, not copied
    assert cat.reachability(c.get("mine")) is None
    assert cat.verify(c.get("mine"))
    with pytest.raises(cat.ImageFetchError, match="sha512 mismatch"):
        cat.fetch(c.get("mine-bad"))
    assert (tmp_path / "disks" / "my.raw").exists()                     # never deletes user files


def test_unxz_streams_in_bounded_pieces(tmp_path):
    big = bytes(8 << 20) + payload(seed=7)     # 8 MiB of zeros compresses ~1000:1
    a, b = payload(seed=8), payload(seed=9)
    src = tmp_path / "x.xz"
    src.write_bytes(lzma.compress(big) + lzma.compress(a) + bytes(8) + lzma.compress(b))  # 3 streams + padding
    out = tmp_path / "x"
    sha = cat.unxz(src, out, chunk=4096)
    assert out.read_bytes() == big + a + b and sha == hashlib.sha256(big + a + b).hexdigest()
    src.write_bytes(lzma.compress(a)[:-100])
    with pytest.raises(cat.ImageFetchError, match="truncated xz data|bad xz data"):
        cat.unxz(src, out)


def test_reachability(tmp_path, server):
    server.files["/img/t.raw"] = b"x"
    img = one_image(tmp_path, server, "t.raw", compression="none", checksum=None)
    assert cat.reachability(img) is None
    gone = one_image(tmp_path, server, "gone.raw", compression="none", checksum=None, name="g")
    assert cat.reachability(gone) == f"image unreachable: {server.url}/img/gone.raw (HTTP 404 Not Found)"
    port = free_port()                          # nothing listens there
    reason = cat.reachability(img, timeout=2, base_url=f"http://127.0.0.1:{port}/img")
    assert reason.startswith(f"image unreachable: http://127.0.0.1:{port}/img/t.raw (")
    assert "refused" in reason.lower()


# --- overlay ---------------------------------------------------------------------------------

@needs_qemu_img
def test_overlay_leaves_base_unchanged(tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x11 0 64k", str(base)], check=True, capture_output=True)
    base.chmod(0o444)                           # as fetch leaves it
    before = hashlib.sha256(base.read_bytes()).hexdigest()
    overlay = cat.make_overlay(base, tmp_path / "run")
    assert overlay == tmp_path / "run" / "base-overlay.qcow2"
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(overlay)],
                                     check=True, capture_output=True, text=True).stdout)
    assert (info["format"], info["backing-filename"], info["backing-filename-format"]) == \
        ("qcow2", str(base.resolve()), "qcow2")
    out = subprocess.run(["qemu-io", "-c", "read -P 0x11 0 64k", "-c", "write -P 0xab 0 64k",
                          "-c", "read -P 0xab 0 64k", str(overlay)], capture_output=True, text=True)
    assert out.returncode == 0 and "Pattern verification failed" not in out.stdout, out.stdout + out.stderr
    assert hashlib.sha256(base.read_bytes()).hexdigest() == before


# --- CLI -------------------------------------------------------------------------------------

def test_images_cli(tmp_path, server, capsys):
    xz = lzma.compress(payload())
    server.files["/img/t.raw.xz"] = xz
    server.files["/img/CHECKSUM.SHA512"] = bsd_sum("t.raw.xz", xz)
    one_image(tmp_path, server, "t.raw.xz")
    catalog_file = str(tmp_path / "user-catalog.toml")
    # The same shape as harness/cli.py: an `images` parser whose own default is build's.
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    im = sub.add_parser("images")
    isub = im.add_subparsers(dest="image_cmd", required=True)
    isub.add_parser("build")
    im.set_defaults(fn="build")
    images_cli.register(isub)

    def run(*argv) -> int:
        args = ap.parse_args(["images", *argv])
        return args.fn(args)

    assert run("list", "--catalog", catalog_file) == 0
    out = capsys.readouterr().out
    assert re.search(r"^freebsd-14\.3 +freebsd +14\.3 +not fetched +https://download\.freebsd\.org/", out, re.M)
    assert re.search(r"^t +freebsd +14\.3 +not fetched", out, re.M)
    assert run("verify", "t", "--catalog", catalog_file) == 1
    assert run("fetch", "t", "--catalog", catalog_file) == 0
    out = capsys.readouterr().out
    assert re.search(r"^t: .*/images-cloud/t/t\.raw sha256 [0-9a-f]{64} \(verified sha512:[0-9a-f]{128}\)$", out, re.M)
    assert run("verify", "t", "--catalog", catalog_file) == 0
    server.files["/img/CHECKSUM.SHA512"] = bsd_sum("t.raw.xz", b"changed")
    assert run("verify", "t", "--catalog", catalog_file) == 1
    with pytest.raises(InputError, match="^images fetch: name: unknown image 'zz'"):
        run("fetch", "zz")
    one_image(tmp_path, server, "t.raw.xz", checksum="MISSING.SHA512", name="t2")
    assert run("fetch", "t2", "--catalog", catalog_file) == 1     # refused: message on stderr
    assert "refusing unverified image" in capsys.readouterr().err
