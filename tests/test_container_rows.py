"""usam.container.rows: one record -> its rows, without files. Every expected value below is
worked out by hand from the record in `record()`; models, variants and instances all differ,
and the container's order (tiny, small, large) is not the record's (large, tiny)."""

from __future__ import annotations

import numpy as np
import pytest

from usam.container import rows
from usam.container.reader import column_names
from usam.container.rows import BadRecord
from usam.schema import FIELDS
from usam.synthetic import make_record, token_code

MODELS = ["tiny", "small", "large"]  # the container's; "small" is missing from the record
VARIANTS = ["original", "jpeg10", "blur"]  # the container's; the record has no jpeg10
NAN = np.nan

# [model][variant] -> per-instance values; rows run tiny/original, tiny/blur, large/original, large/blur
FIELD_VALUES = {
    "tiny": {
        "original": {
            "iou": [0.5, 0.25],
            "unsupervised_iou": [0.75, 0.25],
            "iou_dense_prompt": [0.625, None],
            "sam_score": [0.3125, 0.4375],
            "unsupervised_sam_score": [0.0625, 0.125],
        },
        "blur": {
            "iou": [0.375, 0.125],
            "unsupervised_iou": [0.5, 0.0625],
            "iou_dense_prompt": [0.625, 0.25],
            "sam_score": [0.1875, 0.5625],
            "unsupervised_sam_score": [0.25, 0.375],
        },
    },
    "large": {
        "original": {
            "iou": [0.875, 0.75],
            "unsupervised_iou": [0.9375, 0.5],
            "iou_dense_prompt": [1.0, 0.8125],
            "sam_score": [0.6875, 0.8125],
            "unsupervised_sam_score": [0.5, 0.625],
        },
        "blur": {
            "iou": [0.625, 0.5],
            "unsupervised_iou": [0.625, 0.25],
            "iou_dense_prompt": [0.875, 0.5],
            "sam_score": [0.9375, 0.0625],
            "unsupervised_sam_score": [0.75, 0.875],
        },
    },
}
BEST = {
    ("tiny", "original"): [2, 0],
    ("tiny", "blur"): [1, 2],
    ("large", "original"): [0, 1],
    ("large", "blur"): [2, 1],
}


def record(**kwargs):
    """bear: instances 7 (area 30) and 4 (area 90), large + tiny, original + blur + noise."""
    args = dict(
        instances=[(7, 30), (4, 90)],
        models=["large", "tiny"],
        variants=["original", "blur", "noise"],
        fields=FIELD_VALUES,
        best=BEST,
        width=20,
        height=12,
    )
    return make_record("bear/00001.jpg", "bear", **(args | kwargs))


def parsed(rec=None, models=MODELS, variants=VARIANTS) -> rows.Parsed:
    return rows.parse(record()[0] if rec is None else rec, models, variants)


def reason(call, *args) -> BadRecord:
    with pytest.raises(BadRecord) as err:
        call(*args)
    assert str(err.value) == err.value.reason  # the message is the reason alone
    return err.value


# ---- small helpers ---------------------------------------------------------------------------
def test_ordered_puts_known_names_in_their_order_and_the_rest_sorted_after():
    names = {"zeta", "large", "alpha", "tiny"}
    assert rows.ordered(names, ("tiny", "small", "base_plus", "large")) == [
        "tiny",
        "large",
        "alpha",
        "zeta",
    ]
    assert rows.ordered({"blur", "original"}, rows.VARIANT_ORDER) == ["original", "blur"]


def test_numbers_turn_null_into_nan_and_keep_the_shape():
    a = rows.numbers([0.25, None, 3], "x")
    assert a.dtype == np.float64 and a[0] == 0.25 and np.isnan(a[1]) and a[2] == 3
    b = rows.numbers([[1, 2], [3, None]], "y", (2, 2))
    assert b.shape == (2, 2) and b[1, 0] == 3 and np.isnan(b[1, 1])


@pytest.mark.parametrize(
    ("values", "shape", "message"),
    [
        (["a", 1], None, "w must be a list of numbers, got ['a', 1]"),
        ([[1, 2], [3]], None, "w must be a list of numbers, got [[1, 2], [3]]"),
        ([1, 2, 3], (2,), "w must be a list of 2 numbers, got [1, 2, 3]"),
        ([[1, 2, 3]], (1, 2), "w must be a list of 2 numbers, got [[1, 2, 3]]"),
        (None, (3,), "w must be a list of 3 numbers, got None"),
        ({"a": 1}, (1,), "w must be a list of 1 numbers, got {'a': 1}"),
    ],
)
def test_numbers_say_what_they_expected(values, shape, message):
    err = reason(rows.numbers, values, "w", shape)
    assert err.reason == message and err.kind == "incomplete" and err.suffix == ".json"


def test_numbers_cut_a_long_value_in_the_message():
    err = reason(rows.numbers, ["x" * 200], "w")
    assert err.reason == "w must be a list of numbers, got " + str(["x" * 200])[:80]


# ---- the header ------------------------------------------------------------------------------
def test_a_good_header_passes():
    rows.check_header(record()[0])


@pytest.mark.parametrize(
    ("change", "message", "kind"),
    [
        ({"kind": "usam.summary"}, "not a usam.record JSON", "incomplete"),
        (
            {"schema": 2},
            "record schema 2 is not supported (this usam reads schema 1); re-extract with "
            "this usam version",
            "schema",
        ),
        ({"models": []}, "'models' must be a non-empty list of names, got []", "incomplete"),
        (
            {"models": "tiny"},
            "'models' must be a non-empty list of names, got 'tiny'",
            "incomplete",
        ),
        (
            {"models": ["tiny", 3]},
            "'models' must be a non-empty list of names, got ['tiny', 3]",
            "incomplete",
        ),
        (
            {"variants": ["blur", "original"]},
            "'variants' must be a list of names starting with 'original', got ['blur', 'original']",
            "incomplete",
        ),
        (
            {"variants": []},
            "'variants' must be a list of names starting with 'original', got []",
            "incomplete",
        ),
        (
            {"variants": "original"},
            "'variants' must be a list of names starting with 'original', got 'original'",
            "incomplete",
        ),
        (
            {"variants": ["original", None]},
            "'variants' must be a list of names starting with 'original', got ['original', None]",
            "incomplete",
        ),
    ],
)
def test_a_bad_header_is_named(change, message, kind):
    err = reason(rows.check_header, record()[0] | change)
    assert (err.reason, err.kind, err.suffix) == (message, kind, ".json")


def test_a_header_missing_keys_lists_them_in_order():
    rec = record()[0]
    del rec["width"], rec["group"]
    assert reason(rows.check_header, rec).reason == "missing keys ['group', 'width']"
    assert reason(rows.check_header, ["kind"]).reason == "not a usam.record JSON"


# ---- parse -----------------------------------------------------------------------------------
def test_parse_lays_the_record_over_the_container_models_and_variants():
    p = parsed()
    assert p.models == MODELS and p.present == [0, 2] and p.missing == ["small"]
    assert p.variants == ["original", "blur"]  # container order; noise is not kept
    assert p.shape == (2, 2, 2)
    assert p.values.shape == (len(FIELDS), 3, 2, 2) and p.best.shape == (3, 2, 2)
    assert p.ids.tolist() == [7, 4] and p.areas.tolist() == [30, 90]
    assert (p.width, p.height) == (20, 12)
    iou = p.field("iou")
    assert iou[2].tolist() == [[0.875, 0.75], [0.625, 0.5]]  # large: original, blur
    assert iou[0].tolist() == [[0.5, 0.25], [0.375, 0.125]]
    assert np.isnan(iou[1]).all() and np.isnan(p.values[:, 1]).all()  # small: no results
    assert np.isnan(p.field("iou_dense_prompt")[0, 0, 1])  # null in the JSON
    assert p.field("unsupervised_sam_score")[2, 1].tolist() == [0.75, 0.875]
    assert p.best[2].tolist() == [[0, 1], [2, 1]] and p.best[0].tolist() == [[2, 0], [1, 2]]
    assert p.best[1].tolist() == [[0, 0], [0, 0]]


def test_parse_keeps_only_the_variants_the_container_has():
    p = parsed(variants=["original"])
    assert p.variants == ["original"] and p.shape == (2, 1, 2)
    assert p.field("iou")[2].tolist() == [[0.875, 0.75]]


def test_parse_of_a_record_without_instances_has_no_rows():
    rec, _ = record(instances=[], fields={}, best={})
    p = parsed(rec)
    assert p.shape == (2, 2, 0) and p.values.shape == (len(FIELDS), 3, 2, 0)


def _broken(change) -> dict:
    rec = record()[0]
    change(rec)
    return rec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r.update(instances={"id": 1}),
            "'instances' must be a list of {id, gt_area, ...}",
        ),
        (
            lambda r: r["instances"][1].pop("gt_area"),
            "'instances' must be a list of {id, gt_area, ...}",
        ),
        (lambda r: r["instances"][1].pop("id"), "'instances' must be a list of {id, gt_area, ...}"),
        (lambda r: r.update(instances=[{"id": 1, "gt_area": 2}, 5]), "'instances' must be"),
        (
            lambda r: r["instances"][1].update(id="four"),
            "instances.id must be a list of numbers, got [7, 'four']",
        ),
        (
            lambda r: r["instances"][1].update(gt_area=[9]),
            "instances.gt_area must be a list of numbers, got [30, [9]]",
        ),
        (lambda r: r.update(width="wide"), "width must be a list of numbers, got ['wide']"),
        (lambda r: r.update(height=[12]), "height must be a list of numbers, got [[12]]"),
        (lambda r: r["fields"]["large"].pop("blur"), "fields.large.blur is missing"),
        (lambda r: r["fields"].pop("tiny"), "fields.tiny.original is missing"),
        (lambda r: r["fields"]["large"].update(blur=[1]), "fields.large.blur is missing"),
        (lambda r: r.update(fields=[]), "fields.tiny.original is missing"),
        (
            lambda r: r["fields"]["large"]["blur"].update(h_all=[1.0]),
            "fields.large.blur.h_all must be a list of 2 numbers, got [1.0]",
        ),
        (
            lambda r: r["fields"]["large"]["blur"].pop("h_theta"),
            "fields.large.blur.h_theta must be a list of 2 numbers, got None",
        ),
        (
            lambda r: r["fields"]["tiny"]["blur"].update(entropy=["high", 1]),
            "fields.tiny.blur.entropy must be a list of 2 numbers, got ['high', 1]",
        ),
        (
            lambda r: r["fields"]["large"]["blur"].update(best=[0, 3]),
            "fields.large.blur.best must be 2 mask indices 0..2, got [0, 3]",
        ),
        (
            lambda r: r["fields"]["large"]["blur"].update(best=[-1, 0]),
            "fields.large.blur.best must be 2 mask indices 0..2, got [-1, 0]",
        ),
        (
            lambda r: r["fields"]["tiny"]["blur"].update(best=[1, True]),
            "fields.tiny.blur.best must be 2 mask indices 0..2, got [1, True]",
        ),
        (
            lambda r: r["fields"]["tiny"]["blur"].update(best=[1.0, 2]),
            "fields.tiny.blur.best must be 2 mask indices 0..2, got [1.0, 2]",
        ),
        (
            lambda r: r["fields"]["large"]["original"].update(best=[1]),
            "fields.large.original.best must be 2 mask indices 0..2, got [1]",
        ),
        (
            lambda r: r["fields"]["large"]["original"].pop("best"),
            "fields.large.original.best must be 2 mask indices 0..2, got None",
        ),
        (
            lambda r: r["fields"]["large"]["original"].update(best=(0, 1)),
            "fields.large.original.best must be 2 mask indices 0..2, got (0, 1)",
        ),
        (lambda r: r.update(schema=0), "record schema 0 is not supported"),
    ],
)
def test_parse_names_the_broken_part(change, message):
    err = reason(parsed, _broken(change))
    assert err.reason.startswith(message) and err.kind in ("incomplete", "schema")
    assert err.suffix == ".json"


def test_parse_accepts_the_largest_mask_index_and_ignores_variants_it_drops():
    rec = _broken(lambda r: r["fields"]["large"]["blur"].update(best=[2, 2]))
    assert parsed(rec).best[2, 1].tolist() == [2, 2]
    # a broken block of a variant the container does not keep is never read
    rec = _broken(lambda r: r["fields"]["large"]["noise"].update(best="x"))
    assert parsed(rec).best[2, 1].tolist() == [2, 1]


# ---- columns ---------------------------------------------------------------------------------
def test_columns_are_every_container_column_and_the_two_codes():
    out = rows.columns(parsed(), VARIANTS)
    assert list(out) == [*column_names(MODELS), "code:model", "code:variant"]
    assert all(len(a) == 8 for a in out.values())


def test_columns_by_hand():
    c = rows.columns(parsed(), VARIANTS)

    def same(name, expected):
        np.testing.assert_array_equal(c[name], np.array(expected, dtype=np.float64), err_msg=name)

    # rows: tiny/original 7, 4; tiny/blur 7, 4; large/original 7, 4; large/blur 7, 4
    same("iou", [0.5, 0.25, 0.375, 0.125, 0.875, 0.75, 0.625, 0.5])
    same("sam_score", [0.3125, 0.4375, 0.1875, 0.5625, 0.6875, 0.8125, 0.9375, 0.0625])
    same("unsupervised_sam_score", [0.0625, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875])
    same("best", [2, 0, 1, 2, 0, 1, 2, 1])
    # SPEC: task_gap = iou - unsupervised_iou, prompt_gap = iou_dense_prompt - iou
    same("task_gap", [-0.25, 0, -0.125, 0.0625, -0.0625, 0.25, 0, 0.25])
    same("prompt_gap", [0.125, NAN, 0.25, 0.125, 0.125, 0.0625, 0.25, 0])
    # model_gap = iou_large - iou_tiny of the same variant and instance, on every model's rows
    same("model_gap", [0.375, 0.5, 0.25, 0.375] * 2)
    same("iou_tiny", [0.5, 0.25, 0.375, 0.125] * 2)
    same("iou_large", [0.875, 0.75, 0.625, 0.5] * 2)
    same("iou_small", [NAN] * 8)
    same("unsupervised_iou_large", [0.9375, 0.5, 0.625, 0.25] * 2)
    same("unsupervised_iou_tiny", [0.75, 0.25, 0.5, 0.0625] * 2)
    same("sam_score_tiny", [0.3125, 0.4375, 0.1875, 0.5625] * 2)
    same("sam_score_large", [0.6875, 0.8125, 0.9375, 0.0625] * 2)
    same("sam_score_small", [NAN] * 8)
    same("is_tiny", [1, 1, 1, 1, 0, 0, 0, 0])
    same("is_small", [0] * 8)
    same("is_large", [0, 0, 0, 0, 1, 1, 1, 1])
    same("is_augmented", [0, 0, 1, 1, 0, 0, 1, 1])
    same("gt_size", [30, 90] * 4)
    same("instance_id", [7, 4] * 4)
    same("width", [20] * 8)
    same("height", [12] * 8)
    assert c["code:model"].tolist() == [0, 0, 0, 0, 2, 2, 2, 2]
    assert c["code:variant"].tolist() == [0, 0, 2, 2, 0, 0, 2, 2]  # blur is the container's third


def test_fields_without_an_override_land_in_their_own_rows():
    rec, _ = record()
    h = {
        (m, v): rec["fields"][m][v]["h_theta"]
        for m in ("tiny", "large")
        for v in ("original", "blur")
    }
    expected = [
        *h["tiny", "original"],
        *h["tiny", "blur"],
        *h["large", "original"],
        *h["large", "blur"],
    ]
    assert len(set(expected)) == 8
    assert rows.columns(parsed(rec), VARIANTS)["h_theta"].tolist() == expected


def test_model_gap_is_nan_without_both_large_and_tiny():
    c = rows.columns(parsed(models=["small", "large"]), VARIANTS)
    assert c["iou"].tolist() == [0.875, 0.75, 0.625, 0.5]  # the large rows only
    assert np.isnan(c["model_gap"]).all() and len(c["model_gap"]) == 4
    assert c["task_gap"].tolist() == [-0.0625, 0.25, 0, 0.25]
    assert c["code:model"].tolist() == [1, 1, 1, 1]
    assert c["is_large"].tolist() == [1] * 4 and c["is_small"].tolist() == [0] * 4


def test_model_gap_follows_the_names_not_the_positions():
    # large listed first: the gap is still large - tiny
    c = rows.columns(parsed(models=["large", "tiny"]), VARIANTS)
    assert c["model_gap"].tolist() == [0.375, 0.5, 0.25, 0.375] * 2
    assert c["code:model"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert c["iou"].tolist() == [0.875, 0.75, 0.625, 0.5, 0.5, 0.25, 0.375, 0.125]


def test_columns_of_one_variant_and_one_instance():
    rec, _ = record(
        instances=[(9, 55)],
        models=["tiny"],
        variants=["original", "blur"],
        fields={"tiny": {"blur": {"iou": [0.25], "iou_dense_prompt": [0.75]}}},
        best={("tiny", "blur"): [1]},
    )
    c = rows.columns(
        parsed(rec, variants=["original", "jpeg10", "blur"]), ["original", "jpeg10", "blur"]
    )
    assert len(c["iou"]) == 2 and c["is_augmented"].tolist() == [0, 1]
    assert c["code:variant"].tolist() == [0, 2] and c["best"].tolist() == [0, 1]
    assert c["iou"][1] == 0.25 and c["prompt_gap"][1] == 0.5
    assert c["instance_id"].tolist() == [9, 9] and c["gt_size"].tolist() == [55, 55]
    assert np.isnan(c["model_gap"]).all() and np.isnan(c["iou_large"]).all()


# ---- tokens ----------------------------------------------------------------------------------
def test_tokens_are_the_iou_token_and_the_best_mask_token_of_each_row():
    rec, tensors = record()
    t = rows.tokens(parsed(rec), tensors)
    assert t.shape == (8, 2, 256) and t.dtype == np.float32
    # (model index in records.MODELS, variant index in records.VARIANTS, instance, best)
    expected = [
        (0, 0, 0, 2),
        (0, 0, 1, 0),
        (0, 4, 0, 1),
        (0, 4, 1, 2),
        (3, 0, 0, 0),
        (3, 0, 1, 1),
        (3, 4, 0, 2),
        (3, 4, 1, 1),
    ]
    for r, (m, v, i, b) in enumerate(expected):
        code = token_code(m, v, i)
        np.testing.assert_array_equal(t[r, 0], np.full(256, code), err_msg=str(r))
        np.testing.assert_array_equal(t[r, 1], np.full(256, code + (b + 1) / 4), err_msg=str(r))


def test_tokens_of_a_record_without_instances():
    rec, tensors = record(instances=[], fields={}, best={})
    assert rows.tokens(parsed(rec), tensors).shape == (0, 2, 256)


@pytest.mark.parametrize(
    ("change", "message", "kind"),
    [
        (
            lambda t: t.pop("large/blur/mask_tokens"),
            "tensor large/blur/mask_tokens is missing",
            "incomplete",
        ),
        (
            lambda t: t.pop("tiny/blur/iou_token"),
            "tensor tiny/blur/iou_token is missing",
            "incomplete",
        ),
        (
            lambda t: t.update({"large/blur/iou_token": np.zeros((2, 255), np.float32)}),
            "large/blur: tokens of shape (2, 255) and (2, 3, 256), expected (2, 256) and "
            "(2, 3, 256)",
            "incomplete",
        ),
        (
            lambda t: t.update({"large/blur/mask_tokens": np.zeros((2, 2, 256), np.float32)}),
            "large/blur: tokens of shape (2, 256) and (2, 2, 256), expected (2, 256) and "
            "(2, 3, 256)",
            "incomplete",
        ),
        (
            lambda t: t.update({"tiny/blur/iou_token": np.zeros((1, 256), np.float32)}),
            "tiny/blur: tokens of shape (1, 256) and (2, 3, 256), expected (2, 256) and "
            "(2, 3, 256)",
            "incomplete",
        ),
        (
            lambda t: t["large/blur/iou_token"].__setitem__((1, 7), np.inf),
            "large/blur: tokens are not finite",
            "non_finite",
        ),
        (
            lambda t: t["tiny/blur/mask_tokens"].__setitem__((1, 2, 9), np.nan),
            "tiny/blur: tokens are not finite",
            "non_finite",
        ),
    ],
)
def test_broken_tokens_blame_the_tensor_file(change, message, kind):
    rec, tensors = record()
    change(tensors)
    err = reason(rows.tokens, parsed(rec), tensors)
    assert (err.reason, err.kind, err.suffix) == (message, kind, ".safetensors")


def test_tokens_of_variants_the_container_drops_are_not_needed():
    rec, tensors = record()
    del tensors["large/noise/iou_token"], tensors["tiny/noise/mask_tokens"]
    assert rows.tokens(parsed(rec), tensors).shape == (8, 2, 256)


def test_a_record_with_none_of_the_container_models_has_no_rows_but_typed_columns():
    p = parsed(models=["small", "base_plus"])
    assert p.present == [] and p.shape == (0, 2, 2) and p.missing == ["small", "base_plus"]
    c = rows.columns(p, VARIANTS)
    assert all(len(a) == 0 for a in c.values())
    # the codes go to int32 files: integers even when empty
    assert c["code:model"].dtype == np.int64 and c["code:variant"].dtype.kind == "i"
    assert c["is_small"].dtype == np.float64 and c["best"].dtype == np.float64
    assert rows.tokens(p, {}).shape == (0, 2, 256)
