"""Stage 2: records -> container. Hand-made records (usam/synthetic.py) with known answers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from usam.container import Container, ContainerWriter, run
from usam.errors import UsamError
from usam.synthetic import make_record, token_code, write_record

REPO = Path(__file__).resolve().parents[1]
BEAR = "JPEGImages/480p/bear/00000.jpg"
COW = "JPEGImages/480p/cow/00003.jpg"


def build(roots, out, **kwargs) -> dict:
    roots = roots if isinstance(roots, list) else [roots]
    return ContainerWriter(roots=roots, out=out, **kwargs).write()


def row(c: Container, name: str, model: str, variant: str, instance: int) -> int:
    """The one row of (image, model, variant, instance id)."""
    hit = np.flatnonzero(
        (c.names == name)
        & (c.models == model)
        & (c.variants == variant)
        & (c["instance_id"] == instance)
    )
    assert len(hit) == 1, (name, model, variant, instance, hit)
    return int(hit[0])


@pytest.fixture
def hand_made(tmp_path):
    """bear: 2 instances, tiny + large, original + jpeg10; cow: 1 instance, tiny only."""
    root = tmp_path / "inference" / "davis" / "val"
    fields = {
        "tiny": {
            "original": {
                "iou": [0.5, 0.75],
                "unsupervised_iou": [0.25, 0.75],
                "iou_dense_prompt": [0.875, None],
                "sam_score": [0.625, 0.5],
            },
            "jpeg10": {"iou": [0.25, 0.5]},
        },
        "large": {
            "original": {
                "iou": [0.875, 0.5],
                "unsupervised_iou": [0.5, 0.5],
                "iou_dense_prompt": [1.0, 0.75],
                "sam_score": [0.9375, 0.375],
            },
            "jpeg10": {"iou": [0.75, 0.125]},
        },
    }
    best = {
        ("tiny", "original"): [2, 0],
        ("tiny", "jpeg10"): [1, 1],
        ("large", "original"): [0, 1],
        ("large", "jpeg10"): [2, 2],
    }
    write_record(
        root,
        *make_record(
            BEAR,
            "bear",
            instances=[(3, 120), (5, 40)],
            models=["tiny", "large"],
            variants=["original", "jpeg10"],
            fields=fields,
            best=best,
            width=16,
            height=12,
        ),
    )
    write_record(
        root,
        *make_record(
            COW,
            "cow",
            instances=[(1, 7)],
            models=["tiny"],
            variants=["original", "jpeg10"],
            fields={"tiny": {"original": {"iou": [0.5], "h_augmentation": [None]}}},
        ),
    )
    return root


def test_rows_and_derived_fields_by_hand(hand_made, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        summary = build(hand_made, tmp_path / "c")
    assert summary["rows"] == 2 * 2 * 2 + 1 * 1 * 2 and summary["images"] == 2
    assert summary["images_missing_models"] == 1
    assert any(COW in r.message and "large" in r.message for r in caplog.records)  # names the image
    c = Container.open(tmp_path / "c")
    assert len(c) == 10 and c.meta["models"] == ["tiny", "large"]
    assert c.meta["variants"] == ["original", "jpeg10"] and not c.random_weights
    assert {"is_tiny", "is_large", "iou_tiny", "iou_large", "sam_score_large"} <= set(c.columns)
    assert "is_small" not in c and "iou_small" not in c

    r = row(c, BEAR, "tiny", "original", 3)
    v = {col: c[col][r] for col in c.columns}
    assert (v["iou"], v["iou_tiny"], v["iou_large"]) == (0.5, 0.5, 0.875)
    assert v["model_gap"] == 0.375  # 0.875 - 0.5
    assert v["task_gap"] == 0.25  # 0.5 - 0.25
    assert v["prompt_gap"] == 0.375  # 0.875 - 0.5
    assert (v["unsupervised_iou_large"], v["sam_score_large"], v["sam_score_tiny"]) == (
        0.5,
        0.9375,
        0.625,
    )
    assert (v["is_tiny"], v["is_large"], v["is_augmented"]) == (1, 0, 0)
    assert (v["gt_size"], v["width"], v["height"], v["instance_id"], v["best"]) == (
        120,
        16,
        12,
        3,
        2,
    )
    # tokens: the IoU token and the token of mask `best` (= 2) of tiny / original / instance 0
    np.testing.assert_array_equal(c.tokens[r, 0], np.full(256, token_code(0, 0, 0)))
    np.testing.assert_array_equal(c.tokens[r, 1], np.full(256, token_code(0, 0, 0) + 3 / 4))

    r = row(c, BEAR, "tiny", "original", 5)
    assert np.isnan(c["prompt_gap"][r]) and np.isnan(c["iou_dense_prompt"][r])  # null in the JSON
    assert c["task_gap"][r] == 0.0 and c["model_gap"][r] == -0.25  # 0.5 - 0.75

    r = row(c, BEAR, "large", "original", 5)
    assert c["iou"][r] == 0.5 and c["model_gap"][r] == -0.25 and c["prompt_gap"][r] == 0.25
    assert (c["is_tiny"][r], c["is_large"][r], c["best"][r]) == (0, 1, 1)
    np.testing.assert_array_equal(c.tokens[r, 1], np.full(256, token_code(3, 0, 1) + 2 / 4))

    r = row(c, BEAR, "large", "jpeg10", 3)  # gaps come from the same variant
    assert c["is_augmented"][r] == 1 and c["model_gap"][r] == 0.5  # 0.75 - 0.25
    np.testing.assert_array_equal(c.tokens[r, 0], np.full(256, token_code(3, 1, 0)))
    np.testing.assert_array_equal(c.tokens[r, 1], np.full(256, token_code(3, 1, 0) + 3 / 4))

    r = row(c, COW, "tiny", "original", 1)
    assert c["iou_tiny"][r] == 0.5 and np.isnan(c["iou_large"][r]) and np.isnan(c["model_gap"][r])
    assert np.isnan(c["sam_score_large"][r]) and np.isnan(c["h_augmentation"][r])
    assert c["gt_size"][r] == 7 and c.groups[r] == "cow"
    assert set(c.groups) == {"bear", "cow"} and set(c.table("dataset")) == {"davis"}


def test_offload_equals_in_memory(hand_made, tmp_path):
    build(hand_made, tmp_path / "mem")
    build(hand_made, tmp_path / "off", offload=True)
    mem, off = Container.open(tmp_path / "mem"), Container.open(tmp_path / "off")
    assert off.mmap and isinstance(off.tokens, np.memmap) and isinstance(off["iou"], np.memmap)
    assert not mem.mmap and not isinstance(mem.tokens, np.memmap)
    assert mem.columns == off.columns and len(mem) == len(off) == 10
    np.testing.assert_array_equal(mem.tokens, off.tokens)
    for col in mem.columns:
        np.testing.assert_array_equal(mem[col], off[col], err_msg=col)  # NaNs compare equal here
    for key in ("image", "group", "dataset", "model", "variant"):
        np.testing.assert_array_equal(mem.code(key), off.code(key))
        assert mem.table(key) == off.table(key)
    # either can be opened the other way
    assert isinstance(Container.open(tmp_path / "mem", mmap=True).tokens, np.memmap)
    assert not isinstance(Container.open(tmp_path / "off", mmap=False).tokens, np.memmap)


def test_no_augmentations_keeps_original_rows_only(hand_made, tmp_path):
    build(hand_made, tmp_path / "c", augmented=False)
    c = Container.open(tmp_path / "c")
    assert len(c) == 5 and c.meta["variants"] == ["original"] and set(c.variants) == {"original"}
    assert not c["is_augmented"].any()


def test_filter_views(hand_made, tmp_path):
    build(hand_made, tmp_path / "c", offload=True)
    c = Container.open(tmp_path / "c")
    tiny = c.filter(model="tiny")
    assert len(tiny) == 6 and set(tiny.models) == {"tiny"} and (tiny["is_tiny"] == 1).all()
    assert len(c.filter(model=["tiny", "large"])) == 10
    orig = c.filter(augmented=False)
    assert len(orig) == 5 and set(orig.variants) == {"original"}
    assert len(c.filter(augmented=True)) == 5 and len(c.filter(variant="jpeg10")) == 5
    both = c.filter(model="large", augmented=False)
    assert len(both) == 2 and set(both.names) == {BEAR}
    assert len(tiny.filter(augmented=True)) == 3  # a view of a view
    # tokens of a view are the container's tokens at the view's rows, however they are read
    np.testing.assert_array_equal(both.tokens, c.tokens[both.rows])
    np.testing.assert_array_equal(both.read_tokens([1, 0]), c.tokens[both.rows[[1, 0]]])
    np.testing.assert_array_equal(both["iou"], [0.875, 0.5])
    with pytest.raises(UsamError, match="no model.*small"):
        c.filter(model="small")
    with pytest.raises(UsamError, match="no column"):
        c["nope"]


def many_groups(root: Path, groups: range, frames: int = 2, **kwargs) -> None:
    for g in groups:
        for f in range(1 + g % frames):
            write_record(
                root,
                *make_record(
                    f"JPEGImages/v{g:03d}/{f:05d}.jpg",
                    f"v{g:03d}",
                    models=["tiny", "large"],
                    **kwargs,
                ),
            )


def test_split_is_by_group_deterministic_and_order_free(tmp_path):
    many_groups(tmp_path / "a", range(0, 30))
    many_groups(tmp_path / "b", range(30, 60))
    build([tmp_path / "a", tmp_path / "b"], tmp_path / "ab")
    build([tmp_path / "b", tmp_path / "a"], tmp_path / "ba")  # same rows, another order
    ab, ba = Container.open(tmp_path / "ab"), Container.open(tmp_path / "ba")
    assert not np.array_equal(ab.names, ba.names)
    train, val = ab.split()
    assert set(train.groups).isdisjoint(val.groups)
    assert set(train.groups) | set(val.groups) == set(ab.groups)
    assert len(train) + len(val) == len(ab)
    assert abs(len(val) / len(ab) - 0.2) < 0.05
    assert set(val.names) == set(ba.split()[1].names)  # independent of row order
    again = Container.open(tmp_path / "ab").split()[1]
    np.testing.assert_array_equal(again.rows, val.rows)  # same on every run
    assert set(ab.split(seed=1)[1].groups) != set(val.groups)
    t, v = ab.split(val_fraction=0.5)
    assert abs(len(v) / len(ab) - 0.5) < 0.05 and set(t.groups).isdisjoint(v.groups)
    # a filtered view splits its own rows, still by group
    t, v = ab.filter(model="tiny").split()
    assert set(t.models) == set(v.models) == {"tiny"} and set(t.groups).isdisjoint(v.groups)


def test_split_needs_two_groups(tmp_path):
    write_record(tmp_path / "r", *make_record(BEAR, "bear"))
    build(tmp_path / "r", tmp_path / "c")
    with pytest.raises(UsamError, match="two"):
        Container.open(tmp_path / "c").split()
    with pytest.raises(UsamError, match="between 0 and 1"):
        Container.open(tmp_path / "c").split(val_fraction=1.0)


def test_broken_records_are_skipped_and_counted(tmp_path, caplog):
    root, other = tmp_path / "r", tmp_path / "other"
    good = make_record(BEAR, "bear", instances=[(1, 10), (2, 20)])
    write_record(root, *good)
    write_record(other, *good)  # the same image again under a second root
    write_record(root, *make_record("a/unfinished.jpg", "a"), json=False)
    write_record(root, *make_record("a/no_tokens.jpg", "a"), safetensors=False)
    rec, tensors = make_record("a/nan.jpg", "a", instances=[(1, 10), (2, 20)])
    tensors["large/original/mask_tokens"][1, 2, 7] = np.inf
    write_record(root, rec, tensors)
    rec, tensors = make_record("a/short.jpg", "a", instances=[(1, 10), (2, 20)])
    rec["fields"]["small"]["original"]["h_task"] = [0.5]
    write_record(root, rec, tensors)
    rec, tensors = make_record("a/text.jpg", "a")
    rec["fields"]["tiny"]["original"]["iou"] = ["high"]
    write_record(root, rec, tensors)
    rec, tensors = make_record("a/best.jpg", "a")
    rec["fields"]["tiny"]["original"]["best"] = [3]
    write_record(root, rec, tensors)
    rec, tensors = make_record("a/shape.jpg", "a")
    tensors["tiny/original/iou_token"] = tensors["tiny/original/iou_token"][:, :128].copy()
    write_record(root, rec, tensors)
    rec, tensors = make_record("a/future.jpg", "a")
    rec["schema"] = 2
    write_record(root, rec, tensors)
    write_record(root, *make_record("a/garbled.jpg", "a"))
    (root / "a" / "garbled.json").write_text('{"schema": 1, "kind": "usam.rec')
    (root / "a" / "broken.safetensors").write_bytes(b"not a safetensors file")
    (root / "a" / "broken.json").write_text(json.dumps(make_record("a/broken.jpg", "a")[0]))
    (root / "summary.json").write_text('{"images": 3}')  # not a record: ignored
    (root / ".x.json.tmp-123").write_text("{")  # a temp file: ignored
    (root / ".tmp-build").mkdir()
    (root / ".tmp-build" / "y.json").write_text("{")  # a hidden folder: ignored

    for offload in (False, True):
        with caplog.at_level(logging.WARNING, logger="usam.container"):
            s = build([root, other], tmp_path / f"c{offload}", offload=offload)
        assert s["skipped_by_reason"] == {
            "duplicate": 1,
            "unfinished": 1,
            "incomplete": 7,
            "non_finite": 1,
            "schema": 1,
        }
        assert s["skipped"] == 11 and len(s["skipped_files"]) == 11 and s["rows"] == 2 * 4
        reasons = {Path(f["file"]).name: f["reason"] for f in s["skipped_files"]}
        assert "not finite" in reasons["nan.safetensors"]
        assert (
            "h_task" in reasons["short.json"]
            and "not finished" in reasons["unfinished.safetensors"]
        )
        assert (
            "schema 2" in reasons["future.json"]
            and ".safetensors file is missing" in reasons["no_tokens.json"]
        )
        assert "unreadable tokens" in reasons["broken.safetensors"]
        assert any("nan.safetensors" in r.message for r in caplog.records)
        c = Container.open(tmp_path / f"c{offload}")
        assert (
            len(c) == 8 and set(c.names) == {BEAR} and c.meta["skipped"] == s["skipped_by_reason"]
        )
        assert np.load(tmp_path / f"c{offload}" / "tokens.npy", mmap_mode="r").shape == (8, 2, 256)


def test_schema_and_damage_refused(hand_made, tmp_path):
    out = tmp_path / "c"
    build(hand_made, out)
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "schema": 2}))
    with pytest.raises(UsamError, match="schema 2 is newer"):
        Container.open(out)
    (out / "meta.json").write_text(json.dumps({**meta, "schema": "v1"}))
    with pytest.raises(UsamError, match="unknown container schema"):
        Container.open(out)
    (out / "meta.json").write_text(json.dumps({**meta, "kind": "usam.record"}))
    with pytest.raises(UsamError, match="not a usam container"):
        Container.open(out)
    (out / "meta.json").write_text(json.dumps({**meta, "rows": 11}))
    with pytest.raises(UsamError, match="rows"):
        Container.open(out)
    (out / "meta.json").write_text(json.dumps(meta))
    (out / "columns" / "iou.npy").unlink()
    with pytest.raises(UsamError, match="iou.npy"):
        Container.open(out)
    with pytest.raises(UsamError, match="no meta.json"):
        Container.open(tmp_path)


def test_output_is_replaced_atomically_and_only_if_a_container(hand_made, tmp_path):
    out = tmp_path / "c"
    build(hand_made, out)
    write_record(hand_made, *make_record("JPEGImages/480p/dog/00000.jpg", "dog"))
    assert build(hand_made, out)["rows"] == 10 + 4
    assert len(Container.open(out)) == 14
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    with pytest.raises(UsamError, match="overwrite=true"):
        build(hand_made, out, overwrite=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(UsamError, match="not a usam container"):
        build(hand_made, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_out_inside_root_is_not_read_back(hand_made, tmp_path):
    build(hand_made, hand_made / "container")
    assert build(hand_made, hand_made / "container")["rows"] == 10


def test_empty_inputs_are_clear_errors(tmp_path):
    with pytest.raises(UsamError, match="does not exist"):
        build(tmp_path / "missing", tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsamError, match="no usable extraction records"):
        build(tmp_path / "empty", tmp_path / "c")
    write_record(tmp_path / "zero", *make_record(BEAR, "bear", instances=[]))
    with pytest.raises(UsamError, match="no instances"):
        build(tmp_path / "zero", tmp_path / "c")
    assert not (tmp_path / "c").exists()
    # an image without instances among others: counted, no rows, no error
    write_record(tmp_path / "zero", *make_record(COW, "cow"))
    s = build(tmp_path / "zero", tmp_path / "c")
    assert s["images"] == 2 and s["rows"] == 4


def test_random_weights_and_unknown_models_are_carried(tmp_path):
    write_record(tmp_path / "r", *make_record(BEAR, "bear", models=["tiny", "huge"]))
    write_record(tmp_path / "r", *make_record(COW, "cow", models=["tiny"], random_weights=True))
    build(tmp_path / "r", tmp_path / "c")
    c = Container.open(tmp_path / "c")
    assert c.random_weights and c.meta["models"] == ["tiny", "huge"] and "is_huge" in c
    assert np.isnan(c["model_gap"]).all()  # no large model anywhere


def test_stage_via_config(hand_made, tmp_path, compose_cfg):
    cfg = compose_cfg("container", ["dataset=davis", "offload=true"])
    summary = run(cfg)
    out = tmp_path / "inference" / "davis" / "val_container"
    assert summary["out"] == str(out) and summary["rows"] == 10
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["rows"] == 10
    assert (tmp_path / "run" / "config.yaml").is_file()
    c = Container.open(out)
    assert c.mmap and c.meta["sources"] == [str(hand_made)]
    # several roots, and the writer is whatever class the config names
    overrides = [f"roots=[{hand_made},{hand_made}]", f"out={tmp_path / 'x'}", "augmented=false"]
    cfg = compose_cfg("container", overrides)
    assert cfg.writer._target_ == "usam.container.writer.ContainerWriter"
    assert run(cfg)["rows"] == 5


def test_default_config_composes(tmp_path, compose_cfg):
    cfg = compose_cfg("container")
    assert cfg.out == str(tmp_path / "inference" / "sample" / "val_container")
    assert list(cfg.roots) == [str(tmp_path / "inference" / "sample" / "val")]
    assert cfg.offload is False and cfg.augmented is True


def test_seed_script(hand_made, tmp_path):
    odd = tmp_path / "my inference's"
    hand_made.rename(odd)
    env = {**os.environ, "USAM_OUTPUTS": str(tmp_path / "logs")}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "create_training_container.py"),
            "--root",
            str(odd),
            "--out-file",
            str(tmp_path / "DAVIS_training_container.pth"),
            "--offload",
            "--no-augmentations",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["out"] == str(tmp_path / "DAVIS_training_container") and summary["rows"] == 5
    c = Container.open(summary["out"])
    assert c.mmap and c.meta["variants"] == ["original"]
    # a user error is one line and exit status 1
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "create_training_container.py"),
            "--root",
            str(tmp_path / "nowhere"),
            "--out-file",
            str(tmp_path / "x"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        done.returncode == 1 and "does not exist" in done.stderr and "Traceback" not in done.stderr
    )


def test_reads_what_stage_1_writes(tmp_path):
    """usam/synthetic.py and usam.extract.RecordWriter agree on where and how records go."""
    from usam.extract import RecordWriter

    writer = RecordWriter(root=tmp_path / "r", dataset="davis", split="val")
    record, tensors = make_record(BEAR, "bear", instances=[(1, 10), (2, 20)])
    body = {k: v for k, v in record.items() if k not in ("schema", "kind", "dataset", "split")}
    writer.write(BEAR, body, tensors)
    assert writer.done(BEAR)
    summary = build(tmp_path / "r", tmp_path / "c")
    assert summary["rows"] == 4 * 2 and summary["skipped"] == 0
    c = Container.open(tmp_path / "c")
    np.testing.assert_array_equal(c.tokens, Container.open(tmp_path / "c", mmap=True).tokens)
    assert set(c.names) == {BEAR}
