"""Public cloud images: the catalog, verified download, cache and per-run overlays.

The built-in catalog is ``vm/catalog.toml``; a user catalog (``load_catalog(path)`` or
``$XMITBENCH_CATALOG``) adds entries, including local files (``path`` + ``sha256``).

``fetch`` downloads into ``cache_root()/images-cloud/<name>/`` with resume (HTTP Range on a
``.part`` file), verifies the file as published (the ``.xz`` for FreeBSD) against the
publisher's checksum file BEFORE anything uses it, decompresses ``.xz`` as a stream, and
leaves a read-only base image plus a small JSON marker. Without a usable checksum it refuses
unless ``allow_unverified=True``; the result then says ``verified=False`` and the caller must
record that in every row. Runs never boot the cached base: ``make_overlay`` gives each run a
qcow2 overlay, so the base is only ever read.

``base_url`` (or ``$XMITBENCH_IMAGE_BASE_URL``) replaces the directory part of ``url`` and
``checksum_url`` (a mirror; tests point it at 127.0.0.1).
"""
from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import ipaddress
import json
import lzma
import os
import re
import subprocess
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import InputError
from harness.images.guestimage import cache_root
from harness.oses import os_names
from harness.vm.nics import NICS

BUILTIN_CATALOG = Path(__file__).resolve().parents[2] / "vm" / "catalog.toml"
ENV_CATALOG = "XMITBENCH_CATALOG"
ENV_BASE_URL = "XMITBENCH_IMAGE_BASE_URL"

ALGOS = ("sha256", "sha512")
COMPRESSIONS = ("none", "xz")
FORMATS = ("qcow2", "raw")
_HEX_LEN = {"sha256": 64, "sha512": 128}
_FIELDS = ("name", "os", "release", "url", "path", "checksum_url", "checksum_algo", "sha256",
           "sha512", "compression", "format", "default_user", "nic_names", "notes")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
CHUNK = 1 << 20
QCOW2_MAGIC = b"QFI\xfb"

Progress = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


class ImageFetchError(RuntimeError):
    """A download, checksum or decompression failure; the message is one line."""


@dataclass(frozen=True)
class Image:
    name: str
    os: str
    release: str
    default_user: str
    url: str | None = None
    path: Path | None = None          # a local file instead of a download
    checksum_url: str | None = None
    checksum_algo: str | None = None
    digest: str | None = None         # inline sha256/sha512 of the file as published
    compression: str = "none"
    format: str = "qcow2"
    nic_names: dict[str, str] = field(default_factory=dict)
    notes: str = ""
    source: str = ""                  # the catalog file it came from
    key: str = ""                     # its place there: image[N]

    @property
    def file_name(self) -> str:
        """The file as published (``.xz`` included)."""
        return self.path.name if self.path else urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1]

    @property
    def base_name(self) -> str:
        """The usable disk image's file name."""
        n = self.file_name
        if self.compression == "xz":
            return n[:-3] if n.endswith(".xz") else n + ".unxz"
        return n


@dataclass
class Catalog:
    images: dict[str, Image]
    files: list[str]

    def get(self, name: str, where: str = "image") -> Image:
        if name not in self.images:
            raise InputError(where, "name",
                             f"unknown image {name!r}; allowed: {', '.join(sorted(self.images))}")
        return self.images[name]

    def __iter__(self) -> Iterator[Image]:
        return iter(self.images.values())


@dataclass(frozen=True)
class FetchedImage:
    path: Path                        # the base image to put under an overlay
    sha: str                          # sha256 of that base image (for the manifest)
    verified: bool                    # False only with allow_unverified: record it in every row
    source_url: str                   # URL (or local path) it came from
    source_digest: str | None = None  # publisher digest the download matched ("algo:hex")
    reason: str = ""                  # why unverified


# --- catalog --------------------------------------------------------------------------------

def load_catalog(user_path: str | os.PathLike[str] | None = None) -> Catalog:
    """Built-in catalog plus the user's (argument, else ``$XMITBENCH_CATALOG``)."""
    images: dict[str, Image] = {}
    files = [str(BUILTIN_CATALOG)]
    for img in _parse_file(BUILTIN_CATALOG):
        images[img.name] = img
    user_path = user_path or os.environ.get(ENV_CATALOG) or None
    if user_path:
        files.append(os.fspath(user_path))
        for img in _parse_file(Path(user_path), display=os.fspath(user_path)):
            if img.name in images:
                first = images[img.name]
                raise InputError(user_path, f"{img.key}.name", f"{img.name!r} is already defined in "
                                 f"{first.source} ({first.key}); choose another name")
            images[img.name] = img
    return Catalog(images, files)


def _parse_file(path: Path, display: str | None = None) -> list[Image]:
    display = display or str(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(display, "", f"cannot read catalog file: {e.strerror or e}") from None
    return parse_catalog(data, display, base_dir=path.resolve().parent)


def parse_catalog(data: bytes, display: str, base_dir: Path | None = None) -> list[Image]:
    """Validate catalog TOML; relative ``path`` values are resolved against ``base_dir``."""
    def err(key: str, msg: str) -> InputError:
        return InputError(display, key, msg)

    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise err(f"line {line}", "not UTF-8 text; TOML files must be UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        m = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(e))
        if m:
            raise err(f"line {m[2]}", f"TOML syntax error: {m[1]} (column {m[3]})") from None
        raise err("", f"TOML syntax error: {e}") from None
    for k in doc:
        if k != "image":
            raise err(k, "unknown top-level key; allowed: [[image]] tables")
    entries = doc.get("image", [])
    if not isinstance(entries, list):
        raise err("image", "expected [[image]] tables (an array of tables)")
    out, seen = [], {}
    for i, e in enumerate(entries):
        key = f"image[{i}]"
        if not isinstance(e, dict):
            raise err(key, "expected a table")
        img = _parse_entry(e, key, err, display, base_dir)
        if img.name in seen:
            raise err(f"{key}.name",
                      f"duplicate name {img.name!r} (also image[{seen[img.name]}]); names must be unique")
        seen[img.name] = i
        out.append(img)
    return out


def _parse_entry(e: dict, key: str, err, display: str, base_dir: Path | None) -> Image:
    for k in e:
        if k not in _FIELDS:
            raise err(f"{key}.{k}", f"unknown key; allowed: {', '.join(_FIELDS)}")

    def string(k: str, required: bool = False, default: str | None = None) -> str | None:
        if k not in e:
            if required:
                raise err(f"{key}.{k}", "missing; required")
            return default
        if not isinstance(e[k], str) or not e[k]:
            raise err(f"{key}.{k}", f"expected a non-empty string, got {e[k]!r}")
        return e[k]

    def choice(k: str, allowed: tuple[str, ...], default: str | None = None) -> str | None:
        v = string(k, required=default is None, default=default)
        if v and v not in allowed:
            raise err(f"{key}.{k}", f"{v!r} is not allowed; allowed: {', '.join(allowed)}")
        return v

    def url(k: str) -> str | None:
        v = string(k)
        if v is not None:
            p = urllib.parse.urlsplit(v)
            if p.scheme not in ("http", "https") or not p.netloc or p.path.endswith("/"):
                raise err(f"{key}.{k}", f"{v!r} is not a file URL; allowed: http:// or https:// URL")
        return v

    name = string("name", required=True)
    if not _NAME_RE.fullmatch(name):
        raise err(f"{key}.name", f"{name!r}: allowed: 1..64 of a-z, 0-9, '.', '_', '-', "
                                 "starting with a letter or digit")
    os_name = choice("os", os_names())
    release = string("release", required=True)
    if os_name == "freebsd" and not re.fullmatch(r"\d+\.\d+", release):
        raise err(f"{key}.release", f"{release!r}: a FreeBSD release is MAJOR.MINOR, e.g. \"14.3\"")
    user = string("default_user", required=True)
    if not _USER_RE.fullmatch(user):
        raise err(f"{key}.default_user", f"{user!r}: allowed: a login name (a-z, 0-9, '_', '-')")
    src_url, local = url("url"), string("path")
    if (src_url is None) == (local is None):
        raise err(f"{key}.url", "give exactly one of url (download) or path (local file)")
    path = None
    if local is not None:
        path = Path(local)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        if not path.is_file():
            raise err(f"{key}.path", f"no such file: {path}")
    checksum_url = url("checksum_url")
    algo = choice("checksum_algo", ALGOS, default="")
    if checksum_url and not algo:
        raise err(f"{key}.checksum_algo", f"missing; required with checksum_url; allowed: {', '.join(ALGOS)}")
    if algo and not checksum_url:
        raise err(f"{key}.checksum_url", "missing; required with checksum_algo")
    digest = None
    for a in ALGOS:
        v = string(a)
        if v is None:
            continue
        if digest is not None:
            raise err(f"{key}.{a}", "give one inline digest: sha256 or sha512")
        if not re.fullmatch(rf"[0-9a-fA-F]{{{_HEX_LEN[a]}}}", v):
            raise err(f"{key}.{a}", f"expected {_HEX_LEN[a]} hex digits, got {len(v)} characters")
        digest = f"{a}:{v.lower()}"
    if digest and checksum_url:
        raise err(f"{key}.checksum_url", "give either checksum_url or an inline sha256/sha512, not both")
    compression = choice("compression", COMPRESSIONS, default="none")
    fmt = choice("format", FORMATS, default="qcow2")
    nic_names = e.get("nic_names", {})
    if not isinstance(nic_names, dict):
        raise err(f"{key}.nic_names", "expected a table, e.g. { virtio-net = \"vtnet0\" }")
    for nic, hint in nic_names.items():
        if nic not in NICS:
            raise err(f"{key}.nic_names.{nic}", f"unknown NIC model; allowed: {', '.join(NICS)}")
        if not isinstance(hint, str) or not hint:
            raise err(f"{key}.nic_names.{nic}", f"expected an interface name string, got {hint!r}")
    notes = string("notes", default="")
    return Image(name=name, os=os_name, release=release, default_user=user, url=src_url, path=path,
                 checksum_url=checksum_url, checksum_algo=algo or None, digest=digest,
                 compression=compression, format=fmt, nic_names=dict(nic_names), notes=notes,
                 source=display, key=key)


# --- checksum files -------------------------------------------------------------------------

_BSD_LINE = re.compile(r"^(SHA256|SHA512|SHA384|SHA1|MD5) \((.+)\) = ([0-9a-fA-F]+)$")
_GNU_LINE = re.compile(r"^\\?([0-9a-fA-F]{32,128}) [ *](.+)$")


def parse_checksums(text: str) -> dict[str, tuple[str, str]]:
    """File name -> (algo, hex) from BSD (``SHA512 (f) = hex``) or GNU (``hex  f``) lines.

    GNU lines carry no algorithm: it follows from the digest length. Ubuntu's ``*`` (binary
    mode) and a leading ``./`` are dropped from names.
    """
    by_len = {32: "md5", 40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
    out: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        m = _BSD_LINE.match(line)
        if m:
            out[m[2].removeprefix("./")] = (m[1].lower(), m[3].lower())
            continue
        m = _GNU_LINE.match(line)
        if m and len(m[1]) in by_len:
            out[m[2].removeprefix("./")] = (by_len[len(m[1])], m[1].lower())
    return out


# --- network ----------------------------------------------------------------------------------

def _urls(image: Image, base_url: str | None) -> tuple[str, str | None]:
    base_url = base_url or os.environ.get(ENV_BASE_URL) or None
    if not base_url or image.url is None:
        return image.url, image.checksum_url
    base = base_url.rstrip("/") + "/"
    mirror = lambda u: u and base + urllib.parse.urlsplit(u).path.rsplit("/", 1)[-1]  # noqa: E731
    return mirror(image.url), mirror(image.checksum_url)


def _open(url: str, timeout: float, headers: dict[str, str] | None = None, method: str = "GET"):
    req = urllib.request.Request(url, headers={"User-Agent": "xmitbench", **(headers or {})}, method=method)
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    # A proxy from the environment must never see loopback traffic (tests, local mirrors).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if loopback \
        else urllib.request.build_opener()
    return opener.open(req, timeout=timeout)


def _why(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__


def reachability(image: Image, timeout: float = 5, base_url: str | None = None) -> str | None:
    """None if the image can be had; else ``"image unreachable: <url> (<error>)"``.

    The runner records a skipped cell with this reason, never a pass.
    """
    if image.path is not None:
        return None if image.path.is_file() else f"image unreachable: {image.path} (no such file)"
    url, _ = _urls(image, base_url)
    try:
        with _open(url, timeout, method="HEAD"):
            return None
    except urllib.error.HTTPError as e:
        if e.code not in (403, 405, 501):   # some servers refuse HEAD but serve GET
            return f"image unreachable: {url} ({_why(e)})"
    except (OSError, ValueError) as e:
        return f"image unreachable: {url} ({_why(e)})"
    try:
        with _open(url, timeout, headers={"Range": "bytes=0-0"}):
            return None
    except (OSError, ValueError) as e:
        return f"image unreachable: {url} ({_why(e)})"


def _expected_digest(image: Image, checksum_url: str | None, timeout: float) -> tuple[str | None, str, bool]:
    """(``"algo:hex"`` or None, reason when None, whether the checksum file was unreachable)."""
    if image.digest:
        return image.digest, "", False
    if not checksum_url:
        return None, "no checksum_url or inline digest in the catalog", False
    try:
        with _open(checksum_url, timeout) as r:
            text = r.read(4 << 20).decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        return None, f"checksum file unreachable: {checksum_url} ({_why(e)})", True
    hit = parse_checksums(text).get(image.file_name)
    if hit is None:
        return None, f"{checksum_url} does not list {image.file_name}", False
    if hit[0] != image.checksum_algo:
        return None, (f"{checksum_url} lists {image.file_name} with {hit[0]}, "
                      f"catalog says {image.checksum_algo}"), False
    return f"{hit[0]}:{hit[1]}", "", False


def _download(url: str, dest: Path, progress: Progress | None, timeout: float) -> None:
    """Download to ``dest`` via ``dest.part``, resuming a partial file with HTTP Range."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        resp = _open(url, timeout, headers=headers)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # stale or already complete .part: start over
            part.unlink()
            return _download(url, dest, progress, timeout)
        raise ImageFetchError(f"download failed: {url} ({_why(e)})") from None
    except (OSError, ValueError) as e:
        raise ImageFetchError(f"download failed: {url} ({_why(e)})") from None
    with resp:
        length = resp.headers.get("Content-Length")
        if resp.status == 206:
            m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m[1]) != have:
                part.unlink(missing_ok=True)   # server answered a different range: restart
                return _download(url, dest, progress, timeout)
            total = int(m[2]) if m[2] != "*" else None
            mode = "ab"
        else:                                   # 200: the server ignored Range
            have, mode = 0, "wb"
            total = int(length) if length else None
        done = have
        if progress:
            progress(done, total)
        with open(part, mode) as f:
            while chunk := resp.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    if total is not None and done != total:
        raise ImageFetchError(f"download incomplete: {url} ({done} of {total} bytes); run again to resume")
    os.replace(part, dest)


# --- files ------------------------------------------------------------------------------------

def _hash(path: Path, algos: tuple[str, ...]) -> dict[str, str]:
    hs = {a: hashlib.new(a) for a in algos}
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hs.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hs.items()}


def unxz(src: Path, dest: Path, chunk: int = CHUNK) -> str:
    """Stream-decompress ``src`` to ``dest``; returns the output's sha256.

    Both input reads and output pieces are bounded by ``chunk`` (``max_length``), so a
    highly compressed disk image never expands in memory. Concatenated streams are handled.
    """
    h = hashlib.sha256()
    part = dest.with_name(dest.name + ".part")
    try:
        with open(src, "rb") as fi, open(part, "wb") as fo:
            d = lzma.LZMADecompressor()
            while True:
                if d.eof:
                    rest = d.unused_data.lstrip(b"\0") or fi.read(chunk).lstrip(b"\0")  # stream padding
                    if not rest:
                        break
                    d, data = lzma.LZMADecompressor(), rest
                elif d.needs_input:
                    data = fi.read(chunk)
                    if not data:
                        raise ImageFetchError(f"{src}: truncated xz data")
                else:
                    data = b""
                out = d.decompress(data, max_length=chunk)
                fo.write(out)
                h.update(out)
    except lzma.LZMAError as e:
        part.unlink(missing_ok=True)
        raise ImageFetchError(f"{src}: bad xz data ({e})") from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return h.hexdigest()


def image_dir(image: Image) -> Path:
    return cache_root() / "images-cloud" / image.name


@contextmanager
def _locked(d: Path):
    # Two runs fetching the same image must not write the same .part file.
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        yield


def _marker_path(image: Image) -> Path:
    return image_dir(image) / (image.base_name + ".json")


def read_marker(image: Image) -> dict[str, Any] | None:
    """What the last fetch recorded (source, digests, verified), or None if never fetched."""
    try:
        return json.loads(_marker_path(image).read_text())
    except (OSError, ValueError):
        return None


def fetch(image: Image, progress: Progress | None = None, allow_unverified: bool = False,
          base_url: str | None = None, timeout: float = 30) -> FetchedImage:
    """The image's verified base file, downloading (or reusing the cache) as needed.

    Raises ImageFetchError on a checksum mismatch, and when no checksum can be had unless
    ``allow_unverified`` (then ``verified=False`` and ``reason`` say so).
    """
    url, checksum_url = _urls(image, base_url)
    source = url or str(image.path)
    d = image_dir(image)
    with _locked(d):
        expected, why, unreachable = _expected_digest(image, checksum_url, timeout)
        marker = read_marker(image)
        base = d / image.base_name if (image.url or image.compression == "xz") else image.path
        if marker and base.is_file():
            cached = _reuse(image, marker, base, expected, unreachable, allow_unverified)
            if cached:
                return cached
        if expected is None and not allow_unverified:
            raise ImageFetchError(f"{image.name}: refusing unverified image: {why} "
                                  "(allow_unverified / --allow-unverified to use it anyway)")
        if image.path is not None:
            src = image.path
        else:
            src = d / image.file_name
            _download(url, src, progress, timeout)
        # One pass over the file for the publisher's digest and, when the download is the base
        # itself, for the base's sha256 too.
        algos = ((expected.split(":")[0],) if expected else ()) + \
            (("sha256",) if image.compression == "none" else ())
        hashes = _hash(src, tuple(dict.fromkeys(algos)))
        if expected:
            algo, want = expected.split(":")
            got = hashes[algo]
            if got != want:
                if image.path is None:
                    src.unlink()    # never resume on top of bad bytes
                raise ImageFetchError(f"{image.name}: {algo} mismatch for {src.name}: "
                                      f"expected {want}, got {got}; refusing to use it")
        if image.compression == "xz":
            base_sha = unxz(src, base)
            if image.path is None:
                src.unlink()        # the verified digest is kept in the marker
        else:
            base_sha = hashes["sha256"]
        _check_format(image, base)
        if base.parent == d:
            base.chmod(0o444)       # the cached base is only ever a backing file
        rec = {"name": image.name, "source_url": source, "file_name": image.file_name,
               "source_digest": expected, "verified": expected is not None, "reason": why,
               "base": base.name, "base_sha256": base_sha,
               "fetched_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        _marker_path(image).write_text(json.dumps(rec, indent=2) + "\n")
        return FetchedImage(base, base_sha, expected is not None, source, expected, why)


def _reuse(image: Image, marker: dict, base: Path, expected: str | None, unreachable: bool,
           allow_unverified: bool) -> FetchedImage | None:
    """The cached base if it is still what was verified (re-hashed: a base is cheap to read)."""
    if marker.get("verified"):
        # Offline, a base verified earlier stays verified; otherwise the publisher's digest
        # must be unchanged (Debian/Ubuntu "latest" moves).
        if expected != marker.get("source_digest") and not (expected is None and unreachable):
            return None
    elif expected is not None or not allow_unverified:
        return None                 # an unverified cache is never upgraded to verified
    sha = _hash(base, ("sha256",))["sha256"]
    if sha != marker.get("base_sha256"):
        return None
    return FetchedImage(base, sha, bool(marker.get("verified")), marker.get("source_url", ""),
                        marker.get("source_digest"), marker.get("reason", ""))


def _check_format(image: Image, base: Path) -> None:
    with open(base, "rb") as f:
        is_qcow2 = f.read(4) == QCOW2_MAGIC
    if (image.format == "qcow2") != is_qcow2:
        raise ImageFetchError(f"{image.name}: {base.name} is {'' if is_qcow2 else 'not '}a qcow2 image, "
                              f"catalog says format = {image.format!r}")


def verify(image: Image, base_url: str | None = None, timeout: float = 30) -> bool:
    """True if the cached base is intact and matches the digest it was verified against.

    When the checksum file can be fetched, the publisher's digest must also still be the one
    the cache was verified with.
    """
    marker = read_marker(image)
    if not marker or not marker.get("verified"):
        return False
    base = image_dir(image) / marker["base"] if (image.url or image.compression == "xz") else image.path
    if not base.is_file() or _hash(base, ("sha256",))["sha256"] != marker.get("base_sha256"):
        return False
    if image.path is not None and image.compression == "none":
        return True
    _, checksum_url = _urls(image, base_url)
    expected, _, unreachable = _expected_digest(image, checksum_url, timeout)
    return expected == marker.get("source_digest") or (expected is None and unreachable)


def make_overlay(base: Path, dest_dir: Path, fmt: str | None = None) -> Path:
    """A new qcow2 overlay in ``dest_dir`` backed by ``base`` (never written through it)."""
    base = Path(base).resolve()
    if fmt is None:
        with open(base, "rb") as f:
            fmt = "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    overlay = dest_dir / f"{Path(base.name).stem}-overlay.qcow2"
    proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(base),
                           str(overlay)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageFetchError(f"qemu-img create failed: {' '.join(proc.stderr.split())}")
    return overlay
