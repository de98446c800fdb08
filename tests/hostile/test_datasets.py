"""Broken and hostile dataset files: each is a counted skip naming the file and the reason
(or a counted drop), never a crash, a runaway allocation or a silently wrong mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_sav import H as SH
from test_sav import W as SW
from test_sav import box, masklet_json, rle, write_video
from video_trees import make_davis

from usam.datasets.coco import Coco
from usam.datasets.davis import Davis
from usam.datasets.sav import SAV, decode_rle
from usam.errors import SampleError, UsamError

H, W = 10, 12
SQUARE = [2, 2, 6, 2, 6, 6, 2, 6]  # rows 2..5, columns 2..5


def coco(root: Path, images: list[tuple[int, str]], anns: list[tuple[int, int, object]]) -> Path:
    """A COCO val tree: images (id, file_name), annotations (id, image_id, segmentation)."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "val2017").mkdir(exist_ok=True)
    for iid, name in images:
        Image.fromarray(np.full((H, W, 3), iid, np.uint8)).save(root / "val2017" / name)
    data = {
        "images": [{"id": i, "file_name": n, "height": H, "width": W} for i, n in images],
        "annotations": [
            {"id": a, "image_id": i, "segmentation": s, "area": 50, "iscrowd": 0}
            for a, i, s in anns
        ],
    }
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(data))  # json.dumps writes NaN / Infinity as COCO tools do
    return path


def skips(reader) -> list[tuple[str, str]]:
    return [(Path(u["file"]).name, u["reason"]) for u in reader.stats.unreadable]


# -- COCO ----------------------------------------------------------------------------------------
BAD_SEGMENTATIONS = {
    "nan": ([[2, 2, 6, float("nan"), 6, 6]], "polygon has a NaN or infinite coordinate"),
    "inf": ([[2, 2, 6, 2, float("inf"), 6]], "polygon has a NaN or infinite coordinate"),
    "huge": (
        [[2, 2, 1e30, 2, 6, 6]],
        "polygon coordinate out of range: x in [2, 1e+30], y in [2, 6] for a 12x10 image",
    ),
    "text": ([["2", "2", "x", 2, 6, 6]], "could not convert string to float: 'x'"),
    "nested": ([[[2, 2], [6, 2], [6, 6]]], "a polygon must be a flat list of numbers"),
    "rle size text": ({"size": ["10", "12"], "counts": [120]}, "RLE size ['10', '12'] differs"),
    "rle size huge": ({"size": [100000, 100000], "counts": "0"}, "RLE size [100000, 100000]"),
    "rle counts float": ({"size": [H, W], "counts": [60.5, 59.5]}, "list of integers"),
    "rle too short": ({"size": [H, W], "counts": [5, 5]}, "RLE counts cover 10 pixels"),
    "rle negative": ({"size": [H, W], "counts": [130, -10]}, "RLE counts cover 120 pixels"),
}


@pytest.mark.parametrize("case", list(BAD_SEGMENTATIONS))
def test_coco_bad_segmentation_is_a_counted_skip_before_pycocotools(tmp_path, case):
    seg, reason = BAD_SEGMENTATIONS[case]
    coco(tmp_path, [(4, "a.jpg"), (9, "b.jpg")], [(41, 4, [SQUARE]), (91, 9, seg)])
    r = Coco(root=tmp_path, split="val")
    samples = list(r)
    assert [s.name for s in samples] == ["val2017/a.jpg"]  # the other image is unharmed
    assert len(r.stats.unreadable) == 1
    file, why = skips(r)[0]
    assert file == "instances_val2017.json"
    assert why.startswith("annotation 91: bad segmentation (") and reason in why


def test_coco_short_and_odd_polygons_are_dropped_and_counted(tmp_path):
    coco(
        tmp_path,
        [(4, "a.jpg"), (9, "b.jpg")],
        [
            (41, 4, [[1, 1, 3, 3], SQUARE]),  # one 4-number "polygon" (a box to pycocotools)
            (42, 4, [[1, 1]]),  # nothing left: no instance
            (91, 9, [[1, 1, 5, 1, 5, 5, 9]]),  # odd length
        ],
    )
    r = Coco(root=tmp_path, split="val")
    by_name = {s.name: s for s in r}
    assert sorted(by_name["val2017/a.jpg"].masks) == [41]
    want = np.zeros((H, W), bool)
    want[2:6, 2:6] = True  # only the square: the 4-number list was not read as a box
    np.testing.assert_array_equal(by_name["val2017/a.jpg"].masks[41], want)
    assert by_name["val2017/b.jpg"].masks == {}
    assert r.stats.as_dict()["dropped"] == {
        "coco_polygons_under_6_numbers": 2,
        "coco_polygons_odd_length": 1,
    }


def test_coco_duplicate_image_ids_and_names_skip_every_image_involved(tmp_path):
    ann = coco(
        tmp_path,
        [(7, "a.jpg"), (7, "b.jpg"), (3, "c.jpg"), (5, "d.jpg"), (6, "d.jpg")],
        [(71, 7, [SQUARE]), (31, 3, [SQUARE]), (51, 5, [SQUARE])],
    )
    r = Coco(root=tmp_path, split="val")
    assert [(e.name, e.group) for e in r.entries] == [("val2017/c.jpg", "3")]
    assert [(u["file"], u["reason"]) for u in r.stats.unreadable] == [
        (
            str(ann),
            "image id 7 is listed 2 times ('a.jpg', 'b.jpg'): its annotations cannot be "
            "attributed; all of them skipped",
        ),
        (str(ann), "file_name 'd.jpg' is listed under 2 image ids [5, 6]: all of them skipped"),
    ]
    # sharded: every shard indexes the whole file, only shard 0 counts
    assert Coco(root=tmp_path, split="val", shard_index=1, shard_count=2).stats.unreadable == []


def test_coco_instance_cap_is_checked_before_decoding(tmp_path):
    coco(tmp_path, [(4, "a.jpg")], [(i, 4, [SQUARE]) for i in range(5)])
    r = Coco(root=tmp_path, split="val", max_instances=4)
    assert list(r) == []
    assert skips(r) == [
        (
            "a.jpg",
            "5 instances, more than dataset.max_instances=4 (not a label map of objects? raise the cap if it is)",
        )
    ]


# -- image and mask files ------------------------------------------------------------------------
@pytest.fixture
def davis(tmp_path):
    root = tmp_path / "DAVIS"
    make_davis(root, {"v": {"frames": 3, "size": (12, 16), "ids": (1, 2, 3)}}, {"val": ["v"]})
    return root


def frame(root: Path, kind: str, f: int) -> Path:
    folder, ext = ("JPEGImages", "jpg") if kind == "image" else ("Annotations", "png")
    return root / folder / "480p" / "v" / f"{f:05d}.{ext}"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "I;16"])
def test_masks_of_another_mode_are_counted_skips(davis, mode):
    lab = np.zeros((12, 16), np.uint8)
    lab[1:4, 1:5] = 1
    rgb = Image.fromarray(np.stack([lab * 200, lab * 10, lab * 99], -1).astype(np.uint8))
    make = {
        "RGB": lambda: rgb,
        "RGBA": lambda: rgb.convert("RGBA"),
        "LA": lambda: Image.fromarray(lab).convert("LA"),
        "I;16": lambda: Image.fromarray(lab.astype(np.uint16) * 257),
    }
    make[mode]().save(frame(davis, "mask", 1))
    assert Image.open(frame(davis, "mask", 1)).mode == mode
    r = Davis(root=davis, split="val", resolution="480p")
    assert [s.name[-9:] for s in r] == ["00000.jpg", "00002.jpg"]
    assert skips(r) == [
        (
            "00001.png",
            f"mask is a {mode} image; expected a palette (P) or 8-bit single-channel (L) PNG "
            "whose pixel values are ids",
        )
    ]


@pytest.mark.parametrize("kind", ["image", "mask"])
def test_decompression_bombs_are_counted_skips(davis, monkeypatch, kind):
    # PIL refuses images over 2 x MAX_IMAGE_PIXELS; a small limit makes a small file a "bomb"
    big = np.zeros((30, 40, 3) if kind == "image" else (30, 40), np.uint8)
    Image.fromarray(big).save(
        frame(davis, kind, 2), **({"format": "JPEG"} if kind == "image" else {})
    )
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 12x16 = 192 px pass, 30x40 = 1200 do not
    r = Davis(root=davis, split="val", resolution="480p")
    assert [s.name[-9:] for s in r] == ["00000.jpg", "00001.jpg"]
    ((file, why),) = skips(r)
    assert file == frame(davis, kind, 2).name
    assert why.startswith(
        f"{kind} too large: Image size (1200 pixels) exceeds limit of 1000 pixels"
    )
    assert "Image.MAX_IMAGE_PIXELS=500" in why


def test_instance_cap_is_a_counted_skip_and_configurable(davis):
    r = Davis(root=davis, split="val", resolution="480p", max_instances=2)
    assert list(r) == []
    assert {why for _, why in skips(r)} == {
        "3 instances, more than dataset.max_instances=2 (not a label map of objects? raise the cap if it is)"
    }
    assert len(list(Davis(root=davis, split="val", resolution="480p", max_instances=3))) == 3
    with pytest.raises(
        UsamError, match=r"^dataset.max_instances must be an integer >= 1, got 'x'$"
    ):
        Davis(root=davis, split="val", resolution="480p", max_instances="x")


# -- SA-V ----------------------------------------------------------------------------------------
def test_a_broken_sav_video_is_counted_once(tmp_path):
    sub = tmp_path / "SAV" / "sav_train" / "sav_000"
    sub.mkdir(parents=True)
    (sub / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    masklet_json(sub / "bad_manual.json", [1], n=5)
    write_video(sub / "good.mp4")
    masklet_json(sub / "good_manual.json", [2], n=2)
    r = SAV(root=tmp_path / "SAV", split="train")
    assert len(r) == 7
    samples = list(r)
    assert [s.name[-10:] for s in samples] == ["good/00000", "good/00004"]
    assert [(u["file"], u["reason"]) for u in r.stats.unreadable] == [
        (
            str(sub / "bad.mp4"),
            "cannot open video (missing, corrupt or unknown codec); the video's remaining "
            "frames are skipped with it",
        )
    ]
    np.testing.assert_array_equal(samples[1].masks[2], box(1, 2))


@pytest.mark.parametrize(
    "rle_dict,reason",
    [
        ({"size": [SH, SW], "counts": "0"}, "RLE runs cover 0 pixels, the frame has 3072"),
        ({"size": [SH, SW], "counts": [3072]}, "RLE counts must be a compressed RLE string"),
        (
            {"size": [SH, SW], "counts": "P"},
            "undecodable RLE (compressed RLE string ends inside a number)",
        ),
    ],
)
def test_sav_rles_are_checked_before_pycocotools(tmp_path, rle_dict, reason):
    path = tmp_path / "v_manual.json"
    with pytest.raises(SampleError) as err:
        decode_rle(rle_dict, (SH, SW), path, "masklet 3 in annotated frame 1")
    assert err.value.path == str(path)
    assert (
        err.value.reason.startswith("masklet 3 in annotated frame 1: ")
        and reason in err.value.reason
    )
    good = decode_rle(rle(box(0, 3)), (SH, SW), path, "m")
    np.testing.assert_array_equal(good, box(0, 3))
