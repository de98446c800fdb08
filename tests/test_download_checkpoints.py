"""python -m usam.download_checkpoints against the loopback server of test_download."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from published import fill_hub_cache, offline_hub
from test_download import no_proxy, server  # noqa: F401  (fixtures: loopback HTTP server)

from usam import registry
from usam.download import sidecar_path, verify_checkpoint
from usam.download_checkpoints import run
from usam.errors import UsamError

WEIGHTS = b"not really a checkpoint" * 1000


@pytest.fixture
def cfg_for(server, tmp_path, compose_cfg):  # noqa: F811
    (server.root / "tiny.pt").write_bytes(WEIGHTS)

    def make(*extra):
        return compose_cfg(
            "download_checkpoints",
            [
                f"sam_model.urls.tiny='{server.url('tiny.pt')}'",
                "sam_model.sizes=[tiny]",
                f"paths.checkpoints={tmp_path / 'ckpt'}",
                "retries=0",
                *extra,
            ],
        )

    return make


def test_downloads_then_skips(cfg_for, server, tmp_path):  # noqa: F811
    summary = run(cfg_for())
    dest = tmp_path / "ckpt" / "sam2.1" / "sam2.1_hiera_tiny.pt"
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert dest.read_bytes() == WEIGHTS
    assert summary["files"] == [
        {
            "size": "tiny",
            "path": str(dest),
            "url": server.url("tiny.pt"),
            "pinned": False,
            "status": "downloaded",
            "sha256": digest,
        }
    ]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert (tmp_path / "run" / "config.yaml").is_file()
    verify_checkpoint(dest, None)  # what the SAM loader does: checks the recorded sidecar

    summary = run(cfg_for(f"sam_model.sha256.tiny='{digest}'"))
    assert summary["files"][0]["status"] == "skipped" and summary["files"][0]["sha256"] == digest
    assert len(server.requests) == 1


def test_pinned_mismatch_fails_and_keeps_nothing(cfg_for, tmp_path):
    wrong = hashlib.sha256(b"the real checkpoint").hexdigest()
    with pytest.raises(UsamError, match=f"1 of 1 .*sha256 mismatch: expected {wrong}"):
        run(cfg_for(f"sam_model.sha256.tiny='{wrong}'"))
    ckdir = tmp_path / "ckpt" / "sam2.1"
    assert list(ckdir.iterdir()) == []
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["files"][0]["status"] == "failed" and wrong in summary["files"][0]["error"]
    assert not sidecar_path(ckdir / "sam2.1_hiera_tiny.pt").exists()


def test_refuses_random_and_unknown_sizes(cfg_for):
    with pytest.raises(UsamError, match="random weights and needs no download"):
        run(cfg_for("sam_model=random"))
    with pytest.raises(UsamError, match="'huge'"):
        run(cfg_for("sam_model.sizes=[huge]"))


def test_every_version_resolves_to_its_own_files(tmp_path, compose_cfg):
    for version, name in [("sam2.1", "sam2.1_hiera_large.pt"), ("sam2.0", "sam2_hiera_large.pt")]:
        cfg = compose_cfg(
            "download_checkpoints", [f"sam_model={version}", f"paths.checkpoints={tmp_path}"]
        )
        assert cfg.sam_model.checkpoint_dir == f"{tmp_path}/{version}"
        row = registry.resolve(cfg.sam_model.version, "large", cfg.sam_model)
        assert row.file == name and row.url.endswith("/" + name)


def test_entrypoint_exits_1_with_one_line(tmp_path):
    env = {
        **os.environ,
        "USAM_OUTPUTS": str(tmp_path / "outputs"),
        "USAM_CHECKPOINTS": str(tmp_path),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "usam.download_checkpoints", "sam_model=random"],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "error: sam_model with random_weights=true" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_source_hf_copies_from_the_hub_cache_with_the_hubs_digest(
    cfg_for,
    server,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """source=hf: the same files through huggingface_hub (offline here: a filled cache), two
    sizes with different bytes so each lands under its own name; the Meta server is unused."""
    contents = {"tiny": b"tiny weights" * 100, "large": b"large weights" * 300}
    for size, data in contents.items():
        fill_hub_cache(
            tmp_path / "hub", f"facebook/sam2.1-hiera-{size}", f"sam2.1_hiera_{size}.pt", data
        )
    offline_hub(monkeypatch, tmp_path / "hub")
    summary = run(cfg_for("source=hf", "sam_model.sizes=[large,tiny]"))
    ckdir = tmp_path / "ckpt" / "sam2.1"
    for entry, size in zip(summary["files"], ["large", "tiny"], strict=True):
        dest = ckdir / f"sam2.1_hiera_{size}.pt"
        digest = hashlib.sha256(contents[size]).hexdigest()
        assert entry == {
            "size": size,
            "path": str(dest),
            "url": f"hf://facebook/sam2.1-hiera-{size}/sam2.1_hiera_{size}.pt",
            "pinned": False,
            "status": "downloaded",
            "sha256": digest,
        }
        assert dest.read_bytes() == contents[size] and not dest.is_symlink()
        verify_checkpoint(dest, None)  # the sidecar holds the hub's digest
    assert server.requests == []
    again = run(cfg_for("source=hf", "sam_model.sizes=[tiny]"))
    assert again["files"][0]["status"] == "skipped"


def test_source_hf_refuses_a_cached_file_that_is_not_what_the_hub_recorded(
    cfg_for, tmp_path, monkeypatch
):
    sha = fill_hub_cache(
        tmp_path / "hub", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", b"ok"
    )
    (tmp_path / "hub/models--facebook--sam2.1-hiera-tiny/blobs" / sha).write_bytes(b"changed")
    offline_hub(monkeypatch, tmp_path / "hub")
    with pytest.raises(UsamError, match=f"but the hub recorded {sha}"):
        run(cfg_for("source=hf"))
    assert not (tmp_path / "ckpt" / "sam2.1").exists()  # nothing written
    with pytest.raises(UsamError, match="source=ftp: use meta"):
        run(cfg_for("source=ftp"))
