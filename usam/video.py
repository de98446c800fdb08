"""SAM 2's video predictor with USAM estimates on every frame it decodes (SPEC "Video").

`VideoUSAM` wraps `sam2.sam2_video_predictor.SAM2VideoPredictor` and keeps its API: init a
state from a video (a folder of JPEG frames, SAM 2's format, or a video file such as an mp4,
decoded with OpenCV), add prompts on any frame, propagate forward or backward. Every result
carries, per frame and object: the mask, SAM 2's predicted IoU of the kept mask, its object
score, the entropy of the kept mask's probabilities and every attached estimator's value
for the kept mask (gaps in their own units).

How the tokens are read (no SAM 2 code copied):
- forward-pre-hooks on the mask decoder's `iou_prediction_head` (input: the IoU token) and
  `output_hypernetworks_mlps[i]` (input: mask token i), a forward hook on the IoU head
  (output: the four predicted IoUs) and one on the decoder (output: the masks, IoUs and
  object score logits it hands back);
- the predictor's `_run_single_frame_inference` is wrapped on the instance, only to know
  which (frame, object) the decoder call inside it belongs to. Decoder calls outside it
  (none in sam2 1.x's tracking path) are not attributed.
Kept-mask pairing: while tracking SAM 2 decodes three masks (tokens 1, 2, 3) and keeps the
one with the highest predicted IoU (first on ties, as `torch.argmax`); its token is the
decoder token argmax+1 (SPEC "Token pairing"). A single-mask decoding (a box or several
points on a prompted frame) returns token 0's mask, or with sam2's stability fallback one of
tokens 1..3: the token is the one whose predicted IoU the decoder returned.

Memory: frames are handed to SAM 2 as a lazy sequence (JPEGs and video-file frames are read
when SAM 2 asks for them; SAM 2's own loader keeps every frame as float32); SAM 2's `offload_video_to_cpu` / `offload_state_to_cpu` pass
through. usam keeps per (frame, object) only scalars (and two 256-float tokens when asked),
and drops a tracked frame's record once it was yielded.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from usam import registry
from usam.errors import UsamError
from usam.measures import entropy, mixture, score_weights
from usam.mlp import Estimator, paired_token
from usam.sam import build_sam2_model, hook_decoder_tokens

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
FRAME_SUFFIXES = {".jpg", ".jpeg"}
# SAM 2's input normalisation (sam2.utils.misc.load_video_frames defaults)
_MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
_STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
# what sam2.build_sam.build_sam2_video_predictor adds with apply_postprocessing=True, on top
# of the image model's (usam.sam.model_config applies those)
_VIDEO_OVERRIDES = {
    "_target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "binarize_mask_from_pts_for_mem_enc": True,
    "fill_hole_area": 8,
}


# --------------------------------------------------------------------------- frames


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    # PIL's default (bicubic) resize, as sam2 loads JPEG frames
    return np.asarray(Image.fromarray(rgb).resize((size, size)))


def _normalise(rgb_small: np.ndarray) -> torch.Tensor:
    img = torch.from_numpy(rgb_small / 255.0).permute(2, 0, 1).float()
    return (img - _MEAN) / _STD


class VideoFrames(Sequence):
    """A video's frames as SAM 2 wants them: `frames[i]` -> float32 [3, S, S], normalised.

    `rgb(i)` gives frame i at its original size (H x W x 3 uint8) for overlays. Frames are
    read when asked, JPEGs by file, a video file through `VideoFileReader`: memory does not
    grow with the video's length.
    """

    def __init__(self, path: str | Path, image_size: int):
        self.path = Path(path)
        self.image_size = int(image_size)
        self._video: VideoFileReader | None = None
        if self.path.is_dir():
            self.files = jpeg_frames(self.path)
            first = self._read_jpeg(0)
            self.height, self.width = first.shape[:2]
            self.names = [f.stem for f in self.files]
        elif self.path.is_file() and self.path.suffix.lower() in VIDEO_SUFFIXES:
            self.files = []
            self._video = VideoFileReader(self.path)
            self.height, self.width = self._video.height, self._video.width
            self.names = [f"{i:05d}" for i in range(len(self._video))]
        else:
            raise UsamError(
                f"video {self.path} not found or not a video: give a folder of JPEG frames "
                f"(SAM 2's format, <frame number>.jpg) or a video file "
                f"({', '.join(sorted(VIDEO_SUFFIXES))})"
            )

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._video is not None:
            return _normalise(_resize(self._video(i), self.image_size))
        return _normalise(_resize(self._read_jpeg(i), self.image_size))

    def _read_jpeg(self, i: int) -> np.ndarray:
        from usam.datasets.base import read_rgb

        rgb = read_rgb(self.files[i])
        if i and rgb.shape[:2] != (self.height, self.width):
            raise UsamError(
                f"{self.files[i]}: frame is {rgb.shape[1]}x{rgb.shape[0]}, the video's first "
                f"frame {self.width}x{self.height}; all frames of a video must have one size"
            )
        return rgb

    def rgb(self, i: int) -> np.ndarray:
        """Frame i at the original size."""
        if self._video is not None:
            return self._video(i).copy()
        return np.array(self._read_jpeg(i))

    def iter_rgb(self) -> Iterator[np.ndarray]:
        """Every frame in order at the original size (one decoding pass for a video file)."""
        if self.files:
            for i in range(len(self)):
                yield np.array(self._read_jpeg(i))
        else:
            yield from iter_video_file(self.path)


class VideoFileReader:
    """Frame i of a video file, decoded with OpenCV when asked.

    SAM 2 asks for frames in order (forward or backward, each a few times): reads are
    sequential, a jump seeks (checked, else re-read from the start), and the last `cache`
    frames are kept. One pass at open counts the frames (containers' own counts can be off).
    """

    def __init__(self, path: Path, cache: int = 8):
        import cv2

        self.path, self.cache = Path(path), int(cache)
        cap = self._open()
        ok, bgr = cap.read()
        if not ok:
            cap.release()
            raise UsamError(f"{self.path}: OpenCV decoded no frame from this video")
        self.height, self.width = bgr.shape[:2]
        n = 1
        while cap.grab():
            n += 1
        cap.release()
        self.length = n
        self._cap: Any = None
        self._next = 0  # the frame the open capture reads next
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cv2 = cv2

    def _open(self):
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise UsamError(
                f"{self.path}: OpenCV cannot open this video (unknown codec or not a video)"
            )
        return cap

    def __len__(self) -> int:
        return self.length

    def __call__(self, i: int) -> np.ndarray:
        """RGB uint8 frame i (the returned array is shared with the cache: do not modify)."""
        if not 0 <= i < self.length:
            raise IndexError(f"frame {i} of a {self.length}-frame video")
        if i in self._frames:
            self._frames.move_to_end(i)
            return self._frames[i]
        cv2 = self._cv2
        if self._cap is None:
            self._cap, self._next = self._open(), 0
        if i < self._next or i > self._next + 32:  # a jump: seek, or re-read if seeking lies
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            if int(self._cap.get(cv2.CAP_PROP_POS_FRAMES)) == i:
                self._next = i
            else:
                self._cap.release()
                self._cap, self._next = self._open(), 0
        while self._next < i:
            self._cap.grab()
            self._next += 1
        ok, bgr = self._cap.read()
        if not ok:
            raise UsamError(f"{self.path}: frame {i} could not be decoded")
        self._next = i + 1
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        self._frames[i] = rgb
        while len(self._frames) > self.cache:
            self._frames.popitem(last=False)
        return rgb


def jpeg_frames(folder: Path) -> list[Path]:
    """The JPEG frames of a folder in frame order: by number when all are numbered (SAM 2)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    if not files:
        raise UsamError(f"{folder}: no JPEG frame (*.jpg) in this folder")
    if all(p.stem.isdigit() for p in files):
        return sorted(files, key=lambda p: (int(p.stem), p.name))
    return sorted(files, key=lambda p: p.name)


def iter_video_file(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a video file, decoded with OpenCV."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise UsamError(f"{path}: OpenCV cannot open this video (unknown codec or not a video)")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()


# --------------------------------------------------------------------------- building


def build_video_model(
    config: str | Path,
    checkpoint: str | Path | None,
    *,
    device: str | torch.device = "auto",
    image_size: int | None = None,
    random_weights: bool = False,
    seed: int = 0,
    sha256: str | None = None,
) -> torch.nn.Module:
    """A SAM2VideoPredictor in eval mode: `usam.sam.build_sam2_model` with the video
    predictor's config (as sam2's `build_sam2_video_predictor`, without global Hydra); random
    weights are seeded exactly as the image model's, so both have the same parameters."""
    return build_sam2_model(
        config,
        checkpoint,
        device=device,
        image_size=image_size,
        random_weights=random_weights,
        seed=seed,
        sha256=sha256,
        overrides=_VIDEO_OVERRIDES,
    )


# --------------------------------------------------------------------------- results


@dataclass
class ObjectScores:
    """What usam adds to SAM 2's mask for one object on one frame."""

    obj_id: Any
    predicted_iou: float  # SAM 2's own IoU guess for the kept mask
    object_score: float  # sigmoid of SAM 2's object score logit (is the object there?)
    object_score_logit: float
    entropy: float  # H of the kept mask's low-res probabilities (bits, SPEC entropy)
    h_task: float  # H of the three masks mixed by their normalised scores; NaN if one mask
    token: int  # decoder mask token that made the kept mask (1..3 while tracking)
    multimask: bool  # the decoder made three masks (tracking, or a one-point prompt)
    prompt: str | None  # "points" / "box" / "mask" on a prompted frame, else None
    estimates: dict[str, float] = field(default_factory=dict)  # target -> value (own units)
    iou_token: np.ndarray | None = None  # float32 [256], with keep_tokens=True
    mask_token: np.ndarray | None = None  # float32 [256], the kept mask's token
    # float32 [3, 256], decoder tokens 1, 2, 3 (the three masks' tokens), with keep_tokens=True
    mask_tokens: np.ndarray | None = None

    @property
    def kept(self) -> int:
        """Index 0..2 of the kept mask among the three (-1 for a single-mask token 0)."""
        return self.token - 1

    def as_dict(self) -> dict[str, Any]:
        tokens = ("iou_token", "mask_token", "mask_tokens")
        d = {k: v for k, v in self.__dict__.items() if k not in tokens}
        d["estimates"] = dict(self.estimates)
        return d


@dataclass
class FrameResult:
    """One frame: SAM 2's masks of every object and usam's scores for each."""

    frame_idx: int
    obj_ids: list
    masks: np.ndarray  # bool [n_objects, H, W] at the video's size
    objects: list[ObjectScores | None]  # per object; None where nothing was decoded for it


# --------------------------------------------------------------------------- predictor


def _float_memory(module, args, kwargs):
    """sam2 stores memories in bfloat16 and relies on CUDA autocast to mix them with float32
    features; without autocast (CPU) the memory attention would fail on the dtype mismatch."""
    memory = kwargs.get("memory")
    if isinstance(memory, torch.Tensor) and memory.dtype != torch.float32:
        kwargs["memory"] = memory.float()
    return args, kwargs


class VideoUSAM:
    """SAM 2's video predictor plus USAM estimators: prompts in, masks and per-frame scores out.

    vusam = VideoUSAM(build_video_model(cfg, ckpt), size="tiny", version="sam2.1",
                      estimators=load_bundles("models"))
    state = vusam.init_state("video.mp4")
    vusam.add_new_points_or_box(state, frame_idx=0, obj_id=1, points=[[210, 350]], labels=[1])
    for frame in vusam.propagate_in_video(state):
        frame.masks, frame.objects[0].estimates["iou_tiny"]
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        size: str,
        version: str,
        estimators: Mapping[str, Estimator] | None = None,
        random_weights: bool = False,
        keep_tokens: bool = False,
        check: bool = True,
    ):
        from usam.inference import check_compatible, pairing_heads

        self.model = model  # the SAM2VideoPredictor
        self.size, self.version = size, version
        self.random_weights = bool(random_weights)
        self.keep_tokens = bool(keep_tokens)
        self.device = model.device
        self.image_size = int(model.image_size)
        self.estimators = {t: p.to(self.device).eval() for t, p in (estimators or {}).items()}
        if check:  # reads .version, .size, .model and .random_weights of this object
            check_compatible(self, self.estimators)
        elif self.random_weights:
            log.warning("SAM 2 has RANDOM weights: masks, scores and estimates mean nothing")
        self.targets = list(self.estimators)
        self.heads = pairing_heads(self.estimators)  # usam.mlp.paired_token per pairing
        self._call: dict[str, Any] | None = None  # decoder outputs inside one frame inference
        self._records: dict[tuple[int, int], ObjectScores] = {}  # (frame, obj_idx) -> scores
        # (frame, obj_idx) -> (IoU token, four mask tokens, kept token): estimates not yet run
        self._pending: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}
        self._hooks = self._install_hooks()
        self._wrap_frame_inference()

    # -- hooks ---------------------------------------------------------------------------------
    def _install_hooks(self) -> list:
        def store(key, token):
            if self._call is not None:
                self._call[key] = token

        decoder = getattr(self.model, "sam_mask_decoder", None)
        hooks = hook_decoder_tokens(decoder, store)
        head = decoder.iou_prediction_head

        def ious(module, args, output):
            if self._call is not None:
                self._call["all_ious"] = output

        def decoded(module, args, output):
            if self._call is not None:
                masks, iou_pred, _, object_score_logits = output
                self._call.update(masks=masks, ious=iou_pred, object_logits=object_score_logits)

        hooks.append(head.register_forward_hook(ious))
        hooks.append(decoder.register_forward_hook(decoded))
        if self.device.type != "cuda":
            hooks.append(
                self.model.memory_attention.register_forward_pre_hook(
                    _float_memory, with_kwargs=True
                )
            )
        return hooks

    def _wrap_frame_inference(self) -> None:
        inner = self.model._run_single_frame_inference  # bound method of this instance

        def run_single_frame_inference(inference_state, output_dict, frame_idx, *args, **kwargs):
            # which objects this call decodes: one object's slice (sam2 1.1) or all (batched)
            per_obj = inference_state["output_dict_per_obj"]
            objs = [i for i, d in per_obj.items() if d is output_dict]
            if not objs:
                objs = list(range(len(per_obj)))
            prompt = None
            if kwargs.get("mask_inputs") is not None:
                prompt = "mask"
            elif kwargs.get("point_inputs") is not None:
                labels = kwargs["point_inputs"]["point_labels"]
                prompt = "box" if bool((labels >= 2).any()) else "points"
            self._call = {}
            try:
                out = inner(inference_state, output_dict, frame_idx, *args, **kwargs)
                call = self._call
            finally:
                self._call = None
            self._record(int(frame_idx), objs, call, prompt)
            return out

        self.model._run_single_frame_inference = run_single_frame_inference

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self.model.__dict__.pop("_run_single_frame_inference", None)

    def _record(self, frame: int, objs: list[int], call: dict, prompt: str | None) -> None:
        """Turn one decoder call into ObjectScores per object (kept-mask pairing)."""
        needed = ["masks", "ious", "object_logits", "all_ious", "iou", 0, 1, 2, 3]
        missing = [k for k in needed if k not in call]
        if missing:
            raise UsamError(
                f"the sam2 mask decoder did not produce {missing} during frame inference; "
                "this sam2 version is not supported"
            )
        masks, ious = call["masks"].float(), call["ious"].float()  # [B, M, h, w], [B, M]
        b, m = ious.shape
        tokens = torch.stack([call[i] for i in range(4)], 1).float()  # [B, 4, C]
        if m == 3:
            kept = ious.argmax(-1)  # SAM 2 keeps the highest predicted IoU (first on ties)
            token = kept + 1
        else:
            # single mask: token 0's, or the one sam2's stability fallback picked
            all_ious = call["all_ious"].float()  # [B, 4]
            match = all_ious == ious[:, :1]
            token = torch.where(match[:, 0], 0, match.float().argmax(-1))
            kept = torch.zeros(b, dtype=torch.long, device=ious.device)
        rows = torch.arange(b, device=ious.device)
        probs = torch.sigmoid(masks)
        h = entropy(probs[rows, kept])
        h_task = (
            entropy(mixture(probs, score_weights(ious)))
            if m == 3
            else torch.full_like(h, float("nan"))
        )
        iou_token = call["iou"].float()
        mask_token = tokens[rows, token]
        logits = call["object_logits"].float().reshape(b, -1)[:, 0]
        packed = torch.stack(
            [ious[rows, kept], torch.sigmoid(logits), logits, h, h_task, token.float()]
        )
        values = packed.cpu().numpy()  # one device sync per call
        if self.keep_tokens:
            iou_np, mask_np = iou_token.cpu().numpy(), mask_token.cpu().numpy()
            three_np = tokens[:, 1:].cpu().numpy()
        for k, obj in enumerate(objs):
            pred, score, logit, ent, htask, tok = (float(v) for v in values[:6, k])
            if prompt == "mask":  # the kept mask is the user's, not a decoded one
                pred = ent = htask = math.nan
            self._records[(frame, obj)] = ObjectScores(
                obj_id=None,
                predicted_iou=pred,
                object_score=score,
                object_score_logit=logit,
                entropy=ent,
                h_task=htask,
                token=int(tok),
                multimask=m == 3,
                prompt=prompt,
                # filled when the frame is handed out: one estimator pass for all its objects
                estimates={t: math.nan for t in self.targets} if prompt == "mask" else {},
                iou_token=iou_np[k] if self.keep_tokens else None,
                mask_token=mask_np[k] if self.keep_tokens else None,
                mask_tokens=three_np[k] if self.keep_tokens else None,
            )
            if prompt != "mask" and self.targets:
                self._pending[(frame, obj)] = (iou_token[k], tokens[k], token[k])

    def estimate(
        self, iou_token: torch.Tensor, tokens: torch.Tensor, source: torch.Tensor
    ) -> dict[str, np.ndarray]:
        """Every estimator on n rows: IoU tokens [n, C], the four mask tokens [n, 4, C] and the
        token that made each kept mask [n]; -> target -> float [n], in `targets` order."""
        rows = torch.arange(len(source), device=source.device)
        out = {}
        for pairing, heads in self.heads.items():
            read = paired_token(source, pairing)
            x = torch.cat([iou_token, tokens[rows, read]], -1)
            out.update(zip(heads.targets, heads(x).float().cpu().numpy(), strict=True))
        return {t: out[t] for t in self.targets}

    # -- SAM 2's video API ---------------------------------------------------------------------
    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def init_state(
        self,
        video: str | Path | VideoFrames,
        *,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
    ) -> dict:
        """SAM 2's inference state for a JPEG folder or a video file (or prepared frames)."""
        import sam2.sam2_video_predictor as svp

        frames = video if isinstance(video, VideoFrames) else VideoFrames(video, self.image_size)
        if frames.image_size != self.image_size:
            raise UsamError(
                f"frames prepared at {frames.image_size} px, the model takes {self.image_size}"
            )

        def load_video_frames(**kwargs):
            # sam2 reads only JPEG folders itself (mp4 needs decord) and keeps every frame as
            # float32; it only indexes the sequence and asks for its length
            return frames, frames.height, frames.width

        original = svp.load_video_frames
        svp.load_video_frames = load_video_frames
        try:
            with self._autocast():
                state = self.model.init_state(
                    video_path=str(frames.path),
                    offload_video_to_cpu=offload_video_to_cpu,
                    offload_state_to_cpu=offload_state_to_cpu,
                )
        finally:
            svp.load_video_frames = original
        state["usam_frames"] = frames
        self._records.clear()
        self._pending.clear()
        return state

    def _frame(self, state: dict, frame_idx: int, obj_ids: list, video_res_masks) -> FrameResult:
        masks = (video_res_masks > 0.0).squeeze(1).cpu().numpy()
        # every object's estimates of this frame in one pass: the MLP weights are read once
        waiting = [(f, o) for (f, o) in self._pending if f == frame_idx]
        if waiting:
            parts = [self._pending.pop(key) for key in waiting]
            values = self.estimate(*(torch.stack(x) for x in zip(*parts, strict=True)))
            for n, key in enumerate(waiting):
                self._records[key].estimates = {t: float(v[n]) for t, v in values.items()}
        objects: list[ObjectScores | None] = []
        for obj_idx, obj_id in enumerate(obj_ids):
            rec = self._records.get((frame_idx, obj_idx))
            if rec is not None:
                rec.obj_id = obj_id
                if rec.prompt is None:  # a tracked frame: yielded once, then forgotten
                    self._records.pop((frame_idx, obj_idx))
            objects.append(rec)
        return FrameResult(frame_idx, list(obj_ids), masks, objects)

    def _check_frame(self, state: dict, frame_idx: int) -> None:
        n = state["num_frames"]
        if not isinstance(frame_idx, (int, np.integer)) or not 0 <= frame_idx < n:
            raise UsamError(f"frame={frame_idx!r}: the video has frames 0..{n - 1}")

    def add_new_points_or_box(
        self,
        state: dict,
        frame_idx: int,
        obj_id: Any,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        clear_old_points: bool = True,
    ) -> FrameResult:
        """SAM 2's `add_new_points_or_box`: points (x, y) / box XYXY in video pixels."""
        self._check_frame(state, frame_idx)
        if points is not None and labels is None:
            labels = np.ones(len(np.asarray(points)), np.int32)
        try:
            with self._autocast():
                f, ids, masks = self.model.add_new_points_or_box(
                    state,
                    frame_idx=int(frame_idx),
                    obj_id=obj_id,
                    points=points,
                    labels=labels,
                    box=box,
                    clear_old_points=clear_old_points,
                )
        except RuntimeError as err:
            if "Cannot add new object" in str(err):
                raise UsamError(
                    f"object {obj_id!r}: add every object before propagating ({err})"
                ) from None
            raise
        return self._frame(state, f, ids, masks)

    def add_new_mask(self, state: dict, frame_idx: int, obj_id: Any, mask: Any) -> FrameResult:
        """SAM 2's `add_new_mask`: a bool mask at the video's size."""
        self._check_frame(state, frame_idx)
        mask = np.asarray(mask, dtype=bool)
        hw = (state["video_height"], state["video_width"])
        if mask.shape != hw:
            raise UsamError(f"mask of shape {mask.shape} for a video of size {hw}")
        with self._autocast():
            f, ids, masks = self.model.add_new_mask(state, int(frame_idx), obj_id, mask)
        return self._frame(state, f, ids, masks)

    def propagate_in_video(
        self,
        state: dict,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[FrameResult]:
        """SAM 2's `propagate_in_video`, one FrameResult per frame in processing order."""
        if not state["obj_ids"]:
            raise UsamError("no prompt yet: add points, a box or a mask before propagating")
        gen = self.model.propagate_in_video(
            state,
            start_frame_idx=start_frame_idx,
            max_frame_num_to_track=max_frame_num_to_track,
            reverse=reverse,
        )
        while True:
            with self._autocast():
                item = next(gen, None)
            if item is None:
                return
            yield self._frame(state, *item)

    def reset_state(self, state: dict) -> None:
        self.model.reset_state(state)
        self._records.clear()
        self._pending.clear()

    def __repr__(self) -> str:
        tag = ", RANDOM weights" if self.random_weights else ""
        return f"VideoUSAM({self.version} {self.size}{tag}, estimators={sorted(self.estimators)})"


def from_sam_model_cfg(
    sam_model: Any,
    size: str,
    *,
    estimators: Mapping[str, Estimator] | None = None,
    checkpoint: str | Path | None = None,
    keep_tokens: bool = False,
) -> VideoUSAM:
    """A VideoUSAM for one size of a `conf/sam_model/*.yaml` group (checkpoint defaults from it)."""
    sm = sam_model
    if size not in registry.sizes(sm.version):
        raise UsamError(
            f"size={size!r}: unknown; sam_model={sm.version} has {registry.sizes(sm.version)}"
        )
    row = registry.resolve(sm.version, size, sm)
    if checkpoint is None and not sm.random_weights:
        checkpoint = Path(sm.checkpoint_dir) / row.file
    model = build_video_model(
        row.config,
        None if sm.random_weights else checkpoint,
        device=sm.device,
        image_size=sm.image_size,
        random_weights=sm.random_weights,
        seed=sm.seed,
        sha256=(sm.get("sha256") or {}).get(size),
    )
    return VideoUSAM(
        model,
        size=size,
        version=sm.version,
        estimators=estimators,
        random_weights=sm.random_weights,
        keep_tokens=keep_tokens,
    )
