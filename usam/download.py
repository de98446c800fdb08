"""Resumable, verified downloads and safe archive extraction, on the standard library.

A download writes `<dest>.part`, resumes it with an HTTP Range request after a dropped
connection or a rerun, checks the announced length and (when pinned) the SHA-256, and
only then renames it to `dest`. The digest it got is recorded beside the file in
`<dest>.sha256`, so later checks (`is_complete`, `verify_checkpoint`) can tell a whole
file from a truncated or altered one even when no checksum was pinned.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from usam.errors import UsamError
from usam.storage import atomic_path, inside, read_json, relative_problem, write_json

log = logging.getLogger(__name__)

# Failures worth another try: the connection broke, timed out or the reply was garbled.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError)
_HEX64 = re.compile(r"[0-9a-f]{64}")
# raised by the stdlib "data" filter (Python >= 3.11.4) for members our own checks let through
_UNSAFE_MEMBER = getattr(tarfile, "FilterError", ())
_MERGE_LOCK = threading.Lock()
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
_RESERVED = re.compile(r"^\..+\.(extracted|tmp-.*)$")  # see _marker and extract's temp folder


class _Retry(Exception):
    """A failed try that another try may fix (connection lost, 5xx, short read)."""


# --------------------------------------------------------------------------- digests


def sidecar_path(dest: str | Path) -> Path:
    """`<dest>.sha256`: the digest recorded when `dest` was downloaded."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".sha256")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(value: str, what: str) -> str:
    digest = str(value).strip().lower()
    if not _HEX64.fullmatch(digest):
        raise UsamError(f"{what}: {value!r} is not a SHA-256 digest (64 hex characters)")
    return digest


def read_sidecar(dest: str | Path) -> str | None:
    """The recorded digest of `dest`, or None when there is no sidecar."""
    side = sidecar_path(dest)
    try:
        text = side.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UsamError(f"{side}: cannot read the recorded digest ({err})") from None
    # first token, so a `sha256sum`-style line ("<hex>  <name>") is accepted too
    token = text.split()[0] if text.split() else ""
    return _check_digest(token, f"{side} (delete it and download {Path(dest).name} again)")


def is_complete(dest: str | Path, sha256: str | None = None) -> bool:
    """True when `dest` exists and matches the pinned digest, else its recorded one.

    With neither a pin nor a sidecar there is nothing to check against: existing counts
    as complete. Hashes the whole file when there is a digest to compare.
    """
    dest = Path(dest)
    if not dest.is_file():
        return False
    try:
        want = _check_digest(sha256, f"pinned sha256 for {dest}") if sha256 else read_sidecar(dest)
    except UsamError as err:
        if sha256:
            raise
        log.warning("%s", err)
        return False
    return want is None or file_sha256(dest) == want


def verify_checkpoint(path: str | Path, sha256: str | None) -> None:
    """Raise UsamError unless `path` matches its pinned digest and its recorded sidecar."""
    path = Path(path)
    fix = "download it again with: python -m usam.download_checkpoints sam_model=<sam2.1|sam2.0>"
    if not path.is_file():
        raise UsamError(f"{path} not found; {fix}")
    want = _check_digest(sha256, f"pinned sha256 for {path}") if sha256 else None
    recorded = read_sidecar(path)
    digest = file_sha256(path)
    if recorded is None:
        # a file copied in by hand: record its digest now, so later changes are caught
        if want is None or digest == want:
            record_sidecar(path, digest, "first use" if want is None else "matches its pin")
    if want is not None and digest != want:
        raise UsamError(
            f"{path}: sha256 is {digest}, expected the pinned {want}; delete it and {fix}"
        )
    if recorded is not None and digest != recorded:
        raise UsamError(
            f"{path}: sha256 is {digest} but {sidecar_path(path)} recorded {recorded} "
            f"(at download or first use; the file changed or was truncated since); delete both and {fix}"
        )


def record_sidecar(path: str | Path, digest: str, why: str) -> bool:
    """Write `<path>.sha256` (atomically); False with a warning where the folder is read-only."""
    side = sidecar_path(path)
    try:  # a unique temporary name: parallel shards may record the same file at once
        with atomic_path(side) as tmp:
            tmp.write_text(digest + "\n")
    except OSError as err:
        log.warning("%s: cannot record its sha256 in %s (%s); it stays unverified", path, side, err)
        return False
    log.warning(
        "%s: no recorded sha256; recorded %s in %s (%s): a later change to the file is an error",
        path,
        digest,
        side.name,
        why,
    )
    return True


# --------------------------------------------------------------------------- download


class _PartFile:
    """The `.part` file and the running SHA-256 of its bytes, kept in step."""

    def __init__(self, path: Path):
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        if path.exists():  # left by an earlier run: hash what is there, then append
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    self.add(block)

    def add(self, data: bytes) -> None:
        self.hasher.update(data)
        self.size += len(data)

    def restart(self) -> None:
        self.path.write_bytes(b"")
        self.hasher = hashlib.sha256()
        self.size = 0


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000); '*' total -> None."""
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _fetch(url: str, part: _PartFile, timeout: float, chunk: int, bar: tqdm) -> None:
    """One try: append the rest of the file to `part`. Raises _Retry or UsamError."""
    headers = {"Accept-Encoding": "identity", "User-Agent": "usam-download/1"}
    if part.size:
        headers["Range"] = f"bytes={part.size}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and part.size:
            # resume offset at or past the end: the part may already be whole
            if _content_range(err.headers.get("Content-Range"))[1] == part.size:
                return
            part.restart()
            raise _Retry("server refused the resume range; starting over") from None
        if err.code in (408, 429) or err.code >= 500:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        hint = (
            " (signed links expire: get a fresh link list)" if err.code in (401, 403, 410) else ""
        )
        raise UsamError(f"{url}: HTTP {err.code} {err.reason}{hint}") from None
    except _NETWORK_ERRORS as err:
        raise _Retry(f"cannot connect ({err})") from None

    with resp:
        if resp.status == 206:
            start, total = _content_range(resp.headers.get("Content-Range"))
            if start != part.size:
                part.restart()
                raise _Retry(f"server resumed at byte {start}, not {part.size}; starting over")
        else:  # 200: no Range was sent, or the server ignored it
            if part.size:
                log.info("%s: server ignored the resume request; starting over", part.path.name)
                part.restart()
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        bar.reset(total=total)
        bar.update(part.size)
        with open(part.path, "ab") as f:
            while True:
                try:
                    data = resp.read(chunk)
                except _NETWORK_ERRORS as err:
                    raise _Retry(f"connection lost after {part.size} bytes ({err})") from None
                if not data:
                    break
                f.write(data)
                part.add(data)
                bar.update(len(data))
    # http.client returns b"" (no error) when a connection closes early: check the length
    if total is not None and part.size != total:
        if part.size > total:
            part.restart()
        raise _Retry(f"got {part.size} of {total} bytes")
    if total is None:
        log.warning("%s: server sent no length; cannot check the file is whole", part.path.name)


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    timeout: float = 60,
    chunk: int = 1 << 20,
    progress: bool = True,
    backoff: float = 1.0,
) -> Path:
    """Download `url` to `dest` (always; check `is_complete` first to skip), resumably.

    Retries up to `retries` times in a row without progress (waiting backoff*2^k s,
    at most 60 s); a try that got further resets the count, so a long file on a flaky
    link still finishes. On a digest mismatch the part file is deleted.
    """
    dest = Path(dest)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise UsamError(f"{url}: only http(s) URLs can be downloaded (for {dest})")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):  # http.client refuses them on every try
        raise UsamError(f"{url!r}: a URL cannot hold spaces or control characters (for {dest})")
    want = _check_digest(sha256, f"pinned sha256 for {dest}") if sha256 else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _PartFile(dest.with_name(dest.name + ".part"))
    failures, best = 0, part.size
    bar = tqdm(
        desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress, delay=1
    )
    with bar:
        while True:
            try:
                _fetch(url, part, timeout, chunk, bar)
                break
            except _Retry as err:
                if part.size > best:
                    best, failures = part.size, 0
                failures += 1
                if failures > retries:
                    raise UsamError(
                        f"{dest}: download from {url} failed {failures} times in a row ({err}); "
                        f"run again to resume from {part.path}"
                    ) from None
                delay = min(backoff * 2 ** (failures - 1), 60.0)
                log.warning(
                    "%s: %s; retry %d/%d in %.1f s", dest.name, err, failures, retries, delay
                )
                time.sleep(delay)

    digest = part.hasher.hexdigest()
    if want is not None and digest != want:
        part.path.unlink(missing_ok=True)
        raise UsamError(
            f"{dest}: sha256 mismatch: expected {want}, got {digest} (from {url}); "
            "the download was deleted: check the URL and pinned digest, then run again"
        )
    with open(part.path, "rb+") as f:  # on disk before the rename makes it visible
        os.fsync(f.fileno())
    # sidecar first: a crash before the rename leaves no `dest` that looks verified
    side = sidecar_path(dest)
    tmp = side.with_name(side.name + ".tmp")  # not mkstemp: keep the umask's permissions, like dest
    tmp.write_text(digest + "\n")
    os.replace(tmp, side)
    os.replace(part.path, dest)
    if want is None:
        log.warning(
            "%s: not verified against a pinned checksum; recorded sha256 %s in %s",
            dest,
            digest,
            sidecar_path(dest).name,
        )
    return dest


# --------------------------------------------------------------------------- paths and archives


def _check_relative(name: str, what: str) -> PurePosixPath:
    """`name` as a plain relative path: no absolute path, drive, `..` or NUL."""
    problem = relative_problem(name)
    if problem:
        raise UsamError(f"{what} {name!r} is not a plain relative path ({problem}); refusing it")
    return PurePosixPath(name.replace("\\", "/"))


def safe_join(root: str | Path, name: str) -> Path:
    """`root / name`, refusing names that are absolute, contain `..` or resolve outside root."""
    return inside(root, name)


def is_archive(name: str | Path) -> bool:
    return str(name).lower().endswith(ARCHIVE_SUFFIXES)


def _reserved(name: str) -> bool:
    """Names this module writes into `out_dir` itself: done-markers and temporary folders.

    An archive member with such a name (at any depth: a link to `.` can lift it to the
    top) could forge another archive's marker and suppress its download; refused.
    """
    base = PurePosixPath(name.replace("\\", "/")).name
    return bool(_RESERVED.match(base))


def _check_member_name(name: str, archive: Path) -> None:
    _check_relative(name, f"{archive}: member")
    if _reserved(name):
        raise UsamError(
            f"{archive}: member {name!r} has the name of a usam extraction marker or temporary "
            "folder; refusing the archive"
        )


def _check_tar_member(m: tarfile.TarInfo, archive: Path) -> bool:
    """Raise UsamError for an unsafe member; False for the archive's own root folder `./`.

    Sound without the stdlib filter (Python < 3.11.4 has none, and it had link bypasses
    after that): a symlink target must be relative and free of `..`, so every link points
    at or below its own folder; by induction a chain of links, whatever the order in which
    they are unpacked, never leaves the extraction folder. Hard links name a member path,
    checked the same way.
    """
    what = f"{archive}: member"
    if m.isdir() and PurePosixPath(m.name).parts == ():
        return False
    _check_member_name(m.name, archive)
    if m.issym():
        target = m.linkname.replace("\\", "/")
        if target.startswith("/") or re.match(r"[A-Za-z]:", target):
            raise UsamError(
                f"{what} {m.name!r} links to the absolute path {m.linkname!r}; refusing the archive"
            )
        if ".." in PurePosixPath(target).parts or not target:
            raise UsamError(
                f"{what} {m.name!r} links upwards ({m.linkname!r}): links may only point into "
                "their own folder; refusing the archive"
            )
    elif m.islnk():
        _check_relative(m.linkname, f"{what} {m.name!r} hard-links to")
    elif not (m.isfile() or m.isdir()):
        raise UsamError(f"{what} {m.name!r} is a device or fifo; refusing the archive")
    return True


def _merge(src: Path, dst: Path) -> None:
    """Move the tree `src` into `dst`, file by file (each a rename), merging folders."""
    dst.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        target = dst / entry.name
        if (
            entry.is_dir()
            and not entry.is_symlink()
            and target.is_dir()
            and not target.is_symlink()
        ):
            _merge(entry, target)
            continue
        try:
            os.replace(entry, target)
        except OSError as err:
            raise UsamError(
                f"cannot move {entry.name} into {dst} ({err}); remove {target} and run again"
            ) from None


def _marker(archive: Path, out_dir: Path) -> Path:
    return out_dir / f".{archive.name}.extracted"


def is_extracted(archive: str | Path, out_dir: str | Path) -> bool:
    """True when `extract` finished this archive into `out_dir` (the archive may be deleted since)."""
    archive, out_dir = Path(archive), Path(out_dir)
    try:
        recorded = read_json(_marker(archive, out_dir)).get("size")
    except (UsamError, AttributeError):  # no marker, or an unreadable one: not done
        return False
    return not archive.exists() or archive.stat().st_size == recorded


def extract(archive: str | Path, out_dir: str | Path) -> bool:
    """Unpack a tar (any compression) or zip into `out_dir`; False if done before.

    Every member is checked first-hand (no absolute paths, `..`, links leaving the
    archive, devices); the archive is unpacked in a temporary folder inside `out_dir`
    and moved in by renames, then `.<archive>.extracted` marks it done.
    """
    archive, out_dir = Path(archive), Path(out_dir)
    try:
        size = archive.stat().st_size
    except FileNotFoundError:
        raise UsamError(f"{archive} not found; nothing to extract") from None
    if is_extracted(archive, out_dir):
        log.info("%s: already extracted into %s", archive.name, out_dir)
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{archive.name}.tmp-*"):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.name}.tmp-", dir=out_dir))
    try:
        members = 0
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                infos = zf.infolist()
                for info in infos:
                    _check_member_name(info.filename, archive)
                for info in tqdm(infos, desc=f"extract {archive.name}", unit="file", leave=False):
                    zf.extract(info, tmp)
                members = len(infos)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tar:
                # one pass: check then unpack each member; a bad one discards the temp folder
                for m in tqdm(tar, desc=f"extract {archive.name}", unit="file", leave=False):
                    if not _check_tar_member(m, archive):
                        continue
                    if hasattr(tarfile, "data_filter"):  # the stdlib's own guard, where it exists
                        tar.extract(m, tmp, filter="data")
                    else:
                        tar.extract(m, tmp)
                    members += 1
        else:
            raise UsamError(
                f"{archive} is not a tar or zip archive (corrupt download? delete it and run again)"
            )
        with _MERGE_LOCK:  # archives unpacked in parallel threads may share folders
            _merge(tmp, out_dir)
    except _UNSAFE_MEMBER as err:
        raise UsamError(f"{archive}: unsafe member ({err}); refusing the archive") from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise UsamError(
            f"{archive}: broken archive ({err}); delete it and download it again"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(
        _marker(archive, out_dir), {"archive": str(archive), "size": size, "members": members}
    )
    log.info("%s: extracted %d members into %s", archive.name, members, out_dir)
    return True
