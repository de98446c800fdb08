"""python -m usam.datasets dataset=<name> dataset.root=<dir> dataset.split=<split>

Reads every sample of a split once and reports images, instances, images without
instances and unreadable files; writes them to summary.json in the run folder.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from usam import CONF_DIR
from usam.cli import run_stage, save_run

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
        reader.name,
        reader.split,
        summary["images"],
        summary["instances"],
        summary["images_without_instances"],
        summary["unreadable"],
    )
    return save_run(cfg, summary)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="datasets")
def main(cfg: DictConfig) -> None:
    run_stage(run, cfg)


if __name__ == "__main__":
    main()
