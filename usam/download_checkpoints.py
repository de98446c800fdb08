"""python -m usam.download_checkpoints sam_model=sam2.1 [sam_model.sizes=[tiny,large]]

Downloads the checkpoint of each size in `sam_model.sizes` into `sam_model.checkpoint_dir`,
verifying `sam_model.sha256[size]` when pinned and recording the digest beside the file
(`<name>.sha256`) for the loader to check. Complete files are skipped; a rerun resumes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from usam import CONF_DIR
from usam.cli import run_stage, save_run
from usam.download import (
    download,
    file_sha256,
    is_complete,
    read_sidecar,
    record_sidecar,
    safe_join,
)
from usam.errors import UsamError
from usam.storage import write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    sm = cfg.sam_model
    if sm.get("random_weights"):
        raise UsamError(
            "sam_model with random_weights=true (sam_model=random) uses seeded random weights and "
            "needs no download; choose sam_model=sam2.1 or sam_model=sam2.0"
        )
    out = Path(sm.checkpoint_dir)
    pins = sm.get("sha256") or {}
    files, failed = [], []
    for size in sm.sizes:
        if size not in sm.urls or size not in sm.checkpoints:
            raise UsamError(
                f"sam_model.sizes has {size!r}, which has no url/checkpoint in sam_model "
                f"{sm.version}; choose from {list(sm.urls)}"
            )
        dest = safe_join(out, sm.checkpoints[size])
        pinned = pins.get(size)
        entry = {"size": size, "path": str(dest), "url": sm.urls[size], "pinned": bool(pinned)}
        try:
            if is_complete(dest, pinned):
                entry["status"] = "skipped"
                log.info("%s: already complete", dest)
            else:
                download(
                    sm.urls[size], dest, sha256=pinned, retries=cfg.retries, timeout=cfg.timeout
                )
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
