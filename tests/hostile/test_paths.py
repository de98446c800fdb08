"""Names from data that try to leave their folder: refused by every reader and writer.

Each case asserts the exact outcome: the error line, or the counted skip naming the entry,
and that nothing appeared (or changed) outside the dataset root and the output folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_extract import FakeModel, FakeModels
from video_trees import make_davis, make_mose, write_jpg, write_png

from usam.augment import Augmentations
from usam.datasets.coco import Coco
from usam.datasets.davis import Davis
from usam.datasets.mose import Mose
from usam.datasets.sav import SAV
from usam.errors import UsamError
from usam.extract import Extractor, RecordWriter
from usam.storage import inside

BAD_NAMES = {
    "../x": "has '..' segments",
    "a/../../x": "has '..' segments",
    "..": "has '..' segments",
    "a\\..\\x": "has '..' segments",
    "/abs/x": "is absolute",
    "C:/x": "is absolute",
    "": "empty or not text",
    ".": "names the folder itself",
    "a\x00b": "contains NUL",
}


def tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` with its bytes: 'nothing changed' is an equality of two trees."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("name", list(BAD_NAMES))
def test_the_shared_guard_refuses_every_escaping_name(tmp_path, name):
    with pytest.raises(UsamError) as err:
        inside(tmp_path, name, "record name")
    assert str(err.value) == (
        f"record name {name!r} is not a plain relative path ({BAD_NAMES[name]}); refusing it"
    )


def test_the_shared_guard_refuses_a_name_through_a_link_out(tmp_path):
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path, tmp_path / "out" / "up")
    assert inside(tmp_path / "out", "a/b.json") == tmp_path / "out" / "a" / "b.json"
    with pytest.raises(UsamError, match=r"^file name 'up/x' resolves outside .*/out; refusing it$"):
        inside(tmp_path / "out", "up/x")


@pytest.mark.parametrize("name", ["../bundle/frame.jpg", "/tmp/frame.jpg", "a/../../frame.jpg"])
def test_record_writer_refuses_names_leaving_out_dir_and_writes_nothing(tmp_path, name):
    out = tmp_path / "out"
    w = RecordWriter(root=out, dataset="d", split="val")
    for call in (lambda: w.write(name, {"instances": []}, {}), lambda: w.done(name)):
        with pytest.raises(UsamError, match=r"^record name \(image .*\) .* refusing it$"):
            call()
    assert tree(tmp_path) == {}


def test_record_writer_refuses_a_link_inside_out_dir_pointing_out(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    (victim / "config.json").write_text("{}")
    os.symlink(victim, out / "v")
    w = RecordWriter(root=out, dataset="d", split="val")
    with pytest.raises(UsamError, match="resolves outside"):
        w.write("v/config.jpg", {"instances": []}, {})
    assert tree(victim) == {"config.json": b"{}"}


# -- every reader whose names come from a file the dataset ships ---------------------------------
def unreadable(reader) -> list[tuple[str, str]]:
    return [(u["file"], u["reason"]) for u in reader.stats.unreadable]


def test_davis_list_entries_leaving_the_root_are_counted_skips(tmp_path):
    root = tmp_path / "DAVIS"
    vid = {"frames": 2, "size": (12, 16), "ids": (1,)}
    make_davis(root, {"cat": vid}, {"val": ["cat", "../../../victim", "/abs", "cat/../.."]})
    r = Davis(root=root, split="val", resolution="480p")
    assert [e.name for e in r.entries] == [
        "JPEGImages/480p/cat/00000.jpg",
        "JPEGImages/480p/cat/00001.jpg",
    ]
    lst = str(root / "ImageSets" / "2017" / "val.txt")
    assert unreadable(r) == [
        (lst, "video '../../../victim' leaves the dataset root (has '..' segments); skipped"),
        (lst, "video '/abs' leaves the dataset root (is absolute); skipped"),
        (lst, "video 'cat/../..' leaves the dataset root (has '..' segments); skipped"),
    ]


def test_mose_meta_keys_leaving_the_root_are_counted_skips(tmp_path):
    root = tmp_path / "MOSE"
    make_mose(root, "train", {"ok": {"frames": 1, "size": (12, 16), "ids": (1, 2)}})
    meta = json.loads((root / "meta_train.json").read_text())
    meta["videos"]["../../victim"] = {"length": 1}
    (root / "meta_train.json").write_text(json.dumps(meta))
    r = Mose(root=root, split="train")
    assert [e.name for e in r.entries] == ["train/JPEGImages/ok/00000.jpg"]
    assert unreadable(r) == [
        (
            str(root / "meta_train.json"),
            "video '../../victim' leaves the dataset root (has '..' segments); skipped",
        )
    ]


def test_sav_val_list_entries_leaving_the_root_are_counted_skips(tmp_path):
    split = tmp_path / "SAV" / "sav_val"
    for v in ("v1",):
        write_jpg(split / "JPEGImages_24fps" / v / "00000.jpg", 12, 16, seed=1)
        lab = np.zeros((12, 16), np.uint8)
        lab[2:5, 3:7] = 1
        write_png(split / "Annotations_6fps" / v / "000" / "00000.png", lab)
    (split / "sav_val.txt").write_text("v1\n../../victim\n")
    r = SAV(root=tmp_path / "SAV", split="val")
    assert [e.name for e in r.entries] == ["sav_val/JPEGImages_24fps/v1/00000.jpg"]
    assert unreadable(r) == [
        (
            str(split / "sav_val.txt"),
            "video '../../victim' leaves the dataset root (has '..' segments); skipped",
        )
    ]


def test_coco_file_names_leaving_the_root_are_counted_skips(tmp_path):
    root = tmp_path / "COCO"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(root / "val2017" / "ok.jpg")
    images = [
        {"id": 3, "file_name": "../../victim.jpg", "height": 10, "width": 10},
        {"id": 1, "file_name": "ok.jpg", "height": 10, "width": 10},
        {"id": 2, "file_name": "/etc/x.jpg", "height": 10, "width": 10},
    ]
    ann = root / "annotations" / "instances_val2017.json"
    ann.write_text(json.dumps({"images": images, "annotations": []}))
    r = Coco(root=root, split="val")
    assert [e.name for e in r.entries] == ["val2017/ok.jpg"]
    assert unreadable(r) == [
        (
            str(ann),
            "image 3: file_name '../../victim.jpg' leaves the dataset root (has '..' segments)",
        ),
        (str(ann), "image 2: file_name '/etc/x.jpg' leaves the dataset root (is absolute)"),
    ]


def test_extraction_over_a_hostile_list_writes_nothing_outside_out_dir(tmp_path):
    """The reported attack: a DAVIS list entry with `../` segments aimed at a bundle's
    config.json. The entry is a counted failure; the bundle and everything else outside
    out_dir stay byte for byte as they were."""
    root, out = tmp_path / "DAVIS", tmp_path / "inference"
    vid = {"frames": 1, "size": (8, 8), "ids": (1,)}
    make_davis(root, {"cat": vid}, {"val": ["cat", "../../../bundle"]})
    # the victim: a folder that the escaping entry reaches, holding real frames and a bundle
    bundle = tmp_path / "bundle"
    write_jpg(bundle / "00000.jpg", 8, 8, seed=3)
    write_png(
        root / "Annotations" / "480p" / ".." / ".." / ".." / "bundle" / "00000.png",
        np.ones((8, 8), np.uint8),
    )
    (bundle / "config.json").write_text('{"kind": "usam.predictor"}')
    before = tree(tmp_path / "bundle")
    ex = Extractor(
        models=FakeModels([FakeModel("tiny", 1.0)]),
        augment=Augmentations(),
        writer=RecordWriter(root=out, dataset="davis", split="val"),
    )
    summary = ex.run(Davis(root=root, split="val", resolution="480p"))
    assert summary["done"] == 1 and summary["failed"] == 1
    assert summary["failures"][0]["reason"] == (
        "video '../../../bundle' leaves the dataset root (has '..' segments); skipped"
    )
    assert tree(tmp_path / "bundle") == before
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json"))
    assert written == ["bundle/config.json", "inference/JPEGImages/480p/cat/00000.json"]
