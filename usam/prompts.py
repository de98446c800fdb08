"""Point prompts for one ground-truth instance (SPEC, Stage 1 "Prompts per instance").

Every instance gets 1 + n_samples points, all (x, y) pixel coordinates (x = column,
y = row) of foreground pixels:
- row 0, the *center prompt*: the foreground pixel closest to the foreground centroid;
- rows 1.., the *sample prompts*: foreground pixels drawn uniformly at random.
The *dense prompt* is all 1 + n_samples points given to SAM together as one
multi-point prompt, every label 1 (foreground). "Foreground" is the mask eroded once
with a 5x5 kernel, so points keep off the boundary, unless erosion removes everything
(thin or tiny objects), then the mask itself.

Randomness comes from `instance_rng`, seeded by (seed, image name, instance id), so a
rerun, a different shard split or a different processing order gives the same prompts
(the published code drew them from the global unseeded RNG).
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

_KERNEL = np.ones((5, 5), np.uint8)


def instance_rng(seed: int, name: str, instance_id: int) -> np.random.Generator:
    """A generator that depends only on (seed, image name, instance id).

    Uses crc32 of the UTF-8 name: Python's hash() of a str changes between processes.
    """
    if seed < 0 or instance_id < 0:
        raise ValueError(f"seed and instance_id must be >= 0, got {seed}, {instance_id}")
    return np.random.default_rng([seed, zlib.crc32(name.encode()), instance_id])


def prompt_region(mask: np.ndarray) -> np.ndarray:
    """The bool mask prompts are drawn from: `mask` eroded once by 5x5 if anything is left."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = mask != 0
    if not mask.any():
        raise ValueError("empty mask: no foreground pixel to prompt")
    # cv2's default border for erode counts outside pixels as foreground, so objects
    # touching the image edge are not eaten from that side (same as the published code).
    eroded = cv2.erode(mask.astype(np.uint8), _KERNEL).astype(bool)
    return eroded if eroded.any() else mask


def prompt_points(mask: np.ndarray, rng: np.random.Generator, n_samples: int = 7) -> np.ndarray:
    """(1 + n_samples, 2) float32 (x, y) points: row 0 the center prompt, then the samples.

    Samples are drawn without replacement when the region has >= n_samples pixels,
    else with replacement. The dense prompt is all rows together, labels all 1.
    Raises ValueError on an empty mask (callers skip empty instances before).
    """
    region = prompt_region(mask)
    ys, xs = np.nonzero(region)  # row-major order, so argmin below breaks ties by it
    cy, cx = ys.mean(), xs.mean()
    center = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    n = len(ys)
    picks = rng.choice(n, size=n_samples, replace=n < n_samples)
    idx = np.concatenate([[center], picks])
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32)
