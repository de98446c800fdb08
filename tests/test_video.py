"""usam.video: SAM 2's video predictor with per-frame tokens, scores and estimates.

One random-weight SAM 2.1 tiny video predictor at 256 px serves the module; videos are the
bundled sample's (320x240, 3 frames) and an mp4 written here with OpenCV.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from usam.datasets.sample import SAMPLE_ROOT
from usam.errors import UsamError
from usam.mlp import Estimator, UsamMLP
from usam.video import (
    VideoFileReader,
    VideoFrames,
    VideoUSAM,
    build_video_model,
    iter_video_file,
)

VIDEO = SAMPLE_ROOT / "JPEGImages" / "480p" / "shapes-a"


@pytest.fixture(scope="module")
def model():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads only spin against each other
    m = build_video_model(
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        None,
        device="cpu",
        image_size=256,
        random_weights=True,
    )
    yield m
    torch.set_num_threads(before)


def estimator(target: str, seed: int, shift: float = 0.0, **extra) -> Estimator:
    torch.manual_seed(seed)
    mlp = UsamMLP().eval()
    config = {
        **extra,
        "target": target,
        "output_shift": shift,
        "sam_version": "sam2.1",
        "models": ["tiny"],
        "random_weights": True,
    }
    return Estimator(mlp, config)


@pytest.fixture(scope="module")
def tracked(model):
    """Two objects prompted on the middle frame, tracked forward then backward."""
    vusam = VideoUSAM(
        model,
        size="tiny",
        version="sam2.1",
        estimators={
            "iou_tiny": estimator("iou_tiny", 1),
            "task_gap": estimator("task_gap", 2, 0.5),
        },
        random_weights=True,
        keep_tokens=True,
    )
    state = vusam.init_state(VIDEO)
    prompted = [
        vusam.add_new_points_or_box(state, 1, 7, points=[[80, 60]], labels=[1]),
        vusam.add_new_points_or_box(state, 1, 3, box=[150, 100, 300, 230]),
    ]
    forward = list(vusam.propagate_in_video(state))
    # SAM 2 stores every tracked frame's object pointer: read them before going backward
    ptrs = {
        (f, o): d["non_cond_frame_outputs"][f]["obj_ptr"].clone()
        for o, d in state["output_dict_per_obj"].items()
        for f in d["non_cond_frame_outputs"]
    }
    backward = list(vusam.propagate_in_video(state, reverse=True))
    ptrs.update(
        {
            (f, o): d["non_cond_frame_outputs"][f]["obj_ptr"].clone()
            for o, d in state["output_dict_per_obj"].items()
            for f in d["non_cond_frame_outputs"]
            if f == 0
        }
    )
    yield vusam, state, prompted, forward, backward, ptrs
    vusam.remove_hooks()


def test_forward_and_backward_propagation_yield_every_frame_once_per_direction(tracked):
    _, state, _, forward, backward, _ = tracked
    assert [f.frame_idx for f in forward] == [1, 2]
    assert [f.frame_idx for f in backward] == [1, 0]
    for f in forward + backward:
        assert f.obj_ids == [7, 3]
        assert f.masks.shape == (2, 240, 320) and f.masks.dtype == bool
        assert [o.obj_id for o in f.objects] == [7, 3]


def test_prompted_frames_say_how_they_were_prompted_and_tracked_frames_decode_three_masks(
    tracked,
):
    _, _, prompted, forward, backward, _ = tracked
    # a one-point prompt decodes three masks; a box (two points) one
    point, box = prompted[0].objects[0], prompted[1].objects[1]
    assert (point.prompt, point.multimask, box.prompt, box.multimask) == (
        "points",
        True,
        "box",
        False,
    )
    assert math.isnan(box.h_task) and not math.isnan(point.h_task)
    for f in forward + backward:
        for o in f.objects:
            if f.frame_idx == 1:
                assert o.prompt in ("points", "box")
            else:
                assert o.prompt is None and o.multimask and o.token in (1, 2, 3)


def test_the_kept_mask_token_is_the_one_sam2_made_its_object_pointer_from(tracked, model):
    """SAM 2 turns the kept mask's token into the frame's object pointer (when the object is
    there); only the token usam paired with the kept mask reproduces the stored pointer."""
    _, _, _, forward, backward, ptrs = tracked
    checked = 0
    for f in forward + backward:
        if f.frame_idx == 1:
            continue
        for obj_idx, o in enumerate(f.objects):
            stored = ptrs[(f.frame_idx, obj_idx)][0]
            if o.object_score_logit <= 0:  # SAM 2 then stores its learnt "no object" pointer
                assert torch.allclose(stored, model.no_obj_ptr[0], atol=1e-5)
                continue
            with torch.no_grad():
                mine = model.obj_ptr_proj(torch.from_numpy(o.mask_token)[None])[0]
            assert torch.allclose(mine, stored, atol=1e-5)
            checked += 1
    assert checked >= 2


def test_the_iou_token_gives_back_the_predicted_iou_of_the_kept_mask(tracked, model):
    _, _, prompted, forward, backward, _ = tracked
    frames = [*prompted, *forward, *backward]
    for f in frames:
        for o in f.objects:
            if o is None:
                continue
            with torch.no_grad():
                all_ious = model.sam_mask_decoder.iou_prediction_head(
                    torch.from_numpy(o.iou_token)[None]
                )[0]
            assert all_ious[o.token].item() == pytest.approx(o.predicted_iou, abs=1e-6)
            assert o.object_score == pytest.approx(1 / (1 + math.exp(-o.object_score_logit)))


def test_estimates_are_each_estimator_on_that_frame_and_objects_tokens(tracked):
    vusam, _, _, forward, backward, _ = tracked
    seen = set()
    for f in forward + backward:
        for o in f.objects:
            x = torch.cat([torch.from_numpy(o.iou_token), torch.from_numpy(o.mask_token)])[None]
            assert set(o.estimates) == {"iou_tiny", "task_gap"}
            for target, p in vusam.estimators.items():
                assert o.estimates[target] == pytest.approx(float(p(x)[0]), abs=1e-5)
            # gaps come back in their own units (shift undone)
            assert -0.5 <= o.estimates["task_gap"] <= 0.5
            seen.add(round(o.estimates["iou_tiny"], 6))
    assert len(seen) > 2  # values differ per frame and object


def test_each_bundle_reads_the_token_its_pairing_names(model):
    """usam bundles read the token that made the mask, published ones one token early
    (token 0 for token 0's own mask)."""
    usam_p = estimator("iou_tiny", 3)
    published = estimator("task_gap", 4, 0.5, token_pairing="published")
    vusam = VideoUSAM(
        model,
        size="tiny",
        version="sam2.1",
        estimators={"iou_tiny": usam_p, "task_gap": published},
        random_weights=True,
    )
    try:
        g = torch.Generator().manual_seed(0)
        iou = torch.randn(3, 256, generator=g)
        tokens = torch.randn(3, 4, 256, generator=g)
        source = torch.tensor([3, 1, 0])
        out = vusam.estimate(iou, tokens, source)
        assert list(out) == ["iou_tiny", "task_gap"]
        for i, (u, p) in enumerate([(3, 2), (1, 0), (0, 0)]):
            x_u = torch.cat([iou[i], tokens[i, u]])[None]
            x_p = torch.cat([iou[i], tokens[i, p]])[None]
            assert out["iou_tiny"][i] == pytest.approx(float(usam_p(x_u)[0]), abs=1e-5)
            assert out["task_gap"][i] == pytest.approx(float(published(x_p)[0]), abs=1e-5)
            assert out["task_gap"][i] != pytest.approx(float(published(x_u)[0]), abs=1e-5) or u == p
    finally:
        vusam.remove_hooks()
    bad = estimator("iou_tiny", 3, token_pairing="sideways")
    with pytest.raises(UsamError, match="token_pairing 'sideways'"):
        VideoUSAM(model, size="tiny", version="sam2.1", estimators={"iou_tiny": bad})


def test_tracked_records_are_dropped_once_yielded_and_prompted_ones_kept(tracked):
    vusam = tracked[0]
    assert sorted(vusam._records) == [(1, 0), (1, 1)]


def test_jpeg_frames_are_what_sam2_itself_would_load(model):
    from sam2.utils.misc import load_video_frames

    theirs, h, w = load_video_frames(
        str(VIDEO), 256, offload_video_to_cpu=True, compute_device=torch.device("cpu")
    )
    mine = VideoFrames(VIDEO, 256)
    assert (len(mine), mine.height, mine.width) == (len(theirs), h, w)
    for i in (0, 2):
        assert torch.allclose(mine[i], theirs[i], atol=1e-5)


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = 6) -> Path:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for rgb in frames:
        out.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    out.release()
    return path


def test_an_mp4_is_decoded_with_opencv_and_tracked(model, tmp_path):
    jpeg = VideoFrames(VIDEO, 256)
    mp4 = write_mp4(tmp_path / "clip.mp4", [jpeg.rgb(i) for i in range(3)] + [jpeg.rgb(0)])
    frames = VideoFrames(mp4, 256)
    assert (len(frames), frames.height, frames.width) == (4, 240, 320)
    # lossy codec: close to the JPEG frame, not equal
    assert np.abs(frames.rgb(1).astype(int) - jpeg.rgb(1).astype(int)).mean() < 12
    # decoded when asked, in any order (backward tracking jumps back), equal to one pass
    in_order = list(iter_video_file(mp4))
    reader = VideoFileReader(mp4, cache=1)
    for i in (3, 0, 2, 1, 3, 2):
        assert np.array_equal(reader(i), in_order[i])
    assert len(reader._frames) == 1
    vusam = VideoUSAM(model, size="tiny", version="sam2.1", random_weights=True)
    try:
        state = vusam.init_state(mp4)
        vusam.add_new_points_or_box(state, 2, 1, points=[[60, 50]], labels=[1])
        out = list(vusam.propagate_in_video(state, start_frame_idx=2, max_frame_num_to_track=1))
        back = list(vusam.propagate_in_video(state, reverse=True, max_frame_num_to_track=1))
    finally:
        vusam.remove_hooks()
    assert [f.frame_idx for f in out] == [2, 3] and [f.frame_idx for f in back] == [2, 1]
    assert out[1].masks.shape == (1, 240, 320) and out[1].objects[0].token in (1, 2, 3)


def test_bad_videos_and_frames_are_one_line_errors(model, tmp_path):
    with pytest.raises(UsamError, match="not found or not a video"):
        VideoFrames(tmp_path / "missing.mp4", 256)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsamError, match="no JPEG frame"):
        VideoFrames(tmp_path / "empty", 256)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    with pytest.raises(UsamError, match="broken.mp4"):
        VideoFrames(tmp_path / "broken.mp4", 256)
    vusam = VideoUSAM(model, size="tiny", version="sam2.1", random_weights=True)
    try:
        state = vusam.init_state(VIDEO)
        with pytest.raises(UsamError, match="frames 0..2"):
            vusam.add_new_points_or_box(state, 3, 1, points=[[5, 5]], labels=[1])
        with pytest.raises(UsamError, match="no prompt yet"):
            next(vusam.propagate_in_video(state))
    finally:
        vusam.remove_hooks()
