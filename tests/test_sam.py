"""usam.sam on the CPU with seeded random weights at image_size=256 (fast; numbers meaningless).

The token-pairing tests rebuild the decoder's own outputs from the captured tokens, so they
fail if mask j were paired with any token other than j+1.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from usam.errors import UsamError
from usam.sam import Decoded, SamModels, load_checkpoint, load_sam_model

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
CONF = Path(__file__).resolve().parents[1] / "conf"
H, W = 40, 56  # non-square so that a swapped height/width shows


def make_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    img[8:30, 10:40] = (200, 40, 40)  # a block so the prompts have something to find
    return np.clip(img + rng.integers(0, 40, img.shape), 0, 255).astype(np.uint8)


POINTS = np.array([[[15.0, 12.0]], [[30.0, 20.0]], [[50.0, 35.0]], [[2.0, 3.0]]], np.float32)
LABELS = np.ones(POINTS.shape[:2], np.int64)


@pytest.fixture(scope="module")
def tiny():
    m = load_sam_model(
        "tiny", None, TINY, random_weights=True, seed=0, image_size=256, device="cpu"
    )
    m.set_image(make_image())
    return m


class Tap:
    """Test-only hooks: the decoder's multimask logits and its upscaled embedding."""

    def __init__(self, model):
        dec = model.model.sam_mask_decoder
        self.out = {}
        self.handles = [
            dec.register_forward_hook(lambda mod, a, o: self.out.__setitem__("logits", o[0])),
            dec.output_upscaling[-1].register_forward_hook(
                lambda mod, a, o: self.out.__setitem__("up", o)
            ),
        ]

    def __enter__(self):
        return self.out

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


# --------------------------------------------------------------------------- outputs


def test_shapes_dtypes_and_ranges(tiny):
    d = tiny.decode(POINTS, LABELS)
    assert isinstance(d, Decoded)
    assert d.masks.shape == (4, 3, H, W) and d.masks.dtype == torch.bool
    assert d.scores.shape == (4, 3) and d.scores.dtype == torch.float32
    assert d.low_res_probs.shape == (4, 3, 64, 64) and d.low_res_probs.dtype == torch.float32
    assert d.iou_token.shape == (4, 256) and d.iou_token.dtype == torch.float32
    assert d.mask_tokens.shape == (4, 3, 256) and d.mask_tokens.dtype == torch.float32
    assert 0 <= d.low_res_probs.min() and d.low_res_probs.max() <= 1
    assert tiny.low_res_size == 64 and tiny.sam_predictor._bb_feat_sizes == [
        (64, 64),
        (32, 32),
        (16, 16),
    ]
    # distinct prompts give distinct tokens (the hooks do not return a stale or shared tensor)
    assert not torch.allclose(d.iou_token[0], d.iou_token[1])


def test_token_pairing_reproduces_decoder_outputs(tiny):
    dec = tiny.model.sam_mask_decoder
    with Tap(tiny) as out:
        d = tiny.decode(POINTS, LABELS)
    with torch.inference_mode():
        # IoU token -> the 4 IoU predictions; 1..3 are the scores of the 3 masks
        iou4 = dec.iou_prediction_head(d.iou_token)
        assert iou4.shape == (4, 4)
        torch.testing.assert_close(iou4[:, 1:], d.scores, atol=1e-5, rtol=1e-5)
        # mask token j+1 through hypernetwork j+1, dotted with the upscaled embedding -> mask j
        up = out["up"].float()
        b, c, h, w = up.shape
        for j in range(3):
            hyper = dec.output_hypernetworks_mlps[j + 1](d.mask_tokens[:, j])
            logits = (hyper[:, None, :] @ up.view(b, c, h * w)).view(b, h, w)
            torch.testing.assert_close(logits, out["logits"][:, j], atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(
                torch.sigmoid(logits), d.low_res_probs[:, j], atol=1e-4, rtol=1e-4
            )
            # the published pairing (mask j <-> token j) does not reproduce mask j
            wrong = (
                dec.output_hypernetworks_mlps[j](d.mask_tokens[:, j])[:, None, :]
                @ up.view(b, c, h * w)
            ).view(b, h, w)
            assert not torch.allclose(wrong, out["logits"][:, j], atol=1e-2)


def test_masks_are_upsampled_logits_above_zero_like_the_predictor(tiny):
    with Tap(tiny) as out:
        d = tiny.decode(POINTS, LABELS)
    up = F.interpolate(out["logits"].float(), (H, W), mode="bilinear", align_corners=False)
    assert torch.equal(d.masks, up > 0)
    assert 0 < d.masks.sum() < d.masks.numel()  # not trivially all-0 or all-1
    for i in range(len(POINTS)):
        masks, scores, low_res = tiny.sam_predictor.predict(
            point_coords=POINTS[i], point_labels=LABELS[i], multimask_output=True
        )
        assert np.array_equal(d.masks[i].numpy(), masks.astype(bool))
        np.testing.assert_allclose(d.scores[i].numpy(), scores, atol=1e-5)
        np.testing.assert_allclose(
            d.low_res_probs[i].numpy(), 1 / (1 + np.exp(-low_res)), atol=1e-5
        )


@pytest.mark.slow  # torch.compile takes minutes on 2 CPU cores
def test_compiled_decoder_gives_the_same_outputs_and_tokens(tiny):
    """sam_model.compile_decoder: same masks, scores, maps and captured tokens, any batch shape."""
    from usam.sam import SamModel

    # a second SamModel on a fresh copy of the same weights: compiling changes only `forward`
    model = load_sam_model(
        "tiny", None, TINY, random_weights=True, seed=0, image_size=256, device="cpu"
    ).model
    compiled = SamModel(
        model, size="tiny", version="sam2.1", random_weights=True, compile_decoder=True
    )
    assert compiled.compiled and not tiny.compiled
    compiled.set_image(make_image())
    dense = np.concatenate([POINTS[:3, 0][None], POINTS[1:4, 0][None]])  # 2 prompts x 3 points
    for pts, labels in ((POINTS, LABELS), (POINTS[:1], LABELS[:1]), (dense, np.ones((2, 3)))):
        want, got = tiny.decode(pts, labels), compiled.decode(pts, labels)
        for name in ("scores", "low_res_probs", "iou_token", "mask_tokens"):
            torch.testing.assert_close(
                getattr(got, name), getattr(want, name), atol=1e-4, rtol=1e-4
            )
        assert (got.masks != want.masks).float().mean() < 1e-3  # a pixel may flip at logit 0
    assert (
        compiled.model.sam_mask_decoder.state_dict().keys()
        == tiny.model.sam_mask_decoder.state_dict().keys()
    )


def test_batch_of_one_equals_batch_of_n_and_chunking(tiny):
    full = tiny.decode(POINTS, LABELS)
    ones = [tiny.decode(POINTS[i : i + 1], LABELS[i : i + 1]) for i in range(len(POINTS))]
    old = tiny.batch_size
    tiny.batch_size = 3  # chunks of 3 + 1: concatenation and a trailing batch of one
    try:
        chunked = tiny.decode(torch.as_tensor(POINTS), torch.as_tensor(LABELS))
    finally:
        tiny.batch_size = old
    for name in ("scores", "low_res_probs", "iou_token", "mask_tokens"):
        single = torch.cat([getattr(o, name) for o in ones])
        torch.testing.assert_close(single, getattr(full, name), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            getattr(chunked, name), getattr(full, name), atol=1e-4, rtol=1e-4
        )
    for other in (torch.cat([o.masks for o in ones]), chunked.masks):
        assert (other != full.masks).float().mean() < 1e-3  # only pixels with |logit| ~ 0 may flip


def test_multi_point_prompts(tiny):
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, [W - 1, H - 1], (3, 8, 2)).astype(np.float32)
    labels = np.ones((3, 8), np.int64)
    labels[2, 4:] = 0  # background points too
    d = tiny.decode(pts, labels)
    assert d.masks.shape == (3, 3, H, W) and d.mask_tokens.shape == (3, 3, 256)
    one = tiny.decode(pts[:, :1], labels[:, :1])
    assert not torch.allclose(d.iou_token, one.iou_token)  # the other 7 points are used
    masks, scores, _ = tiny.sam_predictor.predict(point_coords=pts[2], point_labels=labels[2])
    assert np.array_equal(d.masks[2].numpy(), masks.astype(bool))
    np.testing.assert_allclose(d.scores[2].numpy(), scores, atol=1e-5)


def test_empty_batch_and_bad_input(tiny):
    d = tiny.decode(np.zeros((0, 1, 2), np.float32), np.zeros((0, 1)))
    assert d.masks.shape == (0, 3, H, W) and d.mask_tokens.shape == (0, 3, 256)
    with pytest.raises(UsamError, match=r"points \[B, N, 2\]"):
        tiny.decode(np.zeros((2, 2), np.float32), np.ones(2))
    with pytest.raises(UsamError, match="labels"):
        tiny.decode(POINTS, np.ones((4, 2)))
    with pytest.raises(UsamError, match="uint8 RGB"):
        tiny.set_image(np.zeros((H, W), np.uint8))
    with pytest.raises(UsamError, match="uint8 RGB"):
        tiny.set_image(np.zeros((H, W, 3), np.float32))


def test_encoder_passes_count_set_image_only(tiny):
    before = tiny.encoder_passes
    assert before >= 1
    tiny.decode(POINTS, LABELS)
    assert tiny.encoder_passes == before
    tiny.set_image(make_image())  # same image as the fixture: later tests see the same state
    assert tiny.encoder_passes == before + 1


def test_image_size_512_and_bad_sizes():
    m = load_sam_model("tiny", None, TINY, random_weights=True, image_size=512, device="cpu")
    m.set_image(np.zeros((20, 24, 3), np.uint8))
    d = m.decode(np.array([[[5.0, 5.0]]]), np.ones((1, 1)))
    assert d.low_res_probs.shape == (1, 3, 128, 128) and d.masks.shape == (1, 3, 20, 24)
    for bad in (300, 0, -32, 256.0):
        with pytest.raises(UsamError, match="multiple of 32"):
            load_sam_model("tiny", None, TINY, random_weights=True, image_size=bad, device="cpu")


# --------------------------------------------------------------------------- building, loading


def test_random_weights_warning_and_seed(caplog, tiny):
    with caplog.at_level(logging.WARNING, logger="usam.sam"):
        a = load_sam_model(
            "tiny", None, TINY, random_weights=True, seed=3, image_size=256, device="cpu"
        )
    assert a.random_weights and "RANDOM weights" in caplog.text
    rng_state = torch.get_rng_state()
    b = load_sam_model(
        "tiny", None, TINY, random_weights=True, seed=3, image_size=256, device="cpu"
    )
    assert torch.equal(rng_state, torch.get_rng_state())  # the caller's RNG is left alone
    wa, wb, w0 = (
        m.model.sam_mask_decoder.iou_prediction_head.layers[0].weight for m in (a, b, tiny)
    )
    assert torch.equal(wa, wb) and not torch.equal(wa, w0)  # tiny: seed 0


def test_build_applies_build_sam2_overrides(tiny):
    dec = tiny.model.sam_mask_decoder
    assert dec.dynamic_multimask_via_stability is True
    assert (
        dec.dynamic_multimask_stability_delta == 0.05
        and dec.dynamic_multimask_stability_thresh == 0.98
    )
    assert tiny.model.image_size == 256 and not tiny.model.training
    assert tiny.device == torch.device("cpu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A checkpoint written from a random tiny model (seed 1), and that model's state dict."""
    src = load_sam_model(
        "tiny", None, TINY, random_weights=True, seed=1, image_size=256, device="cpu"
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    state = src.model.state_dict()
    torch.save({"model": state}, path)
    return path, src, state


def test_checkpoint_roundtrip_reproduces_outputs(saved, tiny):
    path, src, _ = saved
    loaded = load_sam_model("tiny", path, TINY, image_size=256, device="cpu")
    assert not loaded.random_weights
    for m in (src, loaded):
        m.set_image(make_image())  # the image `tiny` holds
    a, b, other = (m.decode(POINTS, LABELS) for m in (src, loaded, tiny))
    for name in ("scores", "low_res_probs", "iou_token", "mask_tokens"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert torch.equal(a.masks, b.masks)
    assert not torch.allclose(a.iou_token, other.iou_token)  # seed 0 vs 1: the check can fail


def test_bad_checkpoints_are_usam_errors(saved, tmp_path):
    path, src, state = saved
    renamed = {("renamed." + k if i == 0 else k): v for i, (k, v) in enumerate(state.items())}
    p = tmp_path / "renamed.pt"
    torch.save({"model": renamed}, p)
    with pytest.raises(
        UsamError, match=r"renamed\.pt: does not match .*missing keys .*unexpected keys"
    ):
        load_checkpoint(src.model, p, TINY)
    key = "sam_mask_decoder.iou_token.weight"
    p = tmp_path / "shape.pt"
    torch.save({"model": {**state, key: torch.zeros(1, 3)}}, p)
    with pytest.raises(UsamError, match=r"shape\.pt: does not fit .*iou_token"):
        load_checkpoint(src.model, p, TINY)
    p = tmp_path / "nomodel.pt"
    torch.save({"weights": {}}, p)
    with pytest.raises(UsamError, match=r"nomodel\.pt: not a SAM 2 checkpoint"):
        load_checkpoint(src.model, p, TINY)
    p = tmp_path / "garbage.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(UsamError, match=r"garbage\.pt: cannot read the checkpoint"):
        load_sam_model("tiny", p, TINY, image_size=256, device="cpu")
    # the model is untouched by the failed loads (strict=False loaded the same values back)
    torch.testing.assert_close(src.model.state_dict()[key], state[key])


def test_missing_checkpoints_listed_before_building(tmp_path, monkeypatch):
    import usam.sam as sam

    monkeypatch.setattr(sam, "build_sam2_model", lambda *a, **k: pytest.fail("built a model"))
    (tmp_path / "sam2.1_hiera_small.pt").write_bytes(b"x")  # present: not listed
    names = {s: f"sam2.1_hiera_{s}.pt" for s in ("tiny", "small", "large")}
    kw = dict(
        version="sam2.1",
        checkpoint_dir=tmp_path,
        checkpoints=names,
        configs={s: TINY for s in names},
        urls={},
        sha256={},
        device="cpu",
    )
    with pytest.raises(UsamError) as err:
        SamModels(sizes=["tiny", "small", "large"], **kw)
    msg = str(err.value)
    assert str(tmp_path / names["tiny"]) in msg and str(tmp_path / names["large"]) in msg
    assert names["small"] not in msg
    assert "python -m usam.download_checkpoints sam_model=sam2.1" in msg
    with pytest.raises(UsamError, match="unknown"):
        SamModels(sizes=["huge"], **kw)
    monkeypatch.undo()
    with pytest.raises(UsamError, match="not found.*sam_model=sam2.0"):
        load_sam_model("tiny", tmp_path / "nope.pt", TINY, version="sam2.0", device="cpu")
    with pytest.raises(UsamError, match="packaged configs: .*sam2.1_hiera_t.yaml"):
        load_sam_model("tiny", None, "configs/nope.yaml", random_weights=True, device="cpu")


def test_sam_models_loads_and_verifies_checkpoints(saved):
    import hashlib

    path, src, _ = saved
    kw = dict(
        version="sam2.1",
        sizes=["tiny"],
        checkpoint_dir=path.parent,
        checkpoints={"tiny": path.name},
        configs={"tiny": TINY},
        urls={},
        image_size=256,
        device="cpu",
        batch_size=5,
    )
    with pytest.raises(UsamError, match=r"tiny\.pt: sha256 is .*expected the pinned"):
        SamModels(sha256={"tiny": "0" * 64}, **kw)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    models = SamModels(sha256={"tiny": digest}, **kw)
    assert not models.random_weights and models.sizes == ["tiny"] and len(models) == 1
    (m,) = list(models)
    assert m is models["tiny"] and m.batch_size == 5 and not m.random_weights
    assert m.version == "sam2.1" and m.size == "tiny"
    w = "sam_mask_decoder.iou_token.weight"
    assert torch.equal(m.model.state_dict()[w], src.model.state_dict()[w])
    with pytest.raises(KeyError, match="loaded"):
        models["large"]


# --------------------------------------------------------------------------- inside Hydra


def test_works_inside_a_running_hydra_app(tmp_path):
    """Fresh interpreter: @hydra.main is running when sam2 is first imported (no GlobalHydra clash);
    the packaged conf/sam_model/random.yaml instantiates SamModels."""
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(f"""
        import json, sys
        import hydra, numpy as np
        from hydra.core.global_hydra import GlobalHydra
        from hydra.utils import instantiate

        @hydra.main(version_base="1.3", config_path={str(CONF)!r}, config_name=None)
        def main(cfg):
            assert "sam2" not in sys.modules and GlobalHydra.instance().is_initialized()
            models = instantiate(cfg.sam_model)
            m = models["tiny"]
            m.set_image(np.zeros((24, 32, 3), np.uint8))
            d = m.decode(np.array([[[4.0, 5.0]]]), np.ones((1, 1)))
            print("RESULT " + json.dumps({{"sizes": models.sizes, "random": models.random_weights,
                  "masks": list(d.masks.shape), "low": list(d.low_res_probs.shape),
                  "passes": m.encoder_passes}}))

        main()
    """)
    )
    overrides = [
        "+sam_model=random",
        "sam_model.sizes=[tiny]",
        "sam_model.device=cpu",
        f"sam_model.checkpoint_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(
        [sys.executable, str(app), *overrides],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    got = json.loads(line[len("RESULT ") :])
    assert got == {
        "sizes": ["tiny"],
        "random": True,
        "masks": [1, 3, 24, 32],
        "low": [1, 3, 64, 64],
        "passes": 1,
    }


@pytest.mark.slow
@pytest.mark.parametrize("version", ["sam2.1", "sam2.0"])
def test_every_packaged_config_builds_and_decodes(version, tmp_path, compose_cfg):
    """conf/sam_model/<version>.yaml composed and instantiated: all four sizes, random weights."""
    from hydra.utils import instantiate

    cfg = compose_cfg(
        None,
        [
            f"+sam_model={version}",
            "sam_model.random_weights=true",
            "sam_model.image_size=256",
            "sam_model.device=cpu",
            f"sam_model.checkpoint_dir={tmp_path}",
        ],
    )
    models = instantiate(cfg.sam_model)
    assert models.version == version and models.sizes == ["tiny", "small", "base_plus", "large"]
    img = np.zeros((24, 32, 3), np.uint8)
    for m in models:
        m.set_image(img)
        d = m.decode(np.array([[[4.0, 5.0]]]), np.ones((1, 1)))
        assert d.masks.shape == (1, 3, 24, 32) and d.mask_tokens.shape == (1, 3, 256), m
