"""python -m usam.download_checkpoints sam_model=sam2.1 [sam_model.sizes=[tiny,large]] [source=hf]

Downloads the checkpoint of each size in `sam_model.sizes` into `sam_model.checkpoint_dir`
(file names and URLs from usam.registry, or `sam_model.checkpoints` / `sam_model.urls`),
verifying `sam_model.sha256[size]` when pinned and recording the digest beside the file
(`<name>.sha256`) for the loader to check. Complete files are skipped; a rerun resumes.
`source=hf` fetches the same files from the Hugging Face hub (facebook/sam2.1-hiera-<size>,
as SAM 2's from_pretrained does: the hub's cache, resume, its SHA-256) and copies them there.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from usam import CONF_DIR, hub, registry
from usam.cli import run_stage, save_run
from usam.download import (
    download,
    file_sha256,
    is_complete,
    read_sidecar,
    record_sidecar,
    safe_join,
    sidecar_path,
)
from usam.errors import UsamError
from usam.storage import atomic_path, write_json

log = logging.getLogger(__name__)


def from_hub(
    version: str, size: str, dest: Path, pinned: str | None, *, local_files_only: bool = False
) -> Path:
    """Fetch through the hub's cache, check the hub's and the pinned SHA-256, copy to `dest`
    with its sidecar (sidecar first, as `download` does: no unverified-looking `dest`)."""
    src, _, _, hub_sha = hub.download(
        registry.lookup(version, size).hub_id, local_files_only=local_files_only
    )
    digest = file_sha256(src)
    for want, what in ((hub_sha, "the hub recorded"), (pinned, "pinned")):
        if want and digest != want:
            raise UsamError(
                f"{src}: sha256 is {digest} but {what} {want}; delete it from the Hugging Face "
                "cache (hf cache delete) and run again"
            )
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        side = sidecar_path(dest)
        side_tmp = side.with_name(side.name + ".tmp")
        side_tmp.write_text(digest + "\n")
        os.replace(side_tmp, side)
    log.info("%s: copied from the hub cache (%s), sha256 %s", dest, src, digest)
    return dest


def run(cfg: DictConfig) -> dict[str, Any]:
    sm = cfg.sam_model
    if sm.get("random_weights"):
        raise UsamError(
            "sam_model with random_weights=true (sam_model=random) uses seeded random weights and "
            "needs no download; choose sam_model=sam2.1 or sam_model=sam2.0"
        )
    if cfg.source not in ("meta", "hf"):
        raise UsamError(
            f"source={cfg.source}: use meta (Meta's server, usam.registry or sam_model.urls) "
            "or hf (the Hugging Face hub)"
        )
    out = Path(sm.checkpoint_dir)
    pins = sm.get("sha256") or {}
    known = registry.sizes(sm.version)
    unknown = [s for s in sm.sizes if s not in known]
    if unknown:
        raise UsamError(
            f"sam_model.sizes has {unknown}, unknown to SAM {sm.version}; choose from {known}"
        )
    files, failed = [], []
    for size in sm.sizes:
        row = registry.resolve(sm.version, size, sm)
        dest = safe_join(out, row.file)
        pinned = pins.get(size)
        url = row.url
        if cfg.source == "hf":  # the hub holds Meta's file name, whatever the local one
            url = f"hf://{row.hub_id}/{registry.lookup(sm.version, size).file}"
        entry = {"size": size, "path": str(dest), "url": url, "pinned": bool(pinned)}
        try:
            if is_complete(dest, pinned):
                entry["status"] = "skipped"
                log.info("%s: already complete", dest)
            elif cfg.source == "hf":
                from_hub(sm.version, size, dest, pinned, local_files_only=cfg.local_files_only)
                entry["status"] = "downloaded"
            else:
                download(url, dest, sha256=pinned, retries=cfg.retries, timeout=cfg.timeout)
                entry["status"] = "downloaded"
            recorded = read_sidecar(dest)
            if recorded is None:  # copied in by hand: record it now, as a download would
                recorded = file_sha256(dest)
                record_sidecar(dest, recorded, "first use")
            entry["sha256"] = pinned or recorded
        except UsamError as err:  # try the other sizes, then fail the run
            entry.update(status="failed", sha256=None, error=str(err))
            failed.append(str(err))
            log.error("%s", err)
        files.append(entry)
    summary = {"version": sm.version, "checkpoint_dir": str(out), "files": files}
    if failed:
        write_json(Path(cfg.paths.output_dir) / "summary.json", summary)  # what did work
        raise UsamError(
            f"{len(failed)} of {len(files)} checkpoint download(s) failed: " + "; ".join(failed)
        )
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="download_checkpoints")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
