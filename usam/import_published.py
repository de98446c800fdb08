"""python -m usam.import_published <folder>: the published estimators as usam bundles.

`<folder>` is a checkout of the published repository (every `models/mlps/sam2.X` in it is
imported) or one `models/mlps/sam2.X` folder. Each `<name>/model.pth` there is a plain state
dict (SPEC "The published estimators"); it is read with `torch.load(weights_only=True)`,
refused unless it has exactly the documented keys and shapes, and written as a bundle
`<out>/<version>/<target>/` that records where it came from, the SAM version, every size of
that version (the published rows pooled all four) and the published token pairing, which
`UncertainSAM` then honours. An existing bundle is kept when it holds the same weights and
refused otherwise (`overwrite=true` replaces it).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from usam import CONF_DIR
from usam.cli import run_stage, save_run
from usam.download import file_sha256
from usam.errors import UsamError
from usam.mlp import Estimator, UsamMLP, load_bundle, save_bundle
from usam.schema import SIZES, TARGETS

log = logging.getLogger(__name__)

VERSIONS = ("sam2.0", "sam2.1")
# published folder name -> usam target; the other folder names are the targets themselves
RENAMED = {"iou_unsupervised": "unsupervised_iou"}
WIDTH = 512  # [iou_token, mask_token], 2 x 256
# the published MLP: layers.{0,1,2}, ReLU between, sigmoid out; usam's UsamMLP names the same
# Linear layers net.{0,2,4} (ReLU modules in between)
SHAPES = {
    "layers.0.weight": (WIDTH, WIDTH),
    "layers.0.bias": (WIDTH,),
    "layers.1.weight": (WIDTH, WIDTH),
    "layers.1.bias": (WIDTH,),
    "layers.2.weight": (1, WIDTH),
    "layers.2.bias": (1,),
}


def target_of(name: str) -> str:
    return RENAMED.get(name, name)


def read_published(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`, or a UsamError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, truncated, or pickled non-tensor objects
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsamError(
            f"{path}: not a plain PyTorch state dict loadable with weights_only=True ({first})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsamError(f"{path}: not a plain state dict of tensors (got {type(state).__name__})")
    if set(state) != set(SHAPES):
        extra, missing = sorted(set(state) - set(SHAPES)), sorted(set(SHAPES) - set(state))
        raise UsamError(
            f"{path}: not a published USAM MLP: keys must be {sorted(SHAPES)} "
            f"(unexpected {extra}, missing {missing})"
        )
    for key, shape in SHAPES.items():
        t = state[key]
        if tuple(t.shape) != shape or not t.is_floating_point():
            raise UsamError(
                f"{path}: {key} is {t.dtype} {tuple(t.shape)}, the published MLP has a float "
                f"tensor of shape {shape}"
            )
        if not torch.isfinite(t).all():
            raise UsamError(f"{path}: {key} has NaN or infinite values")
    return state


def as_usam_mlp(state: dict[str, torch.Tensor]) -> UsamMLP:
    """The published weights in usam's MLP (same layers, same activations)."""
    model = UsamMLP(in_features=WIDTH, hidden=(WIDTH, WIDTH))
    renamed = {
        f"net.{2 * int(k.split('.')[1])}.{k.split('.')[2]}": v.float() for k, v in state.items()
    }
    model.load_state_dict(renamed)
    return model.eval()


def published_config(target: str, version: str | None) -> dict[str, Any]:
    """The bundle config of a published estimator (SPEC "The published estimators")."""
    return {
        "target": target,
        "output_shift": TARGETS[target],
        "sam_version": version,
        "models": list(SIZES),  # pooled over all four sizes: valid for each of them
        "token_pairing": "published",
        "random_weights": False,
    }


def published_files(folder: Path) -> dict[str, Path]:
    """{folder name: <name>/model.pth} of a models/mlps/sam2.X folder; unknown names refused."""
    files = {f.parent.name: f for f in sorted(Path(folder).glob("*/model.pth"))}
    unknown = [n for n in files if target_of(n) not in TARGETS]
    if unknown:
        raise UsamError(
            f"{folder}: {unknown} are not published estimator names; expected "
            f"{sorted({*TARGETS, *RENAMED} - set(RENAMED.values()))}"
        )
    return files


def load_published(folder: str | Path) -> dict[str, Estimator]:
    """A published models/mlps/sam2.X folder in memory: {folder name: Estimator}, published
    pairing; the version from the folder's name when it says (sam2.0 / sam2.1)."""
    folder = Path(folder)
    version = folder.name if folder.name in VERSIONS else None
    return {
        name: Estimator(as_usam_mlp(read_published(f)), published_config(target_of(name), version))
        for name, f in published_files(folder).items()
    }


def version_folders(source: Path, version: str | None) -> dict[str, Path]:
    """{version: folder of <name>/model.pth} for a checkout or one models/mlps/sam2.X folder."""
    if not source.is_dir():
        raise UsamError(
            f"{source.resolve()} is not a folder; pass a checkout of the published repository "
            "or its models/mlps/sam2.X folder"
        )
    mlps = source / "models" / "mlps"
    if mlps.is_dir():  # a checkout: every version it ships
        found = {v: mlps / v for v in VERSIONS if (mlps / v).is_dir()}
        if version is not None:
            found = {v: p for v, p in found.items() if v == version}
        if not found:
            raise UsamError(f"{mlps}: no {version or ' or '.join(VERSIONS)} folder in it")
        return found
    if not any(source.glob("*/model.pth")):
        raise UsamError(
            f"{source}: no <target>/model.pth in it; pass a checkout of the published "
            "repository or its models/mlps/sam2.X folder"
        )
    named = source.name if source.name in VERSIONS else None
    if version is not None and named is not None and version != named:
        raise UsamError(f"{source}: the folder name says {named} but version={version} was given")
    version = version or named
    if version is None:
        raise UsamError(
            f"{source}: cannot tell the SAM version from the folder name {source.name!r}; "
            f"pass version=sam2.0 or version=sam2.1"
        )
    if version not in VERSIONS:
        raise UsamError(f"version={version}: use one of {', '.join(VERSIONS)}")
    return {version: source}


def import_folder(folder: Path, version: str, out: Path, *, overwrite: bool) -> list[dict]:
    """Import every <name>/model.pth under `folder`; all are checked before any is written."""
    files = list(published_files(folder).values())
    models = {f: as_usam_mlp(read_published(f)) for f in files}  # every file valid first
    entries = []
    for f in files:  # and no conflict with bundles already there, before writing any
        target = target_of(f.parent.name)
        dest, digest = out / version / target, file_sha256(f)
        status = "imported"
        if (dest / "config.json").is_file() and not overwrite:
            _, old = load_bundle(dest)
            if (old.get("imported_from") or {}).get("sha256") != digest:
                raise UsamError(
                    f"{dest} already holds a bundle with other weights; pass overwrite=true "
                    "to replace it, or another out="
                )
            status = "skipped"
        entries.append(
            {
                "target": target,
                "source": str(f),
                "sha256": digest,
                "bundle": str(dest),
                "status": status,
            }
        )
    for f, entry in zip(files, entries, strict=True):
        if entry["status"] == "skipped":
            log.info("%s: already imported from the same file", entry["bundle"])
            continue
        target = entry["target"]
        save_bundle(
            entry["bundle"],
            models[f],
            {
                **published_config(target, version),
                "imported_from": {"file": str(f.resolve()), "sha256": entry["sha256"]},
            },
        )
        log.info("%s -> %s", f, entry["bundle"])
    return entries


def run(cfg: DictConfig) -> dict[str, Any]:
    if cfg.source is None:
        raise UsamError(
            "no source: python -m usam.import_published <folder> (a checkout of the published "
            "repository or its models/mlps/sam2.X folder)"
        )
    out = Path(cfg.out)
    folders = version_folders(Path(cfg.source), cfg.version)
    bundles = {
        v: import_folder(f, v, out, overwrite=bool(cfg.overwrite)) for v, f in folders.items()
    }
    summary = {
        "source": str(cfg.source),
        "out": str(out),
        "bundles": bundles,
        "use": {v: str(out / v) for v in bundles},
    }
    for v in bundles:
        log.info("use them with: UncertainSAM.from_pretrained(..., estimators=%r)", str(out / v))
    return save_run(cfg, summary)


def _positional_source(argv: list[str]) -> list[str]:
    """`import_published <folder>` as the issue's command reads: a bare first path -> source=."""
    if len(argv) > 1 and "=" not in argv[1] and not argv[1].startswith("-"):
        return [argv[0], f"source={argv[1]}", *argv[2:]]
    return argv


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="import_published")
def _main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


def main() -> None:
    sys.argv = _positional_source(sys.argv)
    _main()


if __name__ == "__main__":
    main()
