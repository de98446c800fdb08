"""SAM 2 image models: build and load, encode an image once, decode prompts in batches, and
capture the decoder's IoU token and mask tokens.

Models are built from the YAML configs the `sam2` package ships, without
`sam2.build_sam.build_sam2`: that one composes through the global Hydra instance and fails
inside a running Hydra app. `sam2` is imported only inside functions, because importing it
initialises global Hydra state when none is active.

Tokens are read with forward-pre-hooks on the mask decoder's `iou_prediction_head` (its input
is the IoU token) and `output_hypernetworks_mlps[i]` (its input is mask token i), so no SAM 2
code is copied. With `multimask_output=True` the three masks come from mask tokens 1, 2, 3:
mask j pairs with token j+1 (SPEC "Token pairing", a FIX of the published code).

Sizes: masks come back at the original image size; the low-resolution maps are
(image_size / 4) squared, i.e. 256 x 256 for the default image_size 1024 (the size SPEC
speaks of) and 64 x 64 for image_size=256.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from usam import registry
from usam.errors import UsamError

log = logging.getLogger(__name__)

N_MASK_TOKENS = 4  # SAM 2: token 0 for single-mask output, tokens 1..3 for the three masks
IMAGE_SIZE_MULTIPLE = 32  # Hiera pools 4x then 3 times 2x, and tiles an 8x8 window embedding at 1/4

# What sam2.build_sam.build_sam2 adds with apply_postprocessing=True. They only change
# single-mask output (multimask_output=False); we apply them so the model matches upstream.
_POSTPROCESSING = {
    "dynamic_multimask_via_stability": True,
    "dynamic_multimask_stability_delta": 0.05,
    "dynamic_multimask_stability_thresh": 0.98,
}


def download_hint(version: str) -> str:
    return f"python -m usam.download_checkpoints sam_model={version}"


class _QuietPredictor(logging.Filter):
    """Drops the INFO lines sam2's image predictor logs on the root logger for every image."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not record.pathname.endswith(
            "sam2_image_predictor.py"
        )


def _quiet_predictor_logs() -> None:
    root = logging.getLogger()
    if not any(isinstance(f, _QuietPredictor) for f in root.filters):
        root.addFilter(_QuietPredictor())


# --------------------------------------------------------------------------- building


def resolve_device(
    device: str | torch.device = "auto", key: str = "sam_model.device"
) -> torch.device:
    """`auto` -> cuda if available else cpu; a bad or unavailable device is a UsamError naming `key`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UsamError(
            f"{key}={device!r} is not a device ({err}); use auto, cpu, cuda or cuda:N"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsamError(f"{key}={device} but CUDA is not available here; use {key}=auto or cpu")
    return dev


def check_image_size(image_size: int | None) -> int | None:
    if image_size is None:
        return None
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, int)
        or image_size <= 0
        or image_size % IMAGE_SIZE_MULTIPLE
    ):
        raise UsamError(
            f"sam_model.image_size={image_size!r}: must be null (the model's own, 1024) "
            f"or a positive multiple of {IMAGE_SIZE_MULTIPLE}, e.g. 256 or 512"
        )
    return image_size


def model_config(config: str | Path, image_size: int | None = None) -> DictConfig:
    """The resolved `model` config of a SAM 2 YAML, with build_sam2's post-processing overrides.

    `config` is a path inside the installed sam2 package (`configs/sam2.1/sam2.1_hiera_t.yaml`)
    or a YAML file on disk.
    """
    from importlib.resources import files

    path = Path(config)
    if not path.is_file():
        packaged = files("sam2") / str(config)
        if not packaged.is_file():
            known = sorted(
                f"configs/{d.name}/{f.name}"
                for d in (files("sam2") / "configs").iterdir()
                if d.is_dir()
                for f in d.iterdir()
                if f.name.endswith(".yaml")
            )
            raise UsamError(
                f"SAM 2 model config {config!r} is neither a file nor inside the "
                f"installed sam2 package; packaged configs: {', '.join(known)}"
            )
        path = Path(str(packaged))
    try:
        cfg = OmegaConf.load(path)
    except Exception as err:  # YAML syntax errors come in several exception types
        raise UsamError(f"{path}: cannot read the SAM 2 model config: {err}") from err
    if not isinstance(cfg, DictConfig) or "model" not in cfg:
        raise UsamError(f"{path}: not a SAM 2 model config (no top-level `model:`)")
    for key, value in _POSTPROCESSING.items():
        OmegaConf.update(cfg, f"model.sam_mask_decoder_extra_args.{key}", value, force_add=True)
    if image_size is not None:
        cfg.model.image_size = check_image_size(image_size)
    OmegaConf.resolve(cfg)
    return cfg


def load_checkpoint(
    model: torch.nn.Module, checkpoint: str | Path, config: str | Path = ""
) -> None:
    """Load `checkpoint["model"]` strictly; every way it can fail is a UsamError naming the file."""
    path = Path(checkpoint)
    fix = (
        "delete it and download it again (python -m usam.download_checkpoints sam_model=<version>)"
    )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated file, not a torch file, or pickled non-tensor objects
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsamError(f"{path}: cannot read the checkpoint ({first}); {fix}") from err
    state = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(state, Mapping):
        raise UsamError(
            f"{path}: not a SAM 2 checkpoint (expected a dict with a 'model' state dict)"
        )
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatch: a checkpoint of another size
        lines = [s.strip() for s in str(err).splitlines() if "size mismatch" in s][:3]
        raise UsamError(
            f"{path}: does not fit the model config {config} ({'; '.join(lines) or err}); "
            "is it the checkpoint of this size and SAM version?"
        ) from err
    if missing or unexpected:
        raise UsamError(
            f"{path}: does not match the model config {config}: "
            f"{len(missing)} missing keys {list(missing)[:5]}, "
            f"{len(unexpected)} unexpected keys {list(unexpected)[:5]}; "
            "is it the checkpoint of this size and SAM version?"
        )


def _verify(checkpoint: Path, sha256: str | None) -> None:
    try:
        from usam.download import verify_checkpoint
    except ImportError:  # download module absent in a stripped install: load unverified
        log.warning("%s: usam.download not importable; checkpoint digest not verified", checkpoint)
        return
    verify_checkpoint(checkpoint, sha256)


def build_sam2_model(
    config: str | Path,
    checkpoint: str | Path | None,
    *,
    device: str | torch.device = "auto",
    image_size: int | None = None,
    random_weights: bool = False,
    seed: int = 0,
    sha256: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A SAM2Base in eval mode on `device`: from `checkpoint`, or seeded random weights.

    `overrides`: model config keys set on top of the packaged config (the video predictor's,
    usam.video), so every SAM 2 model is built and verified by this one function.
    """
    from hydra.utils import instantiate

    dev = resolve_device(device)
    cfg = model_config(config, image_size)
    for key, value in (overrides or {}).items():
        OmegaConf.update(cfg, f"model.{key}", value, force_add=True)
    if random_weights:
        log.warning(
            "SAM 2 (%s) has RANDOM weights (seed %d): its outputs are meaningless; "
            "use only for tests and smoke runs",
            config,
            seed,
        )
        with torch.random.fork_rng(devices=[]):  # seed the init without moving the caller's RNG
            torch.manual_seed(seed)
            model = instantiate(cfg.model, _recursive_=True)
    else:
        if checkpoint is None:
            raise UsamError(
                f"no checkpoint given for {config}; set one or use random weights (tests only)"
            )
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise UsamError(
                f"SAM 2 checkpoint {checkpoint.resolve()} not found; get it with: "
                f"{download_hint('<sam2.1|sam2.0>')}"
            )
        _verify(checkpoint, sha256)
        model = instantiate(cfg.model, _recursive_=True)
        load_checkpoint(model, checkpoint, config)
    return model.to(dev).eval()


def hook_decoder_tokens(decoder: Any, store: Callable[[str | int, torch.Tensor], None]) -> list:
    """Forward pre-hooks that hand SAM 2's decoder tokens to `store(key, tensor)` on every
    decoder call: the IoU token ("iou") and the four mask tokens (0..3), read where they enter
    their heads, so no SAM 2 code is copied. Shared by the image and the video models."""
    head = getattr(decoder, "iou_prediction_head", None)
    mlps = getattr(decoder, "output_hypernetworks_mlps", None)
    if (
        not isinstance(head, torch.nn.Module)
        or not isinstance(mlps, torch.nn.ModuleList)
        or len(mlps) != N_MASK_TOKENS
    ):
        import sam2

        raise UsamError(
            "the installed sam2 package (" + getattr(sam2, "__file__", "?") + ") has no "
            "sam_mask_decoder.iou_prediction_head and 4 "
            "sam_mask_decoder.output_hypernetworks_mlps; token capture needs them: "
            "install a sam2 version with that mask decoder (1.0 or 1.1)"
        )

    def grab(key):
        def hook(module, args, kwargs):
            store(key, args[0] if args else next(iter(kwargs.values())))

        return hook

    return [head.register_forward_pre_hook(grab("iou"), with_kwargs=True)] + [
        mlp.register_forward_pre_hook(grab(i), with_kwargs=True) for i, mlp in enumerate(mlps)
    ]


# --------------------------------------------------------------------------- one model


@dataclass
class Decoded:
    """SAM 2's answer to a batch of B point prompts, all tensors on the model's device."""

    masks: torch.Tensor  # bool [B, 3, H, W] at the original image size
    scores: torch.Tensor  # float32 [B, 3] SAM's predicted IoU per mask
    # float32 [B, 3, h, w]: sigmoid of the low-res logits, h = w = image_size / 4
    low_res_probs: torch.Tensor
    iou_token: torch.Tensor  # float32 [B, C] (C = 256)
    # float32 [B, 3, C]: row j = decoder mask token j+1, the token that made mask j
    mask_tokens: torch.Tensor


@dataclass
class DecodedTokens:
    """One decoder call with every mask token: what single-mask output and either token
    pairing need (usam.mlp.paired_token). M = 3 masks with multimask_output, else 1."""

    masks: torch.Tensor  # bool [B, M, H, W] at the original image size
    scores: torch.Tensor  # float32 [B, M] SAM's predicted IoU per mask
    low_res_logits: torch.Tensor  # float32 [B, M, h, w]
    iou_token: torch.Tensor  # float32 [B, C]
    all_mask_tokens: torch.Tensor  # float32 [B, 4, C]: decoder mask tokens 0..3
    source: torch.Tensor  # int64 [B, M]: the decoder mask token that made each returned mask


def single_mask_source(captured: Mapping[Any, torch.Tensor], b: int, device) -> torch.Tensor:
    """[B] index of the decoder token whose mask SAM 2 returned with multimask_output=False.

    Token 0 unless the dynamic multimask-via-stability choice (recorded by SamModel's watch)
    returned one of tokens 1..3: found as the token whose logits equal the returned ones
    (SAM 2 selects with torch.where, so the chosen mask is an exact copy).
    """
    if "chosen_logits" not in captured:  # no dynamic choice configured: token 0's mask
        return torch.zeros(b, dtype=torch.long, device=device)
    all_logits, chosen = captured["all_logits"], captured["chosen_logits"]
    same = (all_logits == chosen).flatten(2).all(-1)  # [B, 4]
    if not bool(same.any(-1).all()):
        raise UsamError(
            "SAM 2's single-mask output equals none of its four token masks; "
            "this sam2 version is not supported for multimask_output=False"
        )
    # identical logits of token 0 and another (never seen in practice): token 0, SAM's default
    return torch.where(same[:, 0], 0, same[:, 1:].float().argmax(-1) + 1).long()


def captured_tokens(
    captured: Mapping[Any, torch.Tensor], b: int, multimask_output: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(iou_token [B, C], mask tokens 0..3 [B, 4, C], source [B, M]) of one captured decoder
    call of B prompts; source = the token that made each returned mask."""
    missing = [k for k in ["iou", *range(N_MASK_TOKENS)] if k not in captured]
    if missing:
        raise UsamError(
            f"the sam2 mask decoder did not call {missing} (iou_prediction_head / "
            "output_hypernetworks_mlps) during decoding; this sam2 version is not supported"
        )
    tokens = torch.stack([captured[i] for i in range(N_MASK_TOKENS)], dim=1).float()
    if tokens.shape[0] != b:
        raise UsamError(
            f"captured {tokens.shape[0]} sets of decoder tokens for {b} prompts: one decoder "
            "call per capture, please"
        )
    if multimask_output:
        source = torch.arange(1, N_MASK_TOKENS, device=tokens.device).expand(b, -1)
    else:
        source = single_mask_source(captured, b, tokens.device)[:, None]
    return captured["iou"].float(), tokens, source


class SamModel:
    """One SAM 2 size: `set_image` runs the encoder once, `decode` answers any number of prompts."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        size: str,
        version: str,
        random_weights: bool = False,
        batch_size: int | None = None,
        compile_decoder: bool = False,
    ):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.device = model.device
        if batch_size is None:
            # SAM 2's decoder repeats the image embedding per prompt: on a CPU large batches
            # only add memory traffic (measured: 0.14 s/prompt at 1-8, 0.19 at 48, 1024 px);
            # on a GPU a batch costs about as much as one prompt
            batch_size = 64 if self.device.type == "cuda" else 8
        if batch_size < 1:
            raise UsamError(f"sam_model.batch_size={batch_size}: must be at least 1")
        self.model = model
        self.size, self.version = size, version
        self.random_weights = bool(random_weights)
        self.batch_size = int(batch_size)
        self.image_size = int(model.image_size)
        self.sam_predictor = SAM2ImagePredictor(model)
        _quiet_predictor_logs()
        # upstream fixes these for 1024 inputs; the encoder's levels are strides 4, 8, 16
        s = self.image_size
        self.sam_predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self.encoder_passes = 0  # images encoded (a batch of B counts B)
        self._img_idx = -1  # which image of the last set_images `decode` uses (-1: the only one)
        self._captured: dict[Any, torch.Tensor] | None = None
        self._hooks = self._install_hooks()
        self.compiled = bool(compile_decoder)
        if self.compiled:
            # The decoder's cost is elementwise work on the image embedding it repeats per
            # prompt, which inductor fuses (measured: about 2x per prompt on a CPU at 1024 px).
            # Compiling `forward` (as sam2 does for its encoder) keeps the module and its
            # state_dict as they are; the token hooks run inside the compiled graph.
            # dynamic=True: one compilation for every batch size and point count.
            decoder = model.sam_mask_decoder
            decoder.forward = torch.compile(decoder.forward, dynamic=True)

    @property
    def low_res_size(self) -> int:
        return self.image_size // 4

    def _install_hooks(self) -> list:
        def store(key, token):
            if self._captured is not None:
                self._captured[key] = token

        decoder = getattr(self.model, "sam_mask_decoder", None)
        hooks = hook_decoder_tokens(decoder, store)
        self._watch_single_mask_choice(decoder)
        return hooks

    def _watch_single_mask_choice(self, decoder: torch.nn.Module) -> None:
        """Record the in- and output of the decoder's dynamic multimask-via-stability choice.

        With multimask_output=False SAM 2 returns token 0's mask unless it is unstable, then
        the best multimask output (`MaskDecoder._dynamic_multimask_via_stability`). Which
        token made the returned mask is read off its own answer (`single_mask_source`), so
        no part of that rule is copied. Wrapped on this decoder instance only; a second
        SamModel on the same model wraps this wrapper (each records into its own capture).
        """
        choose = getattr(decoder, "_dynamic_multimask_via_stability", None)
        self._choice_watch = None
        if choose is None:
            return

        def watched(all_logits, all_scores):
            logits, scores = choose(all_logits, all_scores)
            if self._captured is not None:
                self._captured["all_logits"], self._captured["chosen_logits"] = all_logits, logits
            return logits, scores

        watched.wrapped = vars(decoder).get("_dynamic_multimask_via_stability")
        decoder._dynamic_multimask_via_stability = self._choice_watch = watched

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        decoder, watch = self.model.sam_mask_decoder, self._choice_watch
        # unwrap if ours is the outermost wrapper (else it stays, recording nothing: no capture)
        if watch is not None and vars(decoder).get("_dynamic_multimask_via_stability") is watch:
            if watch.wrapped is None:
                del decoder._dynamic_multimask_via_stability  # the class's method again
            else:
                decoder._dynamic_multimask_via_stability = watch.wrapped
            self._choice_watch = None

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def set_image(self, image: np.ndarray) -> None:
        """Encode one H x W x 3 uint8 RGB image; every later `decode` uses it."""
        image = self._check_image(image)
        with torch.inference_mode(), self._autocast():
            self.sam_predictor.set_image(image)
        self._img_idx = -1
        self.encoder_passes += 1

    def set_images(self, images: Sequence[np.ndarray]) -> None:
        """Encode several images in one encoder call (SAM 2's set_image_batch; on a GPU one
        batch costs less than its images one by one); `use_image(i)` picks the one `decode` uses."""
        images = [self._check_image(im) for im in images]
        if not images:
            raise UsamError("SamModel.set_images needs at least one image")
        with torch.inference_mode(), self._autocast():
            self.sam_predictor.set_image_batch(images)
        self._img_idx = 0
        self.encoder_passes += len(images)

    def use_image(self, index: int) -> None:
        """Decode against image `index` of the last `set_images` (-1: the last one)."""
        n = len(self.sam_predictor._orig_hw) if self.sam_predictor._is_image_set else 0
        if not -n <= index < n:
            raise UsamError(f"SamModel.use_image({index}): {n} images are set")
        self._img_idx = int(index)

    @staticmethod
    def _check_image(image: np.ndarray) -> np.ndarray:
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
            or min(image.shape[:2]) < 1
        ):
            dtype, shape = getattr(image, "dtype", ""), getattr(image, "shape", "")
            got = f"{type(image).__name__} {dtype} {shape}"
            raise UsamError(f"SamModel.set_image needs an H x W x 3 uint8 RGB array, got {got}")
        if not image.flags.writeable:  # e.g. an albumentations flip; torch warns on those
            image = image.copy()
        return image

    def decode(
        self, points: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
    ) -> Decoded:
        """Decode B point prompts with multimask_output=True, `batch_size` prompts per decoder call.

        points: [B, N, 2] (x, y) in original-image pixels;
        labels: [B, N] (1 foreground, 0 background).
        """
        if not self.sam_predictor._is_image_set:
            raise UsamError("SamModel.decode called before set_image")
        points = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        labels = torch.as_tensor(labels, dtype=torch.int32, device=self.device)
        if (
            points.ndim != 3
            or points.shape[-1] != 2
            or labels.shape != points.shape[:2]
            or points.shape[1] < 1
        ):
            raise UsamError(
                f"SamModel.decode needs points [B, N, 2] and labels [B, N] with N >= 1, "
                f"got points {tuple(points.shape)} and labels {tuple(labels.shape)}"
            )
        if len(points) == 0:
            return self._empty()
        parts = [
            self.decode_once(points[lo : lo + self.batch_size], labels[lo : lo + self.batch_size])[
                0
            ]
            for lo in range(0, len(points), self.batch_size)
        ]
        if len(parts) == 1:
            return parts[0]
        return Decoded(
            *(torch.cat([getattr(p, f) for p in parts]) for f in Decoded.__dataclass_fields__)
        )

    def decode_once(
        self,
        points: np.ndarray | torch.Tensor | None,
        labels: np.ndarray | torch.Tensor | None,
        boxes: np.ndarray | torch.Tensor | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[Decoded, torch.Tensor]:
        """One decoder call for an already batched set of prompts (points, boxes, masks).

        Returns the Decoded outputs and the raw low-resolution logits [B, 3, h, w].
        """
        p = self.sam_predictor
        self._captured = {}
        try:
            with torch.inference_mode(), self._autocast():
                # the predictor's own prompt path (coords scaled to the model's input frame);
                # 3-D inputs keep the batch dimension even when B == 1
                mask_in, coords, lab, box = p._prep_prompts(
                    points, labels, boxes, mask_input, normalize_coords=True, img_idx=self._img_idx
                )
                masks, scores, low_res = p._predict(
                    coords,
                    lab,
                    box,
                    mask_in,
                    multimask_output=True,
                    return_logits=False,
                    img_idx=self._img_idx,
                )
            captured = self._captured
        finally:
            self._captured = None
        b = len(scores)
        missing = [k for k in ["iou", *range(N_MASK_TOKENS)] if k not in captured]
        if missing:
            raise UsamError(
                f"the sam2 mask decoder did not call {missing} (iou_prediction_head / "
                "output_hypernetworks_mlps) during decoding; this sam2 version is not supported"
            )
        for k, t in captured.items():
            if t.ndim != 2 or t.shape[0] != b:
                raise UsamError(
                    f"captured decoder token {k!r} has shape {tuple(t.shape)}, expected "
                    f"[{b}, C]; this sam2 version is not supported"
                )
        low_res = low_res.float()
        decoded = Decoded(
            masks=masks.bool(),
            scores=scores.float(),
            low_res_probs=torch.sigmoid(low_res),
            iou_token=captured["iou"].float(),
            mask_tokens=torch.stack([captured[j + 1] for j in range(3)], dim=1).float(),
        )
        return decoded, low_res

    def decode_tokens(
        self,
        points: np.ndarray | torch.Tensor | None,
        labels: np.ndarray | torch.Tensor | None,
        boxes: np.ndarray | torch.Tensor | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        *,
        multimask_output: bool = True,
    ) -> DecodedTokens:
        """One decoder call for batched prompts, with all four mask tokens and, per returned
        mask, the token that made it (three masks with multimask_output, else one)."""
        p = self.sam_predictor
        with self.capture() as captured, torch.inference_mode(), self._autocast():
            mask_in, coords, lab, box = p._prep_prompts(
                points, labels, boxes, mask_input, normalize_coords=True
            )
            masks, scores, low_res = p._predict(
                coords, lab, box, mask_in, multimask_output=multimask_output, return_logits=False
            )
        iou_token, tokens, source = captured_tokens(captured, len(scores), multimask_output)
        return DecodedTokens(
            masks=masks.bool(),
            scores=scores.float(),
            low_res_logits=low_res.float(),
            iou_token=iou_token,
            all_mask_tokens=tokens,
            source=source,
        )

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict]:
        """Record the tokens of the decoder calls inside the block (read with captured_tokens)."""
        self._captured = {}
        try:
            yield self._captured
        finally:
            self._captured = None

    def _empty(self) -> Decoded:
        h, w = self.sam_predictor._orig_hw[self._img_idx]
        r, c = self.low_res_size, int(self.model.sam_mask_decoder.transformer_dim)

        def z(*shape, dtype=torch.float32):
            return torch.zeros(shape, dtype=dtype, device=self.device)

        return Decoded(z(0, 3, h, w, dtype=torch.bool), z(0, 3), z(0, 3, r, r), z(0, c), z(0, 3, c))

    def __repr__(self) -> str:
        return (
            f"SamModel({self.version} {self.size}, image_size={self.image_size}, "
            f"device={self.device}"
            f"{', RANDOM weights' if self.random_weights else ''})"
        )


def load_sam_model(
    size: str,
    checkpoint: str | Path | None,
    config: str | Path,
    *,
    version: str = "sam2.1",
    image_size: int | None = None,
    device: str | torch.device = "auto",
    batch_size: int | None = None,
    random_weights: bool = False,
    seed: int = 0,
    sha256: str | None = None,
) -> SamModel:
    """One SamModel from a checkpoint and a config (packaged path or YAML file)."""
    if not random_weights and checkpoint is not None and not Path(checkpoint).is_file():
        raise UsamError(
            f"SAM 2 checkpoint {Path(checkpoint).resolve()} not found; get it with: "
            f"{download_hint(version)}"
        )
    model = build_sam2_model(
        config,
        checkpoint,
        device=device,
        image_size=image_size,
        random_weights=random_weights,
        seed=seed,
        sha256=sha256,
    )
    return SamModel(
        model, size=size, version=version, random_weights=random_weights, batch_size=batch_size
    )


# --------------------------------------------------------------------------- all sizes


class SamModels:
    """The SAM 2 sizes of one version (what conf/sam_model/*.yaml builds), in `sizes` order.

    Files and model configs come from usam.registry; `checkpoints` / `configs` map a size to
    a file name / config of one's own instead (null or absent: the registry's).
    """

    def __init__(
        self,
        *,
        version: str,
        sizes: Sequence[str],
        checkpoint_dir: str | Path,
        checkpoints: Mapping[str, str | None] | None = None,
        configs: Mapping[str, str | None] | None = None,
        urls: Mapping[str, str | None] | None = None,
        sha256: Mapping[str, str | None] | None = None,
        random_weights: bool = False,
        seed: int = 0,
        image_size: int | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        compile_decoder: bool = False,
    ):
        self.version = str(version)
        self.sizes = [str(s) for s in sizes]
        self.random_weights = bool(random_weights)
        self.seed = int(seed)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.image_size = check_image_size(image_size)
        if not self.sizes:
            raise UsamError(
                "sam_model.sizes is empty; name at least one of tiny, small, base_plus, large"
            )
        if len(set(self.sizes)) != len(self.sizes):
            raise UsamError(f"sam_model.sizes={self.sizes} names a size twice")
        known = registry.sizes(self.version)
        unknown = [s for s in self.sizes if s not in known]
        if unknown:
            raise UsamError(
                f"sam_model.sizes: unknown {unknown}; SAM {self.version} has {', '.join(known)}"
            )
        # urls: the downloader's; the sam_model config hands them over with the rest
        chosen = {"checkpoints": checkpoints, "configs": configs, "urls": urls}
        rows = {s: registry.resolve(self.version, s, chosen) for s in self.sizes}
        paths = {s: self.checkpoint_dir / rows[s].file for s in self.sizes}
        if not self.random_weights:
            # all at once, before building anything: one error listing every missing file
            missing = [p for s, p in paths.items() if not p.is_file()]
            if missing:
                raise UsamError(
                    f"SAM {self.version} checkpoints not found:\n"
                    + "".join(f"  {p.resolve()}\n" for p in missing)
                    + f"get them with: {download_hint(self.version)} "
                    f"(or point sam_model.checkpoint_dir / paths.checkpoints at where they are)"
                )
        self.device = resolve_device(device)
        self._models: dict[str, SamModel] = {}
        self._paths = paths
        for s in self.sizes:
            t0 = time.perf_counter()
            model = build_sam2_model(
                rows[s].config,
                None if self.random_weights else paths[s],
                device=self.device,
                image_size=self.image_size,
                random_weights=self.random_weights,
                seed=seed,
                sha256=(sha256 or {}).get(s),
            )
            self._models[s] = SamModel(
                model,
                size=s,
                version=self.version,
                random_weights=self.random_weights,
                batch_size=batch_size,
                compile_decoder=compile_decoder,
            )
            log.info(
                "built SAM %s %s on %s (image size %d) in %.1f s",
                self.version,
                s,
                self.device,
                model.image_size,
                time.perf_counter() - t0,
            )

    @property
    def weights(self) -> dict[str, str | None]:
        """Per size, what its weights are: the checkpoint's recorded sha256 (recorded on first
        use when it was copied in by hand), or the seed of random weights. Extraction records
        carry it, so a rerun with other weights does not resume over their records."""
        if self.random_weights:
            return {s: f"random seed {self.seed}" for s in self.sizes}
        from usam.download import read_sidecar

        return {s: read_sidecar(self._paths[s]) for s in self.sizes}

    def __getitem__(self, size: str) -> SamModel:
        try:
            return self._models[size]
        except KeyError:
            raise KeyError(f"SAM size {size!r} not loaded; loaded: {self.sizes}") from None

    def __iter__(self) -> Iterator[SamModel]:
        return (self._models[s] for s in self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    def __repr__(self) -> str:
        tag = ", RANDOM weights" if self.random_weights else ""
        return f"SamModels({self.version}, {self.sizes}{tag})"
