"""Test helpers: the published estimators' files and forward pass, and SAM 2's tokens read
without usam's code.

`published_state` builds state dicts of exactly the published shapes (SPEC "The published
estimators") whose three layers differ, so a wrong layer mapping changes every output.
`PublishedMLP` is the published forward pass as documented there; `DecoderTokens` reads the
IoU token and the four mask tokens of a decoder call with its own hooks.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

WIDTH = 512


def published_state(seed: int) -> dict[str, torch.Tensor]:
    """layers.{0,1,2}.{weight,bias}: 512x512, 512, 512x512, 512, 1x512, 1, all different."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i, (n_out, gain) in enumerate([(WIDTH, 1.0), (WIDTH, 1.6), (1, 0.8)]):
        state[f"layers.{i}.weight"] = torch.randn(n_out, WIDTH, generator=g) * gain / WIDTH**0.5
        state[f"layers.{i}.bias"] = torch.randn(n_out, generator=g) * 0.1 + 0.05 * (i - 1)
    return state


class PublishedMLP(nn.Module):
    """The published MLP: Linear layers `layers.{0,1,2}`, ReLU between, sigmoid out."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, WIDTH), nn.Linear(WIDTH, 1)]
        )

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = torch.relu(x) if i < 2 else torch.sigmoid(x)
        return x


def published_forward(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    mlp = PublishedMLP()
    mlp.load_state_dict(state)
    with torch.no_grad():
        return mlp(x.float())[..., 0]


def write_published(root: Path, version: str, names: dict[str, int]) -> Path:
    """root/models/mlps/<version>/<name>/model.pth for each name -> seed; returns that folder."""
    folder = Path(root) / "models" / "mlps" / version
    for name, seed in names.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        torch.save(published_state(seed), folder / name / "model.pth")
    return folder


class DecoderTokens:
    """Records the IoU token and mask tokens 0..3 of the next decoder call of `model`."""

    def __init__(self, model):
        decoder = model.sam_mask_decoder
        self.tokens: dict = {}
        modules = [("iou", decoder.iou_prediction_head)] + list(
            enumerate(decoder.output_hypernetworks_mlps)
        )
        self.handles = [
            m.register_forward_pre_hook(self._grab(k), with_kwargs=True) for k, m in modules
        ]

    def _grab(self, key):
        def hook(module, args, kwargs):
            self.tokens[key] = (args[0] if args else next(iter(kwargs.values()))).detach().clone()

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def rows(self, token_of_mask: list[int]) -> torch.Tensor:
        """[B, M, 512]: [iou_token, mask token token_of_mask[m]] per prompt b and mask m."""
        iou = self.tokens["iou"].float()
        return torch.stack(
            [torch.cat([iou, self.tokens[k].float()], -1) for k in token_of_mask], dim=1
        )


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_hub_cache(cache: Path, repo_id: str, filename: str, content: bytes) -> str:
    """The Hugging Face hub cache layout of one downloaded file, as huggingface_hub writes it:
    models--<owner>--<name>/{blobs/<sha256>, refs/main, snapshots/<commit>/<file> -> blob}.
    Returns the content's SHA-256 (the LFS object id that names the blob)."""
    import hashlib

    sha = hashlib.sha256(content).hexdigest()
    repo = Path(cache) / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "blobs" / sha).write_bytes(content)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / filename).symlink_to(Path("../../blobs") / sha)
    return sha


def offline_hub(monkeypatch, cache: Path) -> None:
    """No network for huggingface_hub (HF_HUB_OFFLINE=1) and `cache` as its cache dir."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
