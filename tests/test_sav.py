"""SA-V reader on tiny trees whose answers are known by construction."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from usam.datasets import sav
from usam.datasets.sav import AUTO_ID_OFFSET, SAV
from usam.errors import SampleError, UsamError

H, W, N_FRAMES = 48, 64, 17  # annotated frames 0, 4, 8, 12, 16
COLORS = [((i * 53) % 256, (i * 97 + 40) % 256, (200 - i * 11) % 256) for i in range(N_FRAMES)]


def write_video(path: Path, n: int = N_FRAMES) -> None:
    """Flat-colored frames, frame i in RGB COLORS[i]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 24, (W, H))
    assert vw.isOpened()
    for c in COLORS[:n]:
        vw.write(np.full((H, W, 3), c[::-1], np.uint8))  # BGR
    vw.release()


def frame_of(image: np.ndarray) -> int:
    """Which video frame an RGB image is, by its mean color (mp4v is lossy)."""
    mean = image.reshape(-1, 3).mean(0)
    dist = [np.abs(mean - np.array(c)).max() for c in COLORS]
    assert min(dist) < 12
    return int(np.argmin(dist))


def box(k: int, mid: int) -> np.ndarray:
    """Masklet `mid`'s mask in annotated frame k: a box that moves with k and mid."""
    m = np.zeros((H, W), bool)
    m[2 + k : 10 + k, 3 * mid : 3 * mid + 5 + k] = True
    return m


def rle(m: np.ndarray, size: tuple[int, int] | None = None) -> dict:
    r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": list(size or m.shape), "counts": r["counts"].decode()}


def masklet_json(path: Path, ids: list[int], n: int = 5, empty: set = frozenset()) -> dict:
    """A JSON where masklet `mid` is box(k, mid) in frame k, except (k, mid) in `empty`."""
    frames = [
        [rle(np.zeros((H, W), bool) if (k, i) in empty else box(k, i)) for i in ids]
        for k in range(n)
    ]
    data = {
        "video_id": path.name.rsplit("_", 1)[0],
        "video_frame_count": N_FRAMES,
        "masklet_id": ids,
        "masklet": frames,
    }
    path.write_text(json.dumps(data))
    return data


def make_train(root: Path) -> Path:
    """sav_000: vid_a (manual [0, 1] with 1 empty in frame 0; auto [0, 3]), vid_b (manual [2]);
    sav_001: vid_c (manual [1]); vid_c has 3 annotated frames only."""
    s0, s1 = root / "sav_train" / "sav_000", root / "sav_train" / "sav_001"
    for d, v in [(s0, "vid_a"), (s0, "vid_b"), (s1, "vid_c")]:
        write_video(d / f"{v}.mp4")
    masklet_json(s0 / "vid_a_manual.json", [0, 1], empty={(0, 1)})
    masklet_json(s0 / "vid_a_auto.json", [0, 3])
    masklet_json(s0 / "vid_b_manual.json", [2])
    masklet_json(s1 / "vid_c_manual.json", [1], n=3)
    return root


def make_val(root: Path, split: str = "val", videos=("v1", "v2")) -> Path:
    """v1: objects 1 and 7 over frames 0, 4, 8 (7 empty in frame 4); v2: object 2, frame 0.
    A video `v3` exists on disk but is not in the list."""
    d = root / f"sav_{split}"
    spec = {"v1": {1: [0, 4, 8], 7: [0, 4, 8]}, "v2": {2: [0]}, "v3": {5: [0]}}
    for v, objs in spec.items():
        for f in range(9):
            p = d / "JPEGImages_24fps" / v / f"{f:05d}.jpg"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((H, W, 3), COLORS[f], np.uint8)).save(p, quality=95)
        for obj, frames in objs.items():
            for f in frames:
                p = d / "Annotations_6fps" / v / f"{obj:03d}" / f"{f:05d}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                m = np.zeros((H, W), np.uint8) if (obj, f) == (7, 4) else box(f, obj) * 255
                Image.fromarray(m.astype(np.uint8)).save(p)
    (d / f"sav_{split}.txt").write_text("\n".join(videos) + "\n\n")
    return root


@pytest.fixture
def train_root(tmp_path):
    return make_train(tmp_path / "SAV")


@pytest.fixture
def val_root(tmp_path):
    return make_val(tmp_path / "SAV")


def check_train_sample(s, manual: dict, auto: dict = {}):  # noqa: B006 - read-only
    """Masks of an annotated frame k of a train video built by masklet_json."""
    k = int(s.name.rsplit("/", 1)[1]) // 4
    assert frame_of(s.image) == 4 * k
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    want = {**{i: box(k, i) for i in manual}, **{o + i: box(k, i) for i, o in auto.items()}}
    assert sorted(s.masks) == sorted(want)
    for i, m in want.items():
        assert np.array_equal(s.masks[i], m)


# -- train ---------------------------------------------------------------------------------------
def test_train_manual(train_root):
    r = SAV(root=train_root, split="train")
    names = [e.name for e in r.entries]
    assert names[:6] == [f"sav_train/sav_000/vid_a/{4 * k:05d}" for k in range(5)] + [
        "sav_train/sav_000/vid_b/00000"
    ]
    assert names[-3:] == [f"sav_train/sav_001/vid_c/{4 * k:05d}" for k in range(3)]
    assert len(r) == 13
    assert [e.index_in_group for e in r.entries[:5]] == [0, 1, 2, 3, 4]
    samples = list(r)
    assert [s.group for s in samples] == ["vid_a"] * 5 + ["vid_b"] * 5 + ["vid_c"] * 3
    assert [s.name for s in samples] == names
    for s in samples:
        ids = {"vid_a": [0, 1], "vid_b": [2], "vid_c": [1]}[s.group]
        if s.name == "sav_train/sav_000/vid_a/00000":
            ids = [0]  # masklet 1 is empty there
        check_train_sample(s, ids)
    assert r.stats.images == 13 and r.stats.instances == 2 * 5 - 1 + 5 + 3
    assert r.stats.unreadable == [] and r.stats.empty == 0
    assert r._cap is None  # released after iterating


def test_train_annotation_sets(train_root):
    sub = {"train_subsets": ["sav_000"]}
    auto = SAV(root=train_root, split="train", annotation_set="auto", **sub)
    # vid_b has no auto JSON: skipped, counted once
    assert [e.group for e in auto.entries] == ["vid_a"] * 5
    assert len(auto.stats.unreadable) == 1 and "vid_b" in auto.stats.unreadable[0]["file"]
    for s in auto:
        check_train_sample(s, [0, 3])
    both = SAV(root=train_root, split="train", annotation_set="both", **sub)
    samples = list(both)
    assert len(samples) == 10 and both.stats.unreadable == []
    for s in samples:
        if s.group == "vid_a":
            manual = [0] if s.name.endswith("/00000") else [0, 1]
            check_train_sample(s, manual, {0: AUTO_ID_OFFSET, 3: AUTO_ID_OFFSET})
        else:
            check_train_sample(s, [2])
    with pytest.raises(UsamError, match="annotation_set"):
        SAV(root=train_root, split="train", annotation_set="all")


def test_train_subsets(train_root):
    r = SAV(root=train_root, split="train", train_subsets=["sav_001"])
    assert {e.group for e in r.entries} == {"vid_c"} and len(r) == 3
    r = SAV(root=train_root, split="train", train_subsets="sav_000")  # a single name works too
    assert {e.group for e in r.entries} == {"vid_a", "vid_b"}
    with pytest.raises(UsamError, match="sav_007"):
        SAV(root=train_root, split="train", train_subsets=["sav_000", "sav_007"])


def test_train_sample_keeps_every_kth_annotated_frame(train_root):
    r = SAV(root=train_root, split="train", sample=2)
    assert [e.name.split("/", 2)[2] for e in r.entries] == [
        "vid_a/00000", "vid_a/00008", "vid_a/00016",
        "vid_b/00000", "vid_b/00008", "vid_b/00016",
        "vid_c/00000", "vid_c/00008",
    ]  # fmt: skip
    for s in r:
        assert frame_of(s.image) == int(s.name[-5:])


def test_train_shards_cover_split_and_start_mid_video(train_root):
    full = [e.name for e in SAV(root=train_root, split="train").entries]
    shards = [SAV(root=train_root, split="train", shard_index=i, shard_count=3) for i in range(3)]
    assert [e.name for s in shards for e in s.entries] == full
    # both later shards start mid-video, so their first read must seek, not read frame 0
    assert shards[1].entries[0].name == "sav_train/sav_000/vid_a/00016"
    assert shards[2].entries[0].name == "sav_train/sav_000/vid_b/00012"
    for shard in shards:
        for s in shard:
            ids = {"vid_a": [0, 1], "vid_b": [2], "vid_c": [1]}[s.group]
            check_train_sample(s, [0] if s.name.endswith("vid_a/00000") else ids)


def test_train_frames_out_of_order(train_root):
    r = SAV(root=train_root, split="train", train_subsets=["sav_000"])
    order = [7, 2, 3, 0, 9, 4, 4, 1, 8, 5]  # backwards, repeats, jumps across videos
    for i in order:
        e = r.entries[i]
        s = r.load(e)
        assert frame_of(s.image) == 4 * e.index_in_group, e.name
        check_train_sample(
            s, [0] if e.name.endswith("vid_a/00000") else {"vid_a": [0, 1]}.get(s.group, [2])
        )
    video = r.entries[0].info["video"]
    assert [frame_of(r.read_frame(video, n)) for n in (16, 1, 15)] == [16, 1, 15]


def test_train_far_jump_ahead_seeks(train_root, monkeypatch):
    monkeypatch.setattr(sav, "_MAX_GRAB", 2)
    r = SAV(root=train_root, split="train")
    video = r.entries[0].info["video"]
    assert [frame_of(r.read_frame(video, n)) for n in (0, 2, 13, 16)] == [0, 2, 13, 16]
    r.close()


# -- val / test ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["val", "test"])
def test_val_test(tmp_path, split):
    root = make_val(tmp_path / "SAV", split)
    r = SAV(root=root, split=split)
    d = f"sav_{split}/JPEGImages_24fps"
    assert [e.name for e in r.entries] == [
        f"{d}/v1/00000.jpg",
        f"{d}/v1/00004.jpg",
        f"{d}/v1/00008.jpg",
        f"{d}/v2/00000.jpg",
    ]  # fmt: skip  (v3 is not listed)
    assert [e.index_in_group for e in r.entries] == [0, 1, 2, 0]
    samples = list(r)
    assert [s.group for s in samples] == ["v1", "v1", "v1", "v2"]
    for s in samples:
        f = int(s.name[-9:-4])
        assert np.abs(s.image.reshape(-1, 3).mean(0) - COLORS[f]).max() < 4
        want = {"v1": [1, 7], "v2": [2]}[s.group]
        if s.name.endswith("v1/00004.jpg"):
            want = [1]  # object 7's PNG is empty there
        assert sorted(s.masks) == want
        for i in want:
            assert np.array_equal(s.masks[i], box(f, i))
    assert r.stats.images == 4 and r.stats.instances == 2 + 1 + 2 + 1
    r = SAV(root=root, split=split, sample=2)
    assert [e.name[-12:] for e in r.entries] == ["v1/00000.jpg", "v1/00008.jpg", "v2/00000.jpg"]


# -- bad input -----------------------------------------------------------------------------------
def test_missing_layout_fails_at_once(tmp_path, val_root):
    with pytest.raises(UsamError, match="nowhere"):
        SAV(root=tmp_path / "nowhere", split="val")
    with pytest.raises(UsamError, match="sav_train"):
        SAV(root=val_root, split="train")
    with pytest.raises(UsamError, match="sav_test"):
        SAV(root=val_root, split="test")
    (val_root / "sav_val" / "sav_val.txt").unlink()
    with pytest.raises(UsamError, match=r"sav_val\.txt.*expected SA-V"):
        SAV(root=val_root, split="val")
    (tmp_path / "empty" / "sav_train").mkdir(parents=True)
    with pytest.raises(UsamError, match="no sav_NNN"):
        SAV(root=tmp_path / "empty", split="train")


def test_train_broken_inputs_are_skipped_and_counted(train_root):
    s0 = train_root / "sav_train" / "sav_000"
    (s0 / "vid_a.mp4").write_bytes(b"not a video")  # 5 entries: one broken video, counted once
    (s0 / "vid_b_manual.json").write_text('{"masklet_id": [2], "masklet": [')  # broken JSON
    s1 = train_root / "sav_train" / "sav_001"
    data = masklet_json(s1 / "vid_c_manual.json", [1], n=6)  # frame 20 is past the end
    data["masklet"][1][0] = rle(box(1, 1)[:40], (40, W))  # wrong size in annotated frame 1
    (s1 / "vid_c_manual.json").write_text(json.dumps(data))
    r = SAV(root=train_root, split="train")
    assert len(r) == 5 + 6  # vid_b is gone
    samples = list(r)
    assert [s.name[-5:] for s in samples] == ["00000", "00008", "00012", "00016"]
    files = [u["file"] for u in r.stats.unreadable]
    assert files.count(str(s0 / "vid_b_manual.json")) == 1
    assert files.count(str(s0 / "vid_a.mp4")) == 1
    assert files.count(str(s1 / "vid_c_manual.json")) == 1  # the size mismatch
    assert files.count(str(s1 / "vid_c.mp4")) == 1  # frame 20
    assert len(files) == 4 and r.stats.images == 4
    reasons = " ".join(u["reason"] for u in r.stats.unreadable)
    assert "64x40 but the video frame is 64x48" in reasons and "cannot read frame 20" in reasons
    # only shard 0 counts index-time skips, so summing shards counts each once
    shard1 = SAV(root=train_root, split="train", shard_index=1, shard_count=2)
    assert len(shard1) > 0 and shard1.stats.unreadable == []

    with pytest.raises(SampleError, match="vid_b_manual.json.*broken annotation"):
        SAV(root=train_root, split="train", strict=True).entries  # noqa: B018
    with pytest.raises(SampleError, match="64x40"):
        list(SAV(root=train_root, split="train", strict=True, train_subsets=["sav_001"]))
    (s0 / "vid_b.mp4").unlink()
    (s0 / "vid_b_manual.json").unlink()
    with pytest.raises(SampleError, match="vid_a.mp4.*cannot open video"):
        list(SAV(root=train_root, split="train", strict=True, train_subsets=["sav_000"]))


def test_train_missing_video_or_annotation(train_root):
    s0 = train_root / "sav_train" / "sav_000"
    (s0 / "vid_b.mp4").unlink()
    write_video(s0 / "vid_z.mp4")  # no JSON at all
    r = SAV(root=train_root, split="train", train_subsets=["sav_000"])
    assert {e.group for e in r.entries} == {"vid_a"}
    reasons = {Path(u["file"]).name: u["reason"] for u in r.stats.unreadable}
    assert reasons["vid_b.mp4"].startswith("video file missing")
    assert reasons["vid_z.mp4"].startswith("no annotation file")


def test_val_broken_inputs_are_skipped_and_counted(val_root):
    d = val_root / "sav_val"
    (d / "JPEGImages_24fps" / "v1" / "00004.jpg").write_bytes(b"\xff\xd8 broken jpeg")
    (d / "Annotations_6fps" / "v1" / "001" / "00008.png").write_bytes(b"\x89PNG broken")
    small = np.zeros((H // 2, W), np.uint8)
    Image.fromarray(small).save(d / "Annotations_6fps" / "v2" / "002" / "00000.png")
    (d / "sav_val.txt").write_text("v1\nv2\nv_missing\n")
    r = SAV(root=val_root, split="val")
    assert len(r) == 4
    samples = list(r)
    assert [s.name[-12:] for s in samples] == ["v1/00000.jpg"]
    files = sorted(Path(u["file"]).relative_to(d).as_posix() for u in r.stats.unreadable)
    assert files == [
        "Annotations_6fps/v1/001/00008.png",
        "Annotations_6fps/v2/002/00000.png",
        "Annotations_6fps/v_missing",
        "JPEGImages_24fps/v1/00004.jpg",
    ]
    with pytest.raises(SampleError, match="v_missing: listed video has no annotation"):
        SAV(root=val_root, split="val", strict=True).entries  # noqa: B018
    (d / "sav_val.txt").write_text("v1\nv2\n")
    with pytest.raises(SampleError, match="00004.jpg"):
        list(SAV(root=val_root, split="val", strict=True, shard_index=1, shard_count=4))


# -- config --------------------------------------------------------------------------------------
def test_hydra_config_instantiates(train_root, compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "datasets",
        [
            "dataset=sav",
            f"dataset.root={train_root}",
            "dataset.split=train",
            "dataset.train_subsets=[sav_001]",
            "dataset.annotation_set=both",
        ],
    )
    reader = instantiate(cfg.dataset)
    assert isinstance(reader, SAV) and reader.name == "sav" and len(reader) == 3
    assert reader.train_subsets == ["sav_001"]


# -- from the mutation run (issue 16) --
RLE_PATH = Path("sav_train/sav_000/vid_manual.json")
WHAT = "masklet 2 in annotated frame 3"
# a 3x5 mask whose top-left pixel is set: column-major COCO RLE, first (background) run is 0
CORNER = np.zeros((3, 5), bool)
CORNER[0, 0] = CORNER[2, 1] = CORNER[1, 4] = True
CORNER_COUNTS = "014030J"  # runs 0, 1, 4, 1, 7, 1, 1
REAL_CAPTURE = cv2.VideoCapture


def sav_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == sav.__name__]


def test_defaults_parallel_load_and_content_settings(tmp_path):
    """split defaults to val; only train (one forward-read video) loads serially."""
    root = make_train(make_val(tmp_path / "SAV"))
    val = SAV(root=root)
    assert val.split == "val" and [e.group for e in val.entries] == ["v1"] * 3 + ["v2"]
    assert val.parallel_load is True
    train = SAV(root=root, split="train", annotation_set="auto")
    assert train.parallel_load is False
    assert train.content_settings() == {"annotation_set": "auto"}


def test_unknown_annotation_set_exact_message(train_root):
    with pytest.raises(UsamError) as err:
        SAV(root=train_root, split="train", annotation_set="all")
    assert str(err.value) == "dataset.annotation_set must be one of manual, auto, both, got 'all'"


@pytest.mark.parametrize(
    "remove, split, what",
    [
        ("sav_train", "train", "SA-V train folder"),
        ("sav_val/sav_val.txt", "val", "SA-V val video list"),
        ("sav_val/JPEGImages_24fps", "val", "SA-V val frames"),
        ("sav_val/Annotations_6fps", "val", "SA-V val annotations"),
    ],
)
def test_a_missing_part_is_named_in_the_exact_message(tmp_path, remove, split, what):
    root = make_train(make_val(tmp_path / "SAV"))
    target = root / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UsamError) as err:
        SAV(root=root, split=split)
    assert str(err.value) == f"{target} not found ({what}); expected {sav.LAYOUT}"


def test_missing_train_subsets_exact_message(train_root, tmp_path):
    d = train_root / "sav_train"
    with pytest.raises(UsamError) as err:
        SAV(root=train_root, split="train", train_subsets=["sav_007", "sav_000", "sav_009"])
    assert str(err.value) == (
        f"dataset.train_subsets names sav_007, sav_009, not found in {d} "
        "(present: sav_000, sav_001)"
    )
    bare = tmp_path / "bare" / "sav_train"
    bare.mkdir(parents=True)
    (bare / "notes.txt").write_text("a file, not a subset folder")
    with pytest.raises(UsamError) as err:
        SAV(root=tmp_path / "bare", split="train", train_subsets="sav_000")
    assert str(err.value) == (
        f"dataset.train_subsets names sav_000, not found in {bare} (present: none)"
    )


def test_train_index_skips_with_exact_reasons_and_log(train_root, caplog):
    """Under `both`: an auto id at the offset is refused, a JSON-less mp4 names both JSONs,
    a JSON with no annotated frame gives no entry and no skip."""
    s0 = train_root / "sav_train" / "sav_000"
    data = masklet_json(s0 / "vid_b_auto.json", [5, 7])
    data["masklet_id"] = [5, AUTO_ID_OFFSET]  # masklet 100000 holds box(k, 7)
    (s0 / "vid_b_auto.json").write_text(json.dumps(data))
    write_video(s0 / "vid_e.mp4", n=3)
    masklet_json(s0 / "vid_e_manual.json", [], n=0)
    write_video(s0 / "vid_z.mp4", n=3)
    with caplog.at_level(logging.WARNING, logger=sav.__name__):
        r = SAV(root=train_root, split="train", annotation_set="both", train_subsets="sav_000")
        assert [e.group for e in r.entries] == ["vid_a"] * 5
    why_b = "masklet ids must lie in [0, 100000) to merge manual and auto"
    why_z = "no annotation file (vid_z_manual.json or vid_z_auto.json)"
    b_auto, z_mp4 = str(s0 / "vid_b_auto.json"), str(s0 / "vid_z.mp4")
    assert r.stats.unreadable == [
        {"file": b_auto, "reason": why_b},
        {"file": z_mp4, "reason": why_z},
    ]
    assert sav_records(caplog) == [
        f"skipping video: {b_auto}: {why_b}",
        f"skipping video: {z_mp4}: {why_z}",
    ]
    # the id range only matters when merging: `auto` alone keeps id 100000 as it is
    auto = SAV(root=train_root, split="train", annotation_set="auto", train_subsets="sav_000")
    vid_b = [e for e in auto.entries if e.group == "vid_b"]
    assert len(vid_b) == 5
    s = auto.load(vid_b[2])
    assert sorted(s.masks) == [5, AUTO_ID_OFFSET]
    assert np.array_equal(s.masks[5], box(2, 5))
    assert np.array_equal(s.masks[AUTO_ID_OFFSET], box(2, 7))
    auto.close()


def test_train_both_with_a_shorter_manual_json(train_root):
    """Past the end of the (shorter) manual JSON, the auto masklets still come."""
    s1 = train_root / "sav_train" / "sav_001"
    masklet_json(s1 / "vid_c_auto.json", [4, 0], n=5)  # manual [1] has 3 annotated frames
    r = SAV(root=train_root, split="train", annotation_set="both", train_subsets=["sav_001"])
    samples = list(r)
    assert [s.name[-5:] for s in samples] == ["00000", "00004", "00008", "00012", "00016"]
    for k, s in enumerate(samples):
        check_train_sample(s, [1] if k < 3 else [], {4: AUTO_ID_OFFSET, 0: AUTO_ID_OFFSET})
    assert r.stats.instances == 3 * 3 + 2 * 2 and r.stats.unreadable == []


def test_train_instance_cap_blames_the_video(train_root):
    r = SAV(
        root=train_root,
        split="train",
        annotation_set="both",
        train_subsets=["sav_000"],
        max_instances=3,
    )
    assert [s.group for s in r] == ["vid_b"] * 5  # vid_a: manual [0, 1] + auto [0, 3]
    why = (
        "4 instances, more than dataset.max_instances=3 "
        "(not a label map of objects? raise the cap if it is)"
    )
    mp4 = str(train_root / "sav_train" / "sav_000" / "vid_a.mp4")
    assert r.stats.unreadable == [{"file": mp4, "reason": why}] * 5


def test_train_bad_masklet_size_exact_reason(train_root):
    path = train_root / "sav_train" / "sav_001" / "vid_c_manual.json"
    data = masklet_json(path, [1, 6], n=3)
    data["masklet"][2][1] = rle(box(2, 6)[:40], (40, W))
    path.write_text(json.dumps(data))
    r = SAV(root=train_root, split="train", train_subsets=["sav_001"])
    assert [s.name[-5:] for s in r] == ["00000", "00004"]
    assert r.stats.unreadable == [
        {
            "file": str(path),
            "reason": "masklet 6 in annotated frame 2 is 64x40 but the video frame is 64x48",
        }
    ]


class RecordingCapture:
    """A real VideoCapture whose calls are logged; `broken` makes read() raise cv2.error."""

    def __init__(self, path, calls: list, broken: bool = False):
        self._cap, self.calls, self.broken = REAL_CAPTURE(path), calls, broken
        calls.append(("open", Path(path).name))

    def isOpened(self):  # noqa: N802 - cv2's name
        return self._cap.isOpened()

    def set(self, prop, n):
        self.calls.append(("seek", int(n)))
        return self._cap.set(prop, n)

    def grab(self):
        ok = self._cap.grab()
        self.calls.append("grab" if ok else "grab failed")
        return ok

    def read(self):
        self.calls.append("read")
        if self.broken:
            raise cv2.error("decoder gave up")
        return self._cap.read()

    def get(self, prop):
        return self._cap.get(prop)

    def release(self):
        self.calls.append("release")
        self._cap.release()


@pytest.fixture
def calls(monkeypatch):
    log: list = []
    monkeypatch.setattr(
        sav.cv2, "VideoCapture", lambda p: RecordingCapture(p, log, "glitch" in str(p))
    )
    return log


def test_read_frame_reads_forward_within_max_grab_and_seeks_otherwise(
    train_root, calls, monkeypatch
):
    monkeypatch.setattr(sav, "_MAX_GRAB", 3)
    r = SAV(root=train_root, split="train")
    video = r.entries[0].info["video"]
    got = [frame_of(r.read_frame(video, n)) for n in (0, 4, 5, 9, 14, 2, 16)]
    assert got == [0, 4, 5, 9, 14, 2, 16]
    assert calls == [
        ("open", "vid_a.mp4"), "read",  # frame 0: where the video starts
        "grab", "grab", "grab", "read",  # 4: exactly _MAX_GRAB ahead, read forward
        "read",  # 5: the next frame
        "grab", "grab", "grab", "read",  # 9
        ("seek", 14), "read",  # 14: 4 ahead, past _MAX_GRAB
        ("seek", 2), "read",  # 2: behind
        ("seek", 16), "read",
    ]  # fmt: skip
    del calls[:]
    with pytest.raises(SampleError) as err:
        r.read_frame(video, 18)  # past the end: no read after the failed grab
    assert (err.value.path, err.value.reason) == (
        str(video),
        "cannot read frame 18 (the video reports 17 frames)",
    )
    assert calls == ["grab failed", "release"]
    assert r._cap is None


def test_read_frame_broken_video_fails_fast_without_reopening(train_root, tmp_path, calls):
    r = SAV(root=train_root, split="train")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    for _ in range(2):
        with pytest.raises(SampleError) as err:
            r.read_frame(bad, 4)
        assert (err.value.path, err.value.reason) == (
            str(bad),
            "cannot open video (missing, corrupt or unknown codec)",
        )
    assert calls == [("open", "bad.mp4")]
    # a cv2.error while decoding is a SampleError about the frame too
    glitch = tmp_path / "glitch.mp4"
    write_video(glitch, n=6)
    with pytest.raises(SampleError) as err:
        r.read_frame(glitch, 1)
    assert (err.value.path, err.value.reason) == (
        str(glitch),
        "cannot read frame 1 (the video reports 6 frames)",
    )


def test_train_video_opened_and_json_parsed_once_per_video(train_root, calls, monkeypatch):
    r = SAV(root=train_root, split="train")
    assert len(r.entries) == 13  # indexing parses each JSON once too: spy only on loading
    parsed = []
    real = sav.read_annotation
    monkeypatch.setattr(sav, "read_annotation", lambda p: parsed.append(p.name) or real(p))
    assert len(list(r)) == 13
    assert parsed == ["vid_a_manual.json", "vid_b_manual.json", "vid_c_manual.json"]
    assert [c for c in calls if c[0] == "open"] == [
        ("open", "vid_a.mp4"),
        ("open", "vid_b.mp4"),
        ("open", "vid_c.mp4"),
    ]


def test_pickled_reader_reopens_the_video_and_reparses(train_root):
    r = SAV(root=train_root, split="train")
    check_train_sample(r.load(r.entries[1]), [0, 1])  # opens vid_a, parses its JSON
    state = r.__getstate__()
    reset = ("_cap", "_cap_path", "_pos", "_ann_video", "_ann")
    assert {k: state[k] for k in reset} == dict(
        _cap=None, _cap_path=None, _pos=0, _ann_video=None, _ann=[]
    )
    assert r._cap is not None and r._pos == 5  # the reader itself keeps its open video
    clone = pickle.loads(pickle.dumps(r))
    check_train_sample(clone.load(clone.entries[2]), [0, 1])
    check_train_sample(r.load(r.entries[3]), [0, 1])
    r.close()
    clone.close()


@pytest.mark.parametrize("read_annotation_masklet, why", [
    ({"0": []}, "TypeError: 'masklet' is not a list"),
    ([[None], [None, None]], "TypeError: annotated frame 1 does not hold one RLE per masklet id"),
    ([[None], 5], "TypeError: annotated frame 1 does not hold one RLE per masklet id"),
])  # fmt: skip
def test_broken_masklet_structure_exact_reason(tmp_path, read_annotation_masklet, why):
    p = tmp_path / "v_manual.json"
    p.write_text(json.dumps({"masklet_id": [3], "masklet": read_annotation_masklet}))
    with pytest.raises(SampleError) as err:
        sav.read_annotation(p)
    assert (err.value.path, err.value.reason) == (str(p), f"broken annotation file ({why})")


def test_decode_rle_is_column_major_and_allows_a_leading_zero_run():
    assert sav.rle_counts(CORNER_COUNTS) == [0, 1, 4, 1, 7, 1, 1]
    for counts in (CORNER_COUNTS, CORNER_COUNTS.encode()):
        m = sav.decode_rle({"size": [3, 5], "counts": counts}, (3, 5), RLE_PATH, WHAT)
        assert m.dtype == bool and np.array_equal(m, CORNER)
    assert sav.decode_rle({"size": [3, 5], "counts": "?"}, (3, 5), RLE_PATH, WHAT) is None
    assert sav.decode_rle(None, (3, 5), RLE_PATH, WHAT) is None
    assert sav.decode_rle({"size": [0, 5], "counts": ""}, (0, 5), RLE_PATH, WHAT) is None


@pytest.mark.parametrize(
    "bad_rle, reason",
    [
        ({"counts": CORNER_COUNTS}, "malformed RLE (KeyError('size'))"),
        (
            {"size": [3, 5], "counts": [0, 1, 4, 1, 7, 1, 1]},
            "RLE counts must be a compressed RLE string",
        ),
        (
            {"size": [3, 5], "counts": "01403P"},
            "undecodable RLE (compressed RLE string ends inside a number)",
        ),
        ({"size": [3, 5], "counts": "01403"}, "RLE runs cover 13 pixels, the frame has 15"),
        # runs 1, 15, -1 add up to the frame's 15 pixels: the negative run is the problem
        ({"size": [3, 5], "counts": "1?O"}, "RLE has a negative run (-1 pixels)"),
    ],
)
def test_decode_rle_refusals_exact_reason(bad_rle, reason):
    with pytest.raises(SampleError) as err:
        sav.decode_rle(bad_rle, (3, 5), RLE_PATH, WHAT)
    assert (err.value.path, err.value.reason) == (str(RLE_PATH), f"{WHAT}: {reason}")


def test_decode_rle_reports_a_pycocotools_refusal(monkeypatch):
    """No input that passes the checks makes pycocotools raise today; its refusal is still
    a SampleError naming the file."""

    def refuse(rle):
        raise ValueError("pycocotools says no")

    monkeypatch.setattr(sav.mask_utils, "decode", refuse)
    with pytest.raises(SampleError) as err:
        sav.decode_rle({"size": [3, 5], "counts": CORNER_COUNTS}, (3, 5), RLE_PATH, WHAT)
    assert (err.value.path, err.value.reason) == (
        str(RLE_PATH),
        f"{WHAT}: undecodable RLE (pycocotools says no)",
    )


def png(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m.astype(np.uint8) * 255).save(path)


def test_val_index_names_skips_objects_and_frame_order(tmp_path, caplog):
    root = tmp_path / "SAV"
    d = root / "sav_val"
    ann, jpg = d / "Annotations_6fps", d / "JPEGImages_24fps"
    for f in (0, 4, 8):
        p = jpg / "v_mix" / f"{f:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((H, W, 3), COLORS[f], np.uint8)).save(p, quality=95)
    (ann / "v_none").mkdir(parents=True)
    png(ann / "v_mix" / "001" / "00000.png", box(0, 1))
    png(ann / "v_mix" / "001" / "00004.png", box(4, 1))
    png(ann / "v_mix" / "002" / "00008.png", box(8, 2))
    (ann / "v_mix" / ".DS_Store").write_text("sorts first, not an object")
    (ann / "v_mix" / "010").write_text("a digit-named file, not an object folder")
    (ann / "v_mix" / "masks").mkdir()
    for f in ("9", "100", "10"):
        png(ann / "v_num" / "003" / f"{f}.png", box(0, 3))
    for f in ("x", "9", "10"):
        png(ann / "v_text" / "004" / f"{f}.png", box(0, 4))
    (d / "sav_val.txt").write_text("../escape\nv_none\nv_mix\nv_num\nv_text\n")
    with caplog.at_level(logging.WARNING, logger=sav.__name__):
        r = SAV(root=root, split="val")
        names = [e.name.split("/", 2)[2] for e in r.entries]
    assert names == [
        "v_mix/00000.jpg", "v_mix/00004.jpg", "v_mix/00008.jpg",
        "v_num/9.jpg", "v_num/10.jpg", "v_num/100.jpg",
        "v_text/10.jpg", "v_text/9.jpg", "v_text/x.jpg",
    ]  # fmt: skip
    why_escape = "video '../escape' leaves the dataset root (has '..' segments); skipped"
    why_none = "listed video has no annotation PNGs"
    assert r.stats.unreadable == [
        {"file": str(d / "sav_val.txt"), "reason": why_escape},
        {"file": str(ann / "v_none"), "reason": why_none},
    ]
    assert sav_records(caplog) == [
        f"skipping video: {d / 'sav_val.txt'}: {why_escape}",
        f"skipping video: {ann / 'v_none'}: {why_none}",
        f"ignoring {ann / 'v_mix' / '.DS_Store'}: not an <obj_id> folder",
        f"ignoring {ann / 'v_mix' / '010'}: not an <obj_id> folder",
        f"ignoring {ann / 'v_mix' / 'masks'}: not an <obj_id> folder",
    ]
    # frame 8 has object 2 only: object 1's missing PNG does not stop the others
    samples = [r.load(e) for e in r.entries[:3]]
    assert [sorted(s.masks) for s in samples] == [[1], [1], [2]]
    assert np.array_equal(samples[0].masks[1], box(0, 1))
    assert np.array_equal(samples[2].masks[2], box(8, 2))
    with pytest.raises(SampleError) as err:
        _ = SAV(root=root, split="val", strict=True).entries
    assert (err.value.path, err.value.reason) == (str(d / "sav_val.txt"), why_escape)


def test_val_mask_size_mismatch_exact_reason(val_root):
    bad = val_root / "sav_val" / "Annotations_6fps" / "v2" / "002" / "00000.png"
    Image.fromarray(np.zeros((H // 2, W), np.uint8)).save(bad)
    r = SAV(root=val_root, split="val")
    with pytest.raises(SampleError) as err:
        r.load(r.entries[3])
    assert (err.value.path, err.value.reason) == (str(bad), "mask is 64x24, frame is 64x48")
