"""python -m usam.datasets dataset=<name> dataset.root=<dir> dataset.split=<split>

Reads every sample of a split once and reports images, instances, images without
instances and unreadable files; writes them to summary.json in the run folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from usam import CONF_DIR
from usam.cli import run_stage
from usam.storage import write_json

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    reader = instantiate(cfg.dataset)
    for _ in tqdm(reader, total=len(reader), desc=f"{reader.name}/{reader.split}", unit="img"):
        pass
    summary = {
        "dataset": reader.name,
        "root": str(reader.root),
        "split": reader.split,
        "native_split": reader.native_split,
        "shard": {"index": reader.shard_index, "count": reader.shard_count},
        "entries": len(reader),
        **reader.stats.as_dict(),
    }
    log.info(
        "%s %s: %d images, %d instances, %d without instances, %d unreadable",
        reader.name, reader.split, summary["images"], summary["instances"],
        summary["images_without_instances"], summary["unreadable"],
    )
    write_json(Path(cfg.paths.output_dir) / "summary.json", summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="datasets")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
