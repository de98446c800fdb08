"""The USAM estimator: a small MLP on [iou_token, mask_token], and its bundle on disk.

A bundle is a directory with `model.safetensors` (the weights) and `config.json` (what
the weights are: architecture, target, output shift, the data and hyperparameters that
made them, validation metrics). `Estimator.load(dir)` gives back a module whose output
is already in the target's own units (gap outputs shifted back by -0.5).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from usam.errors import UsamError
from usam.options import integer
from usam.schema import TARGETS, TOKEN_DIM  # noqa: F401  (TARGETS: usam.mlp.TARGETS)
from usam.storage import (
    MismatchedPair,
    read_json,
    read_verified,
    remove_stale_temps,
    write_bytes,
    write_json,
)

log = logging.getLogger(__name__)

BUNDLE_SCHEMA = 1
# Which decoder mask token an MLP reads for an output mask (SPEC "Token pairing"). SAM 2's mask
# decoder has four mask tokens; multimask output j is made by token j+1, the single-mask output
# by token 0 (or, with dynamic multimask-via-stability, by the token of the best multimask
# output). "usam": the MLP reads the token that made the mask. "published": the published
# estimators were trained with multimask output j on token j, one token early; for a mask of
# token 0 they read token 0, as the published code did. A bundle without the field is usam's.
PAIRINGS = ("usam", "published")
DEFAULT_PAIRING = "usam"


class UsamMLP(nn.Module):
    """in_features -> hidden... -> 1, ReLU between layers, sigmoid out (the paper: 512-512-512-1)."""

    def __init__(self, *, in_features: int = 2 * TOKEN_DIM, hidden: Sequence[int] = (512, 512)):
        super().__init__()
        # a zero width makes a constant model that trains, saves and predicts without a word
        self.in_features = integer(in_features, "in_features", low=1)
        self.hidden = [integer(h, f"hidden[{i}]", low=1) for i, h in enumerate(hidden)]
        layers: list[nn.Module] = []
        width = self.in_features
        for h in self.hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [N, in_features] (or [N, 2, 256] tokens) -> [N] in (0, 1)."""
        return self.net(x.reshape(len(x), -1)).squeeze(-1)

    def architecture(self) -> dict[str, Any]:
        return {
            "type": "mlp",
            "in_features": self.in_features,
            "hidden": self.hidden,
            "activation": "relu",
            "output": "sigmoid",
            "inputs": ["iou_token", "mask_token"],
        }


def save_bundle(directory: str | Path, model: UsamMLP, config: dict[str, Any]) -> Path:
    """Write `model.safetensors` then `config.json` (each atomically; the JSON marks it complete).

    The JSON holds the weights' SHA-256, so a bundle rewritten in place and killed between
    the two renames (new weights beside the old config) is refused when loaded, not used.
    """
    from safetensors.torch import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(directory)  # left by a killed earlier save
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    digest = write_bytes(directory / "model.safetensors", save(state, metadata={"format": "pt"}))
    config = {
        "schema": BUNDLE_SCHEMA,
        "kind": "usam.predictor",  # the format's name since schema 1: bundles on disk keep it
        "token_pairing": DEFAULT_PAIRING,
        **config,
        "architecture": model.architecture(),
        "weights_sha256": digest,
    }
    write_json(directory / "config.json", config)
    return directory


def load_bundle(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[UsamMLP, dict[str, Any]]:
    """Read a bundle written by `save_bundle`: (model in eval mode, config dict)."""
    from safetensors.torch import load

    directory = Path(directory)
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise UsamError(
            f"{directory} is not an estimator bundle: it needs config.json and model.safetensors "
            f"(written by python -m usam.train)"
        )
    config = read_json(config_path)
    if not isinstance(config, dict):
        raise UsamError(f"{config_path}: not a usam estimator config (not a JSON object)")
    if config.get("kind") != "usam.predictor" or config.get("schema") != BUNDLE_SCHEMA:
        raise UsamError(
            f"{config_path}: not a usam estimator config of schema {BUNDLE_SCHEMA} "
            f"(kind={config.get('kind')!r}, schema={config.get('schema')!r}); retrain with this version"
        )
    if token_pairing(config) not in PAIRINGS:
        raise UsamError(
            f"{config_path}: token_pairing {config['token_pairing']!r} is unknown; "
            f"use one of {', '.join(PAIRINGS)}"
        )
    arch = config.get("architecture", {})
    if arch.get("type") != "mlp":
        raise UsamError(f"{config_path}: unknown architecture {arch.get('type')!r}")
    digest = config.get("weights_sha256")
    if digest is None:
        log.warning(
            "%s: records no weights_sha256 (saved by an older usam): the weights cannot be "
            "checked against it",
            config_path,
        )
    try:
        data = read_verified(weights_path, digest, config_path)
    except MismatchedPair as err:
        raise UsamError(f"{err}; retrain the estimator") from None
    model = UsamMLP(in_features=arch["in_features"], hidden=arch["hidden"])
    try:
        model.load_state_dict(load(data))
    except Exception as err:  # safetensors header errors and shape mismatches alike
        raise UsamError(
            f"{weights_path}: cannot load weights ({err}); retrain the estimator"
        ) from None
    return model.to(device).eval(), config


def token_pairing(config: dict[str, Any]) -> str:
    """The bundle's token pairing; bundles written before the field existed are usam's."""
    return config.get("token_pairing") or DEFAULT_PAIRING


def paired_token(source: torch.Tensor, pairing: str) -> torch.Tensor:
    """Index of the decoder mask token an MLP of `pairing` reads for masks made by token `source`.

    usam: the token itself. published: one token early (multimask output j, made by token
    j+1, read token j in the published training), and token 0 for token 0's own mask.
    """
    if pairing == "usam":
        return source
    if pairing == "published":
        return (source - 1).clamp(min=0)
    raise UsamError(f"token pairing {pairing!r} is unknown; use one of {', '.join(PAIRINGS)}")


class Estimator(nn.Module):
    """A trained MLP with its target's shift undone: tokens in, target values out."""

    def __init__(self, model: UsamMLP, config: dict[str, Any]):
        super().__init__()
        self.model, self.config = model, config
        self.target: str = config["target"]
        self.shift = float(config.get("output_shift", 0.0))
        self.pairing = token_pairing(config)
        self.directory: Path | None = None  # the bundle it was loaded from, if any

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu") -> Estimator:
        p = cls(*load_bundle(directory, device))
        p.directory = Path(directory)
        return p

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, 2, 256] or [N, 512] (IoU token, mask token) -> [N] target values."""
        return predict(self.model, tokens, self.shift)


@torch.no_grad()
def predict(
    model: nn.Module, tokens: torch.Tensor | np.ndarray, shift: float = 0.0
) -> torch.Tensor:
    """Model output minus the target's training shift (a gap of 0 comes out as 0, not 0.5)."""
    p = next(model.parameters())
    x = torch.as_tensor(tokens).to(device=p.device, dtype=p.dtype)
    return model(x) - shift
