"""ContainerWriter's own output besides the rows: its errors, its summary, its warnings and the
caps on what it names one by one (from the writer's mutation run)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from usam.container import Container, ContainerWriter
from usam.container.writer import MAX_LISTED
from usam.errors import UsamError
from usam.synthetic import make_record, write_record


def build(roots, out, **kwargs) -> dict:
    return ContainerWriter(roots=roots, out=out, **kwargs).write()


def test_no_records_names_every_root_and_what_was_skipped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    write_record(b, *make_record("x/1.jpg", "x"), json=False)
    with pytest.raises(UsamError) as err:
        build([a, b], tmp_path / "c")
    assert str(err.value) == (
        f"no usable extraction records under {a}, {b} (skipped: {{'unfinished': 1}}); run "
        "`python -m usam.extract` first or point roots=[...] at its output"
    )
    with pytest.raises(UsamError) as err:
        build([a], tmp_path / "c")
    assert "(skipped: none); run" in str(err.value)


def test_no_instances_names_every_root_and_what_was_skipped(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_record(a, *make_record("x/1.jpg", "x", instances=[]))
    write_record(b, *make_record("y/1.jpg", "y", instances=[]))
    with pytest.raises(UsamError) as err:
        build([a, b], tmp_path / "c")
    assert str(err.value) == (
        f"the records under {a}, {b} have no instances (skipped: none): nothing to train on"
    )
    write_record(b, *make_record("z/1.jpg", "z"), safetensors=False)
    with pytest.raises(UsamError) as err:
        build([a, b], tmp_path / "c")
    assert "(skipped: {'incomplete': 1}): nothing" in str(err.value)


def test_the_summary_lists_skipped_files_and_images_missing_models(tmp_path, caplog):
    root = tmp_path / "r"
    write_record(root, *make_record("a/1.jpg", "a", dataset="mose", split="train"))
    write_record(
        root,
        *make_record("b/2.jpg", "b", dataset="mose", split="train", models=["small", "tiny"]),
    )
    write_record(root, *make_record("c/3.jpg", "c"), safetensors=False)
    write_record(root, *make_record("0/0.jpg", "0"), json=False)  # first in walk order
    with caplog.at_level(logging.INFO, logger="usam.container"):
        s = build([root], tmp_path / "c")
    assert s["skipped_files"] == [
        {
            "file": str(root / "0" / "0.safetensors"),
            "reason": "no .json beside it: the image was not finished",
            "kind": "unfinished",
        },
        {
            "file": str(root / "c" / "3.json"),
            "reason": "its .safetensors file is missing",
            "kind": "incomplete",
        },
    ]
    assert s["images_missing_models"] == 1 and s["records_without_digest"] == 2
    assert s["missing_models"] == [
        {"image": "b/2.jpg", "dataset": "mose", "models": ["base_plus", "large"]}
    ]
    messages = [r.getMessage() for r in caplog.records]
    assert f"skipping record {root / 'c' / '3.json'}: its .safetensors file is missing" in messages
    assert (
        "image b/2.jpg (mose/train) has no results for model base_plus, large: its "
        "iou_base_plus, iou_large and the gaps that need them are NaN"
    ) in messages
    assert not any("more images miss a model" in m for m in messages)  # all of them named
    done = [m for m in messages if m.startswith("container ")]
    assert len(done) == 1 and done[0].startswith(
        f"container {tmp_path / 'c'}: 6 rows from 2 images, 2 records skipped, "
    )
    assert 0 <= s["seconds"] < 600 and s["rows_per_second"] > 0
    assert s["groups"] == 2 and s["images"] == 2 and s["rows"] == 4 + 2
    assert s["models"] == ["tiny", "small", "base_plus", "large"] and s["variants"] == ["original"]


def test_more_than_max_listed_are_counted_not_listed(tmp_path, caplog):
    root = tmp_path / "r"
    write_record(root, *make_record("keep/0.jpg", "keep", models=["tiny", "large"]))
    for i in range(MAX_LISTED + 2):
        write_record(root, *make_record(f"half/{i:03d}.jpg", "half", models=["tiny"]))
        (root / "broken" / f"{i:03d}.json").parent.mkdir(exist_ok=True)
        (root / "broken" / f"{i:03d}.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        s = build([root], tmp_path / "c")
    assert s["skipped"] == MAX_LISTED + 2 and len(s["skipped_files"]) == MAX_LISTED
    assert s["skipped_files"][-1]["file"] == str(root / "broken" / f"{MAX_LISTED - 1:03d}.json")
    assert s["skipped_files"][0]["reason"].startswith("unreadable JSON (Expecting ")
    assert s["images_missing_models"] == MAX_LISTED + 2 and len(s["missing_models"]) == MAX_LISTED
    assert s["missing_models"][-1]["image"] == f"half/{MAX_LISTED - 1:03d}.jpg"
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("skipping record") for m in messages) == MAX_LISTED
    assert sum(m.startswith("image half/") for m in messages) == MAX_LISTED
    assert "2 more images miss a model (see summary.json)" in messages


def test_meta_json_describes_the_build(tmp_path):
    root = tmp_path / "r"
    rec, tensors = make_record("a/1.jpg", "a", models=["large", "tiny"], random_weights=True)
    rec["sam_version"] = "sam2"
    write_record(root, rec, tensors)
    write_record(root, *make_record("b/1.jpg", "b", dataset="mose", models=["tiny"]))
    s = build([root], tmp_path / "c", offload=True, augmented=False)
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["kind"] == "usam.container" and meta["schema"] == 1
    assert meta["rows"] == 3 and meta["images"] == 2 and meta["groups"] == 2
    assert meta["token_dim"] == 256 and meta["tokens"] == ["iou_token", "best_mask_token"]
    assert meta["codes"] == ["image", "group", "dataset", "model", "variant"]
    assert meta["models"] == ["tiny", "large"] and meta["datasets"] == ["davis", "mose"]
    assert meta["sources"] == [str(root)] and meta["sam_versions"] == ["sam2", "sam2.1"]
    assert meta["random_weights"] is True and meta["offload"] is True
    assert meta["augmented"] is False and meta["skipped"] == {}
    assert meta["created"].endswith("+00:00") and len(meta["created"]) == 25  # to the second
    assert s["random_weights"] is True and s["offload"] is True
    assert json.loads((tmp_path / "c" / "tables" / "group.json").read_text()) == ["a", "b"]
    assert Container.open(tmp_path / "c").mmap


def test_progress_bars_say_what_they_count(tmp_path, capsys):
    write_record(tmp_path / "recs", *make_record("a/1.jpg", "a"))
    write_record(tmp_path / "recs", *make_record("b/1.jpg", "b"))
    build([tmp_path / "recs"], tmp_path / "c")
    err = capsys.readouterr().err
    assert re.search(r"scan recs: \d+file \[", err), err
    assert re.search(r"container: 100%.* 2/2 \[.*img/s\]", err), err


def test_a_missing_root_is_named(tmp_path):
    with pytest.raises(UsamError) as err:
        build([tmp_path / "gone"], tmp_path / "c")
    assert str(err.value) == (
        f"record root {tmp_path / 'gone'} does not exist; run `python -m usam.extract` for this "
        "dataset first or fix roots=[...]"
    )


def test_a_narrower_build_names_three_lost_images_and_every_lost_kind(tmp_path, caplog):
    root, small, out = tmp_path / "r", tmp_path / "s", tmp_path / "c"
    for name in ["a/1", "b/2", "c/3", "d/4", "e/5"]:
        write_record(root, *make_record(f"{name}.jpg", name[0], models=["tiny", "large"]))
    build([root], out)
    write_record(small, *make_record("e/5.jpg", "e", models=["tiny"]))
    with pytest.raises(UsamError) as err:
        build([small], out)
    assert (
        "would lose 4 of its 5 images (e.g. davis/a/1.jpg, davis/b/2.jpg, davis/c/3.jpg); "
        "models ['large']. Nothing was changed; "
    ) in str(err.value)
    # an unreadable one is replaced when asked, and the summary and the log say so
    (out / "tables" / "image.json").write_text("[")
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        s = build([small], out, overwrite=True)
    assert list(s["replaced"]) == ["unreadable"]
    assert s["replaced"]["unreadable"].startswith(f"{out / 'tables' / 'image.json'} is missing")
    assert any(
        r.getMessage().startswith(f"replacing the container at {out} (overwrite=True): unreadable=")
        for r in caplog.records
    )


def test_duplicates_strays_and_versions_are_named(tmp_path, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    write_record(a, *make_record("a/1.jpg", "a"))
    write_record(b, *make_record("a/1.jpg", "a"))  # the same image again: a duplicate
    rec, tensors = make_record("a/1.jpg", "a", split="train")  # another split: not one
    rec["sam_version"] = "sam2"
    del rec["random_weights"]  # from before the flag: real weights
    write_record(b / "train", rec, tensors)
    write_record(b / "x", *make_record("z/9.jpg", "z"))  # after the duplicate in walk order
    (b / "x" / "stray.json").write_text('{"kind": "usam.summary"}')
    (b / "x" / "stray.safetensors").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        s = build([a, b], tmp_path / "c")
    assert s["skipped_files"] == [
        {
            "file": str(b / "a" / "1.json"),
            "reason": "duplicate of an earlier record of davis/val/a/1.jpg",
            "kind": "duplicate",
        },
        {
            "file": str(b / "x" / "stray.json"),
            "reason": "not a usam.record JSON",
            "kind": "incomplete",
        },
    ]
    assert s["images"] == 3 and s["random_weights"] is False
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "records come from different SAM versions ['sam2', 'sam2.1']; the container mixes them"
        in messages
    )
    assert not any("random SAM weights" in m for m in messages)


def test_random_weights_are_warned_about(tmp_path, caplog):
    write_record(tmp_path / "r", *make_record("a/1.jpg", "a", random_weights=True))
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        build([tmp_path / "r"], tmp_path / "c")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "some records were extracted with random SAM weights (a smoke test, not real data)"
    ]


# ---- from the writer's second mutation run ---------------------------------------------------
def test_a_single_root_may_be_a_string_or_a_path(tmp_path):
    root = tmp_path / "r"
    write_record(root, *make_record("a/1.jpg", "a"))
    for given in (str(root), root):
        assert ContainerWriter(roots=given, out=tmp_path / "c").roots == [root]
        assert build(given, tmp_path / f"c{type(given).__name__}")["images"] == 1


@pytest.mark.parametrize("key", ["offload", "augmented"])
def test_a_flag_that_is_not_a_bool_is_named(tmp_path, key):
    with pytest.raises(UsamError) as err:
        ContainerWriter(roots=[tmp_path], out=tmp_path / "c", **{key: "no"})
    assert str(err.value) == f"{key} must be true or false, got 'no'"


def test_groups_of_one_name_in_two_datasets_are_two_groups(tmp_path):
    root = tmp_path / "r"
    write_record(root, *make_record("a/1.jpg", "h", dataset="mose"))
    write_record(root, *make_record("b/1.jpg", "g", dataset="davis"))
    write_record(root, *make_record("c/1.jpg", "g", dataset="mose"))
    s = build([root], tmp_path / "c")
    assert (s["images"], s["groups"]) == (3, 3)
    c = Container.open(tmp_path / "c")
    names, groups = c.table("image"), c.table("group")
    by_image = {names[i]: groups[g] for i, g in zip(c.code("image"), c.code("group"), strict=True)}
    assert by_image == {"a/1.jpg": "h", "b/1.jpg": "g", "c/1.jpg": "g"}
    assert len(set(np.asarray(c.code("group")).tolist())) == 3


def test_a_record_that_vanishes_between_the_passes_is_skipped_and_named(tmp_path, monkeypatch):
    root = tmp_path / "r"
    write_record(root, *make_record("a/1.jpg", "a"))
    gone = write_record(root, *make_record("b/2.jpg", "b"))
    scan = ContainerWriter._scan

    def scan_then_remove(self):
        stems = scan(self)
        Path(f"{gone}.json").unlink()
        return stems

    monkeypatch.setattr(ContainerWriter, "_scan", scan_then_remove)
    s = build([root], tmp_path / "c")
    assert (s["images"], s["skipped_by_reason"]) == (1, {"incomplete": 1})
    (skip,) = s["skipped_files"]
    assert skip["file"] == f"{gone}.json" and skip["kind"] == "incomplete"
    assert skip["reason"] == (
        f"changed or vanished while building ([Errno 2] No such file or directory: '{gone}.json')"
    )


def test_seconds_and_rows_per_second_are_rounded(tmp_path, monkeypatch):
    from usam.container import writer

    root = tmp_path / "r"
    write_record(root, *make_record("a/1.jpg", "a", instances=((1, 100), (2, 50))))
    rows = 2 * 4  # instances x models
    for ticks, seconds, rate in (
        ((100.0, 101.23456789), 1.235, round(rows / 1.23456789, 1)),
        ((5.0, 5.0), 0.0, rows * 1e9),  # a build faster than the clock: no division by zero
    ):
        clock = SimpleNamespace(perf_counter=iter(ticks).__next__)
        monkeypatch.setattr(writer, "time", clock)
        s = build([root], tmp_path / "c", overwrite=True)
        assert s["rows"] == rows
        assert (s["seconds"], s["rows_per_second"]) == (seconds, rate)
    assert round(rows / 1.23456789, 1) == 6.5  # one decimal: 6.48 with two


def test_no_roots_is_an_error_and_nothing_is_replaced_before_a_build(tmp_path):
    with pytest.raises(UsamError) as err:
        ContainerWriter(roots=[], out=tmp_path / "c")
    assert str(err.value) == "no record roots given; set roots=[<dir>, ...]"
    root = tmp_path / "r"
    write_record(root, *make_record("a/1.jpg", "a"))
    build([root], tmp_path / "c")
    w = ContainerWriter(roots=[root], out=tmp_path / "c", overwrite=True)
    assert w.replaced is None  # until write() finds the container at out
    assert w.write()["replaced"]["images"] == 1
