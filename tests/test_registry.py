"""usam.registry: the one table of SAM 2 checkpoints, checked against what sam2 1.1 ships, and
read by every loader, the hub, the name parser and the downloader."""

from __future__ import annotations

import dataclasses
from importlib.resources import files

import pytest
from published import fill_hub_cache, offline_hub

from usam import hub, registry
from usam.download_checkpoints import run
from usam.errors import UsamError
from usam.inference import UncertainSAM
from usam.registry import lookup, parse_checkpoint_name, parse_hub_id
from usam.sam import SamModels
from usam.schema import SIZES


def test_every_row_is_a_config_sam2_ships_with_sam2s_own_hub_file():
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    assert registry.VERSIONS == ("sam2.1", "sam2.0")
    assert sorted(registry.CHECKPOINTS) == sorted((v, s) for v in registry.VERSIONS for s in SIZES)
    assert sorted(r.hub_id for r in registry.TABLE) == sorted(HF_MODEL_ID_TO_FILENAMES)
    for row in registry.TABLE:
        assert (files("sam2") / row.config).is_file(), row.config
        assert HF_MODEL_ID_TO_FILENAMES[row.hub_id] == (row.config, row.file)
        assert row.url.startswith("https://dl.fbaipublicfiles.com/") and row.url.endswith(
            "/" + row.file
        )
    assert lookup("sam2.0", "base_plus").config == "configs/sam2/sam2_hiera_b+.yaml"
    assert lookup("sam2.1", "large").file == "sam2.1_hiera_large.pt"


def test_names_and_hub_ids_parse_to_version_and_size():
    assert parse_checkpoint_name("x/sam2.1_hiera_base_plus.pt") == ("sam2.1", "base_plus")
    assert parse_checkpoint_name("sam2_hiera_large.pt") == ("sam2.0", "large")
    assert parse_checkpoint_name("my_sam2.1_hiera_small_copy.pt") == ("sam2.1", "small")
    assert parse_checkpoint_name("model.pt") == (None, None)
    assert parse_hub_id("facebook/sam2.1-hiera-base-plus") == ("sam2.1", "base_plus")
    assert parse_hub_id("facebook/sam2-hiera-small") == ("sam2.0", "small")
    assert parse_hub_id("facebook/sam-vit-huge") is None
    with pytest.raises(UsamError, match="size 'huge' is unknown; use one of tiny, small"):
        lookup("sam2.1", "huge")
    with pytest.raises(UsamError, match="version 'sam3' is unknown; use one of sam2.1, sam2.0"):
        lookup("sam3", "tiny")


def test_a_sam_model_config_replaces_only_the_values_it_sets():
    chosen = {"checkpoints": {"tiny": "t.pt", "large": None}, "urls": {"large": "http://m/l.pt"}}
    tiny, large = (registry.resolve("sam2.0", s, chosen) for s in ("tiny", "large"))
    assert (tiny.file, tiny.url) == ("t.pt", lookup("sam2.0", "tiny").url)
    assert (large.file, large.url) == ("sam2_hiera_large.pt", "http://m/l.pt")
    assert (
        tiny.config == large.config.replace("_l.yaml", "_t.yaml") == lookup("sam2.0", "tiny").config
    )
    assert registry.resolve("sam2.1", "small", None) == lookup("sam2.1", "small")


@pytest.fixture
def mirror(monkeypatch):
    """sam2.1 tiny swapped for a row no config or code names: small's config, another file,
    URL and hub id. Whatever reads the table gets these; a copy of it would not."""
    row = dataclasses.replace(
        lookup("sam2.1", "tiny"),
        config=lookup("sam2.1", "small").config,
        file="mirror_t.pt",
        url="http://127.0.0.1:9/mirror/t.pt",
        hub_id="mirror/sam2.1-t",
    )
    monkeypatch.setitem(registry.CHECKPOINTS, ("sam2.1", "tiny"), row)
    return row


class Stop(Exception):
    """Raised by a stand-in once it has seen what the code under test handed it."""


def recorder(seen: list):
    def record(first, *args, **kwargs):
        seen.append((first, *args))
        raise Stop

    return record


def test_loaders_hub_and_downloader_all_read_the_table(mirror, monkeypatch, tmp_path, compose_cfg):
    import usam.download_checkpoints as dl
    import usam.sam as sam

    assert parse_checkpoint_name(f"ckpt/{mirror.file}") == ("sam2.1", "tiny")
    assert parse_hub_id(mirror.hub_id) == ("sam2.1", "tiny")

    # the loaders: the file they look for and the config they build
    with pytest.raises(UsamError, match=r"mirror_t\.pt"):
        SamModels(version="sam2.1", sizes=["tiny"], checkpoint_dir=tmp_path, device="cpu")
    built = []
    monkeypatch.setattr(sam, "build_sam2_model", recorder(built))
    with pytest.raises(Stop):
        SamModels(version="sam2.1", sizes=["tiny"], checkpoint_dir=tmp_path, random_weights=True)
    with pytest.raises(Stop):
        UncertainSAM.from_pretrained(None, size="tiny", random_weights=True, device="cpu")
    assert [b[0] for b in built] == [mirror.config, mirror.config]

    # the hub: the id names the row, the row names the file to fetch
    fill_hub_cache(tmp_path / "hub", mirror.hub_id, mirror.file, b"mirrored")
    offline_hub(monkeypatch, tmp_path / "hub")
    path, version, size, _ = hub.download(mirror.hub_id)
    assert (path.name, version, size, path.read_bytes()) == (
        mirror.file,
        "sam2.1",
        "tiny",
        b"mirrored",
    )

    # the downloader, from Meta's server and from the hub
    fetched = []
    monkeypatch.setattr(dl, "download", recorder(fetched))
    cfg = compose_cfg("download_checkpoints", ["sam_model.sizes=[tiny]"])
    with pytest.raises(Stop):
        run(cfg)
    assert fetched == [(mirror.url, tmp_path / "checkpoints" / "sam2.1" / mirror.file)]
    summary = run(compose_cfg("download_checkpoints", ["sam_model.sizes=[tiny]", "source=hf"]))
    assert summary["files"][0]["url"] == f"hf://{mirror.hub_id}/{mirror.file}"
    assert (tmp_path / "checkpoints" / "sam2.1" / mirror.file).read_bytes() == b"mirrored"


def test_sam_model_overrides_win_over_the_table(mirror, monkeypatch, tmp_path, compose_cfg):
    import usam.download_checkpoints as dl

    fetched = []
    monkeypatch.setattr(dl, "download", recorder(fetched))
    cfg = compose_cfg(
        "download_checkpoints",
        [
            "sam_model.sizes=[tiny]",
            "sam_model.urls.tiny=http://local/t.pt",
            "sam_model.checkpoints.tiny=t.pt",
        ],
    )
    with pytest.raises(Stop):
        run(cfg)
    assert fetched == [("http://local/t.pt", tmp_path / "checkpoints" / "sam2.1" / "t.pt")]
