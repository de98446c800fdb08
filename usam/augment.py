"""Image variants for the aleatoric measures (SPEC, Stage 1 "Augmentations").

A config option (`conf/augment/*.yaml`) lists named variants, each one albumentations
transform. The variant "original" (identity) is implicit and always first.

    augs = instantiate(cfg.augment)
    for name, apply in augs:
        image_v, points_v, unmap = apply(image, points, key=sample.name)
        ... decode image_v with points_v, then unmap(masks) -> original frame

Photometric transforms (albumentations ImageOnlyTransform) leave points alone and
`unmap` is the identity. Geometric ones map points forward (albumentations keypoints)
and `unmap` maps a mask or probability map of the transformed image back to the
original frame. Supported geometric transforms: HorizontalFlip, VerticalFlip,
Transpose; each is its own inverse and commutes with resizing, so `unmap` works on
any resolution (full-size masks and SAM's 256x256 low-res maps alike, SAM 2 resizes
to a square without padding) and any leading dims, numpy or torch. Others are
refused when the config is built.

Point convention (albumentations 2.x, checked in tests): pixel (x, y) of a W x H
image goes to (W-1-x, y) under HorizontalFlip, (x, H-1-y) under VerticalFlip and
(y, x) under Transpose, i.e. integer coordinates are pixel indices.

Randomness: `apply(..., key=image_name)` reseeds the variant from (seed, variant
name, key), so an image gets the same noise whatever the shard or order; without a
key each call draws the next seed of the variant's own sequence. albumentations 2
seeds OpenCV's RNG (used by GaussNoise) from the Compose seed, so both are covered.
"""

from __future__ import annotations

import logging
import re
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import albumentations as A
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from usam.errors import UsamError

log = logging.getLogger(__name__)

ORIGINAL = "original"
_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")

Apply = Callable[..., tuple[np.ndarray, Any, Callable[[Any], Any]]]


def _identity(x: Any) -> Any:
    return x


def _flip(dim: int) -> Callable[[Any], Any]:
    def unmap(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.flip(dim)
        return np.flip(x, dim).copy()  # copy: negative strides upset torch.as_tensor

    return unmap


def _transpose(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.transpose(-1, -2).contiguous()
    return np.ascontiguousarray(np.swapaxes(x, -1, -2))


# geometric transform -> map of its output frame back to the input frame, on (..., H, W)
INVERSES: dict[type, Callable[[Any], Any]] = {
    A.HorizontalFlip: _flip(-1),
    A.VerticalFlip: _flip(-2),
    A.Transpose: _transpose,
}


def _stable(*parts: int | str) -> list[int]:
    return [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]


class Variant:
    """One named transform with its own deterministic random state."""

    def __init__(self, name: str, transform: A.BasicTransform, seed: int):
        self.name = name
        self.transform = transform
        self.seed = seed
        self.calls = 0
        self.geometric = not isinstance(transform, A.ImageOnlyTransform)
        if self.geometric:
            self.unmap = INVERSES[type(transform)]
            kp = A.KeypointParams(format="xy", remove_invisible=False)
            self.compose = A.Compose([transform], keypoint_params=kp)
        else:
            self.unmap = _identity
            self.compose = A.Compose([transform])

    def __call__(
        self, image: np.ndarray, points: Any = None, key: str | None = None
    ) -> tuple[np.ndarray, Any, Callable[[Any], Any]]:
        """(image, points (..., 2) x/y or None) -> (image_aug, points_aug, unmap).

        Photometric: `points` is returned as is (the same object). Geometric: a new
        float32 array of the same shape, points outside the image are kept.
        """
        if key is None:
            self.calls += 1
        salt = ("image", key) if key is not None else ("call", self.calls)
        state = np.random.SeedSequence(_stable(self.seed, self.name, *salt)).generate_state(1)
        self.compose.set_random_seed(int(state[0]))
        if not self.geometric:
            return self.compose(image=image)["image"], points, self.unmap
        if points is None:
            return self.compose(image=image)["image"], None, self.unmap
        pts = np.asarray(points, dtype=np.float32)
        out = self.compose(image=image, keypoints=pts.reshape(-1, 2))
        mapped = np.asarray(out["keypoints"], dtype=np.float32)[:, :2].reshape(pts.shape)
        return out["image"], mapped, self.unmap


class Augmentations:
    """The image variants of one run: "original" first, then the configured ones.

    `variants` maps name -> albumentations transform, or its config (`_target_`);
    configs are instantiated here so a wrong argument name is caught, not ignored.
    """

    def __init__(self, variants: Mapping[str, Any] | None = None, seed: int = 0):
        if isinstance(variants, DictConfig):
            variants = {k: variants[k] for k in variants}
        self.seed = int(seed)
        if self.seed < 0:
            raise UsamError(f"augment.seed must be >= 0, got {seed}")
        self.variants: dict[str, Variant] = {}
        for name, spec in (variants or {}).items():
            name = str(name)
            if name == ORIGINAL:
                raise UsamError(
                    f"augment: '{ORIGINAL}' is implicit and always first; rename the variant"
                )
            if not _NAME.match(name):
                raise UsamError(
                    f"augment: variant name {name!r} must use only letters, "
                    "digits, '_' and '-' (it becomes a key in outputs)"
                )
            self.variants[name] = Variant(name, _build(name, spec), self.seed)

    @property
    def names(self) -> list[str]:
        return [ORIGINAL, *self.variants]

    def describe(self) -> dict[str, Any]:
        """What the variants are (transform and arguments) and the seed: the part of an
        extraction's settings that decides its augmented numbers."""
        return {
            "seed": self.seed,
            "variants": {n: repr(v.transform) for n, v in self.variants.items()},
        }

    def __len__(self) -> int:
        return 1 + len(self.variants)

    def __iter__(self) -> Iterator[tuple[str, Apply]]:
        yield ORIGINAL, _original
        yield from self.variants.items()

    def __getitem__(self, name: str) -> Apply:
        return _original if name == ORIGINAL else self.variants[name]

    def __repr__(self) -> str:
        return f"Augmentations({self.names}, seed={self.seed})"


def _original(
    image: np.ndarray, points: Any = None, key: str | None = None
) -> tuple[np.ndarray, Any, Callable[[Any], Any]]:
    """The identity variant: returns its inputs themselves (callers must not mutate them)."""
    return image, points, _identity


def _build(name: str, spec: Any) -> A.BasicTransform:
    """Instantiate one variant's transform and check that usam can use it."""
    if isinstance(spec, (Mapping, DictConfig)):
        spec = OmegaConf.create(dict(spec)) if not isinstance(spec, DictConfig) else spec
        if "_target_" not in spec:
            raise UsamError(
                f"augment.variants.{name}: needs a _target_ (e.g. albumentations.GaussianBlur)"
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                transform = instantiate(spec)
            except Exception as e:
                raise UsamError(
                    f"augment.variants.{name}: cannot build {spec._target_}: {e}"
                ) from e
        # albumentations 2 only warns about unknown arguments (the old GaussNoise
        # `var_limit` is ignored that way); an ignored argument is a wrong experiment
        for w in caught:
            if "not valid" in str(w.message):
                raise UsamError(
                    f"augment.variants.{name}: {w.message} "
                    f"(albumentations {A.__version__}); fix the argument names"
                )
    else:
        transform = spec
    if not isinstance(transform, A.BasicTransform) or isinstance(transform, A.BaseCompose):
        raise UsamError(
            f"augment.variants.{name}: expected one albumentations transform, "
            f"got {type(transform).__name__}"
        )
    if not isinstance(transform, A.ImageOnlyTransform) and type(transform) not in INVERSES:
        supported = ", ".join(t.__name__ for t in INVERSES)
        raise UsamError(
            f"augment.variants.{name}: {type(transform).__name__} moves pixels "
            f"and usam cannot map its masks back; geometric transforms "
            f"supported: {supported}"
        )
    if transform.p != 1.0:
        log.warning(
            "augment.variants.%s has p=%s: some images will get no augmentation", name, transform.p
        )
    return transform
