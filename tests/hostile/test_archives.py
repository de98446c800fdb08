"""Archives built to escape the output folder or to forge another archive's done-marker.

The link checks must be sound without the stdlib's `tarfile.data_filter` (Python 3.10.0-
3.10.11 and 3.11.0-3.11.3 lack it), so every case runs both with the filter and with it
removed, as on those Pythons.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from usam.download import extract, is_extracted
from usam.errors import UsamError


@pytest.fixture(params=["stdlib filter", "no filter (Python < 3.11.4)"])
def python(request, monkeypatch):
    if request.param.startswith("no filter") and hasattr(tarfile, "data_filter"):
        monkeypatch.delattr(tarfile, "data_filter")
    return request.param


def make_tar(path: Path, members: list[tuple[str, str, bytes | str | None]]) -> Path:
    """members: (name, kind, data): kind 'file' (bytes), 'dir', 'sym' / 'hard' (link target)."""
    with tarfile.open(path, "w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE}[
                kind
            ]
            if kind in ("sym", "hard"):
                info.linkname = data
            tar.addfile(info)
    return path


def everything(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


CHAINS = {
    # a link to `..` inside a folder, then a link through it: textually both stay inside
    "link to .. then through it": [
        ("x", "dir", None),
        ("x/l1", "sym", ".."),
        ("x/l1/l2", "sym", ".."),
        ("x/l1/l2/evil.txt", "file", b"escaped"),
    ],
    # the same chain, links created in the order that defeats a check of each link alone
    "link through a link made later": [
        ("a", "sym", "c/.."),
        ("c", "sym", "."),
        ("a/evil.txt", "file", b"escaped"),
    ],
    "hard link through a symlink": [
        ("up", "sym", "../.."),
        ("h", "hard", "up/victim.txt"),
    ],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_link_chains_are_refused_on_every_python(tmp_path, python, chain):
    (tmp_path / "victim.txt").write_text("keep")
    archive = make_tar(tmp_path / "chain.tar", CHAINS[chain])
    out = tmp_path / "deep" / "out"
    with pytest.raises(
        UsamError, match=r"chain\.tar: member '(x/l1|a|up)' links upwards .* refusing the archive"
    ):
        extract(archive, out)
    assert everything(tmp_path) == ["chain.tar", "deep", "deep/out", "victim.txt"]
    assert (tmp_path / "victim.txt").read_text() == "keep"


def test_links_within_their_own_folder_still_work_without_the_filter(tmp_path, python):
    archive = make_tar(
        tmp_path / "ok.tar",
        [
            ("v/a.mp4", "file", b"video"),
            ("v/same.mp4", "sym", "a.mp4"),
            ("here", "sym", "."),  # a link to its own folder: resolves inside, whatever follows
            ("here/here/b.txt", "file", b"b"),
        ],
    )
    out = tmp_path / "out"
    assert extract(archive, out) is True
    assert (out / "v" / "same.mp4").read_bytes() == b"video"
    assert (out / "b.txt").read_bytes() == b"b"
    assert everything(tmp_path / "out") == [
        ".ok.tar.extracted",
        "b.txt",
        "here",
        "v",
        "v/a.mp4",
        "v/same.mp4",
    ]


@pytest.mark.parametrize(
    "member", [".b.tar.extracted", "sub/.b.tar.extracted", "lift/.b.tar.extracted", ".b.tar.tmp-1"]
)
def test_an_archive_cannot_forge_another_archives_done_marker(tmp_path, python, member):
    marker = json.dumps({"archive": "b.tar", "size": 10240, "members": 1}).encode()
    a = make_tar(tmp_path / "a.tar", [("lift", "sym", "."), (member, "file", marker)])
    b = make_tar(tmp_path / "b.tar", [("b/data.txt", "file", b"the real data")])
    out = tmp_path / "out"
    with pytest.raises(UsamError) as err:
        extract(a, out)
    assert str(err.value) == (
        f"{a}: member {member!r} has the name of a usam extraction marker or temporary folder; "
        "refusing the archive"
    )
    assert not is_extracted(b, out)
    assert extract(b, out) is True
    assert (out / "b" / "data.txt").read_bytes() == b"the real data"


def test_a_zip_cannot_forge_a_marker_either(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("sub/.b.tar.extracted", '{"size": 1}')
    with pytest.raises(
        UsamError, match=r"'sub/\.b\.tar\.extracted' has the name of a usam extraction marker"
    ):
        extract(z, tmp_path / "out")
    assert everything(tmp_path / "out") == []
