"""usam.container.reader on one small container known row by row: three images in three
groups of two datasets (the same group name "bear" in both), 8 + 4 + 2 rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from usam.container import Container, ContainerWriter, is_container
from usam.container.reader import _group_rank, column_names
from usam.errors import UsamError
from usam.schema import FIELDS
from usam.synthetic import make_record, token_code, write_record

BOTH = dict(models=["tiny", "large"], variants=["original", "blur"])
# rows 0-7: davis bear (tiny original 3, 8; tiny blur 3, 8; large original ...; large blur ...)
# rows 8-11: davis cow (tiny original, tiny blur, large original, large blur), instance 2
# rows 12-13: mose bear (large original, large blur), instance 5
GT_SIZE = [30, 80] * 4 + [20] * 4 + [50] * 2


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("records")
    write_record(
        root / "davis", *make_record("bear/00000.jpg", "bear", instances=[(3, 30), (8, 80)], **BOTH)
    )
    write_record(root / "davis", *make_record("cow/00000.jpg", "cow", instances=[(2, 20)], **BOTH))
    write_record(
        root / "mose",
        *make_record(
            "bear/00000.jpg",
            "bear",
            dataset="mose",
            instances=[(5, 50)],
            models=["large"],
            variants=["original", "blur"],
        ),
    )
    out = root.parent / "container"
    ContainerWriter(roots=[root], out=out).write()
    return out


@pytest.fixture
def c(built) -> Container:
    return Container.open(built)


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A copy of the container to damage."""
    return Path(shutil.copytree(built, tmp_path / "c"))


def edit_meta(path: Path, **change) -> None:
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps(meta | change))


def test_column_names_in_file_order():
    assert column_names(["base_plus", "tiny"]) == [
        *FIELDS,
        "best",
        "iou_base_plus",
        "unsupervised_iou_base_plus",
        "sam_score_base_plus",
        "iou_tiny",
        "unsupervised_iou_tiny",
        "sam_score_tiny",
        "model_gap",
        "task_gap",
        "prompt_gap",
        "is_base_plus",
        "is_tiny",
        "is_augmented",
        "gt_size",
        "width",
        "height",
        "instance_id",
    ]


def test_is_container(built, tmp_path):
    assert is_container(built) and is_container(str(built))
    assert not is_container(tmp_path / "missing")
    (tmp_path / "meta.json").write_text("{")
    assert not is_container(tmp_path)
    (tmp_path / "meta.json").write_text("[1]")
    assert not is_container(tmp_path)
    (tmp_path / "meta.json").write_text('{"kind": "usam.record"}')
    assert not is_container(tmp_path)


def test_codes_tables_and_strings(c, built):
    assert len(c) == 14 and c.rows.tolist() == list(range(14))
    assert c["gt_size"].tolist() == GT_SIZE and c.column("gt_size").tolist() == GT_SIZE
    assert c.code("image").tolist() == [0] * 8 + [1] * 4 + [2] * 2
    assert c.table("image") == ["bear/00000.jpg", "cow/00000.jpg", "bear/00000.jpg"]
    assert c.code("group").tolist() == [0] * 8 + [1] * 4 + [2] * 2
    assert c.table("group") == ["bear", "cow", "bear"]
    assert c.code("dataset").tolist() == [0] * 12 + [1] * 2
    assert c.table("dataset") == ["davis", "mose"]
    assert c.table("model") == ["tiny", "large"] and c.table("variant") == ["original", "blur"]
    assert c.models.tolist() == ["tiny"] * 4 + ["large"] * 4 + ["tiny"] * 2 + ["large"] * 4
    assert (
        c.variants.tolist()
        == ["original", "original", "blur", "blur"] * 2
        + [
            "original",
            "blur",
        ]
        * 3
    )
    assert c.names.tolist()[7:9] == ["bear/00000.jpg", "cow/00000.jpg"]
    assert c.groups.tolist()[11:] == ["cow", "bear", "bear"]
    assert c.strings("dataset").dtype == object and c.strings("dataset").tolist()[11:13] == [
        "davis",
        "mose",
    ]
    assert not c.random_weights and c.random_weights is False
    assert "iou_large" in c and "iou_small" not in c and "code:image" not in c
    assert repr(c) == f"Container({str(built)!r}, rows=14, models=['tiny', 'large'], mmap=False)"


def test_columns_is_a_copy(c):
    c.columns.append("extra")
    assert "extra" not in c.columns and "extra" not in c


def test_unknown_names_are_one_line_errors(c, built):
    with pytest.raises(UsamError) as err:
        c.column("nope")
    assert str(err.value) == f"{built}: no column 'nope'; it has {', '.join(c.columns)}"
    with pytest.raises(UsamError) as err:
        c.code("name")
    assert str(err.value) == "no code 'name'; codes are image, group, dataset, model, variant"
    with pytest.raises(UsamError) as err:
        c.filter(variant=["blur", "jpeg10"])
    assert (
        str(err.value) == f"{built}: no variant ['jpeg10']; the container has ['original', 'blur']"
    )
    with pytest.raises(UsamError) as err:
        c.filter(model="small")
    assert str(err.value) == f"{built}: no model ['small']; the container has ['tiny', 'large']"


def test_views_keep_their_rows(c, built):
    v = c.subset([13, 4, 8])
    assert len(v) == 3 and v.rows.tolist() == [13, 4, 8]
    assert v["gt_size"].tolist() == [50, 30, 20] and v.code("image").tolist() == [2, 0, 1]
    assert v.models.tolist() == ["large", "large", "tiny"]
    assert v.variants.tolist() == ["blur", "original", "original"]
    assert v.names.tolist() == ["bear/00000.jpg", "bear/00000.jpg", "cow/00000.jpg"]
    assert repr(v) == (
        f"Container({str(built)!r}, rows=3, models=['tiny', 'large'], mmap=False, view)"
    )
    w = v.subset([2, 0])  # a view of a view: positions in v
    assert w.rows.tolist() == [8, 13] and w["instance_id"].tolist() == [2, 5]
    np.testing.assert_array_equal(w.tokens, c.tokens[[8, 13]])
    assert len(c.subset([])) == 0 and c.subset([])["iou"].shape == (0,)
    assert len(v.subset([])) == 0 and v.subset([]).rows.dtype == np.int64


def test_a_view_does_not_change_with_the_positions_it_was_given(c):
    positions = np.array([5, 1])
    v = c.subset(positions)
    positions[0] = 0
    assert v.rows.tolist() == [5, 1] and v["gt_size"].tolist() == [80, 80]


@pytest.mark.parametrize("mmap", [False, True])
def test_read_tokens_in_the_order_asked(built, mmap):
    c = Container.open(built, mmap=mmap)
    assert c.mmap is mmap
    t = c.read_tokens([13, 2, 8])
    assert t.dtype == np.float32 and t.shape == (3, 2, 256) and not isinstance(t, np.memmap)
    # (model index in records.MODELS, variant index in records.VARIANTS, instance) of each row
    for got, (m, v, i) in zip(t, [(3, 4, 0), (0, 4, 0), (0, 0, 0)], strict=True):
        np.testing.assert_array_equal(got[0], np.full(256, token_code(m, v, i)))
        np.testing.assert_array_equal(got[1], np.full(256, token_code(m, v, i) + 1 / 4))
    v = c.subset([12, 3, 9])
    np.testing.assert_array_equal(v.read_tokens([2, 0]), c.tokens[[9, 12]])
    np.testing.assert_array_equal(v.tokens, c.tokens[[12, 3, 9]])


def test_tables_are_read_once_and_shared_by_views(copy):
    c = Container.open(copy)
    v = c.subset([9])
    assert v.table("group") == ["bear", "cow", "bear"]
    (copy / "tables" / "group.json").unlink()
    assert c.groups.tolist()[8] == "cow"  # read through the view, kept for the container
    (copy / "tables" / "image.json").write_text("[")
    with pytest.raises(UsamError) as err:
        c.table("image")
    assert str(err.value).startswith(f"{copy / 'tables' / 'image.json'} is missing or damaged (")
    assert str(err.value).endswith("); rebuild the container")
    with pytest.raises(UsamError, match="image.json is missing or damaged"):
        Container.open(copy).strings("image")


def test_filter(c):
    assert c.filter(model="large").rows.tolist() == [4, 5, 6, 7, 10, 11, 12, 13]
    assert c.filter(model=["large"], variant="blur").rows.tolist() == [6, 7, 11, 13]
    assert c.filter(variant=["blur", "original"]).rows.tolist() == list(range(14))
    assert c.filter(augmented=True).rows.tolist() == [2, 3, 6, 7, 9, 11, 13]
    assert c.filter(augmented=False).rows.tolist() == [0, 1, 4, 5, 8, 10, 12]
    assert c.filter(augmented=None, model=None, variant=None).rows.tolist() == list(range(14))
    assert c.filter(model="tiny").filter(augmented=True).rows.tolist() == [2, 3, 9]


def test_group_ranks_never_change():
    # bundles record which groups they were fitted on: the split must be the same in every version
    assert _group_rank(0, "davis", "bear") == 11038965470586837596
    assert _group_rank(3, "mose", "bear") == 9274959623294293297
    assert _group_rank(4, "davis", "cow") == 170224907929915457


@pytest.mark.parametrize(
    ("seed", "fraction", "val_rows"),
    [
        # seed 3 ranks mose/bear (2 rows), davis/cow (4), davis/bear (8): cumulative 2, 6, 14
        (3, 0.2, [12, 13]),  # 2.8 rows: nearest is 2
        (3, 0.4, [8, 9, 10, 11, 12, 13]),  # 5.6: nearest is 6
        (3, 0.9, [8, 9, 10, 11, 12, 13]),  # 12.6: nearest is all 14, but train keeps one group
        # seed 4 ranks davis/cow (4), davis/bear (8), mose/bear (2): cumulative 4, 12, 14
        (4, 0.2, [8, 9, 10, 11]),  # 2.8: nearest is 4
        (4, 0.7, list(range(12))),  # 9.8: nearest is 12
        (4, 0.01, [8, 9, 10, 11]),
        # seed 2 ranks mose/bear (2), davis/bear (8), davis/cow (4): cumulative 2, 10, 14
        (2, 0.5, [0, 1, 2, 3, 4, 5, 6, 7, 12, 13]),  # 7: nearest is 10 (|3| < |5|)
    ],
)
def test_split_by_hand(c, seed, fraction, val_rows):
    train, val = c.split(val_fraction=fraction, seed=seed)
    assert val.rows.tolist() == val_rows
    assert train.rows.tolist() == [r for r in range(14) if r not in val_rows]


def test_split_of_a_view_counts_the_view_rows(c):
    # tiny rows only: davis bear 4, davis cow 2 (mose has no tiny); seed 4 ranks cow first
    train, val = c.filter(model="tiny").split(val_fraction=0.2, seed=4)
    assert val.rows.tolist() == [8, 9] and train.rows.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("fraction", [0, 1, -0.5, 1.5])
def test_split_fraction_must_be_inside_0_1(c, fraction):
    with pytest.raises(UsamError) as err:
        c.split(val_fraction=fraction)
    assert str(err.value) == f"val_fraction must be between 0 and 1, got {fraction}"


def test_split_needs_two_groups(c, built):
    with pytest.raises(UsamError) as err:
        c.subset([8, 10, 11]).split()
    assert str(err.value) == (f"{built}: 1 group(s) in these rows; a split by group needs two")
    train, val = c.subset([8, 12, 13]).split(val_fraction=0.5, seed=3)  # two groups are enough
    assert train.rows.tolist() == [8] and val.rows.tolist() == [12, 13]


def test_open_errors_name_the_option(tmp_path):
    for empty in (None, "", "None"):
        with pytest.raises(UsamError) as err:
            Container.open(empty, what="val_container")
        assert str(err.value) == (
            "no val_container given; set val_container=<dir written by python -m usam.container>"
        )
    with pytest.raises(UsamError) as err:
        Container.open(tmp_path / "nope", what="val_container")
    assert str(err.value) == (
        f"val_container {tmp_path / 'nope'} not found; build it with python -m usam.container "
        "(or pass val_container=<path>)"
    )
    with pytest.raises(UsamError, match="^no container given"):
        Container.open(None)
    with pytest.raises(UsamError) as err:
        Container.open(tmp_path)
    assert str(err.value) == (
        f"{tmp_path} is not a usam container (no meta.json); build one with "
        "`python -m usam.container dataset=<name>`"
    )


def test_open_expands_the_home_folder(built, monkeypatch):
    monkeypatch.setenv("HOME", str(built.parent))
    assert len(Container.open(f"~/{built.name}")) == 14


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ("{", "is not readable JSON ("),
        ("[1]", "is not a usam container's meta.json (kind None)"),
        ('{"kind": "usam.record"}', "is not a usam container's meta.json (kind 'usam.record')"),
    ],
)
def test_open_refuses_a_meta_that_is_not_a_container(copy, meta, message):
    (copy / "meta.json").write_text(meta)
    with pytest.raises(UsamError) as err:
        Container.open(copy)
    assert str(err.value).startswith(f"{copy / 'meta.json'} {message}")


@pytest.mark.parametrize("schema", [True, 0, -1, None, "1", 1.0])
def test_open_refuses_unknown_schemas(copy, schema):
    edit_meta(copy, schema=schema)
    with pytest.raises(UsamError) as err:
        Container.open(copy)
    assert str(err.value) == (
        f"{copy / 'meta.json'}: unknown container schema {schema!r}; rebuild it with "
        "`python -m usam.container`"
    )


def test_open_refuses_newer_schemas(copy):
    edit_meta(copy, schema=2)
    with pytest.raises(UsamError) as err:
        Container.open(copy)
    assert str(err.value) == (
        f"{copy / 'meta.json'}: container schema 2 is newer than this usam reads (1); "
        "update usam or rebuild the container with this version"
    )


def test_open_maps_the_files_as_the_build_said(copy):
    assert not Container.open(copy).mmap  # built without offload
    edit_meta(copy, offload=True)
    assert Container.open(copy).mmap and isinstance(Container.open(copy)["iou"], np.memmap)
    meta = json.loads((copy / "meta.json").read_text())
    del meta["offload"]
    (copy / "meta.json").write_text(json.dumps(meta))
    assert not Container.open(copy).mmap  # a container from before the flag: loaded


def test_open_checks_every_file(copy):
    (copy / "codes" / "variant.npy").unlink()
    with pytest.raises(UsamError) as err:
        Container.open(copy)
    assert str(err.value).startswith(f"{copy / 'codes' / 'variant.npy'} is missing or damaged (")
    np.save(copy / "codes" / "variant.npy", np.zeros(13, dtype=np.int32))
    with pytest.raises(UsamError) as err:
        Container.open(copy)
    assert str(err.value) == (
        f"{copy / 'codes' / 'variant.npy'} has 13 rows but {copy / 'meta.json'} says 14; "
        "rebuild the container"
    )


@pytest.mark.parametrize(
    ("tokens", "got"),
    [
        (np.zeros((14, 2, 256), np.float64), "float64 (14, 2, 256)"),
        (np.zeros((14, 2, 128), np.float32), "float32 (14, 2, 128)"),
        (np.zeros((14, 3, 256), np.float32), "float32 (14, 3, 256)"),
    ],
)
def test_open_checks_the_tokens(copy, tokens, got):
    np.save(copy / "tokens.npy", tokens)
    with pytest.raises(UsamError) as err:
        Container.open(copy, mmap=True)
    assert str(err.value) == (
        f"{copy / 'tokens.npy'} is float32 [rows, 2, 256] in a container, got {got}; rebuild it"
    )


class Reads:
    """An array that records the row indices it is read at."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.asked = a, []

    def __getitem__(self, index):
        self.asked.append(np.asarray(index).tolist())
        return self.a[index]


def test_a_mapped_container_reads_token_rows_front_to_back(built):
    c = Container.open(built, mmap=True)
    expected = np.asarray(c.tokens)[[13, 2, 8]]
    c._arrays["tokens"] = spy = Reads(c._arrays["tokens"])
    np.testing.assert_array_equal(c.read_tokens([13, 2, 8]), expected)
    assert spy.asked == [[2, 8, 13]]  # a mapped file reads faster in file order


def test_open_never_unpickles(copy):
    # an object array in a column file would run pickle on load: refused, even when loading
    np.save(copy / "columns" / "width.npy", np.array([{"x": 1}] * 14, dtype=object))
    with pytest.raises(UsamError) as err:
        Container.open(copy, mmap=False)
    assert str(err.value).startswith(f"{copy / 'columns' / 'width.npy'} is missing or damaged (")
    assert "allow_pickle" in str(err.value)
