"""Link lists and checkpoints a careless user hands over."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import pytest

from usam.download import download, sidecar_path, verify_checkpoint
from usam.download_checkpoints import run
from usam.errors import UsamError

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = b"a checkpoint copied in by hand" * 100


@pytest.fixture
def sav_script():
    spec = importlib.util.spec_from_file_location(
        "download_sav", REPO / "scripts" / "download_sav.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "line,reason",
    [
        ("sav_000.tar\t" + "x" * 200_000, "field larger than field limit (131072)"),
    ],
)
def test_a_link_list_line_csv_cannot_read_is_one_error_line(
    tmp_path, sav_script, capsys, line, reason
):
    links = tmp_path / "links.tsv"
    links.write_text("file_name\tcdn_link\nsav_001.tar\thttp://127.0.0.1:9/a\n" + line + "\n")
    argv = ["--input-file", str(links), "--output-dir", str(tmp_path / "o")]
    assert sav_script.main(argv) == 1
    err = capsys.readouterr().err
    assert err == (
        f"error: {links}:3: not a link list line ({reason}); pass the SA-V link list (.tsv) "
        "with --input-file\n"
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("url", ["http://a/\x00b", "http://a/b c", "http://a/\nb"])
def test_a_url_with_control_characters_fails_at_once(tmp_path, url):
    with pytest.raises(UsamError) as err:
        download(url, tmp_path / "f.tar", retries=5, backoff=60)  # a retry would hang the test
    assert str(err.value) == (
        f"{url!r}: a URL cannot hold spaces or control characters (for {tmp_path / 'f.tar'})"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_copied_in_by_hand_gets_its_digest_recorded_on_first_use(tmp_path, caplog):
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    ckpt.write_bytes(WEIGHTS)
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    with caplog.at_level(logging.WARNING):
        verify_checkpoint(ckpt, None)
    assert sidecar_path(ckpt).read_text() == digest + "\n"
    assert f"recorded {digest} in sam2.1_hiera_tiny.pt.sha256 (first use)" in caplog.text
    verify_checkpoint(ckpt, None)  # unchanged: fine
    ckpt.write_bytes(WEIGHTS[:-1] + b"!")  # tampered with later
    with pytest.raises(
        UsamError, match=r"sam2\.1_hiera_tiny\.pt\.sha256 recorded .* changed or was truncated"
    ):
        verify_checkpoint(ckpt, None)


def test_a_wrong_file_against_a_pin_records_nothing(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(WEIGHTS)
    with pytest.raises(UsamError, match="expected the pinned"):
        verify_checkpoint(ckpt, hashlib.sha256(b"other").hexdigest())
    assert not sidecar_path(ckpt).exists()


def test_a_read_only_checkpoint_folder_stays_usable(tmp_path, monkeypatch, caplog):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(WEIGHTS)

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(Path, "write_text", refuse)
    with caplog.at_level(logging.WARNING):
        verify_checkpoint(ckpt, None)
    assert "cannot record its sha256" in caplog.text and "it stays unverified" in caplog.text


def test_download_checkpoints_records_a_hand_copied_file_instead_of_downloading(
    tmp_path, compose_cfg
):
    dest = tmp_path / "checkpoints" / "sam2.1" / "sam2.1_hiera_tiny.pt"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(WEIGHTS)
    cfg = compose_cfg(
        "download_checkpoints",
        [
            "sam_model.sizes=[tiny]",
            "sam_model.urls.tiny='http://127.0.0.1:9/never.pt'",
            "retries=0",
        ],
    )
    summary = run(cfg)
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert summary["files"][0]["status"] == "skipped" and summary["files"][0]["sha256"] == digest
    assert sidecar_path(dest).read_text() == digest + "\n"
