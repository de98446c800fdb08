"""usam.container never replaces an existing container by less than it held unless asked:
overwrite=auto (the default) replaces it only by one built from a superset of its images,
models and variants; overwrite=true replaces it and says what was replaced; false never."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from usam.container import Container, ContainerWriter, run
from usam.errors import UsamError
from usam.synthetic import make_record, write_record


def write_images(root: Path, names: list[str], *, variants=("original",), models=("tiny", "large")):
    for k, name in enumerate(names):
        write_record(
            root,
            *make_record(
                f"{name}.jpg",
                name.split("/")[0],
                models=list(models),
                variants=list(variants),
                fields={m: {"original": {"iou": [0.25 + k / 8]}} for m in models},
            ),
        )
    return root


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file of a folder and its digest: proof that nothing in it changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def built(tmp_path):
    """A container of 3 images x 2 models x 2 variants from two roots (12 rows)."""
    a = write_images(tmp_path / "a", ["bear/00000", "bear/00001"], variants=("original", "jpeg10"))
    b = write_images(tmp_path / "b", ["cow/00000"], variants=("original", "jpeg10"))
    out = tmp_path / "container"
    summary = ContainerWriter(roots=[a, b], out=out).write()
    assert summary["rows"] == 12 and summary["replaced"] is None
    return a, b, out


def refused(out: Path, message: str, **kwargs) -> None:
    before = fingerprint(out)
    with pytest.raises(UsamError) as err:
        ContainerWriter(out=out, **kwargs).write()
    assert str(err.value) == message.format(out=out)
    assert fingerprint(out) == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def old_description(out: Path) -> str:
    meta = Container.open(out).meta
    return f"12 rows (3 images, built {meta['created']} from {meta['sources']})"


def test_a_narrower_rebuild_is_refused_and_the_container_is_untouched(built):
    a, b, out = built
    refused(
        out,
        "{out} already holds a container of " + old_description(out) + f"; the new one from "
        f"[{str(b)!r}] would lose 2 of its 3 images (e.g. davis/bear/00000.jpg, "
        "davis/bear/00001.jpg). Nothing was changed; pass overwrite=true to replace it, or "
        "choose another out=",
        roots=[b],
    )


def test_fewer_variants_or_models_are_refused_too(built, tmp_path):
    a, b, out = built
    refused(
        out,
        "{out} already holds a container of " + old_description(out) + f"; the new one from "
        f"[{str(a)!r}, {str(b)!r}] would lose variants ['jpeg10']. Nothing was changed; pass "
        "overwrite=true to replace it, or choose another out=",
        roots=[a, b],
        augmented=False,
    )
    c = write_images(
        tmp_path / "c",
        ["bear/00000", "bear/00001", "cow/00000"],
        models=("large",),
        variants=("original", "jpeg10"),
    )
    refused(
        out,
        "{out} already holds a container of " + old_description(out) + f"; the new one from "
        f"[{str(c)!r}] would lose models ['tiny']. Nothing was changed; pass overwrite=true to "
        "replace it, or choose another out=",
        roots=[c],
    )


def test_overwrite_false_never_replaces(built):
    a, b, out = built
    refused(
        out,
        "{out} already exists; pass overwrite=true to replace it or choose another out=",
        roots=[a, b],
        overwrite=False,
    )


def test_a_superset_replaces_it_and_says_what_was_replaced(built, caplog):
    a, b, out = built
    write_images(a, ["bear/00002"], variants=("original", "jpeg10"))  # one more image
    old = Container.open(out).meta
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        summary = ContainerWriter(roots=[a, b], out=out).write()
    assert summary["rows"] == 16
    assert summary["replaced"] == {
        "rows": 12,
        "images": 3,
        "models": ["tiny", "large"],
        "variants": ["original", "jpeg10"],
        "datasets": ["davis"],
        "sources": [str(a), str(b)],
        "created": old["created"],
    }
    assert f"replacing the container at {out} (overwrite=auto): rows=12, images=3" in caplog.text
    assert len(Container.open(out)) == 16


def test_overwrite_true_replaces_a_narrower_one_and_says_so(built, caplog):
    a, b, out = built
    with caplog.at_level(logging.WARNING, logger="usam.container"):
        summary = ContainerWriter(roots=[b], out=out, overwrite=True).write()
    assert summary["rows"] == 4 and summary["replaced"]["rows"] == 12
    assert f"replacing the container at {out} (overwrite=True): rows=12, images=3" in caplog.text
    assert set(Container.open(out).names) == {"cow/00000.jpg"}


def test_a_record_skipped_in_the_second_pass_still_counts_as_lost(built):
    """Pass 1 sees all three images; the tokens of one are NaN, so the build would lose it."""
    a, b, out = built
    tensors = b / "cow" / "00000.safetensors"
    from safetensors.numpy import load_file, save_file

    t = load_file(str(tensors))
    t["large/jpeg10/iou_token"][0, 3] = np.nan
    save_file(t, str(tensors))
    refused(
        out,
        "{out} already holds a container of " + old_description(out) + f"; the new one from "
        f"[{str(a)!r}, {str(b)!r}] would lose 1 of its 3 images (e.g. davis/cow/00000.jpg). "
        "Nothing was changed; pass overwrite=true to replace it, or choose another out=",
        roots=[a, b],
    )


def test_an_unreadable_old_container_is_replaced_only_when_asked(built):
    a, b, out = built
    (out / "tables" / "image.json").write_text("[")
    refused(
        out,
        "{out} holds a container that cannot be read ("
        + f"{out / 'tables' / 'image.json'} is missing or damaged (Expecting value: line 1 "
        "column 2 (char 1)); rebuild the container); pass overwrite=true to replace it, or "
        "choose another out=",
        roots=[a, b],
    )
    assert ContainerWriter(roots=[a], out=out, overwrite=True).write()["rows"] == 8


@pytest.mark.parametrize("value", ["maybe", "yes", 1, None])
def test_overwrite_takes_auto_true_or_false_only(tmp_path, value):
    with pytest.raises(UsamError) as err:
        ContainerWriter(roots=[tmp_path], out=tmp_path / "c", overwrite=value)
    assert str(err.value) == f"overwrite must be auto, true or false, got {value!r}"


def test_the_stage_defaults_to_auto(built, compose_cfg):
    a, b, out = built
    cfg = compose_cfg("container", [f"roots=[{b}]", f"out={out}"])
    assert cfg.writer.overwrite == "auto"
    before = fingerprint(out)
    with pytest.raises(UsamError, match="would lose 2 of its 3 images"):
        run(cfg)
    assert fingerprint(out) == before


def test_the_pipeline_passes_overwrite_on_to_the_container_stage():
    from usam.pipeline import route

    routed = route(["+overwrite=true", "dataset=davis"])
    assert routed["container"] == ["++overwrite=true", "dataset=davis"]
    assert routed["train"] == ["dataset=davis"]


def test_no_records_at_all_says_so_and_keeps_the_container(built, tmp_path):
    a, b, out = built
    (tmp_path / "empty").mkdir()
    before = fingerprint(out)
    with pytest.raises(UsamError) as err:
        ContainerWriter(roots=[tmp_path / "empty"], out=out).write()
    assert str(err.value).startswith(f"no usable extraction records under {tmp_path / 'empty'} ")
    assert fingerprint(out) == before
