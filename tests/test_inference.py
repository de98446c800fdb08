"""usam.inference on the CPU: seeded random tiny SAM at image_size=128, bundles of seeded MLPs.

The reference for every estimate is the bundle itself (`usam.mlp.Estimator.load`) applied to
the tokens `usam.sam.SamModel.decode` captures for the same prompts; masks and scores are
checked against upstream `SAM2ImagePredictor.predict` on the same weights.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from published import DecoderTokens, fill_hub_cache, offline_hub
from sam2.sam2_image_predictor import SAM2ImagePredictor

from usam.errors import UsamError
from usam.inference import (
    StackedEstimators,
    UncertainSAM,
    check_compatible,
    check_trained_on,
    load_bundles,
    load_estimators,
    pairing_heads,
)
from usam.mlp import Estimator, UsamMLP, paired_token, save_bundle
from usam.sam import SamModel, load_sam_model
from usam.schema import TARGETS

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
H, W = 40, 56
POINTS = np.array([[[15.0, 12.0]], [[30.0, 20.0]], [[50.0, 35.0]]], np.float32)
LABELS = np.ones(POINTS.shape[:2], np.int64)
BOXES = np.array([[5.0, 4.0, 40.0, 30.0], [20.0, 10.0, 55.0, 39.0], [0.0, 0.0, 56.0, 40.0]])
ALL_SIZES = ["tiny", "small", "base_plus", "large"]


def make_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    img[8:30, 10:40] = (200, 40, 40)
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


def bundle_config(target: str, **extra) -> dict:
    return {
        "target": target,
        "output_shift": TARGETS[target],
        "sam_version": "sam2.1",
        "models": ALL_SIZES,
        "random_weights": True,
        **extra,
    }


def write_bundles(root, targets=("iou_tiny", "task_gap", "model_gap"), hidden=(512, 512), **extra):
    for i, t in enumerate(targets):
        torch.manual_seed(100 + i)
        save_bundle(root / t, UsamMLP(hidden=hidden), bundle_config(t, **extra))
    return root


def constant_bundle(directory, target: str, p: float, **extra) -> None:
    """An MLP whose output is sigmoid(logit(p)) = p for every input: zero weights, last bias."""
    model = UsamMLP(hidden=[8])
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.net[-2].bias.fill_(math.log(p / (1 - p)))
    save_bundle(directory / target, model, bundle_config(target, **extra))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def usam(bundles):
    sam = load_sam_model("tiny", None, TINY, random_weights=True, image_size=128, device="cpu")
    u = UncertainSAM(sam, load_bundles(bundles))
    u.set_image(make_image())
    return u


@pytest.fixture(scope="module")
def upstream(usam):
    """sam2's own predictor on the same weights and image (no usam code in its path)."""
    p = SAM2ImagePredictor(usam.sam.model)
    p._bb_feat_sizes = usam.sam.sam_predictor._bb_feat_sizes
    with torch.inference_mode():
        p.set_image(make_image())
    return p


def rows(iou_token: np.ndarray, mask_tokens: np.ndarray) -> torch.Tensor:
    """[B, 256], [B, 3, 256] -> [B * 3, 2, 256]: (iou token, token of mask j) per mask."""
    iou = np.broadcast_to(iou_token[:, None], mask_tokens.shape)
    return torch.from_numpy(np.stack([iou, mask_tokens], axis=2).reshape(-1, 2, 256).copy())


class Counter:
    """Counts forward calls of a module (test-only hook)."""

    def __init__(self, module):
        self.n = 0
        self.handle = module.register_forward_hook(lambda *a: setattr(self, "n", self.n + 1))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


# --------------------------------------------------------------------------- the estimates


def test_estimates_equal_bundles_on_tokens_of_the_same_pass(usam, bundles):
    out = usam.predict(POINTS, LABELS, return_tokens=True)
    ref = usam.sam.decode(POINTS, LABELS)  # usam.sam's own token capture, a separate pass
    np.testing.assert_array_equal(out.masks, ref.masks.numpy())
    np.testing.assert_allclose(out.scores, ref.scores.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.iou_token, ref.iou_token.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.mask_tokens, ref.mask_tokens.numpy(), rtol=0, atol=1e-6)
    x = rows(ref.iou_token.numpy(), ref.mask_tokens.numpy())
    assert list(out.estimates) == ["iou_tiny", "model_gap", "task_gap"]  # the paper's order
    for target in out.estimates:
        want = Estimator.load(bundles / target)(x).view(len(POINTS), 3).numpy()
        assert out.estimates[target].shape == (3, 3) and out.estimates[target].dtype == np.float32
        np.testing.assert_allclose(out.estimates[target], want, rtol=0, atol=1e-6)
    # and per mask, not one value broadcast: the three masks' tokens differ
    assert not np.allclose(out.estimates["iou_tiny"][:, 0], out.estimates["iou_tiny"][:, 1])


def test_estimates_use_the_tokens_returned_with_them(usam, bundles):
    """Against the tokens of this very call: MLP(iou_token, mask_token j) is estimate j."""
    out = usam.predict(POINTS[1], LABELS[1], return_tokens=True)
    x = rows(out.iou_token[None], out.mask_tokens[None])
    for target, values in out.estimates.items():
        want = Estimator.load(bundles / target)(x).numpy()
        np.testing.assert_allclose(values, want, rtol=0, atol=1e-6)


def test_gap_outputs_are_shifted_back_by_half(tmp_path):
    """Constant MLPs (zero weights): IoU targets give p, gap targets p - 0.5, by hand."""
    constant_bundle(tmp_path, "iou_large", 0.75)
    constant_bundle(tmp_path, "prompt_gap", 0.75)
    constant_bundle(tmp_path, "task_gap", 0.5)
    heads = StackedEstimators(load_bundles(tmp_path))
    got = heads(torch.randn(6, 512))
    assert heads.stacked and heads.targets == ["iou_large", "task_gap", "prompt_gap"]
    np.testing.assert_allclose(got.numpy(), [[0.75] * 6, [0.0] * 6, [0.25] * 6], atol=1e-7)


def test_stacked_heads_equal_each_bundle_and_mixed_architectures_loop(tmp_path):
    write_bundles(tmp_path / "same", targets=list(TARGETS))
    write_bundles(tmp_path / "mixed", targets=["iou_tiny"], hidden=(512, 512))
    write_bundles(tmp_path / "mixed", targets=["task_gap"], hidden=(64,))
    x = torch.randn(12, 512)
    for name, stacked in [("same", True), ("mixed", False)]:
        preds = load_bundles(tmp_path / name)
        heads = StackedEstimators(preds)
        assert heads.stacked is stacked
        want = torch.stack([p(x) for p in preds.values()])
        torch.testing.assert_close(heads(x), want, rtol=0, atol=1e-6)


def test_one_decoder_pass_per_call_and_no_encoder_pass(usam):
    model = usam.sam.model
    with Counter(model.sam_mask_decoder) as dec, Counter(model.image_encoder) as enc:
        usam.predict(POINTS, LABELS)
        assert (dec.n, enc.n) == (1, 0)
        usam.predict(box=BOXES[0])
        assert (dec.n, enc.n) == (2, 0)
    old = usam.sam.batch_size
    usam.sam.batch_size = 2  # 3 prompts -> 2 decoder calls, results unchanged
    try:
        with Counter(model.sam_mask_decoder) as dec:
            chunked = usam.predict(POINTS, LABELS)
        assert dec.n == 2
    finally:
        usam.sam.batch_size = old
    whole = usam.predict(POINTS, LABELS)
    np.testing.assert_array_equal(chunked.masks, whole.masks)
    for t in whole.estimates:
        np.testing.assert_allclose(chunked.estimates[t], whole.estimates[t], atol=1e-6)


# --------------------------------------------------------------------------- SAM 2's prompts


def test_single_point_prompt_matches_sam2_and_is_unbatched(usam, upstream):
    out = usam.predict(POINTS[0], LABELS[0])
    with torch.inference_mode():
        masks, scores, low_res = upstream.predict(POINTS[0], LABELS[0], multimask_output=True)
    assert out.masks.shape == (3, H, W) and out.masks.dtype == bool
    assert out.scores.shape == (3,) and out.low_res_logits.shape == (3, 32, 32)
    assert all(v.shape == (3,) for v in out.estimates.values())
    assert out.iou_token is None and out.mask_tokens is None  # only on request
    np.testing.assert_array_equal(out.masks, masks.astype(bool))
    np.testing.assert_allclose(out.scores, scores, atol=1e-6)
    np.testing.assert_allclose(out.low_res_logits, low_res, atol=1e-5)
    assert out.best == int(np.argmax(scores)) and isinstance(out.best, int)


def test_batch_of_one_stays_batched_and_equals_the_single_prompt(usam):
    single = usam.predict(POINTS[0], LABELS[0])
    batch = usam.predict(POINTS[:1], LABELS[:1])
    assert batch.masks.shape == (1, 3, H, W) and batch.scores.shape == (1, 3)
    assert batch.best.shape == (1,)
    np.testing.assert_array_equal(batch.masks[0], single.masks)
    for t in single.estimates:
        assert batch.estimates[t].shape == (1, 3)
        np.testing.assert_allclose(batch.estimates[t][0], single.estimates[t], atol=1e-6)


def test_labels_default_to_foreground(usam):
    a = usam.predict(POINTS)
    b = usam.predict(POINTS, LABELS)
    np.testing.assert_array_equal(a.masks, b.masks)


def test_box_prompts_match_sam2_and_estimates_match_bundles(usam, upstream, bundles):
    out = usam.predict(box=BOXES, return_tokens=True)
    with torch.inference_mode():
        masks, scores, _ = upstream.predict(box=BOXES, multimask_output=True)
    assert out.masks.shape == (3, 3, H, W)
    np.testing.assert_array_equal(out.masks, masks.astype(bool))
    np.testing.assert_allclose(out.scores, scores, atol=1e-6)
    x = rows(out.iou_token, out.mask_tokens)
    for t, v in out.estimates.items():
        np.testing.assert_allclose(v.reshape(-1), Estimator.load(bundles / t)(x), atol=1e-6)
    # a box is not a point prompt: the answer differs from the points'
    assert not np.allclose(out.scores, usam.predict(POINTS, LABELS).scores)


def test_points_with_box_and_mask_input_match_sam2(usam, upstream):
    first = usam.predict(POINTS[0], LABELS[0])
    mask_in = first.low_res_logits[first.best][None]  # [1, h, w], SAM 2's iteration idiom
    out = usam.predict(POINTS[0], LABELS[0], box=BOXES[0], mask_input=mask_in)
    with torch.inference_mode():
        masks, scores, _ = upstream.predict(
            POINTS[0], LABELS[0], box=BOXES[0], mask_input=mask_in, multimask_output=True
        )
    np.testing.assert_array_equal(out.masks, masks.astype(bool))
    np.testing.assert_allclose(out.scores, scores, atol=1e-6)


def test_multi_point_prompt_with_background_point(usam, upstream):
    pts = np.array([[15.0, 12.0], [45.0, 35.0]])
    lab = np.array([1, 0])
    out = usam.predict(pts, lab)
    with torch.inference_mode():
        masks, _, _ = upstream.predict(pts, lab, multimask_output=True)
    np.testing.assert_array_equal(out.masks, masks.astype(bool))


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "no prompt"),
        ({"point_coords": [1.0, 2.0]}, "point_coords must be"),
        ({"point_coords": [[1.0, 2.0, 3.0]]}, "point_coords must be"),
        ({"point_coords": [[1.0, np.nan]]}, "NaN"),
        ({"point_coords": [["a", "b"]]}, "numeric"),
        ({"point_coords": [[1.0, 2.0]], "point_labels": [1, 1]}, "one label per point"),
        ({"point_coords": [[1.0, 2.0]], "point_labels": [3]}, "point_labels must be"),
        ({"point_labels": [1]}, "without point_coords"),
        ({"box": [1.0, 2.0, 3.0]}, "box must be"),
        ({"mask_input": np.zeros((1, 64, 64))}, "mask_input must be"),
        ({"point_coords": POINTS, "box": BOXES[:2]}, "disagree on the batch"),
        ({"point_coords": POINTS[0], "box": BOXES}, "disagree on the batch"),
    ],
)
def test_bad_prompts_are_usam_errors(usam, kwargs, message):
    with pytest.raises(UsamError, match=message):
        usam.predict(**kwargs)


def test_predict_before_set_image(usam):
    # a second SamModel on the fixture's weights: its own predictor, no image set yet
    sam = SamModel(usam.sam.model, size="tiny", version="sam2.1", random_weights=True)
    u = UncertainSAM(sam, {})
    with pytest.raises(UsamError) as e:
        u.predict(POINTS[0])
    assert str(e.value) == "UncertainSAM.predict called before set_image"
    with pytest.raises(UsamError, match="uint8"):
        u.set_image(np.zeros((4, 4), np.float32))
    u.set_image(make_image())
    out = u.predict(POINTS[0])  # no bundles: SAM alone, empty estimates
    assert out.estimates == {} and out.masks.shape == (3, H, W)
    sam.remove_hooks()


# --------------------------------------------------------------------------- loading


def assert_answers_like_the_fixture(loaded: UncertainSAM, usam: UncertainSAM) -> None:
    """A tiny sam2.1 loaded from the fixture's weights: the fixture's masks and estimates."""
    assert (loaded.sam.size, loaded.sam.version, loaded.sam.random_weights) == (
        "tiny",
        "sam2.1",
        False,
    )
    loaded.set_image(make_image())
    a, b = loaded.predict(POINTS, LABELS), usam.predict(POINTS, LABELS)
    np.testing.assert_array_equal(a.masks, b.masks)
    for t in b.estimates:
        np.testing.assert_allclose(a.estimates[t], b.estimates[t], atol=1e-6)


def test_from_pretrained_loads_a_checkpoint_and_infers_size_and_version(tmp_path, usam, bundles):
    """A checkpoint of the fixture's random weights, named like Meta's: same answers."""
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": usam.sam.model.state_dict()}, ckpt)
    loaded = UncertainSAM.from_pretrained(ckpt, bundles, image_size=128, device="cpu")
    assert_answers_like_the_fixture(loaded, usam)


def test_from_pretrained_random_weights_and_target_subset(bundles, caplog):
    with caplog.at_level(logging.WARNING):
        u = UncertainSAM.from_pretrained(
            None,
            bundles,
            size="tiny",
            random_weights=True,
            image_size=128,
            device="cpu",
            targets=["task_gap"],
        )
    assert list(u.estimators) == ["task_gap"]
    assert "RANDOM-weight SAM tokens" in caplog.text and "SAM 2 has RANDOM weights" in caplog.text


def test_from_pretrained_bad_inputs(tmp_path, bundles):
    with pytest.raises(UsamError, match="sam2.1_hiera_tiny.pt not found"):
        UncertainSAM.from_pretrained(tmp_path / "sam2.1_hiera_tiny.pt", bundles)
    (tmp_path / "weights.pt").write_bytes(b"")
    with pytest.raises(UsamError, match="cannot tell the SAM size"):
        UncertainSAM.from_pretrained(tmp_path / "weights.pt", bundles)
    with pytest.raises(UsamError, match="file name says SAM size tiny but size=large"):
        UncertainSAM.from_pretrained(tmp_path / "sam2.1_hiera_tiny.pt", bundles, size="large")
    with pytest.raises(UsamError, match="no SAM 2 checkpoint"):
        UncertainSAM.from_pretrained(None, bundles, size="tiny")
    with pytest.raises(UsamError, match="nowhere.*not found"):
        UncertainSAM.from_pretrained(None, tmp_path / "nowhere", size="tiny", random_weights=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsamError, match="holds no estimator bundle"):
        UncertainSAM.from_pretrained(None, tmp_path / "empty", size="tiny", random_weights=True)
    with pytest.raises(UsamError, match=r"no bundle for \['iou_large'\]"):
        load_bundles(bundles, targets=["iou_large"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_usam_error(bundles):
    with pytest.raises(UsamError, match="CUDA is not available"):
        UncertainSAM.from_pretrained(None, bundles, size="tiny", random_weights=True, device="cuda")


def test_a_single_bundle_directory_loads(bundles):
    preds = load_bundles(bundles / "task_gap")
    assert list(preds) == ["task_gap"] and preds["task_gap"].shift == 0.5


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"sam_version": "sam2.0"}, "trained on sam2.0 tokens but the checkpoint is sam2.1"),
        ({"models": ["large"]}, "tokens of SAM large but the checkpoint is SAM tiny"),
        ({"filter_model": "small"}, "tokens of SAM small but the checkpoint is SAM tiny"),
    ],
)
def test_bundles_of_another_sam_are_refused(tmp_path, usam, extra, message):
    write_bundles(tmp_path, targets=["iou_tiny"], **extra)
    with pytest.raises(UsamError, match=message):
        UncertainSAM(usam.sam, load_bundles(tmp_path))


def test_bundles_that_fit_are_accepted(tmp_path, usam):
    write_bundles(tmp_path / "a", targets=["iou_tiny"], sam_version="sam2.0+sam2.1")
    write_bundles(tmp_path / "b", targets=["iou_tiny"], filter_model="tiny", models=["tiny"])
    write_bundles(tmp_path / "c", targets=["iou_tiny"], sam_version=None, models=None)
    for d in "abc":
        u = UncertainSAM(usam.sam, load_bundles(tmp_path / d))
        assert list(u.estimators) == ["iou_tiny"]


def test_duplicate_targets_are_refused(tmp_path):
    torch.manual_seed(0)
    save_bundle(tmp_path / "one", UsamMLP(hidden=[8]), bundle_config("task_gap"))
    save_bundle(tmp_path / "two", UsamMLP(hidden=[8]), bundle_config("task_gap"))
    with pytest.raises(UsamError, match="two bundles predict 'task_gap'"):
        load_bundles(tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_estimates_equal_bundles_on_the_same_pass(bundles):
    u = UncertainSAM.from_pretrained(
        None, bundles, size="tiny", random_weights=True, image_size=128, device="cuda"
    )
    u.set_image(make_image())
    out = u.predict(POINTS, LABELS, return_tokens=True)
    x = rows(out.iou_token, out.mask_tokens)
    for t, v in out.estimates.items():
        want = Estimator.load(bundles / t)(x).view(len(POINTS), 3).numpy()
        np.testing.assert_allclose(v, want, atol=1e-5)


# --------------------------------------------------------------------------- token pairing


def test_bundles_without_a_pairing_are_usam_and_an_unknown_pairing_is_refused(tmp_path):
    write_bundles(tmp_path / "old", targets=["iou_tiny"])
    cfg_path = tmp_path / "old" / "iou_tiny" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    assert cfg["token_pairing"] == "usam"  # written by save_bundle
    del cfg["token_pairing"]  # a bundle from before the field existed
    cfg_path.write_text(json.dumps(cfg))
    assert load_bundles(tmp_path / "old")["iou_tiny"].pairing == "usam"
    write_bundles(tmp_path / "odd", targets=["iou_tiny"], token_pairing="shifted")
    with pytest.raises(
        UsamError, match=r"iou_tiny/config.json: token_pairing 'shifted' is unknown"
    ):
        load_bundles(tmp_path / "odd")


def test_paired_token_by_hand():
    source = torch.tensor([[1, 2, 3], [0, 0, 0], [2, 2, 2]])
    assert paired_token(source, "usam").tolist() == source.tolist()
    assert paired_token(source, "published").tolist() == [[0, 1, 2], [0, 0, 0], [1, 1, 1]]
    with pytest.raises(UsamError, match="unknown"):
        paired_token(source, "other")


def test_multimask_estimates_follow_each_bundles_pairing(tmp_path, usam):
    """One UncertainSAM, two pairings: the published bundle reads token j, usam's token j+1."""
    write_bundles(tmp_path / "u", targets=["iou_tiny"])
    write_bundles(tmp_path / "p", targets=["task_gap"], token_pairing="published")
    preds = {**load_bundles(tmp_path / "u"), **load_bundles(tmp_path / "p")}
    u = UncertainSAM(usam.sam, preds)
    with DecoderTokens(usam.sam.model) as tokens:
        out = u.predict(POINTS, LABELS)
    assert out.mask_token_index.tolist() == [[1, 2, 3]] * 3
    want_usam = preds["iou_tiny"](tokens.rows([1, 2, 3]).reshape(-1, 512)).view(3, 3)
    want_pub = preds["task_gap"](tokens.rows([0, 1, 2]).reshape(-1, 512)).view(3, 3)
    np.testing.assert_allclose(out.estimates["iou_tiny"], want_usam.numpy(), atol=1e-6)
    np.testing.assert_allclose(out.estimates["task_gap"], want_pub.numpy(), atol=1e-6)
    # the other pairing would give other numbers
    other = preds["task_gap"](tokens.rows([1, 2, 3]).reshape(-1, 512)).view(3, 3)
    assert np.abs(out.estimates["task_gap"] - other.numpy()).max() > 1e-4


# --------------------------------------------------------------------------- single mask

SINGLE_POINTS = np.array(
    [[[15.0, 12.0]], [[30.0, 20.0]], [[50.0, 35.0]], [[5.0, 5.0]], [[40.0, 10.0]], [[25.0, 30.0]]],
    np.float32,
)


@pytest.fixture
def mixed_stability(usam, upstream):
    """A stability threshold at the median of token 0's stability over SINGLE_POINTS, so SAM 2
    keeps token 0's mask for some prompts and falls back to a multimask output for others."""
    decoder = usam.sam.model.sam_mask_decoder
    labels = np.ones(SINGLE_POINTS.shape[:2])
    decoder.dynamic_multimask_via_stability = False  # SAM 2 returns token 0's mask
    try:
        with torch.inference_mode():
            _, _, token0 = upstream.predict(
                SINGLE_POINTS, labels, multimask_output=False, return_logits=True
            )
            stability = decoder._get_stability_scores(torch.as_tensor(token0))[:, 0]
    finally:
        decoder.dynamic_multimask_via_stability = True
    before = decoder.dynamic_multimask_stability_thresh
    decoder.dynamic_multimask_stability_thresh = float(stability.median())
    yield
    decoder.dynamic_multimask_stability_thresh = before


def source_tokens(upstream) -> list[int]:
    """Which decoder token made SAM 2's single mask per prompt, from SAM 2's outputs alone: the
    multimask output (token j+1) whose logits it equals, else token 0."""
    labels = np.ones(SINGLE_POINTS.shape[:2])
    with torch.inference_mode():
        _, _, single = upstream.predict(
            SINGLE_POINTS, labels, multimask_output=False, return_logits=True
        )
        _, _, multi = upstream.predict(
            SINGLE_POINTS, labels, multimask_output=True, return_logits=True
        )
    out = []
    for s, m in zip(single, multi, strict=True):
        same = [j for j in range(3) if np.array_equal(s[0], m[j])]
        out.append(same[0] + 1 if same else 0)
    return out


def test_single_mask_output_is_sam2s_mask_estimated_from_its_own_token(
    tmp_path, usam, upstream, mixed_stability
):
    write_bundles(tmp_path / "u", targets=["iou_tiny"])
    write_bundles(tmp_path / "p", targets=["task_gap"], token_pairing="published")
    preds = {**load_bundles(tmp_path / "u"), **load_bundles(tmp_path / "p")}
    u = UncertainSAM(usam.sam, preds)
    with DecoderTokens(usam.sam.model) as tokens:
        out = u.predict(SINGLE_POINTS, multimask_output=False, return_tokens=True)
    labels = np.ones(SINGLE_POINTS.shape[:2])
    with torch.inference_mode():
        masks, scores, _ = upstream.predict(SINGLE_POINTS, labels, multimask_output=False)
    assert out.masks.shape == (6, 1, H, W) and out.scores.shape == (6, 1)
    np.testing.assert_array_equal(out.masks, masks.astype(bool))
    np.testing.assert_allclose(out.scores, scores, atol=1e-6)
    source = source_tokens(upstream)
    assert 0 in source and any(k > 0 for k in source)  # both of SAM 2's cases in the batch
    assert out.mask_token_index[:, 0].tolist() == source
    rows = torch.stack([tokens.rows([k])[b, 0] for b, k in enumerate(source)])
    np.testing.assert_allclose(out.mask_tokens[:, 0], rows[:, 256:].numpy(), atol=1e-6)
    want_usam = preds["iou_tiny"](rows)
    published = [max(k - 1, 0) for k in source]  # one token early; token 0 for token 0's mask
    want_pub = preds["task_gap"](
        torch.stack([tokens.rows([k])[b, 0] for b, k in enumerate(published)])
    )
    assert out.estimates["iou_tiny"].shape == (6, 1)
    np.testing.assert_allclose(out.estimates["iou_tiny"][:, 0], want_usam.numpy(), atol=1e-6)
    np.testing.assert_allclose(out.estimates["task_gap"][:, 0], want_pub.numpy(), atol=1e-6)
    # token 0 for every prompt (ignoring SAM 2's fallback) would be wrong for the fallbacks
    token0 = preds["iou_tiny"](tokens.rows([0])[:, 0]).numpy()
    fallback = np.array(source) > 0
    assert np.abs(out.estimates["iou_tiny"][fallback, 0] - token0[fallback]).min() > 1e-5


def test_single_mask_single_prompt_is_unbatched_and_equals_its_batch_row(usam):
    one = usam.predict(POINTS[1], LABELS[1], multimask_output=False)
    batch = usam.predict(POINTS, LABELS, multimask_output=False)
    assert one.masks.shape == (1, H, W) and one.best == 0
    assert isinstance(one.mask_token_index[0], np.integer)
    np.testing.assert_array_equal(one.masks, batch.masks[1])
    for t in one.estimates:
        assert one.estimates[t].shape == (1,)
        np.testing.assert_allclose(one.estimates[t], batch.estimates[t][1], atol=1e-6)


def test_single_mask_without_dynamic_choice_is_token_0(tmp_path, usam, upstream):
    decoder = usam.sam.model.sam_mask_decoder
    decoder.dynamic_multimask_via_stability = False
    try:
        with DecoderTokens(usam.sam.model) as tokens:
            out = usam.predict(POINTS, LABELS, multimask_output=False)
        with torch.inference_mode():
            masks, _, _ = upstream.predict(POINTS, LABELS, multimask_output=False)
    finally:
        decoder.dynamic_multimask_via_stability = True
    np.testing.assert_array_equal(out.masks, masks.astype(bool))
    assert out.mask_token_index.tolist() == [[0]] * 3
    want = usam.estimators["iou_tiny"](tokens.rows([0])[:, 0])
    np.testing.assert_allclose(out.estimates["iou_tiny"][:, 0], want.numpy(), atol=1e-6)


# --------------------------------------------------------------------------- the hub


@pytest.fixture(scope="module")
def tiny_checkpoint(usam):
    """The fixture's random weights as a SAM 2 checkpoint file's bytes."""
    import io

    buf = io.BytesIO()
    torch.save({"model": usam.sam.model.state_dict()}, buf)
    return buf.getvalue()


def test_from_pretrained_takes_a_hub_id_from_the_cache_without_network(
    tmp_path, monkeypatch, usam, bundles, tiny_checkpoint
):
    fill_hub_cache(
        tmp_path / "hub", "facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt", tiny_checkpoint
    )
    offline_hub(monkeypatch, tmp_path / "hub")
    loaded = UncertainSAM.from_pretrained(
        "facebook/sam2.1-hiera-tiny", estimators=bundles, image_size=128, device="cpu"
    )
    assert_answers_like_the_fixture(loaded, usam)
    loaded.sam.remove_hooks()


def test_a_hub_file_that_does_not_match_the_hubs_sha256_is_refused(
    tmp_path, monkeypatch, tiny_checkpoint
):
    sha = fill_hub_cache(
        tmp_path / "hub", "facebook/sam2-hiera-tiny", "sam2_hiera_tiny.pt", tiny_checkpoint
    )
    blob = tmp_path / "hub/models--facebook--sam2-hiera-tiny/blobs" / sha
    blob.write_bytes(tiny_checkpoint[:-10])  # truncated after the download
    offline_hub(monkeypatch, tmp_path / "hub")
    with pytest.raises(UsamError, match=f"expected the pinned {sha}"):
        UncertainSAM.from_pretrained("facebook/sam2-hiera-tiny", image_size=128, device="cpu")


def test_hub_ids_not_cached_offline_or_unknown_are_usam_errors(tmp_path, monkeypatch):
    offline_hub(monkeypatch, tmp_path / "empty")
    with pytest.raises(UsamError, match="sam2.1_hiera_large.pt is not in the Hugging Face cache"):
        UncertainSAM.from_pretrained("facebook/sam2.1-hiera-large")
    with pytest.raises(UsamError, match="neither a checkpoint file here nor a SAM 2 model id"):
        UncertainSAM.from_pretrained("someone/sam2-finetuned")
    # a missing relative checkpoint file is a missing file, not a hub id
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsamError, match="sam2.1_hiera_tiny.pt not found; get it with"):
        UncertainSAM.from_pretrained("checkpoints/sam2.1_hiera_tiny.pt")


def test_estimators_from_a_published_folder_and_usam_bundles_together(tmp_path, bundles):
    from published import published_forward, published_state, write_published

    folder = write_published(tmp_path, "sam2.1", {"iou_unsupervised": 3, "prompt_gap": 4})
    u = UncertainSAM.from_pretrained(
        None,
        estimators=[folder, bundles],
        size="tiny",
        random_weights=True,
        image_size=128,
        device="cpu",
    )
    assert sorted(u.estimators) == [
        "iou_tiny",
        "model_gap",
        "prompt_gap",
        "task_gap",
        "unsupervised_iou",
    ]
    assert u.estimators["prompt_gap"].pairing == "published"
    assert u.estimators["iou_tiny"].pairing == "usam"
    x = torch.randn(5, 512)
    want = published_forward(published_state(4), x) - 0.5
    torch.testing.assert_close(u.estimators["prompt_gap"](x), want, rtol=0, atol=1e-6)
    with pytest.raises(UsamError, match=r"\['iou_tiny', 'model_gap', 'task_gap'\] already come"):
        UncertainSAM.from_pretrained(
            None, estimators=[bundles, bundles], size="tiny", random_weights=True
        )
    with pytest.raises(UsamError, match="not both"):
        UncertainSAM.from_pretrained(None, bundles, estimators=bundles, size="tiny")
    u.sam.remove_hooks()


# -- from the mutation run: usam.inference (issue 16) ------------------------------------------
def test_two_heads_of_one_shape_take_the_stacked_path(tmp_path):
    # two is the smallest stack: the batched matmul is the fast path, so it must be taken
    constant_bundle(tmp_path, "task_gap", 0.5)
    constant_bundle(tmp_path, "iou_small", 0.25)
    heads = StackedEstimators(load_bundles(tmp_path))
    assert heads.stacked and heads.targets == ["iou_small", "task_gap"]
    np.testing.assert_allclose(
        heads(torch.randn(3, 512)).numpy(), [[0.25] * 3, [0.0] * 3], atol=1e-7
    )


def test_an_unknown_pairing_is_named_with_the_known_ones(tmp_path):
    constant_bundle(tmp_path, "iou_large", 0.75)
    constant_bundle(tmp_path, "model_gap", 0.5)
    estimators = load_bundles(tmp_path)
    estimators["model_gap"].pairing = "shifted"  # a bundle edited after loading
    with pytest.raises(UsamError) as e:
        pairing_heads(estimators)
    assert str(e.value) == (
        "estimator 'model_gap': token_pairing 'shifted' is unknown; use one of usam, published"
    )


# load_estimators: the app's loader of one folder or several, bundles or published
def test_load_estimators_takes_one_folder_as_str_or_path_and_several_as_a_list(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    constant_bundle(a, "task_gap", 0.25)
    constant_bundle(a, "iou_small", 0.75)
    constant_bundle(b, "model_gap", 0.625)
    for one in (a, str(a)):
        assert sorted(load_estimators(one)) == ["iou_small", "task_gap"]
    both = load_estimators([b, str(a)])
    x = torch.zeros(1, 512)
    got = {t: round(e(x).item(), 6) for t, e in both.items()}
    assert got == {"model_gap": 0.125, "task_gap": -0.25, "iou_small": 0.75}  # gaps: p - 0.5


def test_load_estimators_picks_the_targets_asked_for_in_their_order_and_names_the_missing(
    tmp_path,
):
    a, b = tmp_path / "a", tmp_path / "b"
    constant_bundle(a, "iou_small", 0.75)
    constant_bundle(a, "task_gap", 0.25)
    constant_bundle(b, "model_gap", 0.625)
    assert list(load_estimators([a, b], targets=["task_gap", "model_gap"])) == [
        "task_gap",
        "model_gap",
    ]
    assert list(load_estimators([a, b], targets=[])) == []
    with pytest.raises(UsamError) as e:
        load_estimators([a, b], targets=["iou_small", "prompt_gap", "iou_large"])
    assert str(e.value) == f"{a}, {b}: no estimator for ['prompt_gap', 'iou_large']"
    with pytest.raises(UsamError) as e:
        load_estimators(str(a), targets=["model_gap"])
    assert str(e.value) == f"{a}: no estimator for ['model_gap']"


def test_load_estimators_refuses_a_target_from_two_folders(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    constant_bundle(a, "task_gap", 0.25)
    constant_bundle(a, "iou_small", 0.75)
    constant_bundle(b, "model_gap", 0.625)
    constant_bundle(b, "task_gap", 0.5)
    with pytest.raises(UsamError) as e:
        load_estimators([a, b])
    assert str(e.value) == (
        f"{b}: ['task_gap'] already come from another estimator folder; keep one"
    )


def test_load_estimators_reads_a_published_folder_by_its_model_pth_files(tmp_path):
    from published import published_forward, published_state, write_published

    folder = write_published(tmp_path, "sam2.1", {"iou_unsupervised": 3, "prompt_gap": 4})
    got = load_estimators(folder, device="meta")
    assert sorted(got) == ["prompt_gap", "unsupervised_iou"]
    assert {e.pairing for e in got.values()} == {"published"}
    assert all(p.device.type == "meta" for e in got.values() for p in e.parameters())
    x = torch.randn(3, 512)
    want = published_forward(published_state(3), x)
    torch.testing.assert_close(load_estimators(folder)["unsupervised_iou"](x), want)
    # a bundle folder is read as bundles: its config.json files say so, a model.pth beside
    # them does not make it a published folder
    constant_bundle(tmp_path / "b", "task_gap", 0.25)
    torch.save(published_state(3), tmp_path / "b" / "task_gap" / "model.pth")
    bundles = load_estimators(tmp_path / "b", device="meta")
    assert list(bundles) == ["task_gap"] and bundles["task_gap"].pairing == "usam"
    assert next(bundles["task_gap"].parameters()).device.type == "meta"


def test_batch_disagreements_name_each_prompt_and_its_batch(usam):
    with pytest.raises(UsamError) as e:
        usam.predict(point_coords=POINTS[:2], box=BOXES)
    assert str(e.value) == (
        "prompts disagree on the batch: point_coords batch of 2, box batch of 3; "
        "give all single or all with the same batch size"
    )
    with pytest.raises(UsamError) as e:
        usam.predict(point_coords=POINTS[0], box=BOXES[:2], mask_input=np.zeros((1, 32, 32)))
    assert str(e.value) == (
        "prompts disagree on the batch: point_coords single, box batch of 2, mask_input single; "
        "give all single or all with the same batch size"
    )


def test_several_points_of_one_prompt_with_one_box_are_one_prompt(usam):
    # [N, 2] points are one prompt of N points (not a batch of N): they go with one box
    out = usam.predict(point_coords=[[15.0, 12.0], [30.0, 20.0]], box=BOXES[0])
    assert out.masks.shape == (3, H, W)


def test_non_numeric_prompts_name_the_argument_and_the_type(usam):
    with pytest.raises(UsamError) as e:
        usam.predict(point_coords=[[10, "x"]])
    assert str(e.value) == (
        "point_coords must be numeric, got list (could not convert string to float: 'x')"
    )
    with pytest.raises(UsamError) as e:
        usam.predict(box="wide")
    assert (
        str(e.value) == "box must be numeric, got str (could not convert string to float: 'wide')"
    )


def test_padding_points_outside_the_image_pass_through_predict(usam):
    # label -1 marks padding (SAM 2 ignores the point): the geometry check must see the labels
    out = usam.predict(point_coords=[[20, 10], [500, -3]], point_labels=[1, -1])
    assert out.masks.shape == (3, H, W)
    with pytest.raises(UsamError, match=r"point \(500, -3\) lies outside"):
        usam.predict(point_coords=[[20, 10], [500, -3]], point_labels=[1, 0])


def test_decode_returns_three_masks_unless_told_otherwise(usam):
    points, labels = np.array([[[20.0, 10.0]]]), np.ones((1, 1))
    assert usam.decode(points, labels, None, None)["masks"].shape == (1, 3, H, W)
    one = usam.decode(points, labels, None, None, multimask_output=False)
    assert one["masks"].shape == (1, 1, H, W)


def test_prompt_errors_name_the_argument_exactly(usam):
    cases = [
        (
            {"point_coords": [[1.0, 2.0], [3.0, 4.0]], "point_labels": [1]},
            "point_labels (1,) do not match point_coords (2, 2): one label per point, i.e. (2,)",
        ),
        (
            {"point_coords": POINTS, "point_labels": [1, 1, 1]},
            "point_labels (3,) do not match point_coords (3, 1, 2): one label per point, "
            "i.e. (3, 1)",
        ),
        (
            {"point_coords": [[1.0, 2.0]], "point_labels": [2]},
            "point_labels must be 1 (foreground), 0 (background) or -1",
        ),
        (
            {"point_coords": [[1.0, 2.0]], "point_labels": ["one"]},
            "point_labels must be numeric, got list (could not convert string to float: 'one')",
        ),
        ({"point_labels": [1]}, "point_labels given without point_coords"),
        ({}, "no prompt: give point_coords, box or mask_input"),
        (
            {"mask_input": "low"},
            "mask_input must be numeric, got str (could not convert string to float: 'low')",
        ),
        (
            {"point_coords": POINTS, "mask_input": np.zeros((2, 1, 32, 32))},
            "prompts disagree on the batch: point_coords batch of 3, mask_input batch of 2; "
            "give all single or all with the same batch size",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(UsamError) as e:
            usam.predict(**kwargs)
        assert str(e.value) == message


def test_prompts_reach_sam_in_chunks_of_batch_size(usam, monkeypatch):
    # batch_size bounds the prompts per decoder call (memory); single prompts are one call
    calls = []
    decode_tokens = usam.sam.decode_tokens

    def spy(points, labels, boxes, mask_input, **kw):
        calls.append(tuple(None if a is None else a.shape for a in (points, boxes, mask_input)))
        return decode_tokens(points, labels, boxes, mask_input, **kw)

    monkeypatch.setattr(usam.sam, "decode_tokens", spy)
    monkeypatch.setattr(usam.sam, "batch_size", 2)
    first = usam.predict(point_coords=POINTS)
    assert calls == [((2, 1, 2), None, None), ((1, 1, 2), None, None)]
    calls.clear()
    out = usam.predict(box=BOXES)
    assert calls == [(None, (2, 4), None), (None, (1, 4), None)]
    assert out.masks.shape == (3, 3, H, W)
    calls.clear()
    one = usam.predict(box=BOXES[0])
    assert calls == [(None, (1, 4), None)] and one.masks.shape == (3, H, W)
    calls.clear()
    # an earlier batch's best logits back in as mask_input, one per prompt
    logits = first.low_res_logits[np.arange(3), first.scores.argmax(-1)][:, None]
    again = usam.predict(point_coords=POINTS, mask_input=logits)
    assert calls == [((2, 1, 2), None, (2, 1, 32, 32)), ((1, 1, 2), None, (1, 1, 32, 32))]
    assert again.masks.shape == (3, 3, H, W)
    calls.clear()
    usam.predict(point_coords=POINTS[0], mask_input=logits[0])
    assert calls == [((1, 1, 2), None, (1, 1, 32, 32))]


def test_check_trained_on_names_the_versions_and_sizes_on_each_side():
    two = {"sam_version": "sam2+sam2.1", "models": ["tiny", "small"]}
    check_trained_on("iou_small", two, versions=["sam2.1"], sizes=["small"], against="x")
    with pytest.raises(UsamError) as e:
        check_trained_on(
            "iou_small",
            two,
            versions=["sam2.1", "sam3", "sam4"],
            sizes=[],
            against="the checkpoint",
        )
    assert str(e.value) == (
        "estimator 'iou_small' was trained on sam2+sam2.1 tokens but the checkpoint is "
        "sam3+sam4: use sam2+sam2.1 tokens or bundles trained on this version"
    )
    with pytest.raises(UsamError) as e:
        check_trained_on(
            "task_gap", two, versions=["sam2"], sizes=["small", "large", "base_plus"], against="c"
        )
    assert str(e.value) == (
        "estimator 'task_gap' was trained on tokens of SAM tiny+small but c is SAM "
        "large+base_plus: use that size or bundles trained on large+base_plus tokens"
    )


def test_check_compatible_names_the_checkpoint_and_warns_word_for_word(
    usam, bundles, caplog, tmp_path
):
    estimators = load_bundles(bundles)  # random_weights: true in their configs
    with caplog.at_level(logging.WARNING, logger="usam.inference"):
        check_compatible(usam.sam, {})  # random SAM 2 but nothing to estimate: no warning
    assert [r.getMessage() for r in caplog.records if r.name == "usam.inference"] == []
    with caplog.at_level(logging.WARNING, logger="usam.inference"):
        check_compatible(usam.sam, estimators)
    assert [r.getMessage() for r in caplog.records if r.name == "usam.inference"] == [
        "estimators ['iou_tiny', 'model_gap', 'task_gap'] were trained on RANDOM-weight SAM "
        "tokens: their estimates mean nothing (tests and smoke runs only)",
        "SAM 2 has RANDOM weights: masks, scores and estimates mean nothing",
    ]
    estimators["model_gap"].config["models"] = ["small", "large"]
    with pytest.raises(UsamError) as e:
        check_compatible(usam.sam, estimators)
    assert str(e.value) == (
        "estimator 'model_gap' was trained on tokens of SAM small+large but the checkpoint is "
        "SAM tiny: use that size or bundles trained on tiny tokens"
    )
    # a bundle of the right size but for other tokens (6 inputs, not 2 x 256)
    save_bundle(tmp_path / "narrow", UsamMLP(in_features=6, hidden=[8]), bundle_config("iou_tiny"))
    with pytest.raises(UsamError) as e:
        check_compatible(usam.sam, load_bundles(tmp_path / "narrow"))
    assert str(e.value) == "estimator 'iou_tiny' takes 6 inputs but SAM's tokens give 2 x 256"


def test_load_bundles_puts_the_papers_targets_first_then_others_by_name(tmp_path):
    for target in ("zeta_gap", "task_gap", "alpha", "iou_large"):  # two of them not the paper's
        config = {**bundle_config("task_gap"), "target": target}
        save_bundle(tmp_path / target, UsamMLP(hidden=[8]), config)
    assert list(load_bundles(tmp_path)) == ["iou_large", "task_gap", "alpha", "zeta_gap"]


def test_load_bundles_errors_say_how_to_get_bundles(tmp_path):
    with pytest.raises(UsamError) as e:
        load_bundles(tmp_path / "none")
    assert str(e.value) == (
        f"estimator bundles: {(tmp_path / 'none').resolve()} not found (not a directory); train "
        "them with python -m usam.train -m 'predictor=glob(*)' out_dir=<dir> and pass that <dir>"
    )
    (tmp_path / "empty" / "stray").mkdir(parents=True)
    with pytest.raises(UsamError) as e:
        load_bundles(tmp_path / "empty")
    assert str(e.value) == (
        f"{(tmp_path / 'empty').resolve()} holds no estimator bundle (<target>/config.json + "
        "model.safetensors, written by python -m usam.train)"
    )


def test_from_pretrained_random_weights_default_to_seed_0(usam):
    # the fixture's SAM is load_sam_model(..., random_weights=True) with its default seed 0
    u = UncertainSAM.from_pretrained(
        None, size="tiny", random_weights=True, image_size=128, device="cpu"
    )
    want = usam.sam.model.state_dict()
    got = u.sam.model.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    u.sam.remove_hooks()
    # another seed, another version: both reach the SAM 2 that is built
    other = UncertainSAM.from_pretrained(
        None, size="tiny", version="sam2.0", random_weights=True, seed=3, image_size=128
    )
    assert other.sam.version == "sam2.0"
    got = other.sam.model.state_dict()
    assert not torch.equal(got["no_mem_embed"], want["no_mem_embed"])
    other.sam.remove_hooks()


def test_from_pretrained_passes_batch_size_on_and_says_what_it_holds(bundles):
    u = UncertainSAM.from_pretrained(
        None, bundles, size="tiny", random_weights=True, image_size=128, batch_size=3
    )
    assert u.sam.batch_size == 3
    assert repr(u) == f"UncertainSAM({u.sam!r}, estimators=['iou_tiny', 'model_gap', 'task_gap'])"
    u.sam.remove_hooks()


def test_from_pretrained_passes_the_hub_options_on(monkeypatch, tmp_path):
    import usam.inference as inference

    seen = []

    def download(model_id, **kw):
        seen.append((model_id, kw))
        raise UsamError("stop here")

    monkeypatch.setattr(inference.hub, "download", download)
    for kw in ({}, {"cache_dir": tmp_path, "local_files_only": True}):
        with pytest.raises(UsamError, match="stop here"):
            UncertainSAM.from_pretrained("facebook/sam2.1-hiera-tiny", **kw)
    assert seen == [
        ("facebook/sam2.1-hiera-tiny", {"cache_dir": None, "local_files_only": False}),
        ("facebook/sam2.1-hiera-tiny", {"cache_dir": tmp_path, "local_files_only": True}),
    ]


def test_from_pretrained_errors_word_for_word(tmp_path, bundles):
    cases = [
        (
            (None, bundles),
            {"estimators": bundles, "size": "tiny"},
            "give the estimators once: bundles_dir or estimators=, not both",
        ),
        (
            (tmp_path / "sam2_hiera_small.pt",),
            {"version": "sam2.1"},
            f"{tmp_path / 'sam2_hiera_small.pt'}: the file name says SAM version sam2.0 but "
            "version=sam2.1 was given; pass the matching checkpoint or drop the argument",
        ),
        (
            (tmp_path / "weights.pt",),
            {},
            f"{tmp_path / 'weights.pt'}: cannot tell the SAM size from the file name; pass size= "
            "(one of tiny, small, base_plus, large)",
        ),
        (
            (None,),
            {"size": "tiny"},
            "no SAM 2 checkpoint given; pass its path (or random_weights=True)",
        ),
        (
            # the version the file name says reaches the hint (not the sam2.1 default)
            (tmp_path / "sam2_hiera_small.pt",),
            {},
            f"SAM 2 checkpoint {(tmp_path / 'sam2_hiera_small.pt').resolve()} not found; get it "
            "with: python -m usam.download_checkpoints sam_model=sam2.0",
        ),
    ]
    for args, kw, message in cases:
        with pytest.raises(UsamError) as e:
            UncertainSAM.from_pretrained(*args, **kw)
        assert str(e.value) == message
