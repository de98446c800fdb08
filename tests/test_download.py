"""Downloads against a loopback HTTP server (127.0.0.1 only), archives built in tmp_path."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import re
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest

from usam.download import (
    download,
    extract,
    file_sha256,
    is_complete,
    safe_join,
    sidecar_path,
    verify_checkpoint,
)
from usam.errors import UsamError

REPO = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 1200 + b"tail"  # 307204 bytes: many 4 KiB chunks


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Serves files from server.root with `Range: bytes=N-` support and scripted faults."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        if srv.fail_next:
            self.send_error(srv.fail_next.pop(0))
            return
        path = srv.root / unquote(self.path.lstrip("/"))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        if rng and not srv.ignore_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.drop_once:  # announce everything, send half, hang up
            srv.drop_once = False
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """Loopback only: a proxy from the environment must not see these requests."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server(tmp_path):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.root = tmp_path / "served"
    srv.root.mkdir()
    srv.requests, srv.fail_next = [], []
    srv.ignore_range = srv.drop_once = False
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def get(srv, name, dest, **kw):
    kw = {"progress": False, "timeout": 5, "chunk": 4096, "backoff": 0.01, **kw}
    return download(srv.url(name), dest, **kw)


# --------------------------------------------------------------------------- download


def test_full_download_records_digest_and_warns_unpinned(server, tmp_path, caplog):
    (server.root / "f.bin").write_bytes(DATA)
    dest = tmp_path / "out" / "f.bin"
    with caplog.at_level(logging.WARNING, logger="usam.download"):
        assert get(server, "f.bin", dest, progress=True) == dest
    assert dest.read_bytes() == DATA
    assert sidecar_path(dest).read_text().strip() == sha(DATA)
    assert not dest.with_name("f.bin.part").exists()
    assert server.requests == [("/f.bin", None)]
    assert "not verified against a pinned checksum" in caplog.text


def test_pinned_digest_accepted_without_warning(server, tmp_path, caplog):
    (server.root / "f.bin").write_bytes(DATA)
    dest = tmp_path / "f.bin"
    with caplog.at_level(logging.WARNING, logger="usam.download"):
        get(server, "f.bin", dest, sha256=sha(DATA).upper())  # case does not matter
    assert dest.read_bytes() == DATA and "not verified" not in caplog.text
    assert sidecar_path(dest).read_text().strip() == sha(DATA)


def test_resume_sends_range_and_hashes_the_whole_file(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA[:1000])
    get(server, "f.bin", dest, sha256=sha(DATA))
    assert server.requests == [("/f.bin", "bytes=1000-")]
    assert dest.read_bytes() == DATA


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    server.ignore_range = True
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"x" * 1000)  # wrong bytes: must not survive
    get(server, "f.bin", dest)
    assert server.requests == [("/f.bin", "bytes=1000-")]
    assert dest.read_bytes() == DATA
    assert sidecar_path(dest).read_text().strip() == sha(DATA)


def test_part_already_whole_needs_no_body(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA)
    get(server, "f.bin", dest, sha256=sha(DATA))
    assert server.requests == [("/f.bin", f"bytes={len(DATA)}-")]  # answered 416
    assert dest.read_bytes() == DATA


def test_part_longer_than_file_starts_over(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(DATA + b"junk")
    get(server, "f.bin", dest)
    assert server.requests == [("/f.bin", f"bytes={len(DATA) + 4}-"), ("/f.bin", None)]
    assert dest.read_bytes() == DATA


def test_dropped_connection_is_resumed(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    server.drop_once = True
    dest = tmp_path / "f.bin"
    get(server, "f.bin", dest, sha256=sha(DATA))
    assert server.requests == [("/f.bin", None), ("/f.bin", f"bytes={len(DATA) // 2}-")]
    assert dest.read_bytes() == DATA


def test_server_errors_are_retried(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    server.fail_next = [503, 500]
    get(server, "f.bin", tmp_path / "f.bin")
    assert len(server.requests) == 3
    assert (tmp_path / "f.bin").read_bytes() == DATA


def test_gives_up_after_retries_and_keeps_nothing_visible(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    server.fail_next = [503] * 10
    with pytest.raises(UsamError, match=r"failed 3 times in a row.*HTTP 503"):
        get(server, "f.bin", tmp_path / "f.bin", retries=2)
    assert len(server.requests) == 3
    assert not (tmp_path / "f.bin").exists()


def test_missing_file_is_not_retried(server, tmp_path):
    with pytest.raises(UsamError, match="HTTP 404"):
        get(server, "nope.bin", tmp_path / "nope.bin")
    assert len(server.requests) == 1


def test_sha_mismatch_deletes_the_download(server, tmp_path):
    (server.root / "f.bin").write_bytes(DATA)
    dest = tmp_path / "f.bin"
    wrong = sha(b"something else")
    with pytest.raises(UsamError) as err:
        get(server, "f.bin", dest, sha256=wrong)
    msg = str(err.value)
    assert str(dest) in msg and wrong in msg and sha(DATA) in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no dest, .part or sidecar


def test_bad_arguments_fail_before_any_request(server, tmp_path):
    with pytest.raises(UsamError, match="not a SHA-256 digest"):
        get(server, "f.bin", tmp_path / "f.bin", sha256="abc123")
    with pytest.raises(UsamError, match="only http"):
        download("file:///etc/hostname", tmp_path / "h", progress=False)
    assert server.requests == []


# --------------------------------------------------------------------------- is_complete / verify


def test_is_complete(tmp_path):
    dest = tmp_path / "f.bin"
    assert not is_complete(dest)
    dest.write_bytes(DATA)
    assert is_complete(dest)  # nothing to check against
    assert is_complete(dest, sha(DATA)) and not is_complete(dest, sha(b"x"))
    sidecar_path(dest).write_text(sha(DATA) + "\n")
    assert is_complete(dest)
    dest.write_bytes(DATA[:-1])  # truncated after download
    assert not is_complete(dest)
    sidecar_path(dest).write_text("garbage\n")
    assert not is_complete(dest)


def test_verify_checkpoint(tmp_path):
    ckpt = tmp_path / "m.pt"
    with pytest.raises(UsamError, match="not found.*usam.download_checkpoints"):
        verify_checkpoint(ckpt, None)
    ckpt.write_bytes(DATA)
    verify_checkpoint(ckpt, None)  # no pin, no sidecar: its digest is recorded on this first use
    verify_checkpoint(ckpt, sha(DATA))
    with pytest.raises(UsamError, match="expected the pinned"):
        verify_checkpoint(ckpt, sha(b"x"))
    sidecar_path(ckpt).write_text(sha(DATA) + "  m.pt\n")  # sha256sum format accepted
    verify_checkpoint(ckpt, None)
    ckpt.write_bytes(DATA[:100])
    with pytest.raises(UsamError, match=r"m\.pt\.sha256 recorded"):
        verify_checkpoint(ckpt, None)
    assert file_sha256(ckpt) == sha(DATA[:100])


# --------------------------------------------------------------------------- safe paths


@pytest.mark.parametrize(
    "name", ["../x", "/abs", "a/../../x", "a/../b", "..", "", ".", "C:/x", "a\\..\\x"]
)
def test_safe_join_rejects(tmp_path, name):
    with pytest.raises(UsamError, match="refusing"):
        safe_join(tmp_path, name)


def test_safe_join_accepts_and_follows_links(tmp_path):
    assert safe_join(tmp_path, "sav_000.tar") == tmp_path / "sav_000.tar"
    assert safe_join(tmp_path, "./a/b.txt") == tmp_path / "a" / "b.txt"
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path, tmp_path / "root" / "up")
    with pytest.raises(UsamError, match="resolves outside"):
        safe_join(tmp_path / "root", "up/x")


# --------------------------------------------------------------------------- archives


def make_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None, mode="w"):
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.mark.parametrize("mode,suffix", [("w", ".tar"), ("w:gz", ".tar.gz")])
def test_extract_tar_and_skip_rerun(tmp_path, mode, suffix):
    archive = make_tar(
        tmp_path / f"sav_000{suffix}",
        {"./": None, "./sav_000/a.mp4": b"video", "sav_000/a_manual.json": b"{}"},
        links={"sav_000/same.mp4": "a.mp4"},  # relative, stays inside: allowed
        mode=mode,
    )
    out = tmp_path / "out"
    (out / f".sav_000{suffix}.tmp-crashed").mkdir(parents=True)  # from an interrupted run
    assert extract(archive, out) is True
    assert (out / "sav_000" / "a.mp4").read_bytes() == b"video"
    assert (out / "sav_000" / "same.mp4").read_bytes() == b"video"
    assert leftovers(out) == [f".sav_000{suffix}.extracted", "sav_000"]  # no temp folder left
    (out / "sav_000" / "a.mp4").write_bytes(b"touched")
    assert extract(archive, out) is False  # marker: not unpacked again
    assert (out / "sav_000" / "a.mp4").read_bytes() == b"touched"


def test_extract_merges_archives_sharing_a_folder(tmp_path):
    out = tmp_path / "out"
    extract(make_tar(tmp_path / "a.tar", {"sav_train/sav_000/x.mp4": b"x"}), out)
    extract(make_tar(tmp_path / "b.tar", {"sav_train/sav_001/y.mp4": b"y"}), out)
    assert (out / "sav_train/sav_000/x.mp4").read_bytes() == b"x"
    assert (out / "sav_train/sav_001/y.mp4").read_bytes() == b"y"


@pytest.mark.parametrize(
    "members,links",
    [
        ({"ok.txt": b"fine", "../evil.txt": b"bad"}, None),
        ({"ok.txt": b"fine", "/tmp/evil.txt": b"bad"}, None),
        ({"ok.txt": b"fine"}, {"d/link": "../../evil.txt"}),
        ({"ok.txt": b"fine"}, {"link": "/etc/passwd"}),
    ],
)
def test_extract_rejects_escaping_tar(tmp_path, members, links):
    archive = make_tar(tmp_path / "bad.tar", members, links)
    out = tmp_path / "out"
    with pytest.raises(UsamError, match="bad.tar.*refusing"):
        extract(archive, out)
    assert leftovers(out) == []  # not even the safe member: all or nothing
    assert not (tmp_path / "evil.txt").exists()


def test_extract_zip(tmp_path):
    good, bad = tmp_path / "good.zip", tmp_path / "bad.zip"
    with zipfile.ZipFile(good, "w") as zf:
        zf.writestr("sav_val/sav_val.txt", "v1\n")
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("ok.txt", "fine")
        zf.writestr("../evil.txt", "bad")
    out = tmp_path / "out"
    assert extract(good, out)
    assert (out / "sav_val" / "sav_val.txt").read_text() == "v1\n"
    with pytest.raises(UsamError, match="bad.zip.*refusing"):
        extract(bad, out)
    assert leftovers(out) == [".good.zip.extracted", "sav_val"]
    assert not (tmp_path / "evil.txt").exists()


def test_extract_broken_or_foreign_file(tmp_path):
    archive = make_tar(tmp_path / "a.tar.gz", {"x.bin": os.urandom(50_000)}, mode="w:gz")
    archive.write_bytes(archive.read_bytes()[:20_000])  # truncated download
    with pytest.raises(UsamError, match="a.tar.gz"):
        extract(archive, tmp_path / "out")
    (tmp_path / "notes.tar").write_text("not an archive\n")
    with pytest.raises(UsamError, match="not a tar or zip"):
        extract(tmp_path / "notes.tar", tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


# --------------------------------------------------------------------------- scripts/download_sav.py


@pytest.fixture(scope="module")
def sav_script():
    spec = importlib.util.spec_from_file_location(
        "download_sav", REPO / "scripts" / "download_sav.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_download_sav_end_to_end(server, tmp_path, sav_script, capsys):
    make_tar(server.root / "sav_000.tar", {"sav_000/v.mp4": b"video"})
    (server.root / "sav_val.txt").write_text("v1\n")
    links = tmp_path / "links.tsv"
    # columns found by name, not position; a blank line and a duplicate are tolerated
    links.write_text(
        "cdn_link\tfile_name\n"
        f"{server.url('sav_000.tar')}\tsav_000.tar\n"
        f"{server.url('sav_val.txt')}\tsav_val.txt\n"
        "\n"
        f"{server.url('sav_val.txt')}\tsav_val.txt\n"
        f"{server.url('sav_val.txt')}\t../evil.txt\n"
        f"{server.url('gone.tar')}\tgone.tar\n"
        f"{server.url('x')}\n"
    )
    out = tmp_path / "sav"
    argv = [
        "--input-file",
        str(links),
        "--output-dir",
        str(out),
        "--extract",
        "--workers",
        "2",
        "--retries",
        "0",
    ]
    assert sav_script.main(argv) == 1
    text = capsys.readouterr().out
    assert "2 downloaded, 0 skipped (already complete), 1 extracted, 3 failed" in text
    assert "FAILED ../evil.txt" in text and "FAILED gone.tar" in text and "HTTP 404" in text
    assert "FAILED links.tsv:8: missing file_name or cdn_link" in text
    assert (out / "sav_000" / "v.mp4").read_bytes() == b"video"
    assert (out / "sav_val.txt").read_text() == "v1\n"
    assert not (tmp_path / "evil.txt").exists()

    # the good files again: all skipped, nothing fetched, exit 0; an archive deleted
    # after unpacking is not fetched again
    (out / "sav_000.tar").unlink()
    links.write_text(
        "file_name\tcdn_link\n"
        + "".join(f"{n}\t{server.url(n)}\n" for n in ("sav_000.tar", "sav_val.txt"))
    )
    before = len(server.requests)
    assert sav_script.main(argv) == 0
    assert (
        "0 downloaded, 2 skipped (already complete), 0 extracted, 0 failed"
        in capsys.readouterr().out
    )
    assert len(server.requests) == before


def test_download_sav_bad_link_list(tmp_path, sav_script, capsys):
    links = tmp_path / "links.tsv"
    links.write_text("name\turl\nsav_000.tar\thttp://127.0.0.1:9/x\n")
    argv = ["--input-file", str(links), "--output-dir", str(tmp_path / "o")]
    assert sav_script.main(argv) == 1
    err = capsys.readouterr().err
    assert "links.tsv" in err and "file_name" in err and "cdn_link" in err
    assert (
        sav_script.main(
            ["--input-file", str(tmp_path / "missing.tsv"), "--output-dir", str(tmp_path)]
        )
        == 1
    )
    assert "missing.tsv not found" in capsys.readouterr().err
